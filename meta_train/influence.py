"""The influence-balancing system: an inner problem whose total loss is
exactly quadratic in theta (Tallec & Ollivier 2017, "Unbiasing Truncated
Backpropagation Through Time"; used by Vicol et al. 2021 for PES).

State ``s in R^n`` (``n = num_positive + num_negative``)::

    s_0 = 1
    s_{t+1} = A s_t + b(theta),   A_ii = A_{i,i+1} = 1/2,
    b(theta) = (theta, ..., theta, -theta, ..., -theta)
               (num_positive times +theta, then num_negative times -theta)
    L_t = 1/2 (s_{t+1}[0] - target)^2        (target = 1 by default)

``s_t`` is affine in theta, so every ``L_t`` and any sum of them is exactly
quadratic: antithetic ES estimates of its gradient are exactly unbiased at
any ``s``. Theta's immediate effect on ``s[0]`` is positive, its long-run
effect (through the chain ``A``) negative, so truncated methods (TBPTT,
truncated ES) get the gradient wrong.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import jax
import jax.numpy as jnp

PyTree = Any


@dataclasses.dataclass(frozen=True)
class InfluenceBalancing:
  """The influence-balancing :class:`~lopt.meta_train.unroll.UnrollSystem`.

  Attributes:
    horizon: episode length T (every episode has the same length).
    num_positive: entries of ``b`` equal to ``+theta``.
    num_negative: entries of ``b`` equal to ``-theta``.
    theta0: default theta.
    vector_theta: one theta per entry of ``b`` (``b_i = +-theta_i``, a
      ``dim``-vector) instead of a shared scalar; still exactly quadratic.
    target: the loss is ``1/2 (s[0] - target)^2`` (1 in the classic system,
      where theta = 0 is the optimum).
  """

  horizon: int = 50
  num_positive: int = 10
  num_negative: int = 13
  theta0: float = 0.5
  vector_theta: bool = False
  target: float = 1.0

  @property
  def max_horizon(self) -> int:
    return self.horizon

  @property
  def dim(self) -> int:
    return self.num_positive + self.num_negative

  def init_meta_params(self, key: jax.Array) -> PyTree:
    del key
    shape = [self.dim] if self.vector_theta else []
    return {"theta": jnp.full(shape, self.theta0, jnp.float32)}

  def sample_horizon(self, key: jax.Array) -> jax.Array:
    del key
    return jnp.asarray(self.horizon, jnp.int32)

  def init(self, theta: PyTree, key: jax.Array, horizon: jax.Array):
    del theta, key, horizon
    return jnp.ones([self.dim], jnp.float32)

  def _b(self, theta: PyTree) -> jax.Array:
    signs = jnp.concatenate([jnp.ones([self.num_positive], jnp.float32),
                             -jnp.ones([self.num_negative], jnp.float32)])
    return signs * theta["theta"]

  def step(self, theta: PyTree, s: jax.Array, key: jax.Array
           ) -> Tuple[jax.Array, jax.Array]:
    del key
    nxt = 0.5 * s + 0.5 * jnp.concatenate([s[1:], jnp.zeros([1], s.dtype)])
    s = nxt + self._b(theta)
    return s, 0.5 * (s[0] - self.target) ** 2

  def total_loss(self, theta: PyTree, num_steps: int, offset: int = 0
                 ) -> jax.Array:
    """Sum of ``L_t`` over ``num_steps`` steps that start ``offset`` steps
    into an episode, with resets every ``horizon`` steps (the quantity whose
    gradient the summed unbiased estimates match)."""
    def body(carry, _):
      s, t = carry
      s = jnp.where(t >= self.horizon, jnp.ones_like(s), s)
      t = jnp.where(t >= self.horizon, 0, t)
      s, loss = self.step(theta, s, None)
      return (s, t + 1), loss

    init = (jnp.ones([self.dim], jnp.float32), jnp.asarray(offset, jnp.int32))
    _, losses = jax.lax.scan(body, init, None, length=num_steps)
    return jnp.sum(losses)
