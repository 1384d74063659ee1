"""Pinning a process to one CPU core.

XLA's CPU backend splits large fused loops over a thread pool even with
``--xla_cpu_multi_thread_eigen=false``; for the small inner problems of
meta-training the hand-offs cost more than they gain, and two such processes
on a 2-core machine fight over both cores. Pinning each process (all of its
threads) to its own core makes "one process per core" literal. Measured in
docs/performance.md (meta-training throughput, Ray scaling).

Linux only (``os.sched_setaffinity``); elsewhere the functions do nothing and
say so by returning ``None``.
"""

from __future__ import annotations

import os
from typing import List, Optional


def available_cpus() -> List[int]:
  """The cores this process may run on (sorted)."""
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def set_affinity(cpus) -> bool:
  """Lets every thread of this process run on ``cpus`` (e.g. to undo
  :func:`pin_to_cpu` with ``available_cpus()`` saved before). Returns False
  where affinity cannot be set."""
  if not hasattr(os, "sched_setaffinity"):
    return False
  cpus = set(int(c) for c in cpus)
  try:
    # sched_setaffinity(0) affects the calling thread only; threads that
    # already exist (XLA's pool, once the backend is up) are set one by
    # one, new threads inherit the mask of the thread that starts them.
    tids = (os.listdir("/proc/self/task")
            if os.path.isdir("/proc/self/task") else [])
    os.sched_setaffinity(0, cpus)
    for tid in tids:
      try:
        os.sched_setaffinity(int(tid), cpus)
      except OSError:       # a thread that ended meanwhile
        pass
  except OSError:
    return False
  return True


def pin_to_cpu(index: int) -> Optional[int]:
  """Pins every thread of this process (and threads it starts later) to
  core ``available_cpus()[index % len(available_cpus())]``.

  Returns the core, or None where affinity cannot be set (not Linux, or the
  call was refused).
  """
  if not hasattr(os, "sched_setaffinity"):
    return None
  cpus = available_cpus()
  core = cpus[int(index) % len(cpus)]
  return core if set_affinity({core}) else None
