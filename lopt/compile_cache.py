"""A persistent XLA compilation cache for lopt's command-line tools.

jax can keep compiled programs on disk and reuse them in a later process
(``jax_compilation_cache_dir``): the cache key covers the program, the
backend, the jax / jaxlib versions and the XLA flags, so a hit runs exactly
the program a fresh compilation would build. lopt's evaluations and
meta-training runs compile the same programs again and again (one per task,
optimizer and learning-rate sweep), and on a small CPU much of a short
evaluation is compilation. Measured on the 2-core machine (session 9): a
two-task, 200-step ``lopt eval`` of ``mlp_digits`` and Adam took 24.6-25.6 s
without the cache or with an empty one, and 12.4 s with a warm one (the same
curves, bit for bit); ``lopt quickstart`` 29.1 s -> 15.5 s. What is left is
tracing and lowering, which jax does not cache.

The ``lopt`` console command turns the cache on (:func:`enable`) before its
sub-command starts. Where it goes:

- ``$LOPT_XLA_CACHE_DIR`` if set; ``off`` (or ``0``, ``false``, ``no``,
  empty) turns it off;
- otherwise ``~/.cache/lopt/xla``.

A cache directory the user already gave jax (``JAX_COMPILATION_CACHE_DIR``
or ``jax.config.update("jax_compilation_cache_dir", ...)``) is left as it
is. Only programs that took at least ``min_compile_time_s`` to compile are
written (jax's own default is 1 s), so the many tiny helper programs do not
fill the directory. Delete the directory to clear it.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

ENV_VAR = "LOPT_XLA_CACHE_DIR"
_OFF = ("", "0", "off", "false", "no", "none")


def cache_dir_from_env(env: Optional[Mapping[str, str]] = None
                       ) -> Optional[str]:
  """The cache directory ``env`` (default ``os.environ``) asks for, or None
  when ``$LOPT_XLA_CACHE_DIR`` turns the cache off (module docstring)."""
  env = os.environ if env is None else env
  if ENV_VAR in env:
    value = env[ENV_VAR].strip()
    if value.lower() in _OFF:
      return None
    return os.path.expanduser(value)
  return os.path.join(os.path.expanduser("~"), ".cache", "lopt", "xla")


def enable(path: Optional[str] = None,
           min_compile_time_s: float = 1.0) -> Optional[str]:
  """Turns jax's persistent compilation cache on at ``path`` (default
  :func:`cache_dir_from_env`); returns the directory in use, or None when
  the cache stays off.

  Call it before the first compilation. A directory already set in jax's
  config is kept (and returned). A directory that cannot be created leaves
  the cache off: a cache is an optimisation, never a reason to fail.
  """
  import jax

  current = getattr(jax.config, "jax_compilation_cache_dir", None)
  if current:
    return current
  path = cache_dir_from_env() if path is None else path
  if not path:
    return None
  try:
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(min_compile_time_s))
  except (OSError, AttributeError, KeyError, ValueError):
    # No writable directory, or a jax without these options: no cache.
    return None
  return path
