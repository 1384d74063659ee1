"""Meta-gradient estimators with one interface.

``init(theta, key) -> worker_state`` and
``estimate(theta, worker_state, key) -> (grad, worker_state, metrics)``.

======================  ==================================================
name                    estimator
======================  ==================================================
``es_single``           :class:`ESSingle` (noise-reuse ES; Li et al. 2023)
``pes``                 :class:`PES` (Vicol et al. 2021)
``truncated_es``        :class:`TruncatedES` (biased)
``full_es``             :class:`FullES` (whole episodes)
``tbptt``               :class:`TBPTT` (truncated backprop, biased)
======================  ==================================================

:class:`Mixture` combines one estimator per task family (meta-training on
several families at once).
"""

from __future__ import annotations

from typing import Any, Dict, Type

from lopt.meta_train.estimators.base import (EstimatorBase, GradientEstimator,
                                             aggregate, antithetic_unroll)
from lopt.meta_train.estimators.es_single import ESSingle, ESSingleState
from lopt.meta_train.estimators.full_es import FullES, FullESState
from lopt.meta_train.estimators.mixture import Mixture
from lopt.meta_train.estimators.pes import PES, PESState
from lopt.meta_train.estimators.tbptt import TBPTT, TBPTTState
from lopt.meta_train.estimators.truncated_es import (TruncatedES,
                                                     TruncatedESState)

_REGISTRY: Dict[str, Type[EstimatorBase]] = {
    "es_single": ESSingle,
    "pes": PES,
    "truncated_es": TruncatedES,
    "full_es": FullES,
    "tbptt": TBPTT,
}


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def check_name(name: str) -> None:
  if name not in _REGISTRY:
    raise ValueError(f"Unknown gradient estimator {name!r}; known estimators: "
                     f"{', '.join(_REGISTRY)}.")


def get(name: str, system: Any, **kwargs) -> EstimatorBase:
  """Builds estimator ``name`` over ``system``."""
  check_name(name)
  try:
    return _REGISTRY[name](system=system, **kwargs)
  except TypeError as e:
    raise ValueError(f"Bad arguments for estimator {name!r}: {e}") from None
