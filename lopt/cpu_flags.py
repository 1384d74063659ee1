"""XLA flags for lopt's small problems on CPU.

lopt's command-line tools, benchmarks and test suite run with these flags
(they must be in ``XLA_FLAGS`` before jax starts its backend, i.e. before the
first computation):

- ``--xla_cpu_multi_thread_eigen=false``: no intra-op thread pool for
  Eigen's matrix products. Meta-training and evaluation run one process per
  core, and their matrices are small; the hand-offs cost more than they gain
  (docs/performance.md).
- ``--xla_cpu_prefer_vector_width=512``: on CPUs with AVX-512, LLVM otherwise
  vectorises XLA's fused loops with 256-bit registers. The learned rules'
  per-element loop (23 features into a 4-unit network, ~150 multiply-adds
  per element) is bound by the FMA units, so twice the width is nearly twice
  the speed there. Measured on this project's 2-core AVX-512 machine: the
  ``mlp`` rule's update of a 26k-parameter MLP 130 -> 101 µs, Adam's training
  step 150 -> 133 µs, meta-training throughput +13%. A CPU without AVX-512
  ignores it.

Both are a preference, not a requirement: a flag already named in the
user's ``XLA_FLAGS`` is left as the user set it (e.g.
``XLA_FLAGS=--xla_cpu_prefer_vector_width=256`` keeps 256-bit vectors).

XLA stops parsing ``XLA_FLAGS`` at the first token that does not start with
``--`` (the often-quoted ``intra_op_parallelism_threads=1`` is a TensorFlow
option, not an XLA flag: every flag written after it is silently ignored), so
:func:`merge` puts lopt's flags first. A value that does not start with
``--`` at all is the name of a flags file, and is left alone.
"""

from __future__ import annotations

import os
import warnings
from typing import MutableMapping, Optional, Tuple

SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"
VECTOR_WIDTH_FLAG = "--xla_cpu_prefer_vector_width=512"
#: The flags :func:`merge` adds (in this order).
CPU_FLAGS: Tuple[str, ...] = (SINGLE_THREAD_FLAG, VECTOR_WIDTH_FLAG)


def _name(token: str) -> str:
  return token.split("=", 1)[0]


def merge(current: Optional[str], single_thread: bool = True) -> str:
  """``current`` (an ``XLA_FLAGS`` value, or None) with lopt's CPU flags
  added in front, except those whose name ``current`` already sets.

  ``single_thread=False`` leaves out ``--xla_cpu_multi_thread_eigen=false``
  (for a process that should use XLA's intra-op threads).
  """
  current = (current or "").strip()
  if current and not current.startswith("--"):
    return current                      # a flags file: not ours to edit
  named = {_name(t) for t in current.split() if t.startswith("--")}
  wanted = [f for f in CPU_FLAGS
            if single_thread or f != SINGLE_THREAD_FLAG]
  added = [f for f in wanted if _name(f) not in named]
  return " ".join(added + ([current] if current else []))


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge        # private: checked defensively
    return bool(xla_bridge.backends_are_initialized())
  except Exception:                        # pylint: disable=broad-except
    return False


def apply(environ: Optional[MutableMapping[str, str]] = None,
          single_thread: bool = True) -> str:
  """Sets ``environ["XLA_FLAGS"]`` (default ``os.environ``) to
  :func:`merge` of its value and returns it. Call before jax's first
  computation; later, XLA has read its flags and this has no effect on this
  process (it warns; child processes still inherit the flags)."""
  env = os.environ if environ is None else environ
  new = merge(env.get("XLA_FLAGS"), single_thread)
  if (environ is None and new != env.get("XLA_FLAGS", "")
      and _backend_started()):
    warnings.warn("lopt.cpu_flags.apply(): jax's backend has already "
                  "started, so the new XLA_FLAGS only reach processes started "
                  "from here on; call it before the first jax computation.",
                  RuntimeWarning, stacklevel=2)
  env["XLA_FLAGS"] = new
  return new
