"""lopt.compile_cache: where the cache goes, and that a second process hits it."""

import os
import subprocess
import sys
import textwrap

from lopt import compile_cache


def test_cache_dir_from_env():
  home = os.path.expanduser("~")
  assert compile_cache.cache_dir_from_env({}) == os.path.join(
      home, ".cache", "lopt", "xla")
  assert compile_cache.cache_dir_from_env(
      {"LOPT_XLA_CACHE_DIR": "/tmp/x"}) == "/tmp/x"
  assert compile_cache.cache_dir_from_env(
      {"LOPT_XLA_CACHE_DIR": "~/c"}) == os.path.join(home, "c")
  for off in ("off", "OFF", "0", "false", "no", "", "  "):
    assert compile_cache.cache_dir_from_env(
        {"LOPT_XLA_CACHE_DIR": off}) is None, off


_CHILD = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from lopt import compile_cache
    used = compile_cache.enable(sys.argv[1], min_compile_time_s=0.0)
    def f(x):
      for i in range(30):
        x = jnp.tanh(x @ x.T + i) * 0.5
      return x
    jax.jit(f).lower(jnp.ones((32, 32))).compile()
    print(json.dumps({"used": used}))
""")


def _child(cache):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  out = subprocess.run([sys.executable, "-c", _CHILD, cache], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  return out.stdout.strip().splitlines()[-1]


def test_enable_writes_and_a_second_process_reads(tmp_path):
  cache = str(tmp_path / "xla")
  assert cache in _child(cache)
  entries = set(os.listdir(cache))
  assert entries, "nothing was written to the compilation cache"
  mtimes = {e: os.path.getmtime(os.path.join(cache, e)) for e in entries}
  _child(cache)       # same program, new process: read, not rewritten
  assert set(os.listdir(cache)) == entries
  assert {e: os.path.getmtime(os.path.join(cache, e))
          for e in entries} == mtimes


def test_enable_keeps_a_directory_the_user_set(tmp_path):
  code = textwrap.dedent(f"""
      import jax
      from lopt import compile_cache
      jax.config.update("jax_compilation_cache_dir", {str(tmp_path / 'mine')!r})
      print(compile_cache.enable({str(tmp_path / 'ours')!r}))
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == str(tmp_path / "mine")
