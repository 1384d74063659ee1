"""The task interface: problems to optimize, and distributions over them.

A :class:`Task` is a bundle of pure, jittable functions::

    params = task.init(key)
    batch = task.sample_batch(key, "train")     # or "valid" / "test"
    loss = task.loss(params, batch, key)        # scalar float32
    task.param_meta                             # pytree of lopt.ParamMeta
    task.normalize_loss(loss)                   # meta-loss normaliser

``sample_batch`` indexes device-resident arrays with a key (no Python
iterator), so a whole inner training run can live inside ``lax.scan``.

A :class:`TaskFamily` is a distribution over tasks of one *shape class*:
``family.sample(key)`` returns a config that is a pytree of numbers (so it can
be ``vmap``-ed) and ``family.task(config)`` builds the task; all tasks of one
family instance share parameter shapes, so a batch of them trains under
``vmap`` over configs.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Optional

import jax

PyTree = Any
Array = jax.Array

SPLITS = ("train", "valid", "test")


class Task(abc.ABC):
  """One optimization problem.

  Subclasses implement ``init``, ``loss``, ``sample_batch`` and
  ``param_meta``. ``normalize_loss`` maps the loss to a comparable scale
  across tasks (default: divide by ``loss_scale``, e.g. ``log(num_classes)``
  for classifiers so chance level is ~1).
  """

  name: str = "task"
  #: Typical loss at initialisation / chance level used by normalize_loss
  #: (``log(num_classes)`` for classifiers). A Python float, or a scalar
  #: array when it depends on a (possibly traced) family config.
  loss_scale: float = 1.0

  @abc.abstractmethod
  def init(self, key: Array) -> PyTree:
    """Returns initial parameters."""

  @abc.abstractmethod
  def loss(self, params: PyTree, batch: PyTree, key: Array) -> Array:
    """Returns a scalar float32 loss on ``batch``."""

  @abc.abstractmethod
  def sample_batch(self, key: Array, split: str = "train") -> PyTree:
    """Returns a batch from ``split``; pure and jittable in ``key``."""

  @property
  @abc.abstractmethod
  def param_meta(self) -> PyTree:
    """Pytree with the structure of ``params`` whose leaves are
    :class:`lopt.ParamMeta` (muP class, fan-in, fan-out)."""

  def normalize_loss(self, loss: Array) -> Array:
    """Meta-loss normaliser: losses of different tasks on one scale."""
    return loss / self.loss_scale

  def data_fingerprint(self) -> Optional[str]:
    """Content hash of the data the task reads (None: the task has no
    data beyond its own definition, e.g. a generated quadratic). Caches of
    results on this task (``lopt.eval``'s baseline cache) key on it, so a
    task whose data changed -- the stdlib text of another Python version, a
    new release of a bundled dataset -- is not served stale results."""
    return None

  def metrics(self, params: PyTree, batch: PyTree,
              key: Array) -> Mapping[str, Array]:
    """Evaluation metrics on a batch (``loss`` always; ``accuracy`` for
    classifiers)."""
    return {"loss": self.loss(params, batch, key)}


class TaskFamily(abc.ABC):
  """A distribution over tasks of one shape class."""

  name: str = "family"

  @abc.abstractmethod
  def sample(self, key: Array) -> PyTree:
    """Returns a config: a pytree of scalar arrays (vmappable)."""

  @abc.abstractmethod
  def task(self, config: PyTree) -> Task:
    """Builds the task for ``config`` (config entries may be tracers)."""

  def default_config(self) -> PyTree:
    """A representative config (used by benchmarks and tests)."""
    return self.sample(jax.random.PRNGKey(0))


def check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  return split
