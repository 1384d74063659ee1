"""What a learned-optimizer file holds: ``lopt info`` and :func:`describe`.

A ``.lopt`` file carries its own description (:mod:`lopt.io`): the rule and
its config, the meta-parameters, and the provenance that ``lopt
meta-train`` wrote (estimator, task families, outer steps, the step and
loss of the theta that was kept, the full meta-training config). This
module reads it back for people:

    lopt info                      # the shipped learned optimizers, one line each
    lopt info mlp_digits_lm        # one file in full (a shipped name or a path)
    lopt info runs/x/best.lopt --json

Reading goes through :func:`lopt.read`, so a file that ``lopt info``
describes is one that :func:`lopt.load` accepts: the checksum is verified
and the tensors are checked against the rule. Needs only the core package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Union

import jax
import numpy as np

from lopt.base import tree_size

#: Provenance keys shown first in the text form (the rest follow sorted).
_PROVENANCE_ORDER = ("kind", "estimator", "task_family", "outer_steps",
                     "best_step", "best_loss", "date", "library_version")


def describe(name_or_path: Union[str, os.PathLike]) -> Dict[str, Any]:
  """A JSON-serialisable description of a learned-optimizer file.

  Args:
    name_or_path: a path, or the name of a file shipped in ``checkpoints/``.

  Returns:
    A dict with ``name``, ``path``, ``shipped`` (bool), ``model_card`` (the
    shipped file's card, else None), ``rule``, ``rule_config`` (the rule's
    full config as loaded, defaults included: a file written before a config
    key existed reports the value it loads with), ``stored_rule_config`` (as
    written in the file), ``num_meta_params``, ``tensors`` (path, shape,
    dtype, the RMS of each, and the value of a scalar), ``format_version``,
    ``library_version``, ``created``, ``payload_sha256`` and ``provenance``.

  Raises:
    FileNotFoundError, lopt.LearnedOptimizerFileError: as :func:`lopt.read`.
  """
  from lopt import io

  path = io.resolve(name_or_path)
  loaded = io.read(path)
  header = loaded.header
  root = io.shipped_dir()
  shipped = root is not None and path.resolve().parent == root.resolve()
  card = path.with_suffix(".md") if shipped else None
  leaves = jax.tree_util.tree_leaves(loaded.theta)
  tensors = []
  for t, leaf in zip(header["tensors"], leaves):
    a = np.asarray(leaf, np.float64)
    tensors.append({"path": t["path"], "shape": list(t["shape"]),
                    "dtype": t["dtype"],
                    "rms": float(np.sqrt(np.mean(a * a))) if a.size else 0.0,
                    "value": float(a) if a.ndim == 0 else None})
  return {
      "name": path.name[:-len(io.SUFFIX)] if path.name.endswith(io.SUFFIX)
              else path.name,
      "path": str(path),
      "shipped": shipped,
      "model_card": str(card) if card is not None and card.is_file() else None,
      "rule": header["rule"],
      # JSON types, converted as lopt.save writes the header.
      "rule_config": json.loads(json.dumps(loaded.rule.config(),
                                           default=io._json_default)),
      "stored_rule_config": header["rule_config"],
      "num_meta_params": tree_size(loaded.theta),
      "tensors": tensors,
      "format_version": header["format_version"],
      "library_version": header.get("library_version"),
      "created": header.get("created"),
      "payload_sha256": header["payload_sha256"],
      "provenance": header.get("provenance", {}),
  }


def format_text(info: Dict[str, Any]) -> str:
  """The human-readable form of :func:`describe`'s dict."""
  prov = dict(info["provenance"])
  config = prov.pop("config", None)
  lines = [f"{info['name']}  ({info['path']})"]
  if info["shipped"]:
    lines.append(f"  shipped with lopt; model card: {info['model_card']}")
  lines += [
      f"  rule               {info['rule']}",
      f"  meta-parameters    {info['num_meta_params']} in "
      f"{len(info['tensors'])} tensors",
      f"  written            {info['created']} by lopt "
      f"{info['library_version']} (file format {info['format_version']})",
      f"  payload sha256     {info['payload_sha256']} (verified)",
      "  rule config (as loaded, defaults included)",
  ]
  lines += _key_lines(_named_presets(info["rule_config"]))
  if prov:
    lines.append("  provenance")
    keys = [k for k in _PROVENANCE_ORDER if k in prov]
    keys += sorted(k for k in prov if k not in _PROVENANCE_ORDER)
    lines += _key_lines({k: prov[k] for k in keys}, sort=False)
  else:
    lines.append("  provenance         none recorded")
  if config:
    # As recorded: settings left to the defaults of the lopt that wrote the
    # file are not repeated here, so this is a record, not a recipe.
    lines.append("  meta-training config (as recorded by lopt meta-train)")
    lines += _key_lines(config)
  lines.append("  tensors")
  for t in info["tensors"]:
    shape = "x".join(map(str, t["shape"])) or "scalar"
    stat = (f"value {t['value']:.6g}" if t.get("value") is not None
            else f"rms {t['rms']:.4g}")
    lines.append(f"    {t['path']:32s}{shape:>8s}  {t['dtype']:8s}{stat}")
  return "\n".join(lines)


