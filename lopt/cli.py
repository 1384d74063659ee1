"""The ``lopt`` console command: dispatches to sub-commands.

``lopt meta-train ...`` and ``lopt eval ...`` need the ``lopt[train]`` extra;
they are imported lazily so that the core package stays light. ``lopt info``
needs only the core.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

_COMMANDS = {
    "meta-train": ("lopt.meta_train.cli", "Meta-train a learned optimizer."),
    "eval": ("lopt.eval.cli", "Evaluate optimizers on held-out tasks."),
    "quickstart": ("lopt.cli", "Short meta-training run, export, then "
                   "evaluation against Adam on a held-out task."),
    "info": ("lopt.info", "Describe learned-optimizer files (the shipped "
             "ones without arguments)."),
}

#: The main job: a short real meta-training run on the default family.
QUICKSTART_META_TRAIN = (
    "rule=mlp", "task_family=digits_mlp", "estimator=es_single",
    "num_tasks=8", "trunc_length=50", "horizon_min=100", "horizon_max=1000",
    "outer_steps=300", "learning_rate=0.003", "warmup_steps=20",
    "schedule=cosine", "log_every=10", "checkpoint_every=100",
    "eval_every=100", "eval_tasks=4", "eval_steps=300")
QUICKSTART_EVAL_TASK = "wine_mlp"


def quickstart(argv: Sequence[str]) -> int:
  """``lopt quickstart [--out DIR] [--outer-steps N] [--set k=v ...]``."""
  import argparse
  import os

  ap = argparse.ArgumentParser(
      prog="lopt quickstart",
      description="Meta-train the per-parameter MLP rule on the digits MLP "
      "family for a few minutes, export it, and evaluate it against Adam "
      f"(lr 1e-3 and a tuned learning-rate sweep) on the held-out task "
      f"{QUICKSTART_EVAL_TASK!r}.")
  ap.add_argument("--out", default="runs/quickstart")
  ap.add_argument("--outer-steps", type=int, default=None)
  ap.add_argument("--eval-steps", type=int, default=1000)
  ap.add_argument("--task", default=QUICKSTART_EVAL_TASK,
                  help="held-out task to evaluate on")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="extra meta-training config overrides")
  args = ap.parse_args(list(argv))
  from lopt import cpu_flags
  cpu_flags.apply()           # single-threaded: one small process per job
  from lopt.eval import cli as eval_cli
  from lopt.meta_train import cli as mt_cli

  sets = list(QUICKSTART_META_TRAIN)
  if args.outer_steps is not None:
    sets.append(f"outer_steps={args.outer_steps}")
  sets += args.set
  train_dir = os.path.join(args.out, "meta_train")
  print(f"[1/2] meta-training -> {train_dir} (TensorBoard: tensorboard "
        f"--logdir {train_dir}/tb)", flush=True)
  mt_argv = ["--out", train_dir]
  for s in sets:
    mt_argv += ["--set", s]
  rc = mt_cli.main(mt_argv)
  if rc:
    return rc
  learned = os.path.join(train_dir, "best.lopt")
  report = os.path.join(args.out, "eval")
  print(f"[2/2] evaluating {learned} against Adam on {args.task} -> "
        f"{report}", flush=True)
  return eval_cli.main(["--optimizer", learned, "--optimizer",
                        "adam:lr=1e-3", "--tasks", args.task,
                        "--steps", str(args.eval_steps), "--seeds", "3",
                        "--baseline-sweep", "adam",
                        # Sweeps run twice as long: speedups up to 2x show.
                        "--baseline-steps", str(2 * args.eval_steps),
                        "--out", report])


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print("usage: lopt {" + ",".join(_COMMANDS) + "} [options]\n")
    for name, (_, doc) in _COMMANDS.items():
      print(f"  {name:12s} {doc}")
    return 0
  if argv[0] in ("-V", "--version"):
    import lopt
    print(lopt.__version__)
    return 0
  cmd = argv[0]
  if cmd not in _COMMANDS:
    print(f"lopt: unknown command {cmd!r}; expected one of "
          f"{', '.join(_COMMANDS)}.", file=sys.stderr)
    return 2
  # Compiled programs are kept on disk for the next run (lopt.compile_cache;
  # $LOPT_XLA_CACHE_DIR=off turns it off). Before any compilation.
  from lopt import compile_cache
  compile_cache.enable()
  if cmd == "quickstart":
    try:
      return quickstart(argv[1:])
    except ImportError as e:
      print(f"lopt quickstart: needs the training extras ({e}). Install "
            "them with `pip install 'lopt[train]'`.", file=sys.stderr)
      return 2
  # 512-bit vectors where the CPU has them (lopt.cpu_flags); XLA's
  # threading is left as it is. Before any jax computation.
  from lopt import cpu_flags
  cpu_flags.apply(single_thread=False)
  try:
    module = importlib.import_module(_COMMANDS[cmd][0])
  except ImportError as e:
    print(f"lopt {cmd}: needs the training extras ({e}). Install them with "
          "`pip install 'lopt[train]'`.", file=sys.stderr)
    return 2
  try:
    return int(module.main(argv[1:]) or 0)
  except BrokenPipeError:
    # The reader went away (``lopt info | head``): stop quietly, as other
    # command-line tools do, instead of a traceback.
    import os
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


if __name__ == "__main__":
  sys.exit(main())
