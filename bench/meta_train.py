"""Meta-training throughput: inner steps per second of the jitted outer step.

Configuration (the issue's reference point): 8 tasks of the digits MLP family
(64-32-10 MLP, batch 32) x 50-step truncations, horizons log-uniform in
[100, 1000], one antithetic pair per task (16 inner problems); measured for
the per-parameter MLP rule and for learnable SGD, each with ES-Single and PES.
Inner steps count both antithetic sides. One outer step = estimate + optax
update, jitted as one function with the state donated.

``--procs N`` (default 2, one per core) splits the 8 tasks over N processes
that each own a slice of the tasks (as the distributed workers do) and run
their outer steps concurrently; throughput is the total inner steps of all
processes divided by the wall time of the timed window (the processes start
the window together). The processes do not exchange gradients here (a
learner's averaging of a few hundred floats per step is negligible next to
the unrolls). ``--procs 1`` is the single-process number.

The ``mlp`` rule runs with its defaults (since session 17: the 17-feature
``lean`` preset and a 1024-element normaliser sample); ``--features all``
and ``--norm-sample 2048`` measure the shipped optimizers' rule (23
features, 2048).

Usage: ``python bench/meta_train.py [--quick] [--procs N] [--steps S]
[--features all|lean] [--norm-sample N]``.
Progress goes to stderr; the last stdout line is one JSON object::

    {"mlp+es_single": {"inner_steps_per_s": ..., "s_per_outer_step": ...},
     "mlp+pes": {...}, "sgd+es_single": {...}, "sgd+pes": {...},
     "mlp_to_sgd_ratio": ..., "procs": N, ...}

``mlp_to_sgd_ratio`` is mlp+es_single over sgd+es_single throughput
(``mlp_to_sgd_cpu_ratio`` the same on CPU-time rates).
Timings on a shared machine are noisy: the best of ``--repeats`` windows is
reported. The combos' windows are interleaved (window i of every combo, then
window i + 1), so ``mlp_to_sgd_ratio_paired`` also gives the ratio of each
pair of neighbouring windows (sorted) and ``mlp_to_sgd_ratio_paired_median``
their median: on a machine whose load drifts, the ratio of two best windows
may come from different minutes, a paired ratio does not.
``inner_steps_per_cpu_s`` (inner steps per CPU-second of the processes,
single-threaded XLA) is less sensitive to other load on the machine; with
``procs`` idle cores the wall-clock rate approaches ``procs`` times it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any, Dict, Optional

#: The issue's reference configuration (module docstring).
NUM_TASKS = 8
TRUNC_LENGTH = 50
HORIZONS = (100, 1000)
STD = 0.01


def bench_config(rule: str, estimator: str, num_tasks: int = NUM_TASKS,
                 trunc_length: int = TRUNC_LENGTH, rule_config=None):
  """The benchmark's meta-training config for ``rule`` + ``estimator``
  (digits-MLP family by default; ``rule_config`` overrides the rule's
  defaults). Also used by ``bench/profile.py``, so that its profile is of
  this workload."""
  from lopt.meta_train.config import MetaTrainConfig
  return MetaTrainConfig(rule=rule, estimator=estimator, num_tasks=num_tasks,
                         trunc_length=trunc_length, horizon_min=HORIZONS[0],
                         horizon_max=HORIZONS[1], std=STD,
                         rule_config=dict(rule_config or {}))


def add_mlp_args(ap: argparse.ArgumentParser) -> None:
  """Adds ``--features`` and ``--norm-sample`` to ``ap``."""
  ap.add_argument("--features", default=None,
                  help="the mlp rule's feature set: 'lean' (17 features) or "
                  "'all' (23, the shipped optimizers' rule); default: the "
                  "rule's default (lean since session 17)")
  ap.add_argument("--norm-sample", type=int, default=None,
                  help="the mlp rule's norm_sample (default: the rule's "
                  "default, 1024 since session 17; the shipped optimizers "
                  "use 2048)")


#: The rules that take ``--features`` / ``--norm-sample``.
MLP_RULES = ("mlp", "mu_mlp")


def mlp_config(args: argparse.Namespace,
               rule: str = "mlp") -> Optional[Dict[str, Any]]:
  """``rule``'s config overrides given on the command line (empty: the
  rule's defaults); None for a rule outside :data:`MLP_RULES`."""
  if rule not in MLP_RULES:
    return None
  return {k: v for k, v in (("features", args.features),
                            ("norm_sample", args.norm_sample))
          if v is not None}


