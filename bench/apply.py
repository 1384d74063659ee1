"""Step time of each learned-optimizer rule (via ``lopt.as_optax``) against
``optax.adam``, training a 64-128-128-10 MLP at batch 128 on synthetic data.

Each optimizer runs ``--steps`` training steps inside one jitted
``lax.scan`` (forward, backward and optimizer update per step); the time per
step is the best of ``--repeats`` timed runs after a compile + warm-up run,
as wall-clock time (``us_per_step``: the step time a user sees) and as CPU
time of the process (``cpu_us_per_step``: less sensitive to other load on
the machine; it exceeds the wall time because XLA's CPU runtime runs parts
of a step on a second thread). Until session 8 the contract fields held the
CPU time and the wall time was ``wall_us_per_step``; the README has always
judged the targets on the wall-clock ratio.
All rules and Adam are measured in the same process, interleaved, so the
ratio is robust to the machine's speed.

Usage: ``python bench/apply.py [--quick] [--rules mlp,velo] [--threads N]``;
a rule may carry config values, e.g. ``--rules
mlp,mlp:features=all:norm_sample=2048`` (the ``mlp`` rule's defaults since
session 17 are 17 features and a 1024-element normaliser sample; the shipped
optimizers read all 23 features with 2048).
Prints progress to stderr and one JSON object as its last stdout line::

    {"adam_us_per_step": ..., "rules": {"<rule>": {"us_per_step": ...,
     "ratio_to_adam": ..., "state_floats_per_param": ...}}, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true",
                  help="fewer steps / repeats (under 60 s)")
  ap.add_argument("--rules", default="sgd,adam,mlp,mu_mlp,velo,mu_velo")
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--repeats", type=int, default=None)
  ap.add_argument("--threads", type=int, default=1,
                  help="1 = single-threaded XLA (default, fastest here)")
  return ap.parse_args()


SIZES = (64, 128, 128, 10)
BATCH = 128


def build(rules, steps):
  """The bench's workload: ``(opts, make_run, params, num_params)``.

  ``opts`` maps ``"adam"`` (``optax.adam(1e-3)``) and ``"rule:<name>"``
  (each rule at its initial meta-parameters via ``lopt.as_optax``) to
  optax transformations; ``make_run(opt)`` is a jitted ``run(params, key)``
  that trains the 64-128-128-10 MLP for ``steps`` steps in one
  ``lax.scan``. Imported by ``bench/profile.py``."""
  import jax
  import jax.numpy as jnp
  import optax
  import lopt
  from lopt.eval.specs import parse_optimizer

  key = jax.random.PRNGKey(0)
  kx, kp = jax.random.split(key)
  xs = jax.random.normal(kx, (1024, SIZES[0]))
  ys = jax.random.randint(kx, (1024,), 0, SIZES[-1])

  def init_params(k):
    ps = {}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
      k, sub = jax.random.split(k)
      ps[f"layer{i}"] = {"w": jax.random.normal(sub, (a, b)) / jnp.sqrt(a),
                         "b": jnp.zeros((b,))}
    return ps

  def loss_fn(ps, x, y):
    h = x
    n = len(SIZES) - 1
    for i in range(n):
      h = h @ ps[f"layer{i}"]["w"] + ps[f"layer{i}"]["b"]
      if i < n - 1:
        h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

  params = init_params(kp)

  def make_run(opt):
    def step(carry, k):
      ps, st = carry
      idx = jax.random.randint(k, (BATCH,), 0, xs.shape[0])
      loss, g = jax.value_and_grad(loss_fn)(ps, xs[idx], ys[idx])
      upd, st = opt.update(g, st, ps, value=loss)
      return (optax.apply_updates(ps, upd), st), loss

    @jax.jit
    def run(ps, k):
      st = opt.init(ps)
      (ps, _), losses = jax.lax.scan(step, (ps, st),
                                     jax.random.split(k, steps))
      return ps, losses[-1]
    return run

  opts = {"adam": optax.adam(1e-3)}
  for name in rules:
    # e.g. "mlp:features=all:norm_sample=2048" (the shipped optimizers'
    # rule), parsed as lopt eval's "rule:mlp,features=all,norm_sample=2048".
    spec = parse_optimizer("rule:" + ",".join(name.split(":")))
    rule = lopt.rules.get(spec.name, **spec.hp)
    theta = rule.init_meta_params(jax.random.PRNGKey(1))
    opts["rule:" + name] = lopt.as_optax(rule, theta, steps)
  return opts, make_run, params, lopt.tree_size(params)


def main():
  args = _parse()
  from lopt import cpu_flags
  cpu_flags.apply(single_thread=args.threads == 1)
  import jax
  import jax.numpy as jnp

  steps = args.steps or (100 if args.quick else 500)
  repeats = args.repeats or (3 if args.quick else 5)
  rules = [r for r in args.rules.split(",") if r]
  opts, make_run, params, num_params = build(rules, steps)
  floats = {}
  for name in rules:
    st = jax.eval_shape(opts["rule:" + name].init, params)
    n = sum(int(x.size) for x in jax.tree.leaves(st)
            if jnp.issubdtype(x.dtype, jnp.floating))
    floats[name] = n / num_params
  key = jax.random.PRNGKey(0)

  runs = {}
  for name, opt in opts.items():
    run = make_run(opt)
    t0 = time.process_time()
    jax.block_until_ready(run(params, key))
    print(f"compiled {name} in {time.process_time() - t0:.1f}s",
          file=sys.stderr)
    runs[name] = run

  best = {name: float("inf") for name in runs}
  best_wall = {name: float("inf") for name in runs}
  for r in range(repeats):
    for name, run in runs.items():
      t0, w0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(run(params, jax.random.PRNGKey(r)))
      best[name] = min(best[name], time.process_time() - t0)
      best_wall[name] = min(best_wall[name], time.perf_counter() - w0)
  us = {name: 1e6 * t / steps for name, t in best.items()}
  wall = {name: 1e6 * t / steps for name, t in best_wall.items()}
  adam_us = us.pop("adam")
  adam_wall = wall.pop("adam")
  out = {
      "adam_us_per_step": round(adam_wall, 2),
      "adam_cpu_us_per_step": round(adam_us, 2),
      "rules": {
          name[5:]: {
              "us_per_step": round(wall[name], 2),
              "ratio_to_adam": round(wall[name] / adam_wall, 3),
              "cpu_us_per_step": round(v, 2),
              "cpu_ratio_to_adam": round(v / adam_us, 3),
              "state_floats_per_param": round(floats[name[5:]], 3),
          } for name, v in us.items()
      },
      "config": {"mlp": list(SIZES), "batch": BATCH, "steps": steps,
                 "repeats": repeats, "xla_threads": args.threads,
                 "xla_flags": os.environ.get("XLA_FLAGS", ""),
                 "num_params": num_params, "jax": jax.__version__,
                 "adam_state_floats_per_param": 2.0},
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
