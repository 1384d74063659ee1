"""Persistent Evolution Strategies (PES).

Vicol, Metz, Sohl-Dickstein, "Unbiased Gradient Estimation in Unrolled
Computation Graphs with Persistent Evolution Strategies" (ICML 2021).

Each truncation ``j`` draws fresh antithetic noise ``eps_{i,j} ~ N(0, s^2 I)``
and unrolls the particle's *persistent* states under ``theta +- eps_{i,j}``.
The accumulated noise ``xi_{i,j} = sum_{k<=j} eps_{i,k}`` (sum over the
truncations since the start of the particle's episode) multiplies the loss
difference::

    g_j = 1 / (2 s^2 N) * sum_i xi_{i,j} * (L_j(+) - L_j(-))

At an episode boundary inside a truncation ``xi`` restarts at
``eps_{i,j}`` (the new episode was only influenced by this truncation's
noise), so the sum of the truncation estimates is unbiased for the gradient
of the smoothed total loss. Its variance grows with the number of
truncations per episode (the accumulated ``xi`` grows).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from lopt.meta_train import unroll as U
from lopt.meta_train.estimators import base

PyTree = Any


class PESState(NamedTuple):
  ep: U.Episode
  inner: PyTree   # [2, P, ...]
  xi: PyTree      # [P, ...] accumulated noise of the current episode


def truncation_noise(ep: U.Episode, theta: PyTree, std: float,
                     key: jax.Array) -> PyTree:
  """Fresh noise per (outer-step key, global task index, particle)."""
  return jax.vmap(lambda i, p: U.gaussian_like(
      U.truncation_noise_key(key, i, p), theta, std))(ep.task_index,
                                                       ep.particle)


@dataclasses.dataclass(frozen=True, eq=False)
class PES(base.EstimatorBase):
  """Persistent evolution strategies; see the module docstring."""

  name = "pes"

  def init(self, theta: PyTree, key: jax.Array) -> PESState:
    ep = self._episodes(key)
    zeros = jax.tree.map(lambda x: jax.numpy.zeros_like(x, jax.numpy.float32),
                         U.broadcast_theta(theta, ep.t.shape[0]))
    # The first episode starts unperturbed (its initial state is shared by
    # both sides), hence xi = 0.
    inner = jax.vmap(lambda th: U.init_inner(self.system, th, ep))(
        U.perturbed(theta, zeros))
    return PESState(ep, inner, zeros)

  def estimate(self, theta, state: PESState, key):
    eps = truncation_noise(state.ep, theta, self.std, key)
    credit = jax.tree.map(lambda a, b: a + b, state.xi, eps)
    c = base.antithetic_unroll(self.system, theta, state.ep, state.inner, eps,
                               credit, self.trunc_length, std=self.std,
                               resample_on_reset=False)
    denom = self.trunc_length if self.reduce == "mean" else 1.0
    grad = base.es_gradient(c, self.std, denom)
    # c.credit is xi + eps, or eps if the episode restarted in this truncation.
    return (grad, PESState(c.ep, c.inner, c.credit),
            base.es_metrics(c, self.trunc_length))
