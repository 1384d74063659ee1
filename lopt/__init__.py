"""lopt: learned optimizers in JAX, usable as optax transformations.

Quick use of a shipped learned optimizer::

    import lopt
    opt = lopt.load("<name>", num_steps=2000)     # an optax transformation
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, value=loss)
"""

from lopt import rules
from lopt.base import LearnedOptimizer, ParamMeta, default_param_meta, tree_size
from lopt.io import (LearnedOptimizerFileError, LoadedOptimizer, load, read,
                     save, shipped_names)
from lopt.optax_api import LearnedOptimizerState, as_optax

__version__ = "0.1.0"

__all__ = [
    "LearnedOptimizer", "LearnedOptimizerFileError", "LearnedOptimizerState",
    "LoadedOptimizer", "ParamMeta", "as_optax", "default_param_meta", "load",
    "read", "rules", "save", "shipped_names", "tree_size",
]
