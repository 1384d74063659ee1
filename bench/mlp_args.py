"""Command-line options for the ``mlp`` rule's config, shared by the
meta-training benchmarks (bench/meta_train.py, bench/ray_scaling.py).

Without them a benchmark measures the rule's defaults (since session 17: the
17-feature ``lean`` preset and a 1024-element normaliser sample);
``--features all --norm-sample 2048`` measures the shipped optimizers' rule.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict


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


def mlp_config(args: argparse.Namespace) -> Dict[str, Any]:
  """The mlp rule's config overrides given on the command line (empty: the
  rule's defaults)."""
  return {k: v for k, v in (("features", args.features),
                            ("norm_sample", args.norm_sample))
          if v is not None}


def mlp_report(args: argparse.Namespace, rule: str = "mlp") -> Dict[str, Any]:
  """The resolved feature count and normaliser sample of ``rule`` built with
  these options, for a benchmark's JSON ``config``."""
  import lopt.rules
  r = lopt.rules.get(rule, **mlp_config(args))
  return {"mlp_features": len(r.features), "mlp_norm_sample": r.norm_sample}
