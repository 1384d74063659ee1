"""Test configuration: single-threaded XLA on CPU (faster for the small
problems in the suite on a 2-core machine) and no network access."""

import os
import socket

from lopt import cpu_flags  # noqa: E402  (imports jax; its backend starts later)

cpu_flags.apply()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The suite never writes a persistent compilation cache (lopt.compile_cache).
os.environ.setdefault("LOPT_XLA_CACHE_DIR", "off")

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
