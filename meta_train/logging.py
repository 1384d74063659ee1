"""Metric logging: TensorBoard event files (tensorboardX, no TensorFlow
needed) and a JSON-lines copy that is easy to read back."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

#: Scalar tags written by the trainer (``<group>/<name>``).
TAGS = (
    "meta/loss", "meta/loss_ema", "meta/grad_norm", "meta/learning_rate",
    "meta/skipped_updates", "inner/loss", "inner/steps_per_s",
    "inner/resets", "inner/nonfinite",
)


class MetricsLogger:
  """Writes scalars to ``<logdir>/events.*`` and ``<logdir>/metrics.jsonl``.

  ``log(step, {"meta/loss": 0.3, ...})``; non-finite values are written as
  they are to TensorBoard and as strings ("nan", "inf") to the JSON file.
  The JSON file is line-buffered: every row is on disk when ``log`` returns
  (a long run can be followed with ``tail -f``, and a killed run keeps every
  row up to its last log); the event file is flushed every 10 s.
  """

  def __init__(self, logdir: str | os.PathLike, enabled: bool = True):
    self.logdir = os.fspath(logdir)
    self.enabled = enabled
    self._writer = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter
      os.makedirs(self.logdir, exist_ok=True)
      self._writer = SummaryWriter(self.logdir, flush_secs=10)
      self._jsonl = open(os.path.join(self.logdir, "metrics.jsonl"), "a",
                         buffering=1)

  def log(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for tag, value in scalars.items():
      value = float(value)
      self._writer.add_scalar(tag, value, int(step))
      row[tag] = value if math.isfinite(value) else str(value)
    self._jsonl.write(json.dumps(row) + "\n")

  def flush(self) -> None:
    if self.enabled:
      self._writer.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._writer.close()
      self._jsonl.close()
      self.enabled = False


def read_scalars(logdir: str | os.PathLike) -> dict:
  """Reads back ``{tag: [(step, value), ...]}`` with tensorboard's
  ``EventAccumulator`` (used by tests and notebooks)."""
  from tensorboard.backend.event_processing.event_accumulator import (
      EventAccumulator)
  acc = EventAccumulator(os.fspath(logdir), size_guidance={"scalars": 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()["scalars"]}
