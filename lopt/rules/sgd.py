"""Learnable SGD: ``update = -exp(log_lr) * g``.

The simplest learned optimizer; a fast sanity check for gradient estimators
and a baseline. Meta-parameters: ``{"log_lr": scalar}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from lopt.rules import common

PyTree = Any


class SGDState(NamedTuple):
  step: jax.Array
  momentum: Optional[PyTree] = None  # float32, only when momentum=True


@dataclasses.dataclass(frozen=True)
class LearnableSGD:
  """SGD with a learnable log learning rate (and optional momentum).

  ``m_t = beta m_{t-1} + g_t`` (heavy ball; ``beta = sigmoid(logit_beta)``
  when ``momentum=True``), ``update = -exp(log_lr) * m_t``.
  """

  initial_lr: float = 0.1
  momentum: bool = False
  initial_beta: float = 0.9

  name = "sgd"
  uses_loss = False

  def config(self) -> dict:
    return dataclasses.asdict(self)

  def init_meta_params(self, key: jax.Array) -> PyTree:
    del key
    theta = {"log_lr": jnp.log(common.f32(self.initial_lr))}
    if self.momentum:
      b = common.f32(self.initial_beta)
      theta["logit_beta"] = jnp.log(b) - jnp.log1p(-b)
    return theta

  def init(self, theta, params, num_steps, param_meta=None):
    del theta, num_steps, param_meta
    mom = common.zeros_like_f32(params) if self.momentum else None
    return SGDState(step=jnp.zeros([], jnp.int32), momentum=mom)

  def update(self, theta, grads, state, params, loss=None):
    del loss
    lr = jnp.exp(theta["log_lr"])
    if not self.momentum:
      updates = jax.tree.map(lambda g: -lr * common.f32(g), grads)
      return common.cast_like(updates, params), SGDState(state.step + 1, None)
    beta = jax.nn.sigmoid(theta["logit_beta"])
    mom = jax.tree.map(lambda m, g: beta * m + common.f32(g), state.momentum,
                       grads)
    updates = jax.tree.map(lambda m: -lr * m, mom)
    return common.cast_like(updates, params), SGDState(state.step + 1, mom)
