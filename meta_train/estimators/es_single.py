"""ES-Single / Noise-Reuse ES.

Li, Wu, Suresh, Zhou, Ghazi, ... "Noise-Reuse in Online Evolution Strategies"
(2023) and Li et al. 2023, "Low-Variance Gradient Estimation in Unrolled
Computation Graphs with ES-Single" (ICML 2023).

Each antithetic particle ``i`` draws ``eps_i ~ N(0, s^2 I)`` once per inner
episode and keeps it for every truncation of that episode; its two inner
states are unrolled under ``theta + eps_i`` and ``theta - eps_i``. For
truncation ``j`` with losses ``L_j(+-)`` (sum or mean of the per-step losses)
the estimate is::

    g_j = 1 / (2 s^2 N) * sum_i eps_i * (L_j(+) - L_j(-))

``eps_i`` is redrawn when particle ``i``'s episode ends; steps of the new
episode are credited to the new noise (also when the episode ends in the
middle of a truncation). Summed over the truncations of an episode the
estimate equals the antithetic FullES estimate of that episode, so it is
unbiased for the gradient of the Gaussian-smoothed episode loss and its
variance does not grow with the number of truncations (unlike PES).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from lopt.meta_train import unroll as U
from lopt.meta_train.estimators import base

PyTree = Any


class ESSingleState(NamedTuple):
  ep: U.Episode
  inner: PyTree   # [2, P, ...]
  eps: PyTree     # [P, ...] noise of each particle's current episode


@dataclasses.dataclass(frozen=True, eq=False)
class ESSingle(base.EstimatorBase):
  """ES-Single (noise-reuse ES); see the module docstring."""

  name = "es_single"

  def init(self, theta: PyTree, key: jax.Array) -> ESSingleState:
    ep = self._episodes(key)
    eps = U.episode_noise(ep, theta, self.std)
    theta_pm = U.perturbed(theta, eps)
    inner = jax.vmap(lambda th: U.init_inner(self.system, th, ep))(theta_pm)
    return ESSingleState(ep, inner, eps)

  def estimate(self, theta, state: ESSingleState, key):
    del key  # all noise derives from the episode keys
    c = base.antithetic_unroll(self.system, theta, state.ep, state.inner,
                               state.eps, state.eps, self.trunc_length,
                               std=self.std, resample_on_reset=True)
    denom = self.trunc_length if self.reduce == "mean" else 1.0
    grad = base.es_gradient(c, self.std, denom)
    return (grad, ESSingleState(c.ep, c.inner, c.eps),
            base.es_metrics(c, self.trunc_length))
