"""Learned-optimizer rules and their registry.

=========  ==========================================================
name       rule
=========  ==========================================================
sgd        :class:`LearnableSGD` (log learning rate, optional momentum)
adam       :class:`LearnableAdam` (log lr, decays, eps)
mlp        :class:`PerParamMLP` (Adafactor-feature per-parameter MLP)
mu_mlp     :class:`PerParamMLP` with ``mup=True`` (muLO)
velo       :class:`VeLOLite` (per-tensor LSTM mixing an MLP bank)
mu_velo    :class:`VeLOLite` with ``mup=True``
=========  ==========================================================
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from lopt.rules.adam import LearnableAdam
from lopt.rules.mlp import PerParamMLP
from lopt.rules.sgd import LearnableSGD
from lopt.rules.velo import VeLOLite

# name -> (class, fixed constructor arguments).
_REGISTRY: Dict[str, Tuple[type, Dict[str, Any]]] = {
    "sgd": (LearnableSGD, {}),
    "adam": (LearnableAdam, {}),
    "mlp": (PerParamMLP, {"mup": False}),
    "mu_mlp": (PerParamMLP, {"mup": True}),
    "velo": (VeLOLite, {"mup": False}),
    "mu_velo": (VeLOLite, {"mup": True}),
}


def config_added(name: str) -> Dict[str, Any]:
  """Config keys that rule ``name`` gained after learned-optimizer files were
  first written, with the values that reproduce the older files' behaviour
  (``CONFIG_ADDED`` of the rule class; empty when none)."""
  cls = _REGISTRY[name][0] if name in _REGISTRY else None
  return dict(getattr(cls, "CONFIG_ADDED", {}))


def names() -> tuple[str, ...]:
  """Registered rule names."""
  return tuple(_REGISTRY)


def get(name: str, **config) -> Any:
  """Builds the rule ``name`` with constructor ``config``.

  Raises:
    ValueError: unknown name or bad config.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown learned-optimizer rule {name!r}; known rules: "
                     f"{', '.join(_REGISTRY)}.")
  cls, fixed = _REGISTRY[name]
  try:
    return cls(**fixed, **config)
  except TypeError as e:
    raise ValueError(f"Bad config for rule {name!r}: {e}") from None
