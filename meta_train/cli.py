"""``lopt meta-train``: the meta-training console command.

Usage::

    lopt meta-train --config cfg.yaml --out runs/x [--set key=value ...]
                    [--resume] [--no-progress] [--print-config]

``--config`` is YAML or JSON with :class:`~lopt.meta_train.config.
MetaTrainConfig` fields (defaults for the rest); ``--set`` overrides fields
(values parsed as YAML, e.g. ``--set num_tasks=4 --set
rule_config='{hidden_sizes: [8]}'``). ``--resume`` continues from the latest
checkpoint in ``--out`` (with the config saved there unless ``--config`` is
given). Results land in ``--out``: ``final.lopt``, ``best.lopt``,
``summary.json``, ``tb/`` (TensorBoard) and ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from lopt.meta_train.config import ConfigError, MetaTrainConfig

#: Fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("outer_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints", "eval_every")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="lopt meta-train",
      description="Meta-train a learned optimizer (ES-Single / PES / "
      "truncated ES / FullES / TBPTT) and export it to a .lopt file.")
  p.add_argument("--config", help="YAML or JSON config file.")
  p.add_argument("--out", required=False, help="Output directory.")
  p.add_argument("--set", dest="overrides", action="append", default=[],
                 metavar="KEY=VALUE", help="Override a config field.")
  p.add_argument("--resume", action="store_true",
                 help="Resume from the latest checkpoint in --out.")
  p.add_argument("--no-progress", action="store_true",
                 help="No progress bar.")
  p.add_argument("--print-config", action="store_true",
                 help="Print the resolved config as JSON and exit.")
  return p


def _err(msg: str) -> int:
  print(f"lopt meta-train: error: {msg}", file=sys.stderr)
  return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  try:
    path = args.config
    saved = (os.path.join(args.out, "config.json") if args.out else None)
    if args.resume and not args.out:
      raise ConfigError("--resume needs --out.")
    if path is None and args.resume and saved and os.path.exists(saved):
      path = saved
    cfg = (MetaTrainConfig.from_file(path) if path else MetaTrainConfig())
    cfg = cfg.with_overrides(args.overrides).validate()
    if args.resume and saved and os.path.exists(saved):
      old = MetaTrainConfig.from_file(saved).to_dict()
      diff = sorted(k for k, v in cfg.to_dict().items()
                    if old.get(k) != v and k not in RESUMABLE_CHANGES)
      if diff:
        raise ConfigError(
            f"--resume with a config that differs from {saved} in {diff}; "
            "only " + ", ".join(RESUMABLE_CHANGES) + " may change.")
  except ConfigError as e:
    return _err(str(e))
  if args.print_config:
    print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return 0
  if not args.out:
    return _err("--out is required.")

  from lopt.meta_train.trainer import MetaTrainer
  trainer = MetaTrainer(cfg)
  result = trainer.run(args.out, resume=args.resume,
                       progress=not args.no_progress)
  summary = trainer.summary(result.state)
  summary["out"] = os.path.abspath(args.out)
  print(json.dumps(summary, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
