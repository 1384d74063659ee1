"""Inner-training throughput of every task family's default task with Adam.

For each registered family, its default-config task is trained with
``optax.adam(1e-3)`` for ``--steps`` steps inside one jitted ``lax.scan``
(batch sampling, loss, gradient and update all on device), on single-threaded
XLA. The compiled scan is timed over ``--repeats`` calls after one warm-up
call; ``adam_steps_per_s = steps * repeats / seconds``. Later benchmarks
report meta-training overhead as a ratio to these numbers.

Usage::

    python bench/tasks.py            # every family, 500 steps x 2 repeats
    python bench/tasks.py --quick    # META_TRAIN_FAMILIES, 100 steps x 1
    python bench/tasks.py --tasks digits_mlp,char_lm

``--quick`` (under a minute; compiling dominates) covers the meta-training
families, the ones meta-training overhead is compared against; the full run
adds the held-out families (transformers take ~10 s each to compile).

Progress goes to stderr; the last stdout line is one JSON object
``{"<task name>": {"adam_steps_per_s": float, "num_params": int,
"compile_s": float}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from lopt import cpu_flags

cpu_flags.apply()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import optax  # noqa: E402

import lopt  # noqa: E402
import lopt.tasks as tasks  # noqa: E402


def bench_task(task: tasks.Task, steps: int, repeats: int) -> dict:
  """Times ``steps`` Adam steps of ``task`` in one ``lax.scan``.

  One compiled program per task initialises the parameters and the Adam
  state and runs the scan (a single compile keeps ``--quick`` fast); the
  one-off initialisation is included in the timing and is negligible next to
  ``steps`` steps.
  """
  opt = optax.adam(1e-3)

  @jax.jit
  def train(key):
    k_init, k_steps = jax.random.split(key)
    params = task.init(k_init)

    def step(carry, k):
      p, s = carry
      g = jax.grad(task.loss)(p, task.sample_batch(k, "train"), k)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                  jax.random.split(k_steps, steps))
    return params

  t0 = time.perf_counter()
  params = jax.block_until_ready(train(jax.random.PRNGKey(0)))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for r in range(repeats):
    params = train(jax.random.PRNGKey(1 + r))
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  return {"adam_steps_per_s": round(steps * repeats / seconds, 1),
          "num_params": lopt.tree_size(params),
          "compile_s": round(compile_s, 2)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="META_TRAIN_FAMILIES only, 100 steps x 1 repeat")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--tasks", default=None,
                      help="comma-separated family names (default: all)")
  args = parser.parse_args(argv)
  steps = args.steps or (100 if args.quick else 500)
  repeats = args.repeats or (1 if args.quick else 2)
  if args.tasks:
    names = args.tasks.split(",")
  elif args.quick:
    names = list(tasks.META_TRAIN_FAMILIES)
  else:
    names = list(tasks.list_families())
  results = {}
  for name in names:
    family = tasks.get_family(name)
    task = family.task(family.default_config())
    results[name] = bench_task(task, steps, repeats)
    print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
  print(json.dumps(results))
  return results


if __name__ == "__main__":
  main()