def mlp_report(args: argparse.Namespace, rule: str = "mlp") -> Dict[str, Any]:
  """The resolved feature count and normaliser sample of ``rule`` built with
  these options, for a benchmark's JSON ``config`` (empty for a rule outside
  :data:`MLP_RULES`)."""
  if rule not in MLP_RULES:
    return {}
  import lopt.rules
  r = lopt.rules.get(rule, **mlp_config(args, rule))
  return {"mlp_features": len(r.features), "mlp_norm_sample": r.norm_sample}


def _parse(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true",
                  help="only the ES-Single combos, fewer steps (< 60 s)")
  ap.add_argument("--procs", type=int, default=None,
                  help="processes sharing the tasks (default: 2, or 1 with "
                  "--quick)")
  ap.add_argument("--steps", type=int, default=None,
                  help="outer steps per timed window")
  ap.add_argument("--repeats", type=int, default=None)
  ap.add_argument("--num-tasks", type=int, default=NUM_TASKS)
  ap.add_argument("--trunc-length", type=int, default=TRUNC_LENGTH)
  ap.add_argument("--combos", default=None,
                  help="comma list of rule+estimator (default: mlp+es_single,"
                  "mlp+pes,sgd+es_single,sgd+pes)")
  ap.add_argument("--threads", type=int, default=1,
                  help="1 = single-threaded XLA (default, fastest here)")
  add_mlp_args(ap)
  ap.add_argument("--no-pin", dest="pin", action="store_false",
                  help="do not pin process i to core i (pinning is the "
                  "default: see lopt.meta_train.cpu)")
  return ap.parse_args(argv)


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def _worker(rank, procs, combos, args, barrier, queue):
  """Measures every combo on this process's slice of the tasks."""
  if args.pin:
    from lopt.meta_train.cpu import pin_to_cpu
    pin_to_cpu(rank)
  import jax
  import numpy as np
  from lopt.meta_train.trainer import MetaTrainer

  slices = np.array_split(np.arange(args.num_tasks), procs)
  mine = [int(i) for i in slices[rank]]
  runs = []
  for combo in combos:
    rule, est = combo.split("+")
    cfg = bench_config(rule, est, args.num_tasks, args.trunc_length,
                       mlp_config(args, rule))
    trainer = MetaTrainer(cfg, task_indices=mine)
    state = trainer.init_state()
    t0 = time.perf_counter()
    state, m = trainer.step_fn(state)           # compile
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    for _ in range(2):                           # warm-up
      state, m = trainer.step_fn(state)
    jax.block_until_ready(state)
    runs.append([combo, trainer, state, m, compile_s, []])
  # Interleaved: each repeat times one window of every combo in turn, so
  # that the combos' i-th windows lie close together in time and a ratio of
  # two combos compares neighbouring windows (the machine's load drifts).
  for _ in range(args.repeats):
    for run in runs:
      _, trainer, state, m, _, windows = run
      barrier.wait()
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(args.steps):
        state, m = trainer.step_fn(state)
      jax.block_until_ready(state)
      t1, c1 = time.perf_counter(), time.process_time()
      windows.append((t0, t1, c1 - c0))
      run[2], run[3] = state, m
      barrier.wait()
  for combo, _, _, m, compile_s, windows in runs:
    queue.put((combo, rank, float(m["inner_steps"]) * args.steps, windows,
               compile_s, bool(np.isfinite(float(m["meta_loss"])))))
  barrier.wait()


