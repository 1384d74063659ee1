"""Periodic checkpoints of the whole meta-training state with orbax.

The saved pytree is the trainer's :class:`~lopt.meta_train.trainer.TrainState`
(theta, outer-optimizer state, the estimator's worker state with every inner
problem, counters, best theta); restoring it into the same structure resumes
bit-identically (the outer step is a pure function of this state).
Saves are synchronous (the trainer donates its buffers to the next step).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class Checkpointer:
  """Keeps the last ``keep`` checkpoints of a state pytree under
  ``directory`` (one sub-directory per outer step)."""

  def __init__(self, directory: str | os.PathLike, keep: int = 3):
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(keep), create=True,
        enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: PyTree, force: bool = False) -> None:
    state = jax.tree.map(np.asarray, jax.device_get(state))
    self._manager.save(int(step), args=ocp.args.StandardSave(state),
                       force=force)
    self._manager.wait_until_finished()

  def restore(self, like: PyTree, step: Optional[int] = None) -> PyTree:
    """Restores ``step`` (default: latest) into the structure, shapes and
    dtypes of ``like``."""
    step = self.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        jax.device_get(like))
    restored = self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract))
    leaves = jax.tree.leaves(restored)
    likes = jax.tree.leaves(abstract)
    if len(leaves) != len(likes):
      raise ValueError(f"Checkpoint {step} in {self.directory} has "
                       f"{len(leaves)} arrays, expected {len(likes)}.")
    out = []
    for x, spec in zip(leaves, likes):
      x = np.asarray(x)
      if x.size != int(np.prod(spec.shape)):
        raise ValueError(f"Checkpoint {step} in {self.directory}: array of "
                         f"shape {x.shape} where {spec.shape} is expected.")
      # orbax may hand scalars back as shape (1,): restore the exact shape.
      out.append(jax.numpy.asarray(x.reshape(spec.shape).astype(spec.dtype)))
    return jax.tree.unflatten(jax.tree.structure(like), out)

  def close(self) -> None:
    self._manager.close()
