"""Learned optimizers as optax transformations."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax.numpy as jnp
import optax

from lopt.base import LearnedOptimizer

PyTree = Any


class LearnedOptimizerState(NamedTuple):
  """optax state of :func:`as_optax`: the rule's own state."""
  inner: PyTree


def as_optax(rule: LearnedOptimizer, theta: PyTree, num_steps: int,
             param_meta: Optional[PyTree] = None
             ) -> optax.GradientTransformationExtraArgs:
  """Wraps a learned-optimizer rule as an optax transformation.

  Args:
    rule: a rule from :mod:`lopt.rules` (or any :class:`LearnedOptimizer`).
    theta: its meta-parameters.
    num_steps: the planned number of training steps (the rule's horizon;
      its time features read ``step / num_steps``).
    param_meta: optional pytree of :class:`lopt.ParamMeta` (muP rules).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` takes the
    current loss as the extra keyword argument ``value`` (as in
    ``optax.contrib.reduce_on_plateau``); rules with ``uses_loss`` require it.
    ``params`` must be passed to ``update``. Chain it with other optax
    transforms as usual, e.g. ``optax.chain(optax.clip(1.0), opt)``.
  """
  if isinstance(num_steps, (int, float)) and num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")

  def init_fn(params):
    return LearnedOptimizerState(rule.init(theta, params, num_steps,
                                           param_meta))

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(
          f"The learned optimizer {rule.name!r} needs the current params: "
          "call update(grads, state, params, value=loss).")
    if value is None:
      if getattr(rule, "uses_loss", False):
        raise ValueError(
            f"The learned optimizer {rule.name!r} reads the loss: call "
            "update(grads, state, params, value=loss).")
      value = jnp.zeros([], jnp.float32)
    new_updates, inner = rule.update(theta, updates, state.inner, params,
                                     value)
    return new_updates, LearnedOptimizerState(inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
