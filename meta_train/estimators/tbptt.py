"""Truncated backpropagation through time (biased; for comparison).

The meta-gradient of a truncation is ``jax.grad`` of its (sum or mean) loss
through the K-step unroll, with the incoming inner state treated as a
constant (``stop_gradient``): the influence of theta on earlier truncations
is dropped, which is the truncation bias (Wu et al. 2018, "Understanding
Short-Horizon Bias in Stochastic Meta-Optimization"). The estimate is clipped
to a global norm ``clip`` (0 disables). A non-finite inner loss resets the
particle; its contribution is masked, but the backward pass may still be
non-finite, in which case the outer loop skips the update.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.meta_train import unroll as U
from lopt.meta_train.estimators import base

PyTree = Any


class TBPTTState(NamedTuple):
  ep: U.Episode
  inner: PyTree   # [P, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class TBPTT(base.EstimatorBase):
  """Truncated backprop; ``std`` is unused, ``clip`` bounds the gradient."""

  clip: float = 0.0
  name = "tbptt"

  def init(self, theta: PyTree, key: jax.Array) -> TBPTTState:
    ep = self._episodes(key)
    inner = U.init_inner(self.system, U.broadcast_theta(theta, ep.t.shape[0]),
                         ep)
    return TBPTTState(ep, inner)

  def _unroll(self, theta, state: TBPTTState):
    system = self.system
    num = state.ep.t.shape[0]
    theta_p = U.broadcast_theta(theta, num)
    # Next episodes are built before the scan and selected on reset (see
    # base.antithetic_unroll); the incoming state is a constant.
    next_ep = U.next_episodes(system, state.ep)
    fresh = U.init_inner(system, theta_p, next_ep)

    def body(carry, _):
      ep, inner, avail, resets, loss_sum, counted, nonfinite = carry
      need = U.needs_reset(ep)
      use = need & avail
      active = ~need | use
      ep = U.tree_select(use, next_ep, ep)
      inner = U.tree_select(use, fresh, inner)
      inner, loss = jax.vmap(system.step)(theta_p, inner, U.step_keys(ep))
      finite = jnp.isfinite(loss)
      ok = finite & active
      w = U.step_weights(system, ep.t, ep.horizon)
      safe = jnp.where(ok, w * loss, 0.0)
      ep = ep._replace(t=ep.t + 1, bad=jnp.where(active, ~finite, ep.bad))
      return (ep, inner, avail & ~use, resets + use.astype(jnp.int32),
              loss_sum + safe, counted + ok.astype(jnp.int32),
              nonfinite + (active & ~finite).astype(jnp.int32)), None

    zi = jnp.zeros([num], jnp.int32)
    inner0 = jax.lax.stop_gradient(state.inner)
    carry = (state.ep, inner0, jnp.ones([num], bool), zi,
             jnp.zeros([num], jnp.float32), zi, zi)
    carry, _ = jax.lax.scan(body, carry, None, length=self.trunc_length)
    ep, inner, _, resets, loss_sum, counted, nonfinite = carry
    denom = self.trunc_length if self.reduce == "mean" else 1.0
    objective = jnp.mean(loss_sum) / denom
    aux = (TBPTTState(ep, inner), loss_sum, counted, resets, nonfinite)
    return objective, aux

  def estimate(self, theta, state: TBPTTState, key):
    del key
    grad, aux = jax.grad(self._unroll, has_aux=True)(theta, state)
    new_state, loss_sum, counted, resets, nonfinite = aux
    if self.clip and self.clip > 0:
      norm = optax.tree.norm(grad)
      scale = jnp.minimum(1.0, self.clip / jnp.maximum(norm, 1e-30))
      grad = jax.tree.map(lambda g: g * scale, grad)
    num = counted.shape[0]
    metrics = {
        "meta_loss": jnp.sum(loss_sum) / jnp.maximum(jnp.sum(counted), 1),
        "inner_steps": jnp.asarray(num * self.trunc_length, jnp.float32),
        "resets": jnp.sum(resets).astype(jnp.float32),
        "nonfinite": jnp.sum(nonfinite).astype(jnp.float32),
        "num_particles": jnp.asarray(num, jnp.float32),
    }
    new_state = jax.lax.stop_gradient(new_state)
    return grad, new_state, metrics
