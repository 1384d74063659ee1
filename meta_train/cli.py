"""``lopt meta-train``: the meta-training console command.

Usage::

    lopt meta-train --config cfg.yaml --out runs/x [--set key=value ...]
                    [--resume] [--no-progress] [--print-config]
                    [--ray | --ray-address ADDRESS] [--workers N]
                    [--cpus-per-worker C] [--ray-mode sync|async]
                    [--max-staleness K] [--ray-timeout S]

``--config`` is YAML or JSON with :class:`~lopt.meta_train.config.
MetaTrainConfig` fields (defaults for the rest); ``--set`` overrides fields
(values parsed as YAML, e.g. ``--set num_tasks=4 --set
rule_config='{hidden_sizes: [8]}'``; ``--set rule_config.norm_sample=512``
sets one entry of ``rule_config`` and keeps the rest). ``--resume``
continues from the latest checkpoint in ``--out`` (with the config saved
there unless ``--config`` is given). Results land in ``--out``:
``final.lopt``, ``best.lopt``, ``summary.json``, ``tb/`` (TensorBoard) and
``checkpoints/``.

``--ray`` starts a local Ray with the machine's cores, ``--ray-address``
connects to a running cluster (e.g. ``ray start --head``); gradient workers
are Ray actors (:mod:`lopt.meta_train.distributed`). ``--workers``,
``--cpus-per-worker``, ``--ray-mode`` and ``--max-staleness`` set the config
fields of the same names. Without these flags Ray is not imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from lopt.meta_train.config import ConfigError, MetaTrainConfig

#: Fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("outer_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints", "eval_every", "workers",
                     "cpus_per_worker", "ray_mode", "max_staleness")

#: CLI flags that set config fields (distributed runs only).
_RAY_FIELDS = (("workers", "workers"), ("cpus_per_worker", "cpus_per_worker"),
               ("ray_mode", "ray_mode"), ("max_staleness", "max_staleness"))


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="lopt meta-train",
      description="Meta-train a learned optimizer (ES-Single / PES / "
      "truncated ES / FullES / TBPTT) and export it to a .lopt file.")
  p.add_argument("--config", help="YAML or JSON config file.")
  p.add_argument("--out", required=False, help="Output directory.")
  p.add_argument("--set", dest="overrides", action="append", default=[],
                 metavar="KEY=VALUE",
                 help="Override a config field (value parsed as YAML; "
                 "rule_config.NAME=VALUE sets one rule_config entry).")
  p.add_argument("--resume", action="store_true",
                 help="Resume from the latest checkpoint in --out.")
  p.add_argument("--no-progress", action="store_true",
                 help="No progress bar.")
  p.add_argument("--print-config", action="store_true",
                 help="Print the resolved config as JSON and exit.")
  g = p.add_argument_group("distributed (Ray)")
  where = g.add_mutually_exclusive_group()
  where.add_argument("--ray", action="store_true",
                     help="Start a local Ray with this machine's cores.")
  where.add_argument("--ray-address", metavar="ADDRESS",
                     help="Connect to a running Ray cluster (host:port or "
                     "'auto').")
  g.add_argument("--workers", type=int, help="Gradient workers (config "
                 "field; 0: one per CPU).")
  g.add_argument("--cpus-per-worker", type=float, help="Ray CPUs per worker.")
  g.add_argument("--ray-mode", choices=("sync", "async"),
                 help="sync (same result as one process) or async.")
  g.add_argument("--max-staleness", type=int,
                 help="async: drop estimates older than this many updates.")
  g.add_argument("--ray-timeout", type=float, default=600.0,
                 help="Longest wait for a remote call, seconds (600).")
  g.add_argument("--max-restarts", type=int, default=3,
                 help="Ray restarts of a dead worker (3).")
  g.add_argument("--multi-thread-xla", action="store_true",
                 help="Keep XLA's intra-op threads in the workers (default: "
                 "single-threaded).")
  g.add_argument("--no-compiled-graph", action="store_true",
                 help="Sync mode: plain Ray actor calls instead of one Ray "
                 "Compiled Graph execution per outer step.")
  g.add_argument("--no-pin-cpus", action="store_true",
                 help="Do not pin worker w to core w on a local Ray (pinning "
                 "is the default there when workers <= cores; never done on "
                 "a cluster).")
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
    use_ray = bool(args.ray or args.ray_address)
    ray_sets = [f"{field}={getattr(args, attr)}" for attr, field in
                _RAY_FIELDS if getattr(args, attr) is not None]
    if ray_sets and not use_ray:
      raise ConfigError("--workers / --cpus-per-worker / --ray-mode / "
                        "--max-staleness need --ray or --ray-address.")
    cfg = (MetaTrainConfig.from_file(path) if path else MetaTrainConfig())
    cfg = cfg.with_overrides(list(args.overrides) + ray_sets).validate()
    if args.resume and saved and os.path.exists(saved):
      old = MetaTrainConfig.from_file(saved).to_dict()
      diff = sorted(k for k, v in cfg.to_dict().items()
                    if old.get(k) != v and k not in RESUMABLE_CHANGES)
      if diff:
        raise ConfigError(
            f"--resume with a config that differs from {saved} in {diff}; "
            "only " + ", ".join(RESUMABLE_CHANGES) + " may change.")
    ckpt_dir = os.path.join(args.out, "checkpoints") if args.out else None
    if (not args.resume and not args.print_config and ckpt_dir
        and os.path.isdir(ckpt_dir) and any(
            n.isdigit() for n in os.listdir(ckpt_dir))):
      raise ConfigError(f"{args.out} already holds checkpoints; pass "
                        "--resume to continue that run or choose a new --out.")
  except ConfigError as e:
    return _err(str(e))
  if args.print_config:
    print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return 0
  if not args.out:
    return _err("--out is required.")

  if use_ray:
    from lopt.meta_train import distributed
    try:
      options = distributed.RayOptions.from_config(
          cfg, address=args.ray_address, timeout_s=args.ray_timeout,
          max_restarts=args.max_restarts,
          single_thread_xla=not args.multi_thread_xla,
          pin_cpus=False if args.no_pin_cpus else None,
          compiled_graph=not args.no_compiled_graph).validate()
    except ConfigError as e:
      return _err(str(e))
    _log_to_stderr()
    trainer = distributed.RayMetaTrainer(cfg, options)
    try:
      result = trainer.run(args.out, resume=args.resume,
                           progress=not args.no_progress)
    except ConfigError as e:
      return _err(str(e))
    except distributed.DistributedError as e:
      print(f"lopt meta-train: error: {e}", file=sys.stderr)
      return 1
  else:
    from lopt.meta_train.trainer import MetaTrainer
    trainer = MetaTrainer(cfg)
    result = trainer.run(args.out, resume=args.resume,
                         progress=not args.no_progress)
  summary = trainer.summary(result.state)
  summary["out"] = os.path.abspath(args.out)
  print(json.dumps(summary, sort_keys=True))
  return 0


def _log_to_stderr() -> None:
  """INFO lines of the distributed backend on stderr (once)."""
  lg = logging.getLogger("lopt.meta_train.distributed")
  if not lg.handlers:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    lg.addHandler(h)
    lg.setLevel(logging.INFO)


if __name__ == "__main__":
  sys.exit(main())
