"""On-disk cache of baseline runs (written atomically, :mod:`lopt.files`).

A cache entry is one ``.npz`` file holding the arrays of a
:class:`~lopt.eval.runner.RunResult` plus a JSON ``meta`` string. Its name is
a SHA-256 over everything that determines the numbers: a cache format
version, the task's fingerprint (name, class, parameter and batch shapes,
and the content hash of its data, ``Task.data_fingerprint()``: the stdlib text
of the LM tasks differs between Python versions), the optimizer's canonical
spec, the learning-rate grid, steps, seeds and the evaluation schedule, and
the stack that computes them
(:func:`compute_environment`: jax and jaxlib versions, backend, ``XLA_FLAGS``,
lopt's version). Change any of them and the key changes; to force
recomputation, delete the directory or pass ``cache_dir=None``.

Why the stack: the same program compiled by another XLA, or with other flags
(e.g. 512-bit instead of 256-bit vectors), rounds differently from the first
step on, and on chaotic runs (Adam at a learning rate near the edge of
stability) those last-bit differences grow to different final losses --
measured: a cached ``wine_mlp`` sweep made by an earlier build differed from a
fresh one by 1e-7 at step 1 and by 0.96 in loss later at lr 0.1. A cache hit
must give the numbers a fresh run would give.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

from lopt import files
from lopt.eval.runner import RunResult

CACHE_VERSION = 2   # 2: keys hold the data's content hash and the stack


def default_cache_dir() -> str:
  """``$LOPT_CACHE_DIR`` or ``~/.cache/lopt/eval``."""
  return os.environ.get(
      "LOPT_CACHE_DIR",
      os.path.join(os.path.expanduser("~"), ".cache", "lopt", "eval"))


def task_fingerprint(task) -> Dict[str, Any]:
  """Name, class and shapes of the task's parameters and training batch
  (computed with ``jax.eval_shape``: no compilation), and the content hash
  of its data (``task.data_fingerprint()``, None for tasks without data or
  without the method)."""
  key = jax.random.PRNGKey(0)

  def shapes(tree):
    return [[list(x.shape), str(x.dtype)] for x in jax.tree.leaves(tree)]

  try:
    batch = shapes(jax.eval_shape(lambda k: task.sample_batch(k, "train"),
                                  key))
  except Exception:  # pylint: disable=broad-except
    batch = None
  return {
      "name": getattr(task, "name", type(task).__name__),
      "class": f"{type(task).__module__}.{type(task).__qualname__}",
      "params": shapes(jax.eval_shape(task.init, key)),
      "batch": batch,
      "data": data_fingerprint(task),
  }


def data_fingerprint(task) -> Optional[str]:
  """``task.data_fingerprint()``, or None for a task object without it."""
  fp = getattr(task, "data_fingerprint", None)
  return fp() if callable(fp) else None


def compute_environment() -> Dict[str, str]:
  """What besides the inputs decides a run's numbers: jax and jaxlib
  versions, the default backend, ``XLA_FLAGS`` and lopt's version."""
  import jaxlib
  from lopt import __version__ as lopt_version
  return {"jax": jax.__version__,
          "jaxlib": getattr(jaxlib, "__version__", "?"),
          "backend": jax.default_backend(),
          "xla_flags": os.environ.get("XLA_FLAGS", "").strip(),
          "lopt": lopt_version}


def entry_meta(task_fp: Mapping[str, Any],
               fields: Mapping[str, Any]) -> Dict[str, Any]:
  """What an entry is keyed on and stores as its ``meta``: the task's
  fingerprint, :func:`compute_environment` and ``fields``."""
  return {"task": task_fp, "environment": compute_environment(), **fields}


def make_key(meta: Mapping[str, Any]) -> str:
  """Hex SHA-256 of the canonical JSON of ``meta`` (:func:`entry_meta`) and
  the cache version."""
  blob = json.dumps({"cache_version": CACHE_VERSION, **meta},
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()


def _safe(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def entry_path(cache_dir: str, task_name: str, label: str, key: str) -> str:
  return os.path.join(cache_dir, _safe(task_name),
                      f"{_safe(label)}-{key[:20]}.npz")


def save(path: str, result: RunResult, meta: Mapping[str, Any]) -> None:
  """Writes ``result`` and ``meta`` to ``path`` atomically."""
  arrays = {"train_loss": result.train_loss, "eval_steps": result.eval_steps}
  arrays.update({f"valid/{k}": v for k, v in result.valid.items()})
  arrays.update({f"test/{k}": v for k, v in result.test.items()})
  info = dict(meta)
  info.update(wall_s=result.wall_s, compile_s=result.compile_s,
              num_runs=result.num_runs)
  arrays["meta"] = np.asarray(json.dumps(info, sort_keys=True, default=str))
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  files.write_bytes(path, buf.getvalue())


def load(path: str) -> Optional[tuple]:
  """Returns ``(RunResult, meta)`` or ``None`` if missing / unreadable."""
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      valid = {k[6:]: z[k] for k in z.files if k.startswith("valid/")}
      test = {k[5:]: z[k] for k in z.files if k.startswith("test/")}
      res = RunResult(train_loss=z["train_loss"], eval_steps=z["eval_steps"],
                      valid=valid, test=test, wall_s=float(meta["wall_s"]),
                      compile_s=float(meta["compile_s"]),
                      num_runs=int(meta["num_runs"]))
    return res, meta
  except (OSError, ValueError, KeyError):
    return None  # corrupt entry: recompute (and overwrite)
