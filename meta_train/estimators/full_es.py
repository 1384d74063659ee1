"""FullES: antithetic ES over complete episodes (no truncation).

Each ``estimate`` call starts a fresh episode for every particle (a new task,
horizon and initial state drawn from the next episode key), draws
``eps_i ~ N(0, s^2 I)`` and unrolls the whole episode under ``theta +- eps_i``:
``g = 1/(2 s^2 N) sum_i eps_i (L(+) - L(-))`` with ``L`` the episode's summed
(or mean) loss. The scan runs ``system.max_horizon`` steps and masks the steps
past each particle's horizon. Unbiased; one estimate per episode, i.e. K = T
in the noise-reuse view (Li et al. 2023).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.meta_train import unroll as U
from lopt.meta_train.estimators import base

PyTree = Any


class FullESState(NamedTuple):
  ep: U.Episode   # the last completed episode of each particle


@dataclasses.dataclass(frozen=True, eq=False)
class FullES(base.EstimatorBase):
  """FullES; ``trunc_length`` is ignored (the unroll is the whole episode)."""

  random_offsets: bool = False
  name = "full_es"

  def init(self, theta: PyTree, key: jax.Array) -> FullESState:
    del theta
    ep = U.initial_episodes(self.system, key, self.indices,
                            self.num_particles, False)
    # estimate() starts episode + 1; begin at episode 0.
    return FullESState(ep._replace(episode=ep.episode - 1))

  def estimate(self, theta, state: FullESState, key):
    del key
    ep = U.next_episodes(self.system, state.ep)
    eps = U.episode_noise(ep, theta, self.std)
    inner = jax.vmap(lambda th: U.init_inner(self.system, th, ep))(
        U.perturbed(theta, eps))
    steps = int(self.system.max_horizon)
    c = base.antithetic_unroll(self.system, theta, ep, inner, eps, eps, steps,
                               std=self.std, resample_on_reset=False,
                               allow_reset=False)
    denom = (ep.horizon.astype(jnp.float32) if self.reduce == "mean"
             else 1.0)
    grad = base.es_gradient(c, self.std, denom)
    m = base.es_metrics(c, steps)
    m["inner_steps"] = 2.0 * jnp.sum(ep.horizon).astype(jnp.float32)
    return grad, FullESState(ep), m
