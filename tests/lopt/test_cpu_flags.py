"""lopt.cpu_flags: merging lopt's XLA CPU flags into XLA_FLAGS."""

import os
import subprocess
import sys

import pytest

from lopt import cpu_flags


def test_merge_adds_all_flags_to_empty():
  assert cpu_flags.merge(None).split() == list(cpu_flags.CPU_FLAGS)
  assert cpu_flags.merge("  ").split() == list(cpu_flags.CPU_FLAGS)


def test_merge_keeps_user_values_and_puts_ours_first():
  user = "--xla_cpu_prefer_vector_width=256 --xla_dump_to=/tmp/x"
  merged = cpu_flags.merge(user)
  # The user's vector width wins; the single-thread flag is added in front.
  assert merged == cpu_flags.SINGLE_THREAD_FLAG + " " + user
  assert "=512" not in merged


def test_merge_goes_before_a_bare_token():
  # XLA stops parsing at the first token without "--": flags added after
  # it would be ignored.
  user = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  merged = cpu_flags.merge(user).split()
  assert merged[0] == cpu_flags.VECTOR_WIDTH_FLAG
  assert merged[1:] == user.split()


def test_merge_leaves_a_flags_file_alone():
  assert cpu_flags.merge("my_flags.txt") == "my_flags.txt"


def test_merge_multi_thread_leaves_out_single_thread_flag():
  assert cpu_flags.merge("", single_thread=False) == cpu_flags.VECTOR_WIDTH_FLAG
  # ... and is idempotent.
  once = cpu_flags.merge("--xla_dump_to=/tmp/x")
  assert cpu_flags.merge(once) == once


def test_apply_sets_environ_mapping():
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  out = cpu_flags.apply(env)
  assert env["XLA_FLAGS"] == out
  assert out.endswith("--xla_dump_to=/tmp/x")


def test_xla_accepts_the_flags():
  # An XLA flag name this jax does not know aborts the process at backend
  # start-up: run a computation in a fresh interpreter with only our flags.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  code = ("from lopt import cpu_flags; cpu_flags.apply(); import jax; "
          "print(float(jax.jit(lambda x: x * 2.0)(21.0)))")
  out = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "42.0"


def test_apply_after_backend_start_warns(monkeypatch):
  import jax.numpy as jnp
  jnp.zeros(1).block_until_ready()          # the backend is up
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  with pytest.warns(RuntimeWarning, match="already started"):
    cpu_flags.apply()
  # Nothing to change: no warning.
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    cpu_flags.apply()
