"""Baseline tuning: a log-spaced learning-rate sweep per task, cached on disk.

For baseline ``B`` (e.g. Adam) on task ``k`` with grid ``lr_1 < ... < lr_L``
every (learning rate, seed) pair is trained in one jitted program
(:func:`lopt.eval.runner.run_sweep`). The score of ``lr_i`` is the final
smoothed training loss of its seed-mean curve (:func:`lopt.eval.metrics.
final_loss`); a run with any non-finite loss scores ``+inf`` (worst). The
tuned baseline is ``argmin_i score_i`` (ties: the smaller rate). A best rate
on the edge of the grid is flagged (``at_edge``): widen the grid.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from lopt.eval import cache as cache_lib
from lopt.eval import metrics as metrics_lib
from lopt.eval import runner
from lopt.eval import specs as specs_lib


@dataclasses.dataclass
class TuneResult:
  """Outcome of a learning-rate sweep.

  Attributes:
    baseline: baseline name (``"adam"``).
    hparams: the other (fixed) hyper-parameters.
    lrs: the grid.
    scores: final smoothed loss per learning rate (``inf`` = diverged).
    best_index: index of the best rate.
    sweep: all curves, ``train_loss`` of shape ``[L, S, T]``.
    from_cache: whether the sweep was read from the cache.
    cache_path: the cache entry (``None`` without a cache).
  """

  baseline: str
  hparams: Dict[str, float]
  lrs: Tuple[float, ...]
  scores: Tuple[float, ...]
  best_index: int
  sweep: runner.RunResult
  from_cache: bool = False
  cache_path: Optional[str] = None

  @property
  def best_lr(self) -> float:
    return self.lrs[self.best_index]

  @property
  def best(self) -> runner.RunResult:
    """The tuned baseline's runs (``[S, T]`` curves)."""
    return self.sweep.select(self.best_index)

  @property
  def at_edge(self) -> bool:
    return len(self.lrs) > 1 and self.best_index in (0, len(self.lrs) - 1)

  @property
  def label(self) -> str:
    return f"{self.baseline} (tuned)"

  @property
  def spec(self) -> specs_lib.OptimizerSpec:
    return specs_lib.parse_optimizer(self.baseline).with_hparams(
        **self.hparams, lr=self.best_lr)


def select_best(sweep_train_loss: np.ndarray, window: Optional[int] = None
                ) -> Tuple[Tuple[float, ...], int]:
  """Scores ``[L, S, T]`` curves; returns ``(scores, argmin)``."""
  scores = tuple(metrics_lib.final_loss(c, window) for c in sweep_train_loss)
  clean = [s if math.isfinite(s) else math.inf for s in scores]
  return scores, int(np.argmin(clean))


@dataclasses.dataclass
class Job:
  """A unit of work whose result may be cached: look it up, or compile
  (``lower().compile()``) and execute it, then ``store`` it.

  Attributes:
    task: the task.
    label: short name used in the cache file name.
    fields: everything that determines the numbers (hashed into the key).
    lower: traces and lowers the program (:class:`lopt.eval.runner.Staged`).
    cache_dir: cache directory or ``None``.
  """

  task: Any
  label: str
  fields: Dict[str, Any]
  lower: Callable[[], runner.Staged]
  cache_dir: Optional[str] = None
  path: Optional[str] = None
  _meta: Optional[Dict[str, Any]] = None

  def __post_init__(self):
    if self.cache_dir is not None:
      # Computed once: the key hashes exactly the meta the entry stores.
      fp = cache_lib.task_fingerprint(self.task)
      self._meta = cache_lib.entry_meta(fp, self.fields)
      self.path = cache_lib.entry_path(self.cache_dir, fp["name"],
                                       self.label,
                                       cache_lib.make_key(self._meta))

  def lookup(self) -> Optional[runner.RunResult]:
    if self.path is None:
      return None
    hit = cache_lib.load(self.path)
    return None if hit is None else hit[0]

  def store(self, result: runner.RunResult) -> None:
    if self.path is not None:
      cache_lib.save(self.path, result, self._meta)

  def result(self) -> Tuple[runner.RunResult, bool]:
    """``(result, from_cache)``: the cached result, or compute and store."""
    hit = self.lookup()
    if hit is not None:
      return hit, True
    res = self.lower().compile().execute()
    self.store(res)
    return res, False


