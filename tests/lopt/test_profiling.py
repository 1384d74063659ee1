"""lopt.profiling: per-kernel times read back from a jax.profiler trace."""

import jax
import jax.numpy as jnp
import pytest

from lopt import profiling


def _step(x, w):
  def body(h, _):
    return jnp.tanh(h @ w) * 0.5 + h, None
  return jax.lax.scan(body, x, None, length=20)[0]


def test_kernel_times_names_the_compiled_kernels():
  f = jax.jit(_step)
  x, w = jnp.ones((64, 64)), jnp.eye(64) * 0.1
  kernels, control = profiling.kernel_times(f, x, w, calls=2)
  hlo = f.lower(x, w).compile().as_text()
  assert kernels, "no kernel events were matched"
  for k in kernels:
    assert f"{k.name} = " in hlo                     # a real instruction
    assert k.opcode not in ("while", "conditional", "call")
    assert k.us_per_call >= 0 and k.runs_per_call > 0
  # Sorted, most expensive first.
  times = [k.us_per_call for k in kernels]
  assert times == sorted(times, reverse=True)
  # The scan body's matrix product runs once per scan step.
  dots = [k for k in kernels if "dot_general" in k.op_name]
  assert dots and any(k.runs_per_call == pytest.approx(20) for k in dots)
  assert all(k.opcode in ("while", "conditional", "call") for k in control)


def test_kernel_times_rejects_bad_input():
  with pytest.raises(TypeError, match="jax.jit"):
    profiling.kernel_times(lambda x: x + 1, jnp.ones(3))
  with pytest.raises(ValueError, match="calls"):
    profiling.kernel_times(jax.jit(lambda x: x + 1), jnp.ones(3), calls=0)
