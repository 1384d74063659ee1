"""Distributed meta-training throughput: outer steps per second on Ray.

Configuration (as bench/meta_train.py): the per-parameter MLP rule, ES-Single,
8 tasks of the digits MLP family (64-32-10 MLP, batch 32), 50-step
truncations, horizons log-uniform in [100, 1000], one antithetic pair per
task. Measured:

* ``single_process``: the jitted outer step of :class:`MetaTrainer` in this
  process (single-threaded XLA, pinned to one core like each worker);
* ``ray_1``: :class:`RayMetaTrainer`, synchronous, 1 gradient worker owning
  the 8 tasks (the learner in this process: theta to the worker, remote
  estimate, particle-weighted aggregate, jitted optax update; each step one
  Ray Compiled Graph execution, or plain actor calls with
  ``--no-compiled-graph``);
* ``ray_2``: the same with 2 workers of 4 tasks each (worker w pinned to
  core w, the local-Ray default of :class:`RayOptions`).

``scaling_efficiency = ray_2 / (2 * ray_1)``; ``ray_overhead_1_worker =
1 - ray_1 / single_process``. The same for the asynchronous mode (max
staleness 1) as ``async_outer_steps_per_s`` / ``async_scaling_efficiency``. Each number is the best of ``--repeats`` windows
of ``--steps`` outer steps after 2 warm-up steps (compilation). On a shared
machine the wall-clock numbers are dominated by other load, so the same is
also reported from CPU time (``cpu_bound_*``: outer steps per CPU-second of
the busiest worker, i.e. the rate with a core per worker and free
communication), with the workers' inner steps per second of compute and the
1-minute load average at the start.

The rule runs with its defaults (since session 17: 17 features, a
1024-element normaliser sample); ``--features all --norm-sample 2048``
measures the shipped optimizers' rule.

Usage: ``python bench/ray_scaling.py [--quick] [--compile-cache DIR]
[--features all|lean] [--norm-sample N]``.
Progress goes to stderr; the last stdout line is one JSON object::

    {"outer_steps_per_s": {"single_process": ..., "ray_1": ..., "ray_2": ...},
     "scaling_efficiency": ..., "ray_overhead_1_worker": ..., ...}

Ray runs on loopback only (``127.0.0.1``, no dashboard, token auth off).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


def _bench_meta_train():
  """``bench/meta_train.py`` as a module, loaded by path as bench/profile.py
  does (``meta_train`` would otherwise resolve to lopt's package): its
  workload config and ``mlp`` rule options are this benchmark's."""
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "meta_train.py")
  spec = importlib.util.spec_from_file_location("bench_meta_train", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_MT = _bench_meta_train()


def _parse(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true",
                  help="fewer, shorter windows (under ~90 s on an idle "
                  "2-core machine)")
  ap.add_argument("--steps", type=int, default=None,
                  help="outer steps per timed window (default 20, quick 4)")
  ap.add_argument("--repeats", type=int, default=None,
                  help="timed windows per setting (default 3, quick 1)")
  ap.add_argument("--rule", default="mlp")
  _MT.add_mlp_args(ap)
  ap.add_argument("--num-tasks", type=int, default=8)
  ap.add_argument("--trunc-length", type=int, default=50)
  ap.add_argument("--timeout", type=float, default=600.0)
  ap.add_argument("--no-compiled-graph", action="store_true",
                  help="sync mode with plain Ray actor calls instead of a "
                  "Ray Compiled Graph execution per outer step")
  ap.add_argument("--no-async", action="store_true",
                  help="skip the asynchronous-mode measurements (always "
                  "skipped with --quick)")
  ap.add_argument("--compile-cache", metavar="DIR", default=None,
                  help="persistent XLA compilation cache (this process and "
                  "the workers): a second run skips most compile time")
  return ap.parse_args(argv)


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def _config(args):
  import dataclasses
  cfg = _MT.bench_config(args.rule, "es_single", args.num_tasks,
                         args.trunc_length, _MT.mlp_config(args, args.rule))
  return dataclasses.replace(cfg, outer_steps=10**6, checkpoint_every=0)


def _time(step_fn, state, args):
  """Best outer steps/s over the windows (after 2 warm-up steps)."""
  import jax
  t0 = time.perf_counter()
  for _ in range(2):
    state, m = step_fn(state)
  jax.block_until_ready(state.theta)
  warm = time.perf_counter() - t0
  best, ms, cpu = 0.0, [], 0.0
  for _ in range(args.repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
      state, m = step_fn(state)
      ms.append(m)
    jax.block_until_ready(state.theta)
    best = max(best, args.steps / (time.perf_counter() - t0))
    cpu += time.process_time() - c0
  return best, warm, state, ms, args.steps * args.repeats / max(cpu, 1e-9)


def _ray_rate(cfg, workers, args, mode="sync"):
  from lopt.meta_train import distributed as D
  trainer = D.RayMetaTrainer(cfg, D.RayOptions(
      workers=workers, mode=mode, timeout_s=args.timeout,
      compiled_graph=not args.no_compiled_graph))
  with trainer.session():
    state = trainer.init_state()
    rate, warm, state, ms, _ = _time(trainer.step_fn, state, args)
    per_worker, cpu = {}, []
    for w in range(workers):
      cpu.append(sum(float(m.get(f"dist/worker{w}/cpu_s", 0.0)) for m in ms))
      secs = sum(float(m.get(f"dist/worker{w}/compute_s", 0.0)) for m in ms)
      steps = sum(float(m.get(f"dist/worker{w}/inner_steps", 0.0))
                  for m in ms)
      per_worker[f"worker{w}"] = round(steps / secs, 1) if secs else None
  # Outer steps per second if every worker had its core to itself: steps
  # over the busiest worker's CPU time (no learner/communication time).
  cpu_rate = len(ms) / max(max(cpu), 1e-9)
  return rate, warm, per_worker, cpu_rate


def main(argv=None):
  args = _parse(argv)
  args.steps = args.steps or (4 if args.quick else 20)
  args.repeats = args.repeats or (1 if args.quick else 3)
  from lopt import cpu_flags
  cpu_flags.apply()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("RAY_AUTH_MODE", "disabled")
  if args.compile_cache:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(
        args.compile_cache)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  t_start = time.time()
  load = os.getloadavg()[0]

  from lopt.meta_train import cpu
  from lopt.meta_train.trainer import MetaTrainer
  cfg = _config(args)
  all_cpus = cpu.available_cpus()
  # The single-process path pinned to one core, as each Ray worker is (the
  # mask is restored before Ray starts: Ray's processes inherit it).
  pinned = cpu.pin_to_cpu(0) is not None
  trainer = MetaTrainer(cfg)
  state = trainer.init_state()
  single, warm, _, _, single_cpu = _time(trainer.step_fn, state, args)
  _log(f"single process: {single:.2f} outer steps/s (warm-up {warm:.1f} s)")
  del trainer, state
  cpu.set_affinity(all_cpus)

  from lopt.meta_train.distributed import local_ray
  # A local Ray on 127.0.0.1, shut down on exit (also on error).
  with local_ray(2, logging_level=logging.WARNING):
    rates, workers_rate, cpu_rates = {}, {}, {}
    for n in (1, 2):
      rate, warm, per_worker, cpu_rates[n] = _ray_rate(cfg, n, args)
      rates[n], workers_rate[f"ray_{n}"] = rate, per_worker
      _log(f"ray, {n} worker(s): {rate:.2f} outer steps/s (warm-up "
           f"{warm:.1f} s); worker inner steps/s of compute: {per_worker}")
    async_rates = {}
    if not (args.no_async or args.quick):
      for n in (1, 2):
        async_rates[n], warm, per_worker, _ = _ray_rate(cfg, n, args,
                                                        "async")
        workers_rate[f"ray_{n}_async"] = per_worker
        _log(f"ray async, {n} worker(s): {async_rates[n]:.2f} outer steps/s")

  out = {
      "outer_steps_per_s": {"single_process": round(single, 3),
                            "ray_1": round(rates[1], 3),
                            "ray_2": round(rates[2], 3)},
      "scaling_efficiency": round(rates[2] / (2 * rates[1]), 3),
      "ray_overhead_1_worker": round(1 - rates[1] / single, 3),
      # Asynchronous mode (max staleness 1): the workers do not wait for the
      # learner, so Ray's round trip is hidden; a different algorithm
      # (estimates up to one update old), reported beside the sync figures.
      "async_outer_steps_per_s": {f"ray_{n}": round(r, 3)
                                  for n, r in async_rates.items()},
      "async_scaling_efficiency": (round(async_rates[2] /
                                         (2 * async_rates[1]), 3)
                                   if async_rates else None),
      "worker_inner_steps_per_compute_s": workers_rate,
      # The same from CPU time (insensitive to other load on the machine):
      # single process: steps per CPU second of this process; ray_n: steps
      # per CPU second of the busiest worker.
      "cpu_bound_outer_steps_per_s": {
          "single_process": round(single_cpu, 3),
          "ray_1": round(cpu_rates[1], 3), "ray_2": round(cpu_rates[2], 3)},
      "cpu_bound_scaling_efficiency": round(
          cpu_rates[2] / (2 * cpu_rates[1]), 3),
      "inner_steps_per_outer_step": 2 * args.num_tasks * args.trunc_length,
      "config": {"rule": args.rule, "estimator": "es_single",
                 **_MT.mlp_report(args, args.rule),
                 "task_family": "digits_mlp", "num_tasks": args.num_tasks,
                 "trunc_length": args.trunc_length, "horizons": [100, 1000],
                 "steps_per_window": args.steps, "repeats": args.repeats},
      "pinned": pinned,
      "compiled_graph": not args.no_compiled_graph,
      "load_average_1min_at_start": round(load, 2),
      "cpu_count": os.cpu_count(),
      "wall_s": round(time.time() - t_start, 1),
  }
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
