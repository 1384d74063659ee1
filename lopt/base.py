"""The learned-optimizer interface: a pair of pure functions over pytrees.

A learned optimizer (a *rule*) has meta-parameters ``theta`` (a small pytree,
the thing meta-training learns) and three pure functions::

    theta = rule.init_meta_params(key)
    state = rule.init(theta, params, num_steps, param_meta=None)
    updates, state = rule.update(theta, grads, state, params, loss)

``updates`` follow optax's sign convention: new params are
``optax.apply_updates(params, updates)`` (i.e. ``params + updates``).

Every rule works on any pytree of arrays (scalars, vectors, matrices, conv
kernels, nested dicts, size-0 leaves), under ``jax.jit`` and under ``jax.vmap``
over a leading particle axis of ``theta`` (the meta-training hot path), with
float32 or bfloat16 parameters. Optimizer accumulators are kept in float32
whatever the parameter dtype; updates are returned in each parameter's dtype.

``param_meta`` is an optional pytree with the structure of ``params`` whose
leaves are :class:`ParamMeta`; the muP rules (muLO, Therien et al. 2024) read
the per-tensor class and fan-in from it. Tasks in ``lopt.tasks`` expose it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, Protocol, Tuple, runtime_checkable

import jax
import jax.numpy as jnp

PyTree = Any
Array = jax.Array

ParamKind = Literal["input", "hidden", "output", "vector"]
_KINDS = ("input", "hidden", "output", "vector")


@dataclasses.dataclass(frozen=True)
class ParamMeta:
  """Static per-tensor metadata used by muP rules (a pytree *leaf*).

  Attributes:
    kind: the muP class of the tensor. ``"input"``: fan-in fixed, fan-out
      grows with width (first layer, embeddings); ``"hidden"``: both grow;
      ``"output"``: fan-in grows, fan-out fixed (readout); ``"vector"``: biases,
      gains, scalars (treated like input weights by muP).
    fan_in: number of inputs feeding one output unit (1 for vectors).
    fan_out: number of output units.
  """

  kind: ParamKind = "vector"
  fan_in: int = 1
  fan_out: int = 1

  def __post_init__(self):
    if self.kind not in _KINDS:
      raise ValueError(
          f"ParamMeta.kind must be one of {_KINDS}, got {self.kind!r}.")
    if int(self.fan_in) < 1 or int(self.fan_out) < 1:
      raise ValueError(
          f"ParamMeta fan_in/fan_out must be >= 1, got fan_in={self.fan_in}, "
          f"fan_out={self.fan_out}.")


def default_param_meta(params: PyTree) -> PyTree:
  """Standard-parametrisation guess of :class:`ParamMeta` for every leaf.

  Leaves with ``ndim >= 2`` are treated as hidden weights with
  ``fan_in = prod(shape[:-1])`` and ``fan_out = shape[-1]`` (the layout of
  flax ``Dense`` / ``Conv`` kernels); everything else is a ``"vector"``.
  muP rules do *not* use this guess silently: without explicit metadata they
  behave as standard parametrisation (see their docs).
  """

  def leaf(p):
    shape = jnp.shape(p)
    if len(shape) >= 2:
      fan_in = 1
      for d in shape[:-1]:
        fan_in *= int(d)
      return ParamMeta("hidden", max(fan_in, 1), max(int(shape[-1]), 1))
    return ParamMeta("vector", 1, max(int(shape[0]) if shape else 1, 1))

  return jax.tree.map(leaf, params)


@runtime_checkable
class LearnedOptimizer(Protocol):
  """Protocol every rule in :mod:`lopt.rules` implements.

  Attributes:
    name: registry name of the rule (stored in learned-optimizer files).
    uses_loss: whether ``update`` reads the ``loss`` argument.
  """

  name: str
  uses_loss: bool

  def config(self) -> dict:
    """JSON-serialisable constructor kwargs; ``type(rule)(**rule.config())``
    rebuilds an identical rule."""

  def init_meta_params(self, key: Array) -> PyTree:
    """Returns the default meta-parameters theta."""

  def init(self, theta: PyTree, params: PyTree, num_steps: int | Array,
           param_meta: Optional[PyTree] = None) -> PyTree:
    """Returns the optimizer state for ``params`` and a horizon of
    ``num_steps`` inner steps."""

  def update(self, theta: PyTree, grads: PyTree, state: PyTree,
             params: PyTree, loss: Optional[Array] = None
             ) -> Tuple[PyTree, PyTree]:
    """Returns ``(updates, new_state)``; ``params + updates`` are the new
    parameters."""


def tree_size(tree: PyTree) -> int:
  """Total number of array elements in a pytree."""
  return int(sum(jnp.size(x) for x in jax.tree.leaves(tree)))
