"""Truncated evolution strategies (biased; for comparison).

Each truncation draws fresh antithetic noise and unrolls both sides from the
*same* current state; the estimate ``1/(2 s^2 N) sum_i eps_i (L(+) - L(-))``
ignores how theta shaped that state (the bias PES removes; Vicol et al.
2021, Sec. 3). After the truncation the ``+`` side's state is kept as the
particle's state (as in ``learned_optimization``'s truncated ES).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.meta_train import unroll as U
from lopt.meta_train.estimators import base
from lopt.meta_train.estimators.pes import truncation_noise

PyTree = Any


class TruncatedESState(NamedTuple):
  ep: U.Episode
  inner: PyTree   # [P, ...] one shared state per particle


@dataclasses.dataclass(frozen=True, eq=False)
class TruncatedES(base.EstimatorBase):
  """Truncated ES; see the module docstring."""

  name = "truncated_es"

  def init(self, theta: PyTree, key: jax.Array) -> TruncatedESState:
    ep = self._episodes(key)
    inner = U.init_inner(self.system, U.broadcast_theta(theta, ep.t.shape[0]),
                         ep)
    return TruncatedESState(ep, inner)

  def estimate(self, theta, state: TruncatedESState, key):
    eps = truncation_noise(state.ep, theta, self.std, key)
    inner_pm = jax.tree.map(lambda x: jnp.stack([x, x]), state.inner)
    c = base.antithetic_unroll(self.system, theta, state.ep, inner_pm, eps,
                               eps, self.trunc_length, std=self.std,
                               resample_on_reset=False)
    denom = self.trunc_length if self.reduce == "mean" else 1.0
    grad = base.es_gradient(c, self.std, denom)
    inner = jax.tree.map(lambda x: x[0], c.inner)
    return (grad, TruncatedESState(c.ep, inner),
            base.es_metrics(c, self.trunc_length))
