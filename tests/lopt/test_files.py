"""Atomic file writes (lopt.files)."""

import os
import stat

import pytest

from lopt import files


def test_atomic_write_leaves_no_temp_files(tmp_path):
  p = tmp_path / "sub" / "x.txt"
  files.write_text(p, "hello")
  with pytest.raises(RuntimeError):
    with files.atomic_open(p, "w") as f:
      f.write("partial")
      raise RuntimeError("interrupted")
  assert p.read_text() == "hello"
  assert os.listdir(p.parent) == ["x.txt"]
  files.write_bytes(p, b"\x00\x01")
  assert p.read_bytes() == b"\x00\x01" and os.listdir(p.parent) == ["x.txt"]


def test_new_files_get_the_umask_permissions_not_owner_only(tmp_path):
  old = os.umask(0o022)
  try:
    files.write_text(tmp_path / "a.txt", "x")
    os.umask(0o077)
    files.write_text(tmp_path / "b.txt", "x")
  finally:
    os.umask(old)
  mode = lambda n: stat.S_IMODE(os.stat(tmp_path / n).st_mode)  # noqa: E731
  assert mode("a.txt") == 0o644
  assert mode("b.txt") == 0o600


def test_only_whole_file_write_modes():
  with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
    with files.atomic_open("x", "a"):
      pass


def test_umask_is_read_without_changing_it(monkeypatch):
  """``_umask`` reads the umask from /proc where it can (no window in which
  another thread's new files get a zero umask) and falls back to
  ``os.umask``; both give the current value and leave it unchanged."""
  import builtins
  old = os.umask(0o027)
  try:
    assert files._umask() == 0o027
    real_open = builtins.open

    def no_proc(path, *a, **k):
      if str(path).startswith("/proc/"):
        raise OSError("no /proc here")
      return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert files._umask() == 0o027
    monkeypatch.undo()
    assert os.umask(0o027) == 0o027          # unchanged by either path
  finally:
    os.umask(old)
