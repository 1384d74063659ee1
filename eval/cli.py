"""``lopt eval``: evaluate optimizers on held-out tasks against tuned baselines.

Example::

    lopt eval --optimizer my_opt.lopt --optimizer adam:lr=1e-3 \\
        --tasks heldout --steps 2000 --seeds 3 --out reports/my_opt

writes ``reports/my_opt/{results.json, results.md, curves_<task>.png,
speedup.png}``, prints the markdown tables, and exits 0 (2 on bad input).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

from lopt.eval import cache as cache_lib
from lopt.eval import specs as specs_lib
from lopt.progress import Progress


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="lopt eval",
      description="Train held-out tasks with learned optimizers and "
      "baselines over several seeds; report final loss, speedup over tuned "
      "baselines, tables and plots.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument(
      "--optimizer", "-o", action="append", default=[], metavar="SPEC",
      help="learned-optimizer file or shipped name, optionally with "
      "':scale=C' (every update multiplied by C, e.g. "
      "'mlp_digits:scale=0.5'); 'rule:NAME' (a rule at its default "
      "meta-parameters); or a baseline such as 'adam:lr=1e-3', "
      "'sgdm:lr=0.1,momentum=0.9', 'adamw:lr=1e-3,wd=1e-4' (baselines: "
      f"{', '.join(specs_lib.BASELINES)}). Repeatable.")
  p.add_argument("--tasks", "-t", default="heldout",
                 help="'heldout' or a comma-separated list of task names")
  p.add_argument("--steps", type=int, default=1000,
                 help="training steps per run")
  p.add_argument("--seeds", default="3",
                 help="number of seeds N (seeds 0..N-1) or a list '0,1,2'")
  p.add_argument("--out", default=None,
                 help="output directory (default: reports/eval)")
  p.add_argument(
      "--baseline-sweep", default="adam",
      help="comma-separated baselines to tune per task by a log-spaced "
      "learning-rate sweep ('none' to skip); the first is the reference")
  p.add_argument(
      "--baseline-steps", type=int, default=None,
      help="steps of each run of the baseline sweeps (default: --steps). A "
      "speedup above 1 needs a baseline that runs longer than the optimizer: "
      "the measurable speedup is at most baseline-steps / steps (e.g. 2000 "
      "with --steps 1000 measures up to 2x)")
  p.add_argument("--num-lrs", type=int, default=7,
                 help="points in each learning-rate sweep")
  p.add_argument("--lr-range", default=None, metavar="LO:HI",
                 help="sweep range for every baseline (default: per "
                 "baseline, e.g. adam 1e-4:1e-1)")
  p.add_argument("--eval-every", type=int, default=None,
                 help="validation interval in steps (default ~steps/20)")
  p.add_argument("--valid-batches", type=int, default=2,
                 help="validation batches averaged at each evaluation point")
  p.add_argument("--test-batches", type=int, default=0,
                 help="test batches evaluated after the last step (0: none)")
  p.add_argument("--window", type=int, default=None,
                 help="smoothing window in steps (default 5%% of steps)")
  p.add_argument("--cache-dir", default=None,
                 help="baseline-run cache (default $LOPT_CACHE_DIR or "
                 "~/.cache/lopt/eval)")
  p.add_argument("--no-cache", action="store_true",
                 help="do not read or write the baseline cache")
  p.add_argument("--no-plots", action="store_true", help="skip PNG plots")
  p.add_argument("--tensorboard", action="store_true",
                 help="also write TensorBoard curves to OUT/tb")
  p.add_argument("--workers", type=int, default=None,
                 help="units compiled/executed concurrently (default: "
                 "min(2, cores))")
  p.add_argument("--no-progress", "--quiet", "-q", dest="quiet",
                 action="store_true",
                 help="no progress bar (--no-progress, as in lopt meta-train)")
  return p


def _parse_seeds(text: str) -> object:
  try:
    if "," in text:
      return tuple(int(s) for s in text.split(",") if s.strip())
    return int(text)
  except ValueError:
    raise ValueError(f"--seeds must be a count like 3 or a list like 0,1,2; "
                     f"got {text!r}.") from None


def _parse_range(text: Optional[str]):
  if text is None:
    return None
  try:
    lo, hi = (float(x) for x in text.split(":"))
  except ValueError:
    raise ValueError(f"--lr-range must look like 1e-4:1e-1, got {text!r}."
                     ) from None
  if not (0 < lo <= hi):
    raise ValueError(f"--lr-range needs 0 < LO <= HI, got {text!r}.")
  return lo, hi


class _Progress:
  """The callback of :func:`lopt.eval.suite.evaluate` that drives a
  :class:`lopt.progress.Progress` (one count per finished run)."""

  def __init__(self, enabled: bool, stream=None):
    self.enabled = enabled
    self.stream = stream
    self.bar: Optional[Progress] = None
    self.done = 0

  def __call__(self, event, info):
    if not self.enabled:
      return
    if event == "start":
      self.done = 0
      self.bar = Progress("eval", int(info["total"]), stream=self.stream)
      if self.bar.plain:
        print(f"eval: {self.bar.total} runs", file=self.bar.stream,
              flush=True)
    elif event == "done" and self.bar is not None:
      self.done += 1
      src = " (cached)" if info.get("from_cache") else ""
      self.bar.update(self.done, f"{info['task']}: {info['what']}{src}")

  def close(self):
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of ``lopt eval``; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # --help (0) or a usage error (2)
    return int(e.code or 0)

  progress = _Progress(enabled=not args.quiet)
  try:
    from lopt.eval import report, suite
    seeds = _parse_seeds(args.seeds)
    sweep: List[str] = [] if args.baseline_sweep.strip().lower() in (
        "", "none") else [b.strip() for b in args.baseline_sweep.split(",")
                          if b.strip()]
    rng = _parse_range(args.lr_range)
    lrs = None
    if rng is not None:
      lrs = {specs_lib.parse_optimizer(b).name:
             specs_lib.lr_grid("adam", args.num_lrs, rng) for b in sweep}
    cache_dir = None if args.no_cache else (args.cache_dir or
                                            cache_lib.default_cache_dir())
    out = args.out or os.path.join("reports", "eval")
    record = suite.evaluate(
        args.optimizer, args.tasks, num_steps=args.steps, seeds=seeds,
        baseline_sweep=sweep, lrs=lrs, num_lrs=args.num_lrs,
        eval_every=args.eval_every, window=args.window, cache_dir=cache_dir,
        num_valid_batches=args.valid_batches,
        num_test_batches=args.test_batches,
        callback=progress, workers=args.workers,
        baseline_steps=args.baseline_steps)
    progress.close()
    paths = report.write_all(record, out, plots=not args.no_plots,
                             tensorboard=args.tensorboard)
  except ValueError as e:
    progress.close()
    print(f"lopt eval: error: {e}", file=sys.stderr)
    return 2
  finally:
    progress.close()

  print(report.markdown(record))
  print(f"Results: {paths['json']}")
  print(f"Table:   {paths['markdown']}")
  if "curves" in paths:
    print(f"Plots:   {', '.join(paths['curves'])}")
  if "speedup" in paths:
    print(f"Speedup: {paths['speedup']}")
  if "tensorboard" in paths:
    print(f"TensorBoard: tensorboard --logdir {paths['tensorboard']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
