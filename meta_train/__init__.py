"""Meta-training: gradient estimators, outer loop, logging, checkpoints.

* :mod:`lopt.meta_train.unroll` -- the unrollable-system interface and the
  per-particle episode bookkeeping (horizons, offsets, resets, keys);
* :mod:`lopt.meta_train.inner` -- learned-optimizer inner training of a task
  family as an unrollable system;
* :mod:`lopt.meta_train.estimators` -- ES-Single, PES, truncated ES, FullES,
  truncated backprop behind one interface;
* :mod:`lopt.meta_train.influence` -- the exact-quadratic test system;
* :mod:`lopt.meta_train.config`, :mod:`~lopt.meta_train.trainer`,
  :mod:`~lopt.meta_train.checkpoint`, :mod:`~lopt.meta_train.logging`,
  :mod:`~lopt.meta_train.cli` -- the outer loop and ``lopt meta-train``.

The heavy optional dependencies (orbax, tensorboardX, rich) are imported only
when a run uses them.
"""

from lopt.meta_train import estimators, unroll
from lopt.meta_train.config import ConfigError, MetaTrainConfig, load_config
from lopt.meta_train.influence import InfluenceBalancing
from lopt.meta_train.inner import InnerTraining, train_curve
from lopt.meta_train.trainer import MetaTrainer, TrainState

__all__ = [
    "ConfigError", "InfluenceBalancing", "InnerTraining", "MetaTrainConfig",
    "MetaTrainer", "TrainState", "estimators", "load_config", "train_curve",
    "unroll",
]