def main(argv=None):
  args = _parse(argv)
  from lopt import cpu_flags
  cpu_flags.apply(single_thread=args.threads == 1)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  combos = (args.combos.split(",") if args.combos else
            (["mlp+es_single", "sgd+es_single"] if args.quick else
             ["mlp+es_single", "mlp+pes", "sgd+es_single", "sgd+pes"]))
  procs = args.procs or (1 if args.quick else 2)
  args.steps = args.steps or (5 if args.quick else 20)
  args.repeats = args.repeats or (2 if args.quick else 3)
  procs = max(1, min(procs, args.num_tasks))

  t_start = time.time()
  ctx = mp.get_context("spawn")
  barrier = ctx.Barrier(procs)
  queue = ctx.Queue()
  workers = [ctx.Process(target=_worker,
                         args=(r, procs, combos, args, barrier, queue))
             for r in range(procs)]
  for w in workers:
    w.start()
  results = {}
  for _ in range(procs * len(combos)):
    combo, rank, steps, windows, compile_s, finite = queue.get()
    results.setdefault(combo, {})[rank] = (steps, windows, compile_s, finite)
    if len(results[combo]) == procs:
      _log(f"{combo}: measured (compile {compile_s:.1f} s on rank {rank})")
  for w in workers:
    w.join()
    if w.exitcode != 0:
      raise SystemExit(f"bench worker failed with exit code {w.exitcode}")

  out = {}
  rates = {}
  for combo in combos:
    per_rank = results[combo]
    best = None
    rates[combo] = []
    for i in range(args.repeats):
      start = min(per_rank[r][1][i][0] for r in per_rank)
      end = max(per_rank[r][1][i][1] for r in per_rank)
      steps = sum(per_rank[r][0] for r in per_rank)
      rate = steps / (end - start)
      rates[combo].append(rate)
      cpu = sum(per_rank[r][1][i][2] for r in per_rank)
      if best is None or rate > best[0]:
        best = (rate, (end - start) / args.steps, steps / max(cpu, 1e-9))
    out[combo] = {"inner_steps_per_s": round(best[0], 1),
                  "windows_inner_steps_per_s": [round(x, 1)
                                                for x in rates[combo]],
                  "s_per_outer_step": round(best[1], 5),
                  "inner_steps_per_cpu_s": round(best[2], 1),
                  "compile_s": round(max(per_rank[r][2] for r in per_rank),
                                     2),
                  "meta_loss_finite": all(per_rank[r][3] for r in per_rank)}
    _log(f"{combo}: {best[0]:.0f} inner steps/s, {best[1] * 1e3:.1f} ms "
         "per outer step")
  if "mlp+es_single" in out and "sgd+es_single" in out:
    out["mlp_to_sgd_ratio"] = round(
        out["mlp+es_single"]["inner_steps_per_s"] /
        out["sgd+es_single"]["inner_steps_per_s"], 3)
    out["mlp_to_sgd_cpu_ratio"] = round(
        out["mlp+es_single"]["inner_steps_per_cpu_s"] /
        out["sgd+es_single"]["inner_steps_per_cpu_s"], 3)
    paired = sorted(a / b for a, b in zip(rates["mlp+es_single"],
                                          rates["sgd+es_single"]))
    out["mlp_to_sgd_ratio_paired"] = [round(x, 3) for x in paired]
    out["mlp_to_sgd_ratio_paired_median"] = round(statistics.median(paired),
                                                  3)
  # The mlp rule measured, with its defaults resolved (imported only now:
  # the workers are done, so jax loads in this process after them).
  out["procs"] = procs
  out["config"] = {"num_tasks": args.num_tasks,
                   "trunc_length": args.trunc_length,
                   "horizons": list(HORIZONS), "task_family": "digits_mlp",
                   "outer_steps_per_window": args.steps,
                   "repeats": args.repeats, "pinned": args.pin,
                   **mlp_report(args),
                   "xla_flags": os.environ.get("XLA_FLAGS", "")}
  out["wall_s"] = round(time.time() - t_start, 1)
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
