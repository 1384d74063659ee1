"""The outer loop: optax on theta, one jitted outer step, logging,
checkpoints with exact resume, export to a learned-optimizer file.

One outer step (a pure function of :class:`TrainState`, jitted as a whole
with the state donated)::

    key            = fold_in(outer_root, step)
    g, ws, metrics = estimator.estimate(theta, worker_state, key)
    theta, opt     = optax update of (clipped) g          # skipped if g is
                                                          # not finite

:meth:`MetaTrainer.apply_gradient` is the learner half on its own (a
distributed learner averages workers' ``g`` weighted by
``metrics["num_particles"]`` and calls it).

Randomness: ``base = PRNGKey(seed)``; theta from ``fold_in(base, 0)``, the
inner problems from ``fold_in(base, 1)`` (then per global task index), the
outer-step keys from ``fold_in(base, 2)``, evaluation tasks from
``fold_in(base, 3)``. Same seed, same result; a resumed run is bit-identical
to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import files
from lopt.progress import Progress
from lopt.meta_train import estimators as estimators_lib
from lopt.meta_train import unroll as U
from lopt.meta_train.config import (ConfigError, MetaTrainConfig,
                                     init_from_mismatch)
from lopt.meta_train.inner import InnerTraining, log_meta_loss, train_curve

PyTree = Any
Array = jax.Array


class TrainState(NamedTuple):
  """The complete meta-training state (what a checkpoint holds)."""

  step: Array            # int32, outer steps done
  theta: PyTree
  opt_state: PyTree
  worker_state: PyTree
  ema_raw: Array         # f32, un-bias-corrected EMA of the meta-loss
  ema_count: Array       # int32, number of losses in the EMA
  best_loss: Array       # f32 (EMA meta-loss, or eval loss when eval is on)
  best_theta: PyTree
  best_step: Array       # int32
  skipped: Array         # int32, updates skipped (non-finite meta-gradient)
  resets: Array          # f32, cumulative inner resets
  nonfinite: Array       # f32, cumulative non-finite inner losses


def build_schedule(config: MetaTrainConfig) -> optax.Schedule:
  """Linear warmup to ``learning_rate`` then constant or cosine decay to
  ``final_lr_fraction * learning_rate`` at ``outer_steps``."""
  lr, warm = config.learning_rate, config.warmup_steps
  if config.schedule == "cosine":
    decay = max(config.outer_steps - warm, 1)
    main = optax.cosine_decay_schedule(lr, decay, alpha=config.final_lr_fraction)
  else:
    main = optax.constant_schedule(lr)
  if warm > 0:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), main], [warm])
  return main


def build_optimizer(config: MetaTrainConfig
                    ) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = build_schedule(config)
  parts = []
  if config.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.clip_norm))
  parts.append(optax.adam(schedule, b1=config.b1, b2=config.b2))
  return optax.chain(*parts), schedule


def _all_finite(tree: PyTree) -> Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _copy(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


@dataclasses.dataclass
class RunResult:
  state: TrainState
  history: List[Dict[str, float]]
  out_dir: Optional[str] = None


class MetaTrainer:
  """Builds everything a config names and runs the outer loop.

  Args:
    config: a :class:`MetaTrainConfig` (validated here).
    rule, family: optional objects overriding ``config.rule`` /
      ``config.task_family`` (tests, custom tasks).
    task_indices: the global task indices this process owns (default: all).
  """

  def __init__(self, config: MetaTrainConfig, *, rule: Any = None,
               family: Any = None, task_indices=None):
    import lopt
    import lopt.tasks
    if rule is None or family is None:
      config.validate()
    self.config = config
    self.rule = rule if rule is not None else lopt.rules.get(
        config.rule, **config.rule_config)
    if family is not None:
      self.families = [family]
      names = [getattr(family, "name", "family")]
    else:
      names = config.family_names
      self.families = [lopt.tasks.get_family(n) for n in names]
    self.family = self.families[0]
    self.systems = [
        InnerTraining(self.rule, fam, config.horizon_min, config.horizon_max,
                      meta_loss=config.meta_loss, log_loss=config.log_loss,
                      log_loss_offset=config.log_loss_offset,
                      loss_clip=config.loss_clip,
                      loss_weighting=config.loss_weighting)
        for fam in self.families]
    self.system = self.systems[0]
    kwargs = dict(num_tasks=config.num_tasks,
                  trunc_length=config.trunc_length,
                  num_particles=config.num_particles, std=config.std,
                  random_offsets=config.random_offsets,
                  task_indices=task_indices)
    if config.estimator == "tbptt":
      kwargs["clip"] = config.tbptt_clip
    if config.estimator == "full_es":
      kwargs.pop("random_offsets")
    members = [estimators_lib.get(config.estimator, system, **kwargs)
               for system in self.systems]
    # Several families: one estimator each, combined per outer step.
    self.estimator = (members[0] if len(members) == 1 else
                      estimators_lib.Mixture(
                          tuple(members), tuple(names),
                          task_indices=task_indices,
                          weights=config.family_weights or None))
    self.optimizer, self.schedule = build_optimizer(config)
    base = jax.random.PRNGKey(config.seed)
    self._theta_key = jax.random.fold_in(base, 0)
    self._worker_key = jax.random.fold_in(base, 1)
    self._outer_root = jax.random.fold_in(base, 2)
    self._eval_key = jax.random.fold_in(base, 3)
    self.step_fn = jax.jit(self.outer_step, donate_argnums=0)
    self._eval_fn = jax.jit(self.evaluate_theta)
    self._init_worker = jax.jit(self.estimator.init)

  # -- pure pieces ----------------------------------------------------------

  def initial_theta(self) -> PyTree:
    """The rule's initial meta-parameters, or those of the learned-optimizer
    file ``config.init_from`` (same rule and config, checked by
    :meth:`MetaTrainConfig.validate`)."""
    if not self.config.init_from:
      return self.rule.init_meta_params(self._theta_key)
    import lopt
    loaded = lopt.read(self.config.init_from)
    problem = init_from_mismatch(self.config.init_from, loaded, self.rule)
    if problem:
      raise ConfigError(problem + ".")
    # lopt.read has matched the tensors to the rule's meta-parameters.
    return loaded.theta

  def init_state(self) -> TrainState:
    theta = jax.tree.map(jnp.asarray, self.initial_theta())
    worker_state = self._init_worker(theta, self._worker_key)
    return TrainState(
        step=jnp.zeros([], jnp.int32), theta=theta,
        opt_state=self.optimizer.init(theta), worker_state=worker_state,
        ema_raw=jnp.zeros([], jnp.float32),
        ema_count=jnp.zeros([], jnp.int32),
        best_loss=jnp.asarray(jnp.inf, jnp.float32),
        best_theta=_copy(theta), best_step=jnp.zeros([], jnp.int32),
        skipped=jnp.zeros([], jnp.int32),
        resets=jnp.zeros([], jnp.float32),
        nonfinite=jnp.zeros([], jnp.float32))

  def outer_step(self, state: TrainState) -> Tuple[TrainState, Dict]:
    key = jax.random.fold_in(self._outer_root, state.step)
    grad, ws, metrics = self.estimator.estimate(state.theta,
                                                state.worker_state, key)
    return self.apply_gradient(state._replace(worker_state=ws), grad,
                               metrics)

  def apply_gradient(self, state: TrainState, grad: PyTree,
                     metrics: Dict[str, Array]) -> Tuple[TrainState, Dict]:
    """The learner update: optax step on theta unless ``grad`` is not
    finite (then theta and the optimizer state are kept and the skip is
    counted). Also tracks the EMA of the meta-loss and the best theta."""
    finite = _all_finite(grad)
    safe = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grad)
    updates, opt_state = self.optimizer.update(safe, state.opt_state,
                                               state.theta)
    new_theta = optax.apply_updates(state.theta, updates)
    ok = finite & _all_finite(new_theta)
    theta = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_theta,
                         state.theta)
    opt_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), opt_state,
                             state.opt_state)
    loss = metrics["meta_loss"].astype(jnp.float32)
    loss_ok = jnp.isfinite(loss)
    d = self.config.ema_decay
    ema_raw = jnp.where(loss_ok, d * state.ema_raw + (1 - d) * loss,
                        state.ema_raw)
    ema_count = state.ema_count + loss_ok.astype(jnp.int32)
    ema = ema_raw / (1 - d ** jnp.maximum(ema_count, 1).astype(jnp.float32))
    step = state.step + 1
    best_theta, best_loss, best_step = (state.best_theta, state.best_loss,
                                        state.best_step)
    if self.config.eval_every <= 0:
      warm = ema_count >= int(math.ceil(1.0 / (1.0 - d)))
      better = warm & (ema < state.best_loss)
      # theta *before* this update produced the losses in the EMA.
      best_theta = jax.tree.map(lambda t, b: jnp.where(better, t, b),
                                state.theta, state.best_theta)
      best_loss = jnp.where(better, ema, state.best_loss)
      best_step = jnp.where(better, state.step, state.best_step)
    new_state = TrainState(
        step=step, theta=theta, opt_state=opt_state,
        worker_state=state.worker_state, ema_raw=ema_raw,
        ema_count=ema_count, best_loss=best_loss, best_theta=best_theta,
        best_step=best_step, skipped=state.skipped + (~ok).astype(jnp.int32),
        resets=state.resets + metrics["resets"],
        nonfinite=state.nonfinite + metrics["nonfinite"])
    out = dict(metrics)
    out.update(grad_norm=optax.tree.norm(grad), skipped=(~ok).astype(
        jnp.float32), meta_loss_ema=ema,
               learning_rate=jnp.asarray(self.schedule(state.step),
                                         jnp.float32))
    return new_state, out

  def evaluate_theta(self, theta: PyTree) -> Array:
    """Mean normalised training loss of ``eval_tasks`` fixed fresh tasks of
    the family (of each family, then averaged over families, weighted by
    ``family_weights`` when set) trained
    ``eval_steps`` steps with theta (deterministic), the steps weighted as
    in the meta-loss (``loss_weighting``), and in log space with
    ``log_loss`` (the mean of ``w_t log(max(l_t + c, 1e-8))``, ``c`` the
    ``log_loss_offset``), so ``best.lopt`` is
    picked by the objective that meta-training lowers."""
    cfg = self.config
    keys = jax.random.split(self._eval_key, cfg.eval_tasks)
    per_family = []
    t = jnp.arange(cfg.eval_steps, dtype=jnp.int32)
    for fam, system in zip(self.families, self.systems):
      weights = U.step_weights(system, t, jnp.full_like(t, cfg.eval_steps))

      def one(key, fam=fam, weights=weights):
        k_cfg, k_run = jax.random.split(key)
        task = fam.task(fam.sample(k_cfg))
        losses = task.normalize_loss(
            train_curve(self.rule, theta, task, cfg.eval_steps, k_run))
        if cfg.log_loss:
          losses = log_meta_loss(losses, cfg.log_loss_offset)
        return jnp.mean(weights * losses)

      vals = jax.vmap(one)(keys)
      per_family.append(jnp.mean(jnp.where(jnp.isfinite(vals), vals, 1e9)))
    if cfg.family_weights and len(per_family) > 1:
      w = jnp.asarray(cfg.family_weights, jnp.float32)
      return jnp.sum(w * jnp.stack(per_family)) / jnp.sum(w)
    return jnp.mean(jnp.stack(per_family))

  # -- the loop -------------------------------------------------------------

  def run(self, out_dir: Optional[str] = None, resume: bool = False,
          progress: bool = True, callback: Optional[Callable] = None,
          until: Optional[int] = None) -> RunResult:
    """Runs (or resumes) meta-training to ``config.outer_steps``.

    ``until`` stops early after that outer step (with a checkpoint, as an
    interrupted run would leave it); a later ``resume=True`` continues.

    With ``out_dir``: writes ``config.json``, TensorBoard events and
    ``metrics.jsonl`` under ``tb/``, orbax checkpoints under
    ``checkpoints/`` and, at the end, ``final.lopt`` and ``best.lopt``
    (learned-optimizer files) and ``summary.json``.
    """
    from lopt.meta_train.checkpoint import Checkpointer
    from lopt.meta_train.logging import MetricsLogger

    cfg = self.config
    logger = ckpt = None
    if out_dir is not None:
      out_dir = os.path.abspath(out_dir)
      os.makedirs(out_dir, exist_ok=True)
      files.write_text(os.path.join(out_dir, "config.json"),
                       json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
      logger = MetricsLogger(os.path.join(out_dir, "tb"))
      ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"),
                          keep=cfg.keep_checkpoints)
    if ckpt is not None and not resume and ckpt.latest_step() is not None:
      ckpt.close()
      logger.close()
      raise FileExistsError(
          f"{out_dir} already holds checkpoints (latest step "
          f"{ckpt.latest_step()}); resume it or use a new output directory.")
    state = self.init_state()
    if resume:
      if ckpt is None:
        raise ValueError("resume=True needs out_dir.")
      if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
    start = int(state.step)
    history: List[Dict[str, float]] = []
    pending: List[Dict[str, Array]] = []
    bar = Progress("meta-train step", cfg.outer_steps, start=start,
                   bar=progress)
    t_last = time.perf_counter()
    stop = cfg.outer_steps if until is None else min(int(until),
                                                     cfg.outer_steps)
    try:
      for step in range(start, stop):
        state, m = self.step_fn(state)
        pending.append(m)
        n = step + 1
        if cfg.eval_every > 0 and n % cfg.eval_every == 0:
          state = self._eval_and_track(state, pending)
        if n % cfg.log_every == 0 or n == cfg.outer_steps:
          jax.block_until_ready(pending[-1])
          now = time.perf_counter()
          row = self._summarise(n, pending, state, now - t_last)
          t_last = now
          pending = []
          history.append(row)
          if logger is not None:
            logger.log(n, {k: v for k, v in row.items() if k != "step"})
          bar.update(n, _progress_text(row))
          if callback is not None:
            callback(n, row, state)
        if ckpt is not None and cfg.checkpoint_every > 0 and (
            n % cfg.checkpoint_every == 0):
          ckpt.save(n, state)
      if ckpt is not None and int(state.step) not in ckpt.all_steps():
        ckpt.save(int(state.step), state, force=True)
      if out_dir is not None and int(state.step) >= cfg.outer_steps:
        if not np.isfinite(float(state.best_loss)):
          # Too short a run for a warm EMA (or no eval): best = final.
          state = state._replace(
              best_theta=_copy(state.theta),
              best_loss=jnp.asarray(
                  self.summary(state)["meta_loss_ema"] or np.nan,
                  jnp.float32),
              best_step=jnp.array(state.step, jnp.int32, copy=True))
        self.export(os.path.join(out_dir, "final.lopt"), state.theta,
                    kind="final", outer_steps=int(state.step))
        self.export(os.path.join(out_dir, "best.lopt"), state.best_theta,
                    kind="best", outer_steps=int(state.step),
                    best_step=int(state.best_step),
                    best_loss=self.summary(state)["best_loss"])
        files.write_text(os.path.join(out_dir, "summary.json"), json.dumps(
            self.summary(state), indent=2, sort_keys=True))
    finally:
      bar.close()
      if logger is not None:
        logger.close()
      if ckpt is not None:
        ckpt.close()
    return RunResult(state, history, out_dir)

  def _eval_and_track(self, state: TrainState, pending) -> TrainState:
    val = float(self._eval_fn(state.theta))
    if pending:
      pending[-1] = dict(pending[-1], eval_loss=jnp.float32(val))
    if val < float(state.best_loss):
      state = state._replace(best_theta=_copy(state.theta),
                             best_loss=jnp.float32(val),
                             best_step=jnp.array(state.step, jnp.int32,
                                                 copy=True))
    return state

  def _summarise(self, n: int, pending, state: TrainState, dt: float
                 ) -> Dict[str, float]:
    ms = jax.device_get(pending)
    mean = lambda k: float(np.mean([m[k] for m in ms]))
    total = lambda k: float(np.sum([m[k] for m in ms]))
    losses = [float(m["meta_loss"]) for m in ms]
    row = {
        "step": n,
        "meta/loss": float(np.mean(losses)),
        "meta/loss_ema": float(ms[-1]["meta_loss_ema"]),
        "meta/grad_norm": mean("grad_norm"),
        "meta/learning_rate": float(ms[-1]["learning_rate"]),
        "meta/skipped_updates": total("skipped"),
        "inner/loss": float(np.mean(losses)),
        "inner/steps_per_s": total("inner_steps") / max(dt, 1e-9),
        "inner/resets": total("resets"),
        "inner/nonfinite": total("nonfinite"),
    }
    for k in sorted(ms[-1]):
      if k.startswith("meta_loss/"):      # a mixture's per-family losses
        row["meta/loss/" + k[len("meta_loss/"):]] = mean(k)
    evals = [float(m["eval_loss"]) for m in ms if "eval_loss" in m]
    if evals:
      row["meta/eval_loss"] = evals[-1]
    return row

  # -- export ---------------------------------------------------------------

  def provenance(self, **extra) -> Dict[str, Any]:
    import lopt
    return dict(
        config=self.config.to_dict(), estimator=self.config.estimator,
        task_family=self.config.task_family,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        library_version=lopt.__version__, **extra)

  def export(self, path: str, theta: PyTree, **extra) -> str:
    """Writes ``theta`` as a learned-optimizer file (``lopt.save``, atomic)
    with provenance (config, outer steps, date, library version)."""
    import lopt
    return str(lopt.save(path, self.rule, jax.device_get(theta),
                         **self.provenance(**extra)))

  def summary(self, state: TrainState) -> Dict[str, Any]:
    """JSON-safe run summary (non-finite numbers become None)."""
    fin = lambda x: float(x) if np.isfinite(float(x)) else None
    return {
        "outer_steps": int(state.step),
        "meta_loss_ema": fin(state.ema_raw / (1 - self.config.ema_decay **
                                              max(int(state.ema_count), 1))),
        "best_loss": fin(state.best_loss),
        "best_step": int(state.best_step),
        "skipped_updates": int(state.skipped),
        "inner_resets": float(state.resets),
        "inner_nonfinite": float(state.nonfinite),
    }


def _progress_text(row: Dict[str, float]) -> str:
  """The progress line's text of one logged row."""
  return (f"loss {row['meta/loss']:.4f} ema {row['meta/loss_ema']:.4f} "
          f"|g| {row['meta/grad_norm']:.3g} "
          f"{row['inner/steps_per_s']:.0f} inner steps/s")
