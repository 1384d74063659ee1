"""Optimizer specifications: parse ``"adam:lr=1e-3"``-style strings.

An optimizer to evaluate is named by one string, in one of three forms:

* a **baseline spec** ``NAME[:KEY=VALUE[,KEY=VALUE...]]`` where ``NAME`` is one
  of :data:`BASELINES` (``sgd``, ``sgdm``, ``adam``, ``adamw``, ``rmsprop``),
  e.g. ``adam:lr=1e-3``, ``sgdm:lr=0.1,momentum=0.9``,
  ``adamw:lr=3e-4,wd=1e-2``. Keys not given take the defaults in
  :data:`BASELINES`;
* a **rule at its default meta-parameters** ``rule:NAME[,KEY=VALUE...]``
  (``lopt.rules.get(NAME, **config)`` with ``init_meta_params(PRNGKey(0))``),
  useful before any learned optimizer has been trained;
* anything else is a **learned-optimizer file or shipped name**, resolved by
  ``lopt.read`` / ``lopt.load`` (``checkpoints/NAME.lopt`` or a path),
  optionally followed by ``:scale=C``: every update multiplied by ``C > 0``
  (``optax.chain(lopt.load(...), optax.scale(C))``), e.g.
  ``mlp_digits_lm:scale=0.5`` -- a learned optimizer's step-size knob, to
  measure how far its step is from the best one for a task.

Bad input raises one :class:`ValueError` that says what was wrong and what to
write instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import optax

Hparams = Mapping[str, Any]

#: Baselines: name -> (default hyper-parameters, documentation). ``lr`` is
#: always present and is the (traceable) learning rate swept by tuning.
BASELINES: Dict[str, Dict[str, float]] = {
    "sgd": {"lr": 0.1},
    "sgdm": {"lr": 0.1, "momentum": 0.9},
    "adam": {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8},
    "adamw": {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "wd": 1e-4},
    "rmsprop": {"lr": 1e-3, "decay": 0.9, "eps": 1e-8},
}

#: Default log-spaced learning-rate grids for tuning (7 points, half-decade
#: spacing: 10^a, 10^(a+1/2), ..., 10^(a+3)).
DEFAULT_LR_GRIDS: Dict[str, Tuple[float, float]] = {
    "sgd": (1e-3, 1.0),
    "sgdm": (1e-4, 1e-1),
    "adam": (1e-4, 1e-1),
    "adamw": (1e-4, 1e-1),
    "rmsprop": (1e-5, 1e-2),
}


#: Hyper-parameters a learned optimizer's spec may take (``NAME:scale=C``):
#: the multiplier of every update (default 1).
LEARNED_HPARAMS: Dict[str, float] = {"scale": 1.0}

#: File stems of the learned optimizers ``lopt meta-train`` exports.
EXPORT_STEMS: Tuple[str, ...] = ("best", "final")


def lr_grid(name: str, num: int = 7,
            bounds: Optional[Tuple[float, float]] = None) -> Tuple[float, ...]:
  """Log-spaced learning rates ``lo * (hi/lo)^(i/(num-1))``, i = 0..num-1
  (rounded to 6 significant digits)."""
  if num < 1:
    raise ValueError(f"Number of learning rates must be >= 1, got {num}.")
  lo, hi = bounds if bounds is not None else DEFAULT_LR_GRIDS[name]
  if not (lo > 0 and hi >= lo):
    raise ValueError(
        f"Learning-rate bounds must satisfy 0 < lo <= hi, got ({lo}, {hi}).")
  if num == 1:
    return (float(lo),)
  a, b = math.log10(lo), math.log10(hi)
  return tuple(float(f"{10 ** (a + (b - a) * i / (num - 1)):.6g}")
               for i in range(num))


def _fmt(v: Any) -> str:
  if isinstance(v, bool):
    return str(v).lower()
  if isinstance(v, float):
    return f"{v:g}"
  return str(v)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """A parsed optimizer string.

  Attributes:
    kind: ``"baseline"``, ``"rule"`` or ``"learned"``.
    name: baseline name, rule name, or the learned file / shipped name.
    hparams: baseline hyper-parameters (all keys, defaults filled in), rule
      config, or a learned optimizer's ``scale`` (only when given).
    text: the string as the user wrote it.
  """

  kind: str
  name: str
  hparams: Tuple[Tuple[str, Any], ...] = ()
  text: str = ""

  @property
  def hp(self) -> Dict[str, Any]:
    return dict(self.hparams)

  @property
  def label(self) -> str:
    """Short display name (table columns, plot legends): the file stem of a
    learned optimizer (with its folder for the ``best`` / ``final`` files
    that ``lopt meta-train`` writes, e.g. ``runs/x/best.lopt`` -> ``x/best``,
    so that two runs' files can be compared); a baseline with only its
    non-default values."""
    if self.kind == "learned":
      base = os.path.basename(self.name)
      stem = base[:-5] if base.endswith(".lopt") else base
      folder = os.path.basename(os.path.dirname(os.path.normpath(self.name)))
      label = f"{folder}/{stem}" if stem in EXPORT_STEMS and folder else stem
      return label + _non_default_suffix(self.hparams, LEARNED_HPARAMS)
    if self.kind == "baseline":
      defaults = BASELINES[self.name]
      return self.name + _non_default_suffix(self.hparams, defaults)
    return self.canonical

  @property
  def canonical(self) -> str:
    """A canonical string (stable key for caching)."""
    if self.kind == "baseline":
      return self.name + ":" + ",".join(
          f"{k}={_fmt(v)}" for k, v in sorted(self.hparams))
    if self.kind == "rule":
      tail = "".join(f",{k}={_fmt(v)}" for k, v in sorted(self.hparams))
      return f"rule:{self.name}{tail}"
    return self.name + _non_default_suffix(self.hparams, LEARNED_HPARAMS)

  def with_hparams(self, **overrides: Any) -> "OptimizerSpec":
    hp = self.hp
    hp.update(overrides)
    return dataclasses.replace(self, hparams=tuple(sorted(hp.items())))


def _non_default_suffix(hparams, defaults: Mapping[str, Any]) -> str:
  """``":k=v,..."`` for the ``(k, v)`` pairs of ``hparams`` that differ from
  ``defaults`` (in the given order), or ``""`` if none does."""
  given = [(k, v) for k, v in hparams if defaults.get(k) != v]
  return (":" + ",".join(f"{k}={_fmt(v)}" for k, v in given)) if given else ""


def _parse_number(key: str, value: str, text: str) -> float:
  try:
    v = float(value)
  except ValueError:
    raise ValueError(
        f"Bad optimizer spec {text!r}: {key}={value!r} is not a number; "
        f"write e.g. '{key}=1e-3'.") from None
  if not math.isfinite(v):
    raise ValueError(
        f"Bad optimizer spec {text!r}: {key}={value!r} must be finite.")
  return v


def _parse_literal(value: str) -> Any:
  low = value.lower()
  if low in ("true", "false"):
    return low == "true"
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return value


def _split_pairs(body: str, text: str) -> Dict[str, str]:
  pairs: Dict[str, str] = {}
  for item in body.split(","):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      raise ValueError(
          f"Bad optimizer spec {text!r}: {item!r} is not KEY=VALUE; write "
          "e.g. 'adam:lr=1e-3' or 'sgdm:lr=0.1,momentum=0.9'.")
    k, v = item.split("=", 1)
    k, v = k.strip(), v.strip()
    if not k or not v:
      raise ValueError(
          f"Bad optimizer spec {text!r}: {item!r} needs both a key and a "
          "value, e.g. 'lr=1e-3'.")
    if k in pairs:
      raise ValueError(f"Bad optimizer spec {text!r}: {k!r} given twice.")
    pairs[k] = v
  return pairs


def parse_optimizer(text: str) -> OptimizerSpec:
  """Parses an optimizer string (see the module docstring).

  Raises:
    ValueError: unknown baseline name, unknown or malformed hyper-parameter,
      non-positive learning rate, empty string.
  """
  if not isinstance(text, str) or not text.strip():
    raise ValueError(
        "Empty optimizer spec; give a learned-optimizer file or name, "
        "'rule:NAME', or a baseline like 'adam:lr=1e-3'.")
  text = text.strip()
  if os.path.isfile(text) or text.endswith(".lopt"):
    return OptimizerSpec("learned", text, (), text)
  head, sep, body = text.partition(":")
  head = head.strip().lower()
  if head == "rule":
    name, _, rest = body.partition(",")
    name = name.strip()
    if not name:
      raise ValueError(
          f"Bad optimizer spec {text!r}: write 'rule:NAME', e.g. 'rule:mlp'.")
    cfg = {k: _parse_literal(v) for k, v in _split_pairs(rest, text).items()}
    return OptimizerSpec("rule", name, tuple(sorted(cfg.items())), text)
  if head in BASELINES:
    defaults = BASELINES[head]
    hp = dict(defaults)
    for k, v in _split_pairs(body, text).items():
      if k not in defaults:
        raise ValueError(
            f"Bad optimizer spec {text!r}: {head} has no hyper-parameter "
            f"{k!r}; known: {', '.join(defaults)}.")
      hp[k] = _parse_number(k, v, text)
    if hp["lr"] <= 0:
      raise ValueError(
          f"Bad optimizer spec {text!r}: lr must be > 0, got {hp['lr']}.")
    return OptimizerSpec("baseline", head, tuple(sorted(hp.items())), text)
  if sep:
    # NAME:scale=C (the last colon: a path may contain one).
    name, _, tail = text.rpartition(":")
    keys = {item.split("=", 1)[0].strip() for item in tail.split(",")
            if item.strip()}
    if name.strip() and keys and keys <= set(LEARNED_HPARAMS):
      hp = {k: _parse_number(k, v, text)
            for k, v in _split_pairs(tail, text).items()}
      if hp["scale"] <= 0:
        raise ValueError(f"Bad optimizer spec {text!r}: scale must be > 0, "
                         f"got {hp['scale']}.")
      return OptimizerSpec("learned", name.strip(), tuple(sorted(hp.items())),
                           text)
    raise ValueError(
        f"Unknown optimizer {head!r} in {text!r}; baselines are "
        f"{', '.join(BASELINES)} (e.g. 'adam:lr=1e-3'), 'rule:NAME' for a "
        "rule at default meta-parameters, or a learned-optimizer file/name "
        "(optionally 'NAME:scale=C' to multiply its updates by C).")
  return OptimizerSpec("learned", text, (), text)


def baseline_transform(name: str, hp: Hparams
                       ) -> optax.GradientTransformationExtraArgs:
  """Builds the optax transformation of a baseline.

  Any hyper-parameter may be a traced scalar (in particular ``lr``, so a
  learning-rate sweep is one ``vmap``). The result accepts (and ignores) the
  extra ``value=loss`` argument that learned optimizers read.
  """
  if name not in BASELINES:
    raise ValueError(f"Unknown baseline {name!r}; known: "
                     f"{', '.join(BASELINES)}.")
  hp = {**BASELINES[name], **dict(hp)}
  lr = hp["lr"]
  if name == "sgd":
    tx = optax.sgd(lr)
  elif name == "sgdm":
    tx = optax.sgd(lr, momentum=hp["momentum"])
  elif name == "adam":
    tx = optax.adam(lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])
  elif name == "adamw":
    tx = optax.adamw(lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"],
                     weight_decay=hp["wd"])
  else:  # rmsprop
    tx = optax.rmsprop(lr, decay=hp["decay"], eps=hp["eps"])
  return optax.with_extra_args_support(tx)


@dataclasses.dataclass(frozen=True)
class ResolvedRule:
  """A learned optimizer ready to wrap: ``lopt.as_optax(rule, theta, ...)``.

  Attributes:
    rule: the rule object.
    theta: its meta-parameters.
    header: the file header (for ``rule:`` specs, a small synthetic one).
    scale: multiplier of every update (``NAME:scale=C``; 1: the optimizer
      as meta-trained).
  """

  rule: Any
  theta: Any
  header: Dict[str, Any]
  scale: float = 1.0

  def transform(self, num_steps: int, param_meta: Any = None
                ) -> optax.GradientTransformationExtraArgs:
    import lopt
    tx = lopt.as_optax(self.rule, self.theta, num_steps,
                       param_meta=param_meta)
    if self.scale == 1.0:
      return tx
    return optax.chain(tx, optax.scale(self.scale))


def resolve_learned(spec: OptimizerSpec) -> ResolvedRule:
  """Reads a ``learned`` spec's file (``lopt.read``) or builds a ``rule``
  spec's rule at ``init_meta_params(PRNGKey(0))``.

  Raises:
    ValueError: the file / name cannot be read, or the rule is unknown; the
      message names the spec and the underlying problem.
  """
  import lopt
  if spec.kind not in ("learned", "rule"):
    raise ValueError(f"{spec.text!r} is a baseline, not a learned optimizer.")
  try:
    if spec.kind == "rule":
      rule = lopt.rules.get(spec.name, **spec.hp)
      theta = rule.init_meta_params(jax.random.PRNGKey(0))
      header = {"rule": spec.name, "rule_config": rule.config(),
                "provenance": {"note": "default meta-parameters "
                                       "(init_meta_params(PRNGKey(0)))"}}
      return ResolvedRule(rule, theta, header)
    loaded = lopt.read(spec.name)
    return ResolvedRule(loaded.rule, loaded.theta, dict(loaded.header),
                        scale=float({**LEARNED_HPARAMS, **spec.hp}["scale"]))
  except ValueError as e:
    raise ValueError(f"Cannot load optimizer {spec.text!r}: {e}") from None
  except OSError as e:
    raise ValueError(
        f"Unknown optimizer {spec.text!r}: {e} Baselines are written like "
        f"'adam:lr=1e-3' ({', '.join(BASELINES)}); 'rule:NAME' evaluates a "
        "rule at its default meta-parameters.") from None


OptFactory = Callable[[Hparams], optax.GradientTransformationExtraArgs]
