"""Standard and maximal-update (muP) parametrisations of dense layers, and the
muP task families used for width-transfer studies (muLO, Therien et al. 2024;
Tensor Programs V, Yang et al. 2021, Table 3 in its "output multiplier" form).

For a weight ``W`` of shape ``[fan_in, fan_out]`` and init scale ``s``:

============  =========================  ===========================
kind          standard (SP)              muP
============  =========================  ===========================
``input``     ``W ~ N(0, s^2/fan_in)``   ``W ~ N(0, s^2/fan_in)``
``hidden``    ``W ~ N(0, s^2/fan_in)``   ``W ~ N(0, s^2/fan_in)``
``output``    ``W ~ N(0, s^2/fan_in)``   ``W ~ N(0, s^2)``, forward
                                         multiplier ``1/fan_in``
``vector``    zeros (biases)             zeros (biases)
============  =========================  ===========================

With the ``1/fan_in`` output multiplier an Adam-like update of O(1) per entry
changes the logits by O(1) at any width, so the muLO rules only have to scale
*hidden* updates by ``1/fan_in``; they read the class and fan-in of every
tensor from ``task.param_meta``. Embeddings (one-hot inputs) are ``input``
tensors initialised ``N(0, s^2)`` in both parametrisations, and muP attention
uses ``1/d_head`` logit scaling instead of ``1/sqrt(d_head)``.
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp

from lopt.base import ParamMeta

Array = jax.Array
PARAMETRIZATIONS = ("standard", "mup")


def check_parametrization(p: str) -> str:
  if p not in PARAMETRIZATIONS:
    raise ValueError(f"Unknown parametrization {p!r}; expected one of "
                     f"{PARAMETRIZATIONS}.")
  return p


def init_std(meta: ParamMeta, scale: Union[float, Array],
             parametrization: str) -> Union[float, Array]:
  """Standard deviation of the initial weights of a dense layer of class
  ``meta.kind`` (see the module table): ``scale`` for a muP output layer,
  ``scale / sqrt(fan_in)`` otherwise."""
  if parametrization == "mup" and meta.kind == "output":
    return scale
  return scale / jnp.sqrt(jnp.float32(meta.fan_in))


def output_multiplier(fan_in: int, parametrization: str) -> float:
  """Forward multiplier of the readout layer: ``1/fan_in`` under muP, 1
  otherwise."""
  return 1.0 / fan_in if parametrization == "mup" else 1.0


def attention_scale(head_dim: int, parametrization: str) -> float:
  """Attention-logit scale: ``1/d_head`` under muP, ``1/sqrt(d_head)``
  otherwise."""
  if parametrization == "mup":
    return 1.0 / head_dim
  return 1.0 / float(head_dim) ** 0.5


def dense_metas(sizes: tuple[int, ...]) -> list[ParamMeta]:
  """``ParamMeta`` of the kernels of a chain of dense layers
  ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``: the first is ``input``, the
  last ``output``, the rest ``hidden`` (a single layer is ``input``: neither
  of its dimensions grows with width)."""
  n = len(sizes) - 1
  metas = []
  for i in range(n):
    kind = ("input" if i == 0 else "output" if i == n - 1 else "hidden")
    metas.append(ParamMeta(kind, sizes[i], sizes[i + 1]))
  return metas


def mup_mlp_family(width: int, depth: int = 2, dataset: str = "digits",
                   batch_size: int = 32, name: str | None = None):
  """muP MLP classifier family: ``depth`` hidden layers of ``width`` units.

  Sampled per task: init scale (log-uniform in [0.5, 2]) and activation.
  """
  from lopt.tasks.mlp import MLPClassifierFamily

  return MLPClassifierFamily(
      dataset, (width,) * depth, batch_size, parametrization="mup",
      name=name or f"mup_mlp_w{width}")


def mup_transformer_family(width: int, num_layers: int = 2,
                           head_dim: int = 16, seq_len: int = 32,
                           batch_size: int = 16, name: str | None = None):
  """muP character-level transformer LM family with ``d_model = width`` and
  ``width // head_dim`` heads (head dimension fixed as width grows)."""
  from lopt.tasks.lm import CharLMFamily

  if width % head_dim:
    raise ValueError(f"width {width} must be a multiple of head_dim "
                     f"{head_dim}.")
  return CharLMFamily(d_model=width, num_layers=num_layers,
                      num_heads=width // head_dim, seq_len=seq_len,
                      batch_size=batch_size, parametrization="mup",
                      name=name or f"mup_transformer_w{width}")
