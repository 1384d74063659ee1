"""Learnable Adam (Kingma & Ba, 2015) with meta-learned hyper-parameters.

Meta-parameters (all scalars)::

    log_lr, log_one_minus_b1, log_one_minus_b2, log_eps

With the defaults (lr=1e-3, b1=0.9, b2=0.999, eps=1e-8) the updates equal
``optax.adam(1e-3)`` to float tolerance::

    m_t = b1 m + (1-b1) g;   v_t = b2 v + (1-b2) g^2
    update = -lr * (m_t / (1-b1^t)) / (sqrt(v_t / (1-b2^t)) + eps)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.rules import common

PyTree = Any


class AdamState(NamedTuple):
  step: jax.Array
  mu: PyTree
  nu: PyTree


@dataclasses.dataclass(frozen=True)
class LearnableAdam:
  """Adam whose learning rate, decays and epsilon are meta-parameters."""

  initial_lr: float = 1e-3
  initial_b1: float = 0.9
  initial_b2: float = 0.999
  initial_eps: float = 1e-8

  name = "adam"
  uses_loss = False

  def config(self) -> dict:
    return dataclasses.asdict(self)

  def init_meta_params(self, key: jax.Array) -> PyTree:
    del key
    return {
        "log_lr": jnp.log(common.f32(self.initial_lr)),
        "log_one_minus_b1": jnp.log(common.f32(1.0 - self.initial_b1)),
        "log_one_minus_b2": jnp.log(common.f32(1.0 - self.initial_b2)),
        "log_eps": jnp.log(common.f32(self.initial_eps)),
    }

  def init(self, theta, params, num_steps, param_meta=None):
    del theta, num_steps, param_meta
    return AdamState(step=jnp.zeros([], jnp.int32),
                     mu=common.zeros_like_f32(params),
                     nu=common.zeros_like_f32(params))

  def update(self, theta, grads, state, params, loss=None):
    del loss
    lr = jnp.exp(theta["log_lr"])
    b1 = 1.0 - jnp.exp(theta["log_one_minus_b1"])
    b2 = 1.0 - jnp.exp(theta["log_one_minus_b2"])
    eps = jnp.exp(theta["log_eps"])
    step = state.step + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * common.f32(g),
                      state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(
        common.f32(g)), state.nu, grads)
    t = step.astype(jnp.float32)
    c1 = 1.0 - b1**t
    c2 = 1.0 - b2**t
    updates = jax.tree.map(
        lambda m, v: -lr * (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
    return common.cast_like(updates, params), AdamState(step, mu, nu)
