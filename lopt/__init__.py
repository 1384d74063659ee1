"""lopt: learned optimizers in JAX, usable as optax transformations."""

from lopt.base import LearnedOptimizer, ParamMeta, default_param_meta, tree_size

__version__ = "0.1.0"
