"""Meta-training: gradient estimators, outer loop, Ray workers, logging.

* :mod:`lopt.meta_train.unroll` -- the unrollable-system interface and the
  per-particle episode bookkeeping (horizons, offsets, resets, keys);
* :mod:`lopt.meta_train.estimators` -- ES-Single, PES, truncated ES, FullES,
  truncated backprop behind one interface;
* :mod:`lopt.meta_train.influence` -- the exact-quadratic test system.
"""

from lopt.meta_train import estimators, unroll
from lopt.meta_train.influence import InfluenceBalancing
