"""Meta-training configuration: a dataclass loadable from YAML / JSON with
``key=value`` overrides, validated before any work starts."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
  """A bad meta-training configuration (one clear message)."""


@dataclasses.dataclass
class MetaTrainConfig:
  """Everything that defines a meta-training run.

  What is learned:
    rule: learned-optimizer rule name (``lopt.rules.names()``).
    rule_config: constructor kwargs of the rule.
    task_family: task family name (``lopt.tasks.list_families()``), or
      several separated by commas (a YAML list also works): a mixture, one
      batch of ``num_tasks`` tasks per family every outer step
      (:class:`lopt.meta_train.estimators.Mixture`).
    family_weights: with a mixture, one positive weight per family (in
      ``task_family``'s order; only ratios matter): the meta-objective is
      the weighted mean of the families' meta-losses, and so is the
      fixed-task evaluation that picks the best theta. Empty: all equal.
    init_from: start theta from this learned-optimizer file (a path or a
      shipped name such as ``mlp_digits``) instead of the rule's
      initialisation -- fine-tuning a meta-trained optimizer on new tasks.
      Its rule and rule config must equal ``rule`` / ``rule_config`` (the
      file's provenance records what it was trained with). Empty: off.
  Gradient estimation (see :mod:`lopt.meta_train.estimators`):
    estimator: ``es_single``, ``pes``, ``truncated_es``, ``full_es``,
      ``tbptt``.
    num_tasks: tasks in the batch; num_particles: antithetic pairs per task.
    trunc_length: K, inner steps per outer step.
    horizon_min, horizon_max: log-uniform episode lengths.
    std: ES perturbation scale s.
    random_offsets: spread the first episode's resets over outer steps.
    meta_loss: ``train`` or ``valid``; log_loss: log of the normalised loss;
    log_loss_offset: with log_loss, ``log(l + c)`` instead of ``log(l)``
      (``c >= 0``; 0: plain log): below ``c`` a loss's relative improvements
      count less, so tasks trained near zero loss do not dominate the mix;
    loss_clip: clip the normalised per-step loss (0: off); when on, a
      non-finite step also counts as ``loss_clip`` in the ES estimates
      (diverging is penalised, not dropped).
    loss_weighting: ``uniform`` (every inner step counts the same),
      ``linear`` (step t of an episode of length T weighted 2 (t + 1/2) / T,
      emphasising the end of training), ``quadratic``
      (3 ((t + 1/2) / T)^2, more so) or ``final`` (10 on the last tenth of
      the episode, 0 before). The logged meta-loss and the fixed-task
      evaluation that picks the best theta use the same weights.
    tbptt_clip: global-norm clip of each TBPTT estimate (0: off).
  Outer optimizer (optax Adam):
    outer_steps, learning_rate, b1, b2, clip_norm (global norm, 0: off),
    warmup_steps (linear warmup), schedule (``constant`` / ``cosine``),
    final_lr_fraction (cosine end value as a fraction of the peak).
  Bookkeeping:
    seed; log_every (TensorBoard/console); checkpoint_every, keep_checkpoints
    (orbax); eval_every (0: off), eval_tasks, eval_steps (a fixed evaluation
    of theta on fresh tasks of the family; picks the "best" theta -- without
    it the best theta is the one with the lowest EMA meta-loss); ema_decay.
  Distribution (Ray; used only with ``lopt meta-train --ray`` /
  ``--ray-address``, see :mod:`lopt.meta_train.distributed`):
    workers (0: one per cluster CPU, at most num_tasks), cpus_per_worker,
    ray_mode (``sync``: same result as one process / ``async``),
    max_staleness (async: drop estimates for a theta older than this many
    updates).
  """

  rule: str = "mlp"
  rule_config: Dict[str, Any] = dataclasses.field(default_factory=dict)
  task_family: str = "digits_mlp"
  family_weights: List[float] = dataclasses.field(default_factory=list)
  init_from: str = ""

  estimator: str = "es_single"
  num_tasks: int = 8
  num_particles: int = 1
  trunc_length: int = 50
  horizon_min: int = 100
  horizon_max: int = 1000
  std: float = 0.01
  random_offsets: bool = True
  meta_loss: str = "train"
  log_loss: bool = False
  log_loss_offset: float = 0.0
  loss_clip: float = 0.0
  loss_weighting: str = "uniform"
  tbptt_clip: float = 1.0

  outer_steps: int = 1000
  learning_rate: float = 3e-3
  b1: float = 0.9
  b2: float = 0.999
  clip_norm: float = 1.0
  warmup_steps: int = 0
  schedule: str = "constant"
  final_lr_fraction: float = 0.1

  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  eval_every: int = 0
  eval_tasks: int = 4
  eval_steps: int = 200
  ema_decay: float = 0.95

  workers: int = 0
  cpus_per_worker: float = 1.0
  ray_mode: str = "sync"
  max_staleness: int = 1

  # -- construction ---------------------------------------------------------

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "MetaTrainConfig":
    d = dict(d or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ConfigError(f"Unknown config field(s) {unknown}; known fields: "
                        f"{', '.join(sorted(known))}.")
    hints = typing.get_type_hints(cls)
    if isinstance(d.get("task_family"), (list, tuple)):     # YAML list
      d["task_family"] = ",".join(str(x) for x in d["task_family"])
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in d.items()}
    return cls(**kwargs)

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> "MetaTrainConfig":
    path = os.fspath(path)
    try:
      with open(path) as f:
        text = f.read()
    except OSError as e:
      raise ConfigError(f"Cannot read config file {path!r}: {e}") from None
    try:
      d = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
      raise ConfigError(f"Cannot parse config file {path!r}: {e}") from None
    if d is not None and not isinstance(d, dict):
      raise ConfigError(f"Config file {path!r} must hold a mapping, got "
                        f"{type(d).__name__}.")
    return cls.from_dict(d or {})

  def with_overrides(self, overrides: Sequence[str]) -> "MetaTrainConfig":
    """Applies ``key=value`` strings (values parsed as YAML scalars, e.g.
    ``num_tasks=4``, ``rule_config={hidden_sizes: [8]}``). A dotted key
    ``rule_config.<name>=value`` sets one entry of ``rule_config`` and keeps
    the others (``rule_config=...`` replaces the whole mapping)."""
    d = self.to_dict()
    for item in overrides or ():
      if "=" not in item:
        raise ConfigError(f"Override {item!r} is not of the form key=value.")
      key, value = item.split("=", 1)
      key = key.strip()
      try:
        parsed = yaml.safe_load(value) if value.strip() else ""
      except yaml.YAMLError as e:
        raise ConfigError(f"Cannot parse override {item!r}: {e}") from None
      head, dot, sub = key.partition(".")
      if dot and head == "rule_config":
        if not sub or "." in sub:
          raise ConfigError(f"Override {item!r}: use rule_config.<name>=value "
                            "with one rule_config entry name.")
        d["rule_config"] = {**(d.get("rule_config") or {}), sub: parsed}
      elif dot:
        raise ConfigError(f"Override {item!r}: only rule_config takes a "
                          "dotted key (rule_config.<name>=value); "
                          f"{head!r} is not a mapping field.")
      else:
        d[key] = parsed
    return type(self).from_dict(d)

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def family_names(self) -> List[str]:
    """The task families (one, or the members of a mixture)."""
    return [n.strip() for n in self.task_family.split(",") if n.strip()]

  # -- validation -----------------------------------------------------------

  def validate(self) -> "MetaTrainConfig":
    """Checks names and sizes; raises :class:`ConfigError` (one message)."""
    problems = []
    positive = ("num_tasks", "num_particles", "trunc_length", "horizon_min",
                "horizon_max", "outer_steps", "log_every", "eval_tasks",
                "eval_steps", "keep_checkpoints")
    for name in positive:
      if getattr(self, name) < 1:
        problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
    for name in ("warmup_steps", "checkpoint_every", "eval_every",
                 "loss_clip", "tbptt_clip", "clip_norm", "workers",
                 "max_staleness"):
      if getattr(self, name) < 0:
        problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
    if self.horizon_min > self.horizon_max:
      problems.append(f"horizon_min ({self.horizon_min}) > horizon_max "
                      f"({self.horizon_max})")
    if not self.std > 0:
      problems.append(f"std must be > 0 (got {self.std})")
    if not self.learning_rate > 0:
      problems.append(f"learning_rate must be > 0 (got {self.learning_rate})")
    for name in ("b1", "b2", "ema_decay"):
      if not 0 <= getattr(self, name) < 1:
        problems.append(f"{name} must be in [0, 1) (got "
                        f"{getattr(self, name)})")
    if not 0 <= self.final_lr_fraction <= 1:
      problems.append("final_lr_fraction must be in [0, 1] (got "
                      f"{self.final_lr_fraction})")
    if self.schedule not in SCHEDULES:
      problems.append(f"schedule must be one of {SCHEDULES} (got "
                      f"{self.schedule!r})")
    if self.workers > self.num_tasks:
      problems.append(f"workers ({self.workers}) > num_tasks "
                      f"({self.num_tasks}): every worker needs a task")
    if not self.cpus_per_worker > 0:
      problems.append(f"cpus_per_worker must be > 0 (got "
                      f"{self.cpus_per_worker})")
    if self.ray_mode not in ("sync", "async"):
      problems.append(f"ray_mode must be 'sync' or 'async' (got "
                      f"{self.ray_mode!r})")
    from lopt.meta_train.inner import LOSS_WEIGHTINGS
    if self.loss_weighting not in LOSS_WEIGHTINGS:
      problems.append(f"loss_weighting must be one of {LOSS_WEIGHTINGS} (got "
                      f"{self.loss_weighting!r})")
    if not self.log_loss_offset >= 0:
      problems.append(f"log_loss_offset must be >= 0 (got "
                      f"{self.log_loss_offset})")
    elif self.log_loss_offset > 0 and not self.log_loss:
      problems.append(f"log_loss_offset ({self.log_loss_offset}) needs "
                      "log_loss: true (it shifts the log meta-loss)")
    if self.meta_loss not in ("train", "valid"):
      problems.append(f"meta_loss must be 'train' or 'valid' (got "
                      f"{self.meta_loss!r})")

    from lopt.meta_train import estimators
    if self.estimator not in estimators.names():
      problems.append(f"unknown estimator {self.estimator!r} (known: "
                      f"{', '.join(estimators.names())})")
    import lopt
    if self.rule not in lopt.rules.names():
      problems.append(f"unknown rule {self.rule!r} (known: "
                      f"{', '.join(lopt.rules.names())})")
    else:
      try:
        lopt.rules.get(self.rule, **self.rule_config)
      except (ValueError, TypeError) as e:
        problems.append(f"bad rule_config for {self.rule!r}: "
                        f"{str(e).rstrip('.')}")
    import lopt.tasks
    names = self.family_names
    unknown = [n for n in names if n not in lopt.tasks.list_families()]
    if not names or unknown:
      problems.append(f"unknown task family {', '.join(unknown) or repr('')}"
                      f" (known: {', '.join(lopt.tasks.list_families())})")
    elif len(set(names)) != len(names):
      problems.append(f"task family listed twice in {self.task_family!r}")
    if self.family_weights and names:
      if len(self.family_weights) != len(names):
        problems.append(f"family_weights has {len(self.family_weights)} "
                        f"entries for {len(names)} task families "
                        f"({', '.join(names)}): give one per family")
      elif not all(math.isfinite(w) and w > 0 for w in self.family_weights):
        problems.append(f"family_weights must all be positive and finite "
                        f"(got {self.family_weights})")
    if self.init_from and not problems:
      problem = self._init_from_problem()
      if problem:
        problems.append(problem)
    if problems:
      raise ConfigError("Invalid meta-training config: " +
                        "; ".join(problems) + ".")
    return self

  def _init_from_problem(self) -> str:
    """Why ``init_from`` cannot start this run ('' when it can)."""
    import lopt
    try:
      loaded = lopt.read(self.init_from)
    except (OSError, ValueError) as e:
      return f"init_from {self.init_from!r} cannot be read: {e}"
    return init_from_mismatch(self.init_from, loaded,
                              lopt.rules.get(self.rule, **self.rule_config))


def init_from_mismatch(init_from: str, loaded: Any, rule: Any) -> str:
  """Why the learned-optimizer file ``loaded`` (read from ``init_from``)
  cannot start meta-training ``rule`` ('' when its rule and config are the
  same, so its theta fits)."""
  if (loaded.rule.name, loaded.rule.config()) == (rule.name, rule.config()):
    return ""
  return (f"init_from {init_from!r} holds rule {loaded.rule.name!r} with "
          f"config {loaded.rule.config()}, but this run meta-trains "
          f"{rule.name!r} with config {rule.config()}; set rule and "
          "rule_config to the file's")


def _coerce(name: str, value: Any, hint: Any) -> Any:
  """Converts ``value`` to the field's type; one clear error otherwise."""
  try:
    if hint is bool:
      if isinstance(value, bool):
        return value
      if isinstance(value, str) and value.lower() in ("true", "false", "1",
                                                      "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
      if isinstance(value, int) and value in (0, 1):
        return bool(value)
      raise TypeError
    if hint is int:
      if isinstance(value, bool) or (isinstance(value, float)
                                     and not value.is_integer()):
        raise TypeError
      return int(value)
    if hint is float:
      if isinstance(value, bool):
        raise TypeError
      return float(value)
    if hint is str:
      if not isinstance(value, str):
        raise TypeError
      return value
    origin = typing.get_origin(hint)
    if origin in (list, List):
      if value is None:
        return []
      if isinstance(value, str):                 # "1, 1, 0.25"
        value = [v for v in value.split(",") if v.strip()]
      if not isinstance(value, (list, tuple)) or any(
          isinstance(v, bool) for v in value):
        raise TypeError
      return [float(v) for v in value]
    if origin in (dict, Dict) or hint is dict:
      if value is None:
        return {}
      if not isinstance(value, Mapping):
        raise TypeError
      return dict(value)
    return value
  except (TypeError, ValueError):
    tname = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"Config field {name!r} expects {tname}, got "
                      f"{value!r}.") from None


def load_config(path: Optional[str] = None,
                overrides: Sequence[str] = ()) -> MetaTrainConfig:
  """Loads ``path`` (YAML or JSON; defaults if None), applies overrides and
  validates."""
  cfg = (MetaTrainConfig.from_file(path) if path else MetaTrainConfig())
  return cfg.with_overrides(overrides).validate()
