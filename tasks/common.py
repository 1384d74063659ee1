"""Shared pieces of the task implementations: activations, losses, batch
sampling and config checks, and :class:`ScaleActivationFamily`, the base of
the families that vary only init scale and activation.

The functions are pure functions of arrays, usable under ``jax.jit`` and
``jax.vmap``.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.tasks.base import Task, TaskFamily

PyTree = Any
Array = jax.Array
Scalar = Union[float, int, Array]

#: Activation functions a task config may select by index
#: (``config["activation"]``); index ``i`` is ``ACTIVATION_FNS[i]``.
ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "gelu", "silu")
ACTIVATION_FNS: tuple[Callable[[Array], Array], ...] = (
    jax.nn.relu, jnp.tanh, jax.nn.gelu, jax.nn.silu)


def is_concrete(x: Any) -> bool:
  """True when ``x`` is a Python / NumPy number or a non-traced jax array."""
  return not isinstance(x, jax.core.Tracer)


def activation_index(activation: Union[str, Scalar]) -> Union[int, Array]:
  """Maps an activation name or index to an index into :data:`ACTIVATIONS`.

  Traced indices are returned unchanged (they select a branch with
  ``lax.switch`` at run time).
  """
  if isinstance(activation, str):
    if activation not in ACTIVATIONS:
      raise ValueError(f"Unknown activation {activation!r}; expected one of "
                       f"{ACTIVATIONS} (or an index into that tuple).")
    return ACTIVATIONS.index(activation)
  if is_concrete(activation):
    i = int(np.asarray(activation))
    if not 0 <= i < len(ACTIVATIONS):
      raise ValueError(f"Activation index {i} out of range; expected 0..."
                       f"{len(ACTIVATIONS) - 1} for {ACTIVATIONS}.")
    return i
  return activation


def apply_activation(x: Array, index: Union[int, Array]) -> Array:
  """``ACTIVATION_FNS[index](x)``; a traced index uses ``lax.switch`` (under
  ``vmap`` this evaluates every branch and selects, which is cheap for the
  elementwise functions here)."""
  if is_concrete(index):
    return ACTIVATION_FNS[int(np.asarray(index))](x)
  index = jnp.clip(jnp.asarray(index, jnp.int32), 0, len(ACTIVATION_FNS) - 1)
  return jax.lax.switch(index, ACTIVATION_FNS, x)


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean over the batch of ``-log softmax(logits)[label]``."""
  return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: Array, labels: Array) -> Array:
  """Fraction of rows whose arg-max logit equals the label."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def sample_rows(key: Array, arrays: Mapping[str, Array],
                batch_size: int) -> dict:
  """Draws ``batch_size`` row indices uniformly (with replacement) with
  ``jax.random.randint`` and gathers those rows of every array."""
  n = next(iter(arrays.values())).shape[0]
  idx = jax.random.randint(key, (batch_size,), 0, n)
  return {k: jnp.take(v, idx, axis=0) for k, v in arrays.items()}


def noisy_labels(key: Array, labels: Array, num_classes: int,
                 rate: Scalar) -> Array:
  """With probability ``rate`` each label is replaced by a uniformly random
  class (fresh noise per batch). A concrete ``rate`` of 0 is a no-op."""
  if is_concrete(rate) and float(np.asarray(rate)) == 0.0:
    return labels
  k_flip, k_new = jax.random.split(key)
  flip = jax.random.uniform(k_flip, labels.shape) < rate
  new = jax.random.randint(k_new, labels.shape, 0, num_classes)
  return jnp.where(flip, new, labels).astype(labels.dtype)


def normals(key: Array, shapes: Sequence[Sequence[int]]) -> list[Array]:
  """Independent float32 ``N(0, 1)`` arrays of the given shapes, cut from a
  single ``jax.random.normal`` draw (one random call site per init keeps XLA
  compile time low; every entry is still an independent standard normal)."""
  sizes = [int(np.prod(s)) for s in shapes]
  z = jax.random.normal(key, (sum(sizes),), jnp.float32)
  out, offset = [], 0
  for shape, size in zip(shapes, sizes):
    out.append(z[offset:offset + size].reshape(tuple(shape)))
    offset += size
  return out


def log_uniform(key: Array, low: float, high: float) -> Array:
  """A float32 scalar with ``log(x) ~ U(log low, log high)``."""
  return jnp.exp(jax.random.uniform(
      key, (), jnp.float32, np.log(low), np.log(high)))


def sample_scale_activation(key: Array, activations: Sequence[int],
                            init_scale_range: Sequence[float]) -> dict:
  """Config of the families that vary init scale (log-uniform in
  ``init_scale_range``) and activation (uniform over ``activations``)."""
  k1, k2 = jax.random.split(key)
  acts = jnp.asarray(activations, jnp.int32)
  return {"init_scale": log_uniform(k1, *init_scale_range),
          "activation": acts[jax.random.randint(k2, (), 0, len(acts))]}


def default_scale_activation(activations: Sequence[int]) -> dict:
  """The representative config: init scale 1 and the first activation."""
  return {"init_scale": jnp.float32(1.0),
          "activation": jnp.int32(activations[0])}


def check_config(config: Any, keys: Iterable[str], family: str) -> None:
  """Raises a clear error when ``config`` is not a mapping with ``keys``."""
  keys = tuple(keys)
  if not isinstance(config, Mapping) or set(config.keys()) != set(keys):
    got = sorted(config.keys()) if isinstance(config, Mapping) else type(config)
    raise ValueError(
        f"Bad config for family {family!r}: expected a dict with keys "
        f"{sorted(keys)}, got {got}. Use family.sample(key) or "
        f"family.default_config() to build one.")
  for k in keys:
    if jnp.ndim(config[k]) != 0:
      raise ValueError(
          f"Bad config for family {family!r}: entry {k!r} must be a scalar "
          f"(per task), got shape {jnp.shape(config[k])}. To build a batch of "
          f"tasks, call family.task inside jax.vmap over configs.")


class ScaleActivationFamily(TaskFamily):
  """A family whose tasks differ only in ``init_scale`` (log-uniform in
  ``self.init_scale_range``) and ``activation`` (uniform over
  ``self.activations``, activation indices).

  Subclasses set those two attributes and ``name``, and build one task in
  :meth:`make_task`; ``sample``, ``default_config`` and ``task`` (with its
  config check) are shared.
  """

  _KEYS = ("init_scale", "activation")
  activations: tuple
  init_scale_range: tuple

  def sample(self, key: Array) -> dict:
    return sample_scale_activation(key, self.activations,
                                   self.init_scale_range)

  def default_config(self) -> dict:
    return default_scale_activation(self.activations)

  def task(self, config: Any) -> Task:
    check_config(config, self._KEYS, self.name)
    return self.make_task(activation=config["activation"],
                          init_scale=config["init_scale"])

  @abc.abstractmethod
  def make_task(self, activation: Any, init_scale: Any) -> Task:
    """The task with this activation index and init scale (scalars, or
    tracers under ``vmap``)."""


def check_batch(batch: Any, expected: Mapping[str, Sequence[int]],
                task: str) -> None:
  """Checks that ``batch[k].shape[1:] == expected[k]`` for every key.

  Shapes are static under ``jit``, so this costs nothing at run time.
  """
  if not isinstance(batch, Mapping) or not set(expected) <= set(batch):
    got = sorted(batch) if isinstance(batch, Mapping) else type(batch)
    raise ValueError(f"Task {task!r} expects a batch dict with keys "
                     f"{sorted(expected)}, got {got}; use task.sample_batch.")
  for k, trailing in expected.items():
    shape = tuple(jnp.shape(batch[k]))
    if len(shape) != len(trailing) + 1 or shape[1:] != tuple(trailing):
      raise ValueError(
          f"Task {task!r}: batch[{k!r}] has shape {shape}, expected "
          f"(batch, {', '.join(map(str, trailing))}). Wrong dataset or "
          f"task for this batch?")


def f32(x: Scalar) -> Array:
  """``x`` as a float32 array."""
  return jnp.asarray(x, jnp.float32)