def _key_lines(d: Dict[str, Any], sort: bool = True) -> List[str]:
  keys = sorted(d) if sort else list(d)
  width = max([len(k) for k in keys] + [17]) + 2
  return [f"    {k:{width}s}{_compact(d[k])}" for k in keys]


def summary_table(infos: Sequence[Dict[str, Any]]) -> str:
  """One line per file: name, rule, meta-parameters, meta-training."""
  rows = [("name", "rule", "meta-params", "outer steps", "estimator",
           "task families")]
  for info in infos:
    p = info["provenance"]
    rows.append((info["name"], info["rule"], str(info["num_meta_params"]),
                 str(p.get("outer_steps", "-")), str(p.get("estimator", "-")),
                 _families(p.get("task_family", "-"))))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
  return "\n".join(
      "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1]
      for r in rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``lopt info [NAME_OR_PATH ...] [--json]``."""
  from lopt import io

  ap = argparse.ArgumentParser(
      prog="lopt info",
      description="Describe learned-optimizer files: rule and config, "
      "meta-parameters, and how they were meta-trained. Without arguments, "
      "lists the learned optimizers shipped with lopt.")
  ap.add_argument("files", nargs="*", metavar="NAME_OR_PATH",
                  help="a shipped name (see the list) or a .lopt path")
  ap.add_argument("--json", action="store_true",
                  help="print JSON (a list of descriptions) instead of text")
  args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
  names = list(args.files) or list(io.shipped_names())
  infos = []
  for name in names:
    try:
      infos.append(describe(name))
    except (FileNotFoundError, io.LearnedOptimizerFileError) as e:
      print(f"lopt info: {e}", file=sys.stderr)
      return 2
  if args.json:
    print(json.dumps(infos, indent=1, sort_keys=True))
  elif args.files:
    print("\n\n".join(format_text(i) for i in infos))
  elif infos:
    print(summary_table(infos))
    print("\nDetails: lopt info NAME. Use one: opt = lopt.load(NAME, "
          "num_steps=N)")
  else:
    print("No learned optimizers are shipped with this installation.")
  return 0


def _named_presets(config: Dict[str, Any]) -> Dict[str, Any]:
  """The rule config with a feature list that equals a preset of the ``mlp``
  rules (``lopt.rules.mlp.FEATURE_PRESETS``) shown by the preset's name."""
  feats = config.get("features")
  if not isinstance(feats, list):
    return config
  from lopt.rules.mlp import FEATURE_PRESETS
  for name, preset in FEATURE_PRESETS.items():
    if tuple(feats) == tuple(preset):
      return {**config, "features": f"{name} ({len(preset)} features)"}
  return config


def _compact(v) -> str:
  if isinstance(v, float):
    return f"{v:.6g}" if math.isfinite(v) else str(v)
  if isinstance(v, (dict, list)):
    return json.dumps(v, sort_keys=True, separators=(", ", ": "))
  return str(v)


def _families(v) -> str:
  if isinstance(v, (list, tuple)):
    return ", ".join(map(str, v))
  return ", ".join(s for s in str(v).split(",") if s)
