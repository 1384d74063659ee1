"""Atomic file writes: a file is either its old contents or its new ones,
never half-written.

Writes go to a temp file in the same directory, are flushed to disk and then
renamed over the target (``os.replace``, atomic on POSIX); on any error the
temp file is removed and the target is left as it was. The new file gets the
usual permissions of a newly created file (``0o666`` less the umask, e.g.
``0o644``), not the owner-only ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Iterator


def _umask() -> int:
  """The process umask. Read from ``/proc/self/status`` where it is there
  (Linux >= 4.7): ``os.umask`` can only read it by setting it, and for that
  moment another thread's new files would get mode 0o666/0o777."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
  """Opens a temp file next to ``path`` for writing (``mode`` ``"w"`` or
  ``"wb"``); on success renames it over ``path``, on error removes it.
  Creates missing parent directories."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open writes whole files: mode must be 'w' or "
                     f"'wb', got {mode!r}.")
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  with atomic_open(path, "w") as f:
    f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)