def sweep_job(task, baseline: str = "adam", num_steps: int = 1000,
              seeds: Sequence[int] = (0, 1, 2),
              lrs: Optional[Sequence[float]] = None,
              hparams: Optional[Mapping[str, float]] = None,
              eval_every: Optional[int] = None,
              cache_dir: Optional[str] = None,
              num_valid_batches: int = 2, num_test_batches: int = 0) -> Job:
  """The (cacheable) learning-rate sweep of :func:`tune`."""
  spec = specs_lib.parse_optimizer(baseline)
  if spec.kind != "baseline":
    raise ValueError(
        f"Can only tune baselines ({', '.join(specs_lib.BASELINES)}), got "
        f"{baseline!r}.")
  hp = {k: float(v) for k, v in spec.hp.items() if k != "lr"}
  hp.update({k: float(v) for k, v in (hparams or {}).items() if k != "lr"})
  lrs = tuple(float(x) for x in (lrs if lrs is not None
                                 else specs_lib.lr_grid(spec.name)))
  if not lrs or min(lrs) <= 0:
    raise ValueError(f"Learning rates must be positive, got {lrs}.")
  eval_every = eval_every or runner.default_eval_every(num_steps)
  seeds = tuple(int(s) for s in seeds)
  fields = {"kind": "sweep", "baseline": spec.name, "hparams": hp,
            "lrs": lrs, "num_steps": int(num_steps), "seeds": seeds,
            "eval_every": int(eval_every),
            "num_valid_batches": num_valid_batches,
            "num_test_batches": num_test_batches}
  return Job(task, f"sweep-{spec.name}", fields,
             lambda: runner.lower_sweep(
                 task, spec.name, lrs, num_steps, seeds, hp, eval_every,
                 num_valid_batches, num_test_batches), cache_dir)


def finish_tune(job: Job, sweep: runner.RunResult, from_cache: bool,
                window: Optional[int] = None) -> TuneResult:
  """Scores a sweep's curves and picks the best learning rate."""
  scores, best = select_best(sweep.train_loss, window)
  f = job.fields
  return TuneResult(f["baseline"], dict(f["hparams"]), tuple(f["lrs"]),
                    scores, best, sweep, from_cache, job.path)


def tune(task, baseline: str = "adam", num_steps: int = 1000,
         seeds: Sequence[int] = (0, 1, 2),
         lrs: Optional[Sequence[float]] = None,
         hparams: Optional[Mapping[str, float]] = None,
         eval_every: Optional[int] = None,
         cache_dir: Optional[str] = None,
         window: Optional[int] = None,
         num_valid_batches: int = 2, num_test_batches: int = 0) -> TuneResult:
  """Sweeps the learning rate of ``baseline`` on ``task``.

  Args:
    task: the task.
    baseline: one of :data:`lopt.eval.specs.BASELINES`, or a spec string
      such as ``"adamw:wd=1e-2"`` whose non-``lr`` values are kept fixed.
    num_steps: training steps per run.
    seeds: seeds; every (learning rate, seed) pair is one vmapped run.
    lrs: the grid (default: :func:`lopt.eval.specs.lr_grid`, 7 points).
    cache_dir: cache directory, or ``None`` for no cache.
    window: smoothing window for scoring (default 5 % of ``num_steps``).

  Returns:
    A :class:`TuneResult`.
  """
  job = sweep_job(task, baseline, num_steps, seeds, lrs, hparams, eval_every,
                  cache_dir, num_valid_batches, num_test_batches)
  sweep, hit = job.result()
  return finish_tune(job, sweep, hit, window)


def baseline_job(task, spec: specs_lib.OptimizerSpec, num_steps: int,
                 seeds: Sequence[int], eval_every: Optional[int] = None,
                 cache_dir: Optional[str] = None, num_valid_batches: int = 2,
                 num_test_batches: int = 0) -> Job:
  """A fixed-hyper-parameter baseline run (cached like sweeps)."""
  eval_every = eval_every or runner.default_eval_every(num_steps)
  seeds = tuple(int(s) for s in seeds)
  fields = {"kind": "run", "spec": spec.canonical, "num_steps": int(num_steps),
            "seeds": seeds, "eval_every": int(eval_every),
            "num_valid_batches": num_valid_batches,
            "num_test_batches": num_test_batches}
  return Job(task, spec.name, fields,
             lambda: runner.lower_run(task, spec, num_steps, seeds,
                                        eval_every, num_valid_batches,
                                        num_test_batches), cache_dir)


def run_baseline(task, spec: specs_lib.OptimizerSpec, num_steps: int,
                 seeds: Sequence[int], eval_every: Optional[int] = None,
                 cache_dir: Optional[str] = None,
                 num_valid_batches: int = 2, num_test_batches: int = 0
                 ) -> Tuple[runner.RunResult, bool]:
  """Runs a fixed-hyper-parameter baseline; ``(result, from_cache)``."""
  return baseline_job(task, spec, num_steps, seeds, eval_every, cache_dir,
                      num_valid_batches, num_test_batches).result()
