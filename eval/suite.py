"""Held-out evaluation: optimizers x tasks x seeds against tuned baselines.

:func:`evaluate` validates all input first (specs, files, task names: one
``ValueError`` before any compute), then per task

1. tunes each baseline in ``baseline_sweep`` (learning-rate sweep, cached),
2. runs every optimizer from every seed (baseline specs are cached too),
3. computes final smoothed losses and the speedup of every optimizer over
   every tuned baseline (:mod:`lopt.eval.metrics`),

Tuned baselines are swept for ``baseline_steps`` (default ``num_steps``): a
speedup above 1 needs a baseline that runs longer than the optimizer (with
equal step counts it is capped at 1 and reported as the lower bound
``>= 1.00x``), so pass e.g. ``2 * num_steps`` to measure it. The tuned learning
rate, its curves and its final loss are taken at ``num_steps`` (the first
``num_steps`` steps of each run: the baselines use constant learning rates, so
this is the run of that budget), and the speedup counts the fewest steps any
rate of the sweep needs to reach the optimizer's final loss
(:func:`lopt.eval.metrics.speedup_over_sweep`).

and returns a JSON-ready *record* (plain dicts / lists / floats), the input
of :mod:`lopt.eval.report`.
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import platform
import queue
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import jax
import numpy as np

from lopt.eval import cache as cache_lib
from lopt.eval import metrics as metrics_lib
from lopt.eval import runner
from lopt.eval import specs as specs_lib
from lopt.eval import tuning

RECORD_FORMAT = "lopt.eval/1"
#: Seed-bootstrap interval of the summary's median / IQM speedups
#: (:func:`lopt.eval.metrics.seed_bootstrap`).
BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_LEVEL = 0.9

#: Progress callback ``(event, info)``, called from the calling thread:
#: ``"start"`` (info: ``total`` units of work) then one ``"done"`` per unit
#: (info: ``task``, ``what``, ``from_cache``) in completion order.
Callback = Callable[[str, Dict[str, Any]], None]


def resolve_tasks(tasks: Union[str, Sequence[Any]]) -> List[Any]:
  """Tasks from ``"heldout"``, ``"name,name"``, or a list of names / Task
  objects.

  Raises:
    ValueError: an unknown task name (the message lists the known ones), or
      an empty selection.
  """
  import lopt.tasks as tasks_lib

  if isinstance(tasks, str):
    items: List[Any] = [t.strip() for t in tasks.split(",") if t.strip()]
  else:
    items = list(tasks)
  names: List[Any] = []
  for item in items:
    if isinstance(item, str) and item.lower() in ("heldout", "held-out",
                                                  "held_out"):
      held = getattr(tasks_lib, "HELDOUT_TASKS", None)
      if not held:
        raise ValueError("This lopt has no held-out task suite "
                         "(lopt.tasks.HELDOUT_TASKS); name tasks explicitly.")
      names.extend(held)
    else:
      names.append(item)
  if not names:
    raise ValueError("No tasks given; use 'heldout' or a comma-separated list "
                     "of task names.")
  out = []
  get = getattr(tasks_lib, "get", None)
  for n in names:
    if not isinstance(n, str):
      out.append(n)
      continue
    if get is None:
      raise ValueError(f"Cannot look up task {n!r}: this lopt has no task "
                       "registry (lopt.tasks.get).")
    try:
      out.append(get(n))
    except (KeyError, ValueError) as e:
      msg = str(e.args[0]) if e.args else str(e)
      if "valid" not in msg.lower() and "known" not in msg.lower():
        known = getattr(tasks_lib, "list_tasks", lambda: ())()
        msg = (f"Unknown task {n!r} ({msg}). Known tasks: "
               f"{', '.join(known)}.")
      raise ValueError(msg) from None
  seen = set()
  for t in out:
    name = getattr(t, "name", None)
    if name in seen:
      raise ValueError(f"Task {name!r} is given twice.")
    seen.add(name)
  return out


def _parse_all(optimizers: Sequence[Any]) -> List[Any]:
  parsed = []
  for o in optimizers:
    if isinstance(o, str):
      o = specs_lib.parse_optimizer(o)
    if isinstance(o, specs_lib.OptimizerSpec) and o.kind != "baseline":
      parsed.append((o, specs_lib.resolve_learned(o)))
    elif isinstance(o, specs_lib.OptimizerSpec):
      parsed.append((o, None))
    else:
      raise ValueError(f"Optimizers must be spec strings or OptimizerSpec, "
                       f"got {o!r}.")
  labels = [s.label for s, _ in parsed]
  dup = {x for x in labels if labels.count(x) > 1}
  if dup:
    raise ValueError(f"Optimizer(s) given twice: {', '.join(sorted(dup))}.")
  return parsed


def _finite_list(x: np.ndarray, digits: int = 7) -> Any:
  """Nested lists with NaN/inf -> None, rounded to ``digits`` significant
  digits (curves are float32; 7 digits keep them exact enough)."""
  a = np.asarray(x, np.float64)
  if a.ndim == 0:
    v = float(a)
    return float(f"{v:.{digits}g}") if math.isfinite(v) else None
  return [_finite_list(y, digits) for y in a]


def _num(v: float) -> Optional[float]:
  return float(v) if math.isfinite(v) else None


def _truncate(res: runner.RunResult, num_steps: int) -> runner.RunResult:
  """The first ``num_steps`` steps of runs of ``res.num_steps >= num_steps``
  steps: curves cut, validation points up to ``num_steps`` kept, end-of-run
  test metrics dropped when they were taken later, execution time scaled."""
  if res.num_steps == num_steps:
    return res
  keep = np.asarray(res.eval_steps) <= num_steps
  return runner.RunResult(
      train_loss=res.train_loss[..., :num_steps],
      eval_steps=np.asarray(res.eval_steps)[keep],
      valid={k: v[..., keep] for k, v in res.valid.items()},
      test={}, wall_s=res.wall_s * num_steps / res.num_steps,
      compile_s=res.compile_s, num_runs=res.num_runs)


def _run_record(res: runner.RunResult, window: int, **extra) -> Dict:
  per_seed = [metrics_lib.final_loss(c, window) for c in res.train_loss]
  fin = [v for v in per_seed if math.isfinite(v)]
  return {
      **extra,
      "train_loss": _finite_list(res.train_loss),
      "valid": {k: _finite_list(v) for k, v in res.valid.items()},
      "test": {k: _finite_list(v) for k, v in res.test.items()},
      "final_loss": _num(metrics_lib.final_loss(res.train_loss, window)),
      "final_loss_per_seed": [_num(v) for v in per_seed],
      "final_loss_std": (_num(float(np.std(fin))) if len(fin) == len(per_seed)
                         else None),
      "final_valid": {k: _num(float(np.mean(v[:, -1])))
                      for k, v in res.valid.items()},
      "final_test": {k: _num(float(np.mean(v))) for k, v in res.test.items()},
      "step_time_s": res.step_time_s,
      "wall_s": res.wall_s,
      "compile_s": res.compile_s,
      "num_runs": res.num_runs,
  }


def default_workers() -> int:
  """Units processed concurrently: one per core, at most 2."""
  return max(1, min(2, os.cpu_count() or 1))


def _execute_units(units, cb: Callback, workers: int):
  """Runs the units; returns ``[(RunResult, from_cache)]`` in unit order.

  Cache hits are read first. This thread then traces and lowers the other
  units one by one (Python work) and queues them by XLA's FLOP estimate,
  biggest first; ``workers`` threads take the biggest queued unit, compile
  and execute it (XLA work, which releases the GIL: with single-threaded
  XLA two workers keep two cores busy). Biggest-first keeps one long program
  from starting last. Each program's ``wall_s`` times its own execution;
  with several workers another program may run on the other core at the
  same time. Numbers do not depend on ``workers`` or on the order.
  """
  out: List[Any] = [None] * len(units)

  def done(i, from_cache):
    tname, kind, spec, *_ = units[i]
    what = f"{spec.name} sweep" if kind == "sweep" else spec.label
    cb("done", {"task": tname, "what": what, "from_cache": from_cache})

  todo = []
  for i, (_, _, _, job, _) in enumerate(units):
    hit = job.lookup() if job is not None else None
    if hit is not None:
      out[i] = (hit, True)
      done(i, True)
    else:
      todo.append(i)

  def finish(i, staged):
    res = staged.compile().execute()
    job = units[i][3]
    if job is not None:
      job.store(res)
    return res

  if workers <= 1 or len(todo) <= 1:
    for i in todo:
      out[i] = (finish(i, units[i][4]()), False)
      done(i, False)
    return out

  ready: "queue.PriorityQueue" = queue.PriorityQueue()
  finished: "queue.Queue" = queue.Queue()
  stop = float("inf")

  def worker():
    while True:
      prio, i, staged = ready.get()
      if prio == stop:
        return
      try:
        finished.put((i, finish(i, staged), None))
      except BaseException as e:  # pylint: disable=broad-except
        finished.put((i, None, e))

  threads = [threading.Thread(target=worker, name=f"lopt-eval-{k}",
                              daemon=True) for k in range(workers)]
  for th in threads:
    th.start()
  pending = len(todo)

  def drain(block: bool):
    nonlocal pending
    while pending:
      try:
        i, res, err = finished.get(block=block)
      except queue.Empty:
        return
      pending -= 1
      if err is not None:
        raise err
      out[i] = (res, False)
      done(i, False)

  try:
    for i in todo:
      staged = units[i][4]()
      ready.put((-staged.flops(), i, staged))
      drain(block=False)
    drain(block=True)
  finally:
    # Workers stop after the queue drains (or, on error, after the unit they
    # are running); queued work is dropped.
    while True:
      try:
        ready.get_nowait()
      except queue.Empty:
        break
    for k in range(workers):
      ready.put((stop, len(units) + k, None))
    for th in threads:
      th.join()
  return out


def evaluate(optimizers: Sequence[Any], tasks: Union[str, Sequence[Any]],
             num_steps: int = 1000, seeds: Union[int, Sequence[int]] = 3,
             baseline_sweep: Sequence[str] = ("adam",),
             lrs: Optional[Dict[str, Sequence[float]]] = None,
             num_lrs: int = 7, eval_every: Optional[int] = None,
             window: Optional[int] = None, cache_dir: Optional[str] = None,
             num_valid_batches: int = 2, num_test_batches: int = 0,
             callback: Optional[Callback] = None,
             workers: Optional[int] = None,
             baseline_steps: Optional[int] = None) -> Dict[str, Any]:
  """Evaluates ``optimizers`` on ``tasks`` against tuned baselines.

  Args:
    optimizers: spec strings (learned file / name, ``rule:NAME``, or a
      baseline such as ``adam:lr=1e-3``), see :mod:`lopt.eval.specs`.
    tasks: ``"heldout"``, ``"a,b"``, or a list of names / Task objects.
    num_steps: training steps per run.
    seeds: a count ``n`` (seeds ``0..n-1``) or explicit seeds.
    baseline_sweep: baselines to tune per task (``()`` for none); the first
      one is the reference for the headline speedup.
    lrs: per-baseline learning-rate grids (default :func:`specs.lr_grid`
      with ``num_lrs`` points).
    eval_every: validation interval (default ~20 points).
    window: smoothing window in steps (default 5 % of ``num_steps``).
    cache_dir: where baseline runs are cached (``None``: no cache).
    callback: progress callback, see :data:`Callback`.
    workers: units (a sweep or a run on one task) compiled and executed
      concurrently (default :func:`default_workers`); 1 runs everything in
      this thread.
    baseline_steps: steps of each run of the baseline sweeps (default
      ``num_steps``; at least ``num_steps``); the measurable speedup is at
      most ``baseline_steps / num_steps``.

  Returns:
    The record: ``{"format", "created", "config", "tasks": {name: {...}},
    "summary": {optimizer: {baseline: {"median", "iqm", "median_interval",
    "iqm_interval", "at_tuned_lr", ...}}}}`` (the intervals: 90% seed
    bootstrap, :func:`lopt.eval.metrics.seed_bootstrap`). The headline
    speedup is over the whole sweep (the fewest steps any of its learning
    rates needs); ``at_tuned_lr`` (per task in ``speedups``, aggregated in
    ``summary``) is the speedup over the tuned learning rate's runs alone,
    which is never lower.
  """
  if isinstance(num_steps, bool) or int(num_steps) < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  num_steps = int(num_steps)
  if baseline_steps is None:
    baseline_steps = num_steps
  if isinstance(baseline_steps, bool) or int(baseline_steps) < num_steps:
    raise ValueError(f"baseline_steps must be >= num_steps ({num_steps}), "
                     f"got {baseline_steps}.")
  baseline_steps = int(baseline_steps)
  if isinstance(seeds, int):
    if seeds < 1:
      raise ValueError(f"Need at least one seed, got {seeds}.")
    seeds = tuple(range(seeds))
  seeds = tuple(int(s) for s in seeds)
  if not seeds:
    raise ValueError("Need at least one seed.")
  eval_every = eval_every or runner.default_eval_every(num_steps)
  runner.eval_schedule(num_steps, eval_every)
  window = window or metrics_lib.default_window(num_steps)
  if num_valid_batches < 1 or num_test_batches < 0:
    raise ValueError(f"Need num_valid_batches >= 1 and num_test_batches >= 0, "
                     f"got {num_valid_batches} and {num_test_batches}.")
  if not optimizers and not baseline_sweep:
    raise ValueError("Nothing to evaluate: give at least one optimizer or a "
                     "baseline sweep.")
  parsed = _parse_all(optimizers)
  sweeps = []
  for b in baseline_sweep:
    spec = specs_lib.parse_optimizer(b)
    if spec.kind != "baseline":
      raise ValueError(f"Can only tune baselines "
                       f"({', '.join(specs_lib.BASELINES)}), got {b!r}.")
    grid = (lrs or {}).get(spec.name) or specs_lib.lr_grid(spec.name, num_lrs)
    sweeps.append((spec, tuple(float(x) for x in grid)))
  names = [s.name for s, _ in sweeps]
  if len(set(names)) != len(names):
    raise ValueError(f"Each baseline can be swept once, got {names}.")
  task_objs = resolve_tasks(tasks)
  workers = default_workers() if workers is None else int(workers)

  total = len(task_objs) * (len(sweeps) + len(parsed))
  cb = callback or (lambda event, info: None)
  cb("start", {"total": total})
  common = dict(eval_every=eval_every, num_valid_batches=num_valid_batches,
                num_test_batches=num_test_batches)

  # Work units in execution order: per task, the sweeps then the optimizers.
  # A unit is a cacheable Job (baselines) or a bare lower() (learned).
  units = []
  for task in task_objs:
    tname = getattr(task, "name", type(task).__name__)
    for spec, grid in sweeps:
      job = tuning.sweep_job(task, spec.text, baseline_steps, seeds,
                             lrs=grid, cache_dir=cache_dir, **common)
      units.append((tname, "sweep", spec, job, job.lower))
    for spec, resolved in parsed:
      if spec.kind == "baseline":
        job = tuning.baseline_job(task, spec, num_steps, seeds,
                                  cache_dir=cache_dir, **common)
        units.append((tname, "run", spec, job, job.lower))
      else:
        prep = functools.partial(runner.lower_run, task, resolved,
                                 num_steps, seeds, **common)
        units.append((tname, "run", spec, None, prep))

  results = _execute_units(units, cb, workers)

  task_records: Dict[str, Any] = {}
  speedup_objs: Dict[tuple, List[metrics_lib.Speedup]] = {}
  at_lr_objs: Dict[tuple, List[metrics_lib.Speedup]] = {}
  boot_inputs: Dict[tuple, List[tuple]] = {}
  for task in task_objs:
    tname = getattr(task, "name", type(task).__name__)
    runs: Dict[str, Any] = {}
    curves: Dict[str, np.ndarray] = {}
    sweep_curves: Dict[str, np.ndarray] = {}
    tuned_labels: List[str] = []
    tuned_index: Dict[str, int] = {}
    eval_steps = None
    for (un, kind, spec, job, _), (res, hit) in zip(units, results):
      if un != tname:
        continue
      if kind == "sweep":
        full = res
        res = _truncate(res, num_steps)
        tr = tuning.finish_tune(job, res, hit, window)
        best = tr.best
        # step_time_s of a tuned baseline is amortised over the whole sweep
        # (L x S runs in one vmapped program).
        runs[tr.label] = _run_record(
            best, window, kind="tuned", spec=tr.spec.canonical,
            baseline=tr.baseline, best_lr=tr.best_lr, at_edge=tr.at_edge,
            lrs=list(tr.lrs), scores=[_num(x) for x in tr.scores],
            sweep_mean_train_loss=_finite_list(
                np.mean(res.train_loss.astype(np.float64), axis=1)),
            sweep_wall_s=res.wall_s, sweep_compile_s=res.compile_s,
            sweep_steps=full.num_steps, eval_steps=[int(x) for x in
                                                    res.eval_steps],
            from_cache=hit)
        curves[tr.label] = best.train_loss
        sweep_curves[tr.label] = full.train_loss
        tuned_index[tr.label] = tr.best_index
        tuned_labels.append(tr.label)
      else:
        eval_steps = res.eval_steps
        extra: Dict[str, Any] = {"from_cache": hit}
        if spec.kind != "baseline":
          extra["rule"] = dict(parsed)[spec].header.get("rule")
        runs[spec.label] = _run_record(res, window, kind=spec.kind,
                                       spec=spec.text, **extra)
        curves[spec.label] = res.train_loss
    if eval_steps is None:   # only tuned baselines on this task
      eval_steps = next(iter(runs.values()))["eval_steps"]
    speedups = {}
    for spec, _ in parsed:
      speedups[spec.label] = {}
      for b in tuned_labels:
        sp = metrics_lib.speedup_over_sweep(curves[spec.label],
                                            sweep_curves[b], window)
        speedup_objs.setdefault((spec.label, b), []).append(sp)
        boot_inputs.setdefault((spec.label, b), []).append(
            (curves[spec.label], sweep_curves[b]))
        # The same against the tuned learning rate alone (the one chosen by
        # final loss), over all of its steps: the definition that ranks a
        # baseline by one tuned run. Never below the sweep's value.
        at_lr = metrics_lib.speedup(curves[spec.label],
                                    sweep_curves[b][tuned_index[b]], window)
        at_lr_objs.setdefault((spec.label, b), []).append(at_lr)
        speedups[spec.label][b] = sp.to_json() | {
            "baseline_lr": (None if sp.baseline_index is None
                            else runs[b]["lrs"][sp.baseline_index]),
            "at_tuned_lr": at_lr.to_json()}
    task_records[tname] = {
        "data_fingerprint": cache_lib.data_fingerprint(task),
        "eval_steps": [int(x) for x in eval_steps],
        "runs": runs,
        "speedups": speedups,
    }

  summary = {}
  for spec, _ in parsed:
    summary[spec.label] = {}
    for b in [f"{s.name} (tuned)" for s, _ in sweeps]:
      agg = metrics_lib.aggregate(speedup_objs.get((spec.label, b), []))
      boot = metrics_lib.seed_bootstrap(boot_inputs.get((spec.label, b), []),
                                        window, BOOTSTRAP_RESAMPLES,
                                        BOOTSTRAP_LEVEL)
      agg["median_interval"] = boot["median"]
      agg["iqm_interval"] = boot["iqm"]
      agg["interval"] = (f"{BOOTSTRAP_LEVEL:.0%} seed bootstrap "
                         f"({BOOTSTRAP_RESAMPLES} resamples)")
      agg["at_tuned_lr"] = metrics_lib.aggregate(
          at_lr_objs.get((spec.label, b), []))
      summary[spec.label][b] = agg

  return {
      "format": RECORD_FORMAT,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "config": {
          "num_steps": num_steps,
          "baseline_steps": baseline_steps,
          "seeds": list(seeds),
          "eval_every": eval_every,
          "window": window,
          "smoothing": (f"trailing mean over {window} steps of the seed-mean "
                        "training loss"),
          "tasks": list(task_records),
          "optimizers": [s.label for s, _ in parsed],
          "optimizer_specs": [s.text for s, _ in parsed],
          "baseline_sweep": [s.text for s, _ in sweeps],
          "lrs": {s.name: list(g) for s, g in sweeps},
          "num_valid_batches": num_valid_batches,
          "num_test_batches": num_test_batches,
          "cache_dir": cache_dir,
          "jax_version": jax.__version__,
          "python_version": platform.python_version(),
          "backend": jax.default_backend(),
      },
      "tasks": task_records,
      "summary": summary,
  }
