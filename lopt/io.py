"""The learned-optimizer file: one file, a versioned header plus the weights.

Layout (all little-endian)::

    b"LOPT\\x00"                  5-byte magic
    uint64  header_length
    header  UTF-8 JSON: {"format_version", "rule", "rule_config",
                          "provenance", "tensors": [{"path", "shape",
                          "dtype", "offset", "nbytes"}], "payload_nbytes",
                          "payload_sha256", "library_version", "created"}
    payload raw tensor bytes, concatenated in "tensors" order

No pickle: loading a file never executes code. Every inconsistency
(truncation, checksum, version, unknown rule, tensor shapes that do not
match the rule) raises :class:`LearnedOptimizerFileError` (a ``ValueError``)
naming the problem. Writes go to a temporary file in the same directory that
is renamed over the target, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.resources
import json
import os
import struct
from pathlib import Path
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import files

PyTree = Any

MAGIC = b"LOPT\x00"
FORMAT_VERSION = 1
SUFFIX = ".lopt"


class LearnedOptimizerFileError(ValueError):
  """A learned-optimizer file that cannot be read as what it claims."""


@dataclasses.dataclass(frozen=True)
class LoadedOptimizer:
  """What :func:`read` returns: the rule, its meta-parameters and the header.
  """
  rule: Any
  theta: PyTree
  header: dict

  def as_optax(self, num_steps: int, param_meta: Optional[PyTree] = None
               ) -> optax.GradientTransformationExtraArgs:
    from lopt.optax_api import as_optax
    return as_optax(self.rule, self.theta, num_steps, param_meta)


def _json_default(o):
  if isinstance(o, (np.generic,)):
    return o.item()
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  if isinstance(o, (Path,)):
    return str(o)
  if dataclasses.is_dataclass(o) and not isinstance(o, type):
    return dataclasses.asdict(o)
  if isinstance(o, (tuple, set)):
    return list(o)
  return repr(o)


def _path_str(path) -> str:
  return jax.tree_util.keystr(path)


def save(path: Union[str, os.PathLike], rule: Any, theta: PyTree,
         **provenance) -> Path:
  """Writes ``rule`` and its meta-parameters ``theta`` to ``path``.

  Args:
    path: target file (``.lopt`` is conventional); parent dirs are created.
    rule: a registered rule (``rule.name`` and ``rule.config()`` are stored).
    theta: meta-parameters, a pytree with the structure of
      ``rule.init_meta_params``.
    **provenance: JSON-serialisable facts about how theta was made
      (meta-training config, outer steps, estimator, tasks, compute...).

  Returns:
    The path written. The write is atomic (temp file + rename).
  """
  import lopt
  from lopt import rules as rules_lib

  if rule.name not in rules_lib.names():
    raise ValueError(f"Cannot save rule {rule.name!r}: not in the registry "
                     f"({', '.join(rules_lib.names())}).")
  _check_theta(rule, theta, where="save")
  leaves_with_path = jax.tree_util.tree_flatten_with_path(theta)[0]
  tensors, chunks, offset = [], [], 0
  for kp, leaf in leaves_with_path:
    arr = np.asarray(jax.device_get(leaf))
    if arr.dtype == object:
      raise ValueError(f"theta leaf {_path_str(kp)} is not numeric.")
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes(order="C")
    tensors.append({"path": _path_str(kp), "shape": list(arr.shape),
                    "dtype": arr.dtype.name, "offset": offset,
                    "nbytes": len(data)})
    chunks.append(data)
    offset += len(data)
  payload = b"".join(chunks)
  header = {
      "format_version": FORMAT_VERSION,
      "rule": rule.name,
      "rule_config": rule.config(),
      "provenance": provenance,
      "library_version": lopt.__version__,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "tensors": tensors,
      "payload_nbytes": len(payload),
      "payload_sha256": hashlib.sha256(payload).hexdigest(),
  }
  head = json.dumps(header, default=_json_default, sort_keys=True).encode()
  blob = MAGIC + struct.pack("<Q", len(head)) + head + payload

  path = Path(path)
  files.write_bytes(path, blob)
  return path


def shipped_dir() -> Optional[Path]:
  """The directory of the shipped learned optimizers (the installed
  ``checkpoints/``, package ``lopt.checkpoints``); None without one."""
  try:
    return Path(str(importlib.resources.files("lopt.checkpoints")))
  except (ModuleNotFoundError, FileNotFoundError):
    return None


def shipped_names() -> tuple[str, ...]:
  """Names of the learned optimizers shipped in ``checkpoints/``."""
  root = shipped_dir()
  if root is None or not root.is_dir():
    return ()
  return tuple(sorted(p.name[:-len(SUFFIX)] for p in root.iterdir()
                      if p.name.endswith(SUFFIX)))


def resolve(name_or_path: Union[str, os.PathLike]) -> Path:
  """A path as given if it exists, else a file shipped in ``checkpoints/``.
  """
  p = Path(name_or_path)
  if p.is_file():
    return p
  name = str(name_or_path)
  root = shipped_dir()
  if root is not None and os.sep not in name and not name.endswith(SUFFIX):
    cand = root / (name + SUFFIX)
    if cand.is_file():
      return cand
  shipped = ", ".join(shipped_names()) or "none"
  raise FileNotFoundError(
      f"No learned-optimizer file {str(name_or_path)!r}: not an existing "
      f"path, and not a shipped name (shipped: {shipped}).")


def read(name_or_path: Union[str, os.PathLike]) -> LoadedOptimizer:
  """Reads a learned-optimizer file (a path or a shipped name).

  Raises:
    FileNotFoundError: no such file or shipped name.
    LearnedOptimizerFileError: truncated, corrupted, wrong format version,
      unknown rule, or tensors that do not match the rule's meta-parameters.
  """
  from lopt import rules as rules_lib

  path = resolve(name_or_path)
  blob = path.read_bytes()
  where = f"{path}"
  if len(blob) < len(MAGIC) + 8 or blob[:len(MAGIC)] != MAGIC:
    raise LearnedOptimizerFileError(
        f"{where} is not a learned-optimizer file (bad magic bytes).")
  (hlen,) = struct.unpack("<Q", blob[len(MAGIC):len(MAGIC) + 8])
  start = len(MAGIC) + 8
  if start + hlen > len(blob):
    raise LearnedOptimizerFileError(
        f"{where} is truncated: header needs {hlen} bytes, file has "
        f"{len(blob) - start}.")
  try:
    header = json.loads(blob[start:start + hlen].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise LearnedOptimizerFileError(
        f"{where} has a corrupted header: {e}.") from None
  if not isinstance(header, dict):
    raise LearnedOptimizerFileError(f"{where} has a corrupted header.")
  version = header.get("format_version")
  if version != FORMAT_VERSION:
    raise LearnedOptimizerFileError(
        f"{where} has format version {version!r}; this lopt "
        f"reads version {FORMAT_VERSION}. Re-export it with a matching lopt.")
  payload = blob[start + hlen:]
  try:
    expected = int(header["payload_nbytes"])
    digest = header["payload_sha256"]
    rule_name = header["rule"]
    rule_config = header["rule_config"]
    tensors = header["tensors"]
  except (KeyError, TypeError, ValueError) as e:
    raise LearnedOptimizerFileError(
        f"{where} has an incomplete header (missing {e}).") from None
  if len(payload) != expected:
    raise LearnedOptimizerFileError(
        f"{where} is truncated or padded: payload has {len(payload)} bytes, "
        f"header says {expected}.")
  if hashlib.sha256(payload).hexdigest() != digest:
    raise LearnedOptimizerFileError(
        f"{where} is corrupted: payload checksum does not match the header.")
  if rule_name not in rules_lib.names():
    raise LearnedOptimizerFileError(
        f"{where} holds rule {rule_name!r}, which this lopt does not know "
        f"(known: {', '.join(rules_lib.names())}).")
  if not isinstance(rule_config, dict):
    raise LearnedOptimizerFileError(
        f"{where} has a corrupted header: rule_config must be a JSON object, "
        f"got {type(rule_config).__name__}.")
  # A file written before the rule gained a config key behaves as the rule
  # did then.
  rule_config = {**rules_lib.config_added(rule_name), **rule_config}
  try:
    rule = rules_lib.get(rule_name, **rule_config)
  except (TypeError, ValueError) as e:
    raise LearnedOptimizerFileError(
        f"{where}: bad rule_config for rule {rule_name!r}: {e}") from None

  template = jax.eval_shape(rule.init_meta_params, jax.random.PRNGKey(0))
  t_paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  if len(t_paths) != len(tensors):
    raise LearnedOptimizerFileError(
        f"{where}: rule {rule_name!r} has {len(t_paths)} meta-parameter "
        f"tensors, the file has {len(tensors)}.")
  leaves = []
  for (kp, spec), t in zip(t_paths, tensors):
    name = _path_str(kp)
    if t["path"] != name or tuple(t["shape"]) != tuple(spec.shape):
      raise LearnedOptimizerFileError(
          f"{where}: tensor {t['path']} {tuple(t['shape'])} does not match "
          f"rule {rule_name!r}'s {name} {tuple(spec.shape)}.")
    try:
      dtype = np.dtype(t["dtype"]).newbyteorder("<")
      raw = payload[t["offset"]:t["offset"] + t["nbytes"]]
      arr = np.frombuffer(raw, dtype=dtype).reshape(t["shape"])
    except (TypeError, ValueError) as e:
      raise LearnedOptimizerFileError(
          f"{where}: tensor {name} cannot be decoded ({e}).") from None
    leaves.append(jnp.asarray(arr.astype(spec.dtype)))
  theta = jax.tree.unflatten(treedef, leaves)
  return LoadedOptimizer(rule=rule, theta=theta, header=header)


def load(name_or_path: Union[str, os.PathLike], num_steps: int,
         param_meta: Optional[PyTree] = None
         ) -> optax.GradientTransformationExtraArgs:
  """Loads a learned optimizer as an optax transformation.

  Example::

      opt = lopt.load("mlp_digits", num_steps=2000)
      state = opt.init(params)
      updates, state = opt.update(grads, state, params, value=loss)

  Args:
    name_or_path: a file path, or the name of a file shipped in
      ``checkpoints/`` (see :func:`shipped_names`).
    num_steps: planned number of training steps (the rule's horizon).
    param_meta: optional :class:`lopt.ParamMeta` pytree (muP rules).
  """
  return read(name_or_path).as_optax(num_steps, param_meta)


def _check_theta(rule, theta, where: str):
  template = jax.eval_shape(rule.init_meta_params, jax.random.PRNGKey(0))
  want = jax.tree.structure(template)
  got = jax.tree.structure(theta)
  if want != got:
    raise ValueError(f"{where}: theta does not have the structure of rule "
                     f"{rule.name!r}'s meta-parameters.")
  for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(theta)):
    if tuple(a.shape) != tuple(jnp.shape(b)):
      raise ValueError(f"{where}: theta leaf of shape {jnp.shape(b)} where "
                       f"rule {rule.name!r} expects {a.shape}.")
