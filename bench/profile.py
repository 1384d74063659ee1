"""Where the time goes: per-kernel profile of a benchmark workload.

Runs one of the benchmark workloads under ``jax.profiler`` and prints the
most expensive XLA kernels (fused loops, matrix products, copies) with their
shape and the source op that produced them (:func:`lopt.profiling.
kernel_times`). This is how the work in docs/performance.md located, e.g.,
the gather fusions of the normaliser sample (session 8).

- ``--what apply`` (default): ``bench/apply.py``'s training step of a
  64-128-128-10 MLP with ``--rule`` (default ``mlp``, or ``adam`` for
  ``optax.adam``), ``--steps`` steps in one ``lax.scan``; times are per
  training step.
- ``--what meta_train``: one outer step of ``bench/meta_train.py``'s
  configuration (8 digits-MLP tasks, 50-step truncations, ES-Single) in one
  process; times are per inner step (one step of every particle).

Traced times are not wall time (see the caveats in :mod:`lopt.profiling`:
the profiler's own cost per kernel, overlapping kernels, YNNPACK kernels at
about twice their cost); use the shares to find hot spots and
``bench/apply.py`` / ``bench/meta_train.py`` to measure a change. Progress
on stderr, one JSON object as the last stdout line::

    {"what": ..., "unit": "us per step", "kernels_total": ...,
     "kernels": [{"name", "opcode", "shape", "op_name", "us", "share",
                  "runs"}, ...], "control_flow": [...]}
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parse():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--what", choices=("apply", "meta_train"), default="apply")
  ap.add_argument("--rule", default="mlp",
                  help="a lopt rule name, or 'adam' for optax.adam "
                  "(--what apply); a rule name (--what meta_train)")
  ap.add_argument("--steps", type=int, default=200,
                  help="training steps per traced call (--what apply)")
  ap.add_argument("--calls", type=int, default=3,
                  help="traced calls to average over")
  ap.add_argument("--top", type=int, default=25,
                  help="kernels to print (the JSON has all)")
  return ap.parse_args()


def _bench_module(name):
  """``bench/<name>.py`` as a module (by path: ``meta_train`` would
  otherwise resolve to lopt's package of that name)."""
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _workload(args):
  """``(fn, fn_args, per_call)``: a jitted function, its arguments and the
  number of steps one call runs."""
  import jax
  if args.what == "apply":
    rules = [] if args.rule == "adam" else [args.rule]
    opts, make_run, params, _ = _bench_module("apply").build(rules,
                                                             args.steps)
    opt = opts["adam" if args.rule == "adam" else "rule:" + args.rule]
    return make_run(opt), (params, jax.random.PRNGKey(0)), args.steps
  from lopt.meta_train.trainer import MetaTrainer
  cfg = _bench_module("meta_train").bench_config(args.rule, "es_single")
  trainer = MetaTrainer(cfg)
  # The outer step without trainer.step_fn's donation: the traced calls
  # reuse the same state.
  return jax.jit(trainer.outer_step), (trainer.init_state(),), \
      cfg.trunc_length


def main():
  args = _parse()
  from lopt import cpu_flags
  cpu_flags.apply(single_thread=True)
  from lopt import profiling

  fn, fn_args, per_call = _workload(args)
  print(f"tracing {args.calls} calls ({args.what}, {args.rule}) ...",
        file=sys.stderr)
  kernels, control = profiling.kernel_times(fn, *fn_args, calls=args.calls)
  total = sum(k.us_per_call for k in kernels) / per_call
  rows = [{"name": k.name, "opcode": k.opcode, "shape": k.shape,
           "op_name": k.op_name, "us": round(k.us_per_call / per_call, 3),
           "share": round(k.us_per_call / per_call / total, 4),
           "runs": round(k.runs_per_call / per_call, 3)} for k in kernels]
  for r in rows[:args.top]:
    print(f"{r['us']:9.2f} us {100 * r['share']:5.1f}%  {r['name']:34s} "
          f"{r['shape']:28s} {r['op_name'][-60:]}", file=sys.stderr)
  print(f"kernels total: {total:.1f} us per step ({len(rows)} kernels)",
        file=sys.stderr)
  print(json.dumps({
      "what": args.what, "rule": args.rule, "unit": "us per step",
      "kernels_total": round(total, 2), "kernels": rows,
      "control_flow": [{"name": k.name, "us": round(k.us_per_call / per_call,
                                                    3),
                        "op_name": k.op_name} for k in control]}))


if __name__ == "__main__":
  main()
