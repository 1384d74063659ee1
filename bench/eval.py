"""Benchmark: held-out evaluation of one learned optimizer against a tuned Adam.

Measures the wall-clock of ``lopt.eval.suite.evaluate`` (+ writing the report)
for one learned optimizer vs a 7-point Adam learning-rate sweep, 3 seeds,
1000 steps, on the default held-out suite (``lopt.tasks.HELDOUT_TASKS``),
with an empty baseline cache (so every sweep really runs). If no trained
learned-optimizer file is shipped, the per-parameter MLP rule at its default
meta-parameters (``rule:mlp``) stands in, and the JSON says so.

Usage::

    python bench/eval.py [--steps 1000] [--seeds 3] [--tasks heldout]
                         [--optimizer SPEC] [--workers N] [--out DIR]

The last line printed is one JSON object:
``{"wall_s", "tasks", "steps", "seeds", "optimizer", ...}``.
"""

import os

# lopt's CPU flags (single-threaded XLA: faster for these small problems on
# a 2-core machine, two single-threaded workers, one per core; 512-bit
# vectors). Must precede jax's first computation.
from lopt import cpu_flags  # noqa: E402

cpu_flags.apply()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--num-lrs", type=int, default=7)
  p.add_argument("--tasks", default="heldout")
  p.add_argument("--optimizer", default=None,
                 help="default: first shipped learned optimizer, else "
                 "rule:mlp at default meta-parameters")
  p.add_argument("--workers", type=int, default=None)
  p.add_argument("--out", default=None, help="keep the report here")
  args = p.parse_args(argv)

  import jax
  import lopt
  from lopt.eval import report, suite

  shipped = lopt.shipped_names()
  if args.optimizer:
    opt, note = args.optimizer, "given on the command line"
  elif shipped:
    opt, note = shipped[0], "shipped learned optimizer"
  else:
    opt = "rule:mlp"
    note = ("no trained learned-optimizer file shipped yet: the mlp rule at "
            "its default meta-parameters (init_meta_params(PRNGKey(0)))")

  with tempfile.TemporaryDirectory(prefix="lopt-bench-eval-") as tmp:
    out = args.out or os.path.join(tmp, "report")
    t0 = time.perf_counter()
    rec = suite.evaluate(
        [opt], args.tasks, num_steps=args.steps, seeds=args.seeds,
        baseline_sweep=["adam"], num_lrs=args.num_lrs,
        cache_dir=os.path.join(tmp, "cache"), workers=args.workers,
        callback=lambda e, i: print(f"[bench/eval] {e} {i}", file=sys.stderr,
                                    flush=True))
    paths = report.write_all(rec, out)
    wall = time.perf_counter() - t0

  label = rec["config"]["optimizers"][0]
  per_task = {}
  compile_s = execute_s = 0.0
  for t, r in rec["tasks"].items():
    lr, tu = r["runs"][label], r["runs"]["adam (tuned)"]
    compile_s += lr["compile_s"] + tu["sweep_compile_s"]
    execute_s += lr["wall_s"] + tu["sweep_wall_s"]
    per_task[t] = {
        "compile_s": round(lr["compile_s"] + tu["sweep_compile_s"], 2),
        "execute_s": round(lr["wall_s"] + tu["sweep_wall_s"], 2),
        "speedup": r["speedups"][label]["adam (tuned)"]["text"],
        "best_adam_lr": tu["best_lr"],
        "step_ms_learned": round(1e3 * lr["step_time_s"], 4),
        "step_ms_adam": round(1e3 * tu["step_time_s"], 4),
    }
  summ = rec["summary"][label]["adam (tuned)"]
  result = {
      "wall_s": round(wall, 2),
      "tasks": len(rec["tasks"]),
      "steps": args.steps,
      "seeds": args.seeds,
      "optimizer": opt,
      "optimizer_note": note,
      "num_lrs": args.num_lrs,
      "workers": args.workers or suite.default_workers(),
      "sum_compile_s": round(compile_s, 2),
      "sum_execute_s": round(execute_s, 2),
      "speedup_median": summ["median"],
      "speedup_iqm": summ["iqm"],
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "report": paths["markdown"] if args.out else None,
      "per_task": per_task,
  }
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
