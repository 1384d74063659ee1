"""Per-kernel time of a jitted computation on XLA's CPU runtime.

XLA compiles a jitted function into a sequence of kernels ("thunks": fused
loops, matrix products, copies, control flow). On CPU most of lopt's
per-step cost is spread over many small kernels, so "which kernel costs what"
is the question behind every optimisation in docs/performance.md.
:func:`kernel_times` answers it with the tools jax ships: it runs the
function under ``jax.profiler`` tracing, reads the trace back with
``jax.profiler.ProfileData`` and sums the time of every event whose name is
an instruction of the compiled HLO module, with that instruction's shape and
source op name (``jit(f)/.../rsqrt``) so that a kernel can be traced back to
the line of Python that made it.

Caveats (the numbers are for finding hot spots, not for benchmarks):
- tracing adds a fixed cost to every kernel (~0.5-1 µs here), so small
  kernels look more expensive than they are, and the total exceeds the
  untraced wall time;
- XLA's CPU runtime can run independent kernels on two threads at once, so
  kernel times can add up to more than the wall time;
- kernels that XLA hands to YNNPACK (``ynn_fusion*``: matrix products, some
  reductions) read about twice their untraced cost. Measured on a
  meta-training-like step of the ``mlp`` rule: the normaliser's product
  traced at 50 µs per step, while replacing it by two row sums made the
  untraced step only 23 µs faster. Confirm a hot spot by changing it and
  timing the untraced program;
- control-flow kernels (``while``, ``conditional``, ``call``) contain other
  kernels: they are reported separately and not counted in the total.

``python bench/profile.py`` applies it to the two benchmark workloads.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import tempfile
from typing import Any, Callable, Dict, List, Tuple

import jax

_CONTROL_FLOW = ("while", "conditional", "call")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\S+) ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One compiled kernel's time per call of the profiled function."""
  name: str            # HLO instruction name, e.g. "multiply_add_fusion.2"
  opcode: str          # "fusion", "dot", "copy", "while", ...
  shape: str           # result shape, e.g. "f32[128,10]{1,0}"
  op_name: str         # source op of the instruction (jax name stack)
  us_per_call: float   # total traced time per call of the function, µs
  runs_per_call: float  # executions per call (e.g. 500 inside a scan)


def _instructions(hlo_text: str) -> Dict[str, Tuple[str, str, str]]:
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m:
      op = _OP_NAME.search(line)
      out[m.group(1)] = (m.group(3), m.group(2), op.group(1) if op else "")
  return out


def kernel_times(fn: Callable[..., Any], *args: Any, calls: int = 3
                 ) -> Tuple[List[Kernel], List[Kernel]]:
  """Traces ``calls`` calls of ``fn(*args)`` after one warm-up call.

  Args:
    fn: a function wrapped in ``jax.jit`` (it must have ``.lower``).
    *args: its arguments (not donated).
    calls: how many traced calls to average over.

  Returns:
    ``(kernels, control_flow)``: lists of :class:`Kernel`, each sorted by
    time, most expensive first; ``kernels`` holds every non-control-flow
    kernel that ran.
  """
  if not hasattr(fn, "lower"):
    raise TypeError("kernel_times needs a jax.jit-wrapped function (it reads "
                    "the compiled HLO to name the kernels); wrap it with "
                    "jax.jit first.")
  if calls < 1:
    raise ValueError(f"calls must be >= 1, got {calls}.")
  # Run the executable whose HLO names the kernels (compiled once).
  compiled = fn.lower(*args).compile()
  instrs = _instructions(compiled.as_text())
  jax.block_until_ready(compiled(*args))                 # warm up
  with tempfile.TemporaryDirectory(prefix="lopt_profile_") as tmp:
    jax.profiler.start_trace(tmp)
    try:
      for _ in range(calls):
        jax.block_until_ready(compiled(*args))
    finally:
      jax.profiler.stop_trace()
    files = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"),
                             recursive=True))
    if not files:
      raise RuntimeError("jax.profiler wrote no trace file; is another "
                         "profiler session running?")
    data = jax.profiler.ProfileData.from_file(files[-1])
    total = collections.Counter()
    count = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        for ev in line.events:
          if ev.name in instrs:
            total[ev.name] += ev.duration_ns
            count[ev.name] += 1
  kernels, control = [], []
  for name, ns in total.most_common():
    opcode, shape, op_name = instrs[name]
    k = Kernel(name, opcode, shape, op_name, ns / 1e3 / calls,
               count[name] / calls)
    (control if opcode in _CONTROL_FLOW else kernels).append(k)
  return kernels, control
