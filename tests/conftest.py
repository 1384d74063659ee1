"""Test configuration: single-threaded XLA on CPU (faster for the small
problems in the suite on a 2-core machine) and no network access."""

import os
import socket

from lopt import cpu_flags  # noqa: E402  (imports jax; its backend starts later)

cpu_flags.apply()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray renices its worker processes to 15. Under pytest-xdist the Ray tests
# share the cores with another test process, which would then starve the
# Ray workers (~2.5x slower Ray tests); in the suite they run at the normal
# priority.
os.environ.setdefault("RAY_worker_niceness", "0")
# The suite never writes lopt's persistent compilation cache (~/.cache/lopt,
# lopt.compile_cache).
os.environ.setdefault("LOPT_XLA_CACHE_DIR", "off")

# Many tests compile the same programs (the same tiny meta-training config,
# the same rule on the same parameters): a compilation cache private to this
# test session serves the repeats. The first pytest process makes it; pytest-
# xdist workers inherit the variable and share it; it is removed at exit.
# Set LOPT_TEST_XLA_CACHE=off to compile everything afresh.
if os.environ.get("LOPT_TEST_XLA_CACHE", "").lower() != "off":
  if not os.environ.get("LOPT_TEST_XLA_CACHE"):
    import atexit
    import shutil
    import tempfile
    os.environ["LOPT_TEST_XLA_CACHE"] = tempfile.mkdtemp(
        prefix="lopt-test-xla-")
    atexit.register(shutil.rmtree, os.environ["LOPT_TEST_XLA_CACHE"], True)
  import jax  # noqa: E402
  jax.config.update("jax_compilation_cache_dir",
                    os.environ["LOPT_TEST_XLA_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402

_real_connect = socket.socket.connect


def _loopback_only_connect(self, address):
  """Tests must never reach the network: only loopback / unix sockets."""
  if isinstance(address, tuple) and address:
    host = str(address[0])
    if not (host.startswith("127.") or host in ("localhost", "::1", "0.0.0.0")):
      raise RuntimeError(f"test tried to reach the network: {address!r}")
  return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
  monkeypatch.setattr(socket.socket, "connect", _loopback_only_connect)
  yield
