"""Helpers shared by the rules: dtype handling, per-tensor statistics, time
features, muP update scales."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from lopt.base import ParamMeta

PyTree = Any

#: dtype of every optimizer accumulator, whatever the parameter dtype.
STATE_DTYPE = jnp.float32


def f32(x) -> jax.Array:
  return jnp.asarray(x, STATE_DTYPE)


def zeros_like_f32(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), STATE_DTYPE), tree)


def cast_like(updates: PyTree, params: PyTree) -> PyTree:
  """Casts each update leaf to the dtype of its parameter."""
  return jax.tree.map(lambda u, p: u.astype(jnp.result_type(p)), updates,
                      params)


def safe_mean(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  """Mean that is 0 (not NaN) over empty axes."""
  n = x.size if axis is None else _axis_size(x.shape, axis)
  return jnp.sum(x, axis=axis, keepdims=keepdims) / max(n, 1)


def _axis_size(shape, axis) -> int:
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  n = 1
  for a in axes:
    n *= shape[a]
  return n


def time_features(step: jax.Array, num_steps: jax.Array,
                  timescales: Sequence[float]) -> list[jax.Array]:
  """``tanh(frac / s)`` for the fraction of training done ``frac =
  step / num_steps`` at each timescale ``s`` (Metz et al. 2022)."""
  frac = f32(step) / jnp.maximum(f32(num_steps), 1.0)
  return [jnp.tanh(frac / s) for s in timescales]


#: Decays of the loss EMAs behind :func:`loss_features`.
LOSS_DECAYS = (0.9, 0.99, 0.999)


def loss_features(loss: jax.Array, ema: jax.Array, step: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """VeLO-style loss features (Metz et al. 2022): EMAs ``ema_k`` of the
  training loss at decays :data:`LOSS_DECAYS` and the features
  ``tanh((loss - ema_k) / |ema_3|)`` -- whether the loss is above or below
  its recent averages, relative to the loss's scale.

  The EMAs start at the first loss (``step == 0``); a non-finite loss leaves
  them unchanged and gives features 0. Returns ``(new_ema, features)``, both
  ``[len(LOSS_DECAYS)]``.
  """
  loss = f32(loss)
  finite = jnp.isfinite(loss)
  decays = jnp.asarray(LOSS_DECAYS, jnp.float32)
  ema = jnp.where(step == 0, loss, ema)
  ema = jnp.where(finite, decays * ema + (1 - decays) * loss, ema)
  denom = jnp.abs(ema[-1]) + 1e-8
  feats = jnp.where(finite, jnp.tanh((loss - ema) / denom), 0.0)
  return ema, feats


def mup_scales(params: PyTree, param_meta: Optional[PyTree]) -> PyTree:
  """Per-tensor multiplier of the update under muP (muLO, Therien et al.
  2024; Tensor Programs V, Yang et al. 2022).

  ``hidden`` tensors (fan-in and fan-out both grow with width) get
  ``1 / fan_in``; ``input``, ``output`` and ``vector`` tensors get 1 (the
  output layer's width dependence lives in the task's ``1/fan_in`` output
  multiplier). Without ``param_meta`` every scale is 1: standard
  parametrisation.
  """
  if param_meta is None:
    return jax.tree.map(lambda p: f32(1.0), params)

  def scale(p, m):
    if not isinstance(m, ParamMeta):
      raise TypeError(
          "param_meta must have the structure of params with lopt.ParamMeta "
          f"leaves; found a leaf of type {type(m).__name__}.")
    return f32(1.0 / m.fan_in if m.kind == "hidden" else 1.0)

  try:
    return jax.tree.map(scale, params, param_meta)
  except ValueError as e:
    raise ValueError(
        "param_meta does not match the structure of params: "
        f"{e}") from None
