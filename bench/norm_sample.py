"""How much the `mlp` rule's subsampled feature normaliser changes its updates.

The per-parameter MLP rule divides each of its 23 features by the feature's
RMS over the tensor. For a tensor of more than ``norm_sample`` elements that
RMS is taken over a fixed strided subset of about ``norm_sample`` elements
(:func:`lopt.rules.mlp.sample_stride`). This script measures the error that
introduces, along real training trajectories: it trains held-out tasks with
a learned optimizer (exact normaliser), and every ``--every`` steps computes,
for every tensor larger than the sample size,

* the normaliser ratio ``RMS_sampled / RMS_exact`` of every feature, and
* the relative update difference ``|u_sampled - u_exact| / |u_exact|`` of the
  whole tensor (same state, gradient and meta-parameters; only the
  normaliser's sample differs).

Usage: ``python bench/norm_sample.py [--quick] [--optimizer mlp_digits]
[--samples 128,512,2048] [--tasks a,b] [--steps N] [--every K]``.
Progress goes to stderr; the last stdout line is one JSON object::

    {"<norm_sample>": {"ratio_abs_log_p50": ..., "ratio_abs_log_p99": ...,
                       "ratio_abs_log_max": ..., "update_rel_diff_p50": ...,
                       "update_rel_diff_p99": ..., "update_rel_diff_max": ...,
                       "tensors": ...}, ..., "config": {...}}

``ratio_abs_log`` is ``|ln(RMS_sampled / RMS_exact)|`` (0.05 is a 5% error).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np

_TASKS = "digits_mlp_wide,digits_conv,mup_mlp_w256,mnist1d_mlp"


def _parse(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true",
                  help="two tasks, 200 steps (< 60 s)")
  ap.add_argument("--optimizer", default="mlp_digits",
                  help="learned-optimizer name or .lopt path (an mlp rule)")
  ap.add_argument("--samples", default="128,512,2048",
                  help="norm_sample values to compare with the exact RMS")
  ap.add_argument("--tasks", default=None,
                  help=f"comma list of task names (default {_TASKS})")
  ap.add_argument("--steps", type=int, default=None,
                  help="training steps per task (default 1000, 200 quick)")
  ap.add_argument("--every", type=int, default=None,
                  help="measure every K steps (default steps / 10)")
  ap.add_argument("--seed", type=int, default=0)
  return ap.parse_args(argv)


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def main(argv=None):
  args = _parse(argv)
  from lopt import cpu_flags
  cpu_flags.apply(single_thread=False)
  import jax
  import jax.numpy as jnp
  import lopt
  import lopt.tasks
  from lopt.rules.mlp import PerParamMLP

  t_start = time.time()
  names = (args.tasks or ("digits_mlp_wide,mup_mlp_w256" if args.quick
                          else _TASKS)).split(",")
  steps = args.steps or (200 if args.quick else 1000)
  every = max(1, args.every or steps // 10)
  samples = sorted({int(s) for s in args.samples.split(",") if s.strip()})
  if not samples or min(samples) < 1:
    raise SystemExit("--samples must list positive integers.")
  loaded = lopt.io.read(args.optimizer)
  if not isinstance(loaded.rule, PerParamMLP):
    raise SystemExit(f"{args.optimizer!r} holds a {loaded.rule.name!r} rule; "
                     "this benchmark measures the mlp rule's normaliser.")
  exact = dataclasses.replace(loaded.rule, norm_sample=2 ** 62)
  rules = {n: dataclasses.replace(loaded.rule, norm_sample=n)
           for n in samples}
  theta = loaded.theta
  # Loss features (if the rule reads them) held at zero: the normaliser
  # comparison does not depend on them.
  loss_feats = (jnp.zeros((len(lopt.rules.common.LOSS_DECAYS),))
                if loaded.rule.uses_loss else None)

  def leaf_update(rule, g, p, ls, mu, step):
    """One tensor's update and 1/RMS from the same accumulators."""
    _, feats, inv = rule.leaf_prepare(g, p, ls)
    time_feats = lopt.rules.common.time_features(
        step, jnp.float32(steps), rule.timescales)
    log_scale = rule.log_step_scale(theta, time_feats, loss_feats)
    u = rule.leaf_apply(theta, time_feats, feats, inv, log_scale, mu, p,
                        loss_feats)
    return u, inv

  records = {n: {"ratio": [], "upd": []} for n in samples}
  for name in names:
    task = lopt.tasks.get(name)
    key = jax.random.PRNGKey(args.seed)
    params = task.init(key)
    meta = task.param_meta
    state = exact.init(theta, params, steps, meta)

    def train_chunk(params, state, key):
      def step(carry, k):
        params, state = carry
        kb, kl = jax.random.split(k)
        loss, g = jax.value_and_grad(task.loss)(
            params, task.sample_batch(kb), kl)
        upd, state = exact.update(theta, g, state, params, loss)
        return (jax.tree.map(lambda p, u: p + u, params, upd), state), loss
      (params, state), losses = jax.lax.scan(step, (params, state),
                                             jax.random.split(key, every))
      return params, state, losses[-1]

    @jax.jit
    def measure(params, state, key):
      kb, kl = jax.random.split(key)
      g = jax.grad(task.loss)(params, task.sample_batch(kb), kl)
      out = {n: [] for n in rules}
      flat_p, treedef = jax.tree.flatten(params)
      leaves = zip(flat_p, treedef.flatten_up_to(g),
                   treedef.flatten_up_to(state.leaves),
                   treedef.flatten_up_to(state.mu_scale))
      for p_, g_, ls_, mu_ in leaves:
        if g_.size <= min(samples):   # exact at every sample size
          continue
        u_ex, inv_ex = leaf_update(exact, g_, p_, ls_, mu_, state.step)
        for n, rule in rules.items():
          if g_.size <= n:            # exact at this sample size
            continue
          u_s, inv_s = leaf_update(rule, g_, p_, ls_, mu_, state.step)
          rel = (jnp.linalg.norm((u_s - u_ex).ravel()) /
                 (jnp.linalg.norm(u_ex.ravel()) + 1e-30))
          out[n].append((jnp.abs(jnp.log(inv_ex / inv_s)), rel))
      return out

    chunk = jax.jit(train_chunk)
    keys = jax.random.split(jax.random.PRNGKey(args.seed + 1), 2 * steps)
    t0 = time.time()
    for i in range(steps // every):
      res = measure(params, state, keys[2 * i])
      for n, rows in res.items():
        for ratio, rel in rows:
          records[n]["ratio"].extend(np.asarray(ratio).tolist())
          records[n]["upd"].append(float(rel))
      params, state, loss = chunk(params, state, keys[2 * i + 1])
    _log(f"{name}: {steps} steps, final loss {float(loss):.4g} "
         f"({time.time() - t0:.1f} s)")

  out = {}
  for n in samples:
    r = np.asarray(records[n]["ratio"])
    u = np.asarray(records[n]["upd"])
    if not r.size:
      out[str(n)] = {"tensors": 0}
      continue
    pct = lambda x, q: float(np.percentile(x, q))
    out[str(n)] = {
        "ratio_abs_log_p50": round(pct(r, 50), 5),
        "ratio_abs_log_p99": round(pct(r, 99), 5),
        "ratio_abs_log_max": round(float(r.max()), 5),
        "update_rel_diff_p50": round(pct(u, 50), 5),
        "update_rel_diff_p99": round(pct(u, 99), 5),
        "update_rel_diff_max": round(float(u.max()), 5),
        "tensors": int(u.size),
    }
    _log(f"norm_sample {n}: |ln ratio| p50 {out[str(n)]['ratio_abs_log_p50']}"
         f" p99 {out[str(n)]['ratio_abs_log_p99']}; update rel. diff p50 "
         f"{out[str(n)]['update_rel_diff_p50']} p99 "
         f"{out[str(n)]['update_rel_diff_p99']}")
  out["config"] = {"optimizer": args.optimizer, "tasks": names,
                   "steps": steps, "every": every, "seed": args.seed,
                   "measured_tensors": "those larger than the sample size"}
  out["wall_s"] = round(time.time() - t_start, 1)
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
