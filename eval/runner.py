"""Fully jitted training runs: ``lax.scan`` over steps, ``vmap`` over seeds
(and over learning rates for a sweep).

One run of ``num_steps`` steps of optimizer ``opt`` on ``task`` from seed
``s`` uses this key scheme (a hand-written loop with the same keys gives the
same numbers, see ``tests/eval/test_runner.py``)::

    k_init, k_train, k_valid, k_test = jax.random.split(PRNGKey(s), 4)
    params = task.init(k_init); state = opt.init(params)
    for t in range(num_steps):                      # 0-based step index
      k_batch, k_loss = jax.random.split(jax.random.fold_in(k_train, t))
      batch = task.sample_batch(k_batch, "train")
      loss_t, g = value_and_grad(task.loss)(params, batch, k_loss)
      updates, state = opt.update(g, state, params, value=loss_t)
      params = optax.apply_updates(params, updates)

``train_loss[t]`` is ``loss_t``: the loss of the minibatch used by update
``t + 1`` (1-based step ``t + 1``), evaluated before that update.
Validation metrics (``task.metrics`` averaged over ``num_valid_batches``
fixed validation batches, the same batches at every evaluation) are recorded
after 0, E, 2E, ... updates and after the last one (``E = eval_every``); test
metrics once at the end. Initial parameters and training batches depend only
on the seed, so every optimizer sees the same data and starting point.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.eval import specs as specs_lib

PyTree = Any


@dataclasses.dataclass
class RunResult:
  """Curves of a batch of runs (numpy arrays, leading axes = runs).

  Attributes:
    train_loss: ``[..., num_seeds, num_steps]`` per-step training loss.
    eval_steps: ``[E]`` number of updates done at each validation point.
    valid: metric name -> ``[..., num_seeds, E]``.
    test: metric name -> ``[..., num_seeds]`` at the end of training.
    wall_s: execution time of the compiled program (seconds).
    compile_s: tracing + compilation time (seconds).
    num_runs: runs executed together (seeds x learning rates).
  """

  train_loss: np.ndarray
  eval_steps: np.ndarray
  valid: Dict[str, np.ndarray]
  test: Dict[str, np.ndarray]
  wall_s: float
  compile_s: float
  num_runs: int

  @property
  def num_steps(self) -> int:
    return int(self.train_loss.shape[-1])

  @property
  def step_time_s(self) -> float:
    """Wall-clock per optimizer step per run: ``wall_s / (steps * runs)``
    (amortised over the runs that execute together under ``vmap``)."""
    return self.wall_s / max(1, self.num_steps * self.num_runs)

  def select(self, index: int) -> "RunResult":
    """Slice the leading (learning-rate) axis of a sweep result."""
    return RunResult(
        train_loss=self.train_loss[index], eval_steps=self.eval_steps,
        valid={k: v[index] for k, v in self.valid.items()},
        test={k: v[index] for k, v in self.test.items()},
        wall_s=self.wall_s, compile_s=self.compile_s,
        num_runs=self.num_runs)


def eval_schedule(num_steps: int, eval_every: int) -> np.ndarray:
  """Update counts at which validation metrics are recorded."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if eval_every < 1:
    raise ValueError(f"eval_every must be >= 1, got {eval_every}.")
  steps = list(range(0, num_steps + 1, eval_every))
  if steps[-1] != num_steps:
    steps.append(num_steps)
  return np.asarray(steps, dtype=np.int64)


def default_eval_every(num_steps: int) -> int:
  """About 20 validation points per run."""
  return max(1, num_steps // 20)


def make_run_fn(task, make_opt: specs_lib.OptFactory, num_steps: int,
                eval_every: int, num_valid_batches: int = 2,
                num_test_batches: int = 0
                ) -> Callable[[jax.Array, Any], Dict[str, Any]]:
  """Returns ``fn(key, hparams) -> outputs`` for one run (pure, jittable).

  ``make_opt(hparams)`` is called inside the trace, so ``hparams`` may hold
  traced scalars (a vmapped learning rate).

  Structure (chosen for compile time, which dominates on small tasks): one
  ``lax.scan`` over the ``S = len(eval_schedule)`` evaluation points; point
  ``j`` evaluates the current parameters, then runs segment ``j`` (the
  ``eval_every`` steps up to the next point) as an inner ``lax.scan``.
  Validation code is therefore traced once, not once per call site. The
  last point runs no steps (``lax.cond``); a short final segment (when
  ``eval_every`` does not divide ``num_steps``) skips its padding steps with
  a per-step ``lax.cond``.
  """
  schedule = eval_schedule(num_steps, eval_every)  # validates
  num_points = len(schedule)
  rem = num_steps % eval_every
  padded = num_points * eval_every

  def evaluate(params, keys, split):
    def one(k):
      kb, km = jax.random.split(k)
      batch = task.sample_batch(kb, split)
      return dict(task.metrics(params, batch, km))
    ms = jax.lax.map(one, keys)
    return {k: jnp.mean(jnp.asarray(v, jnp.float32), axis=0)
            for k, v in ms.items()}

  def fn(key, hparams):
    opt = make_opt(hparams)
    k_init, k_train, k_valid, k_test = jax.random.split(key, 4)
    params = task.init(k_init)
    state = opt.init(params)
    valid_keys = jax.random.split(k_valid, max(1, num_valid_batches))

    # All per-step keys at once (one batched threefry, outside the loop).
    ts = jnp.arange(padded)
    step_keys = jax.vmap(
        lambda t: jax.random.split(jax.random.fold_in(k_train, t)))(ts)

    def step(carry, keys):
      params, state = carry
      batch = task.sample_batch(keys[0], "train")
      loss, grads = jax.value_and_grad(task.loss)(params, batch, keys[1])
      updates, state = opt.update(grads, state, params, value=loss)
      params = optax.apply_updates(params, updates)
      return (params, state), jnp.asarray(loss, jnp.float32)

    def masked_step(carry, xs):
      t, keys = xs
      return jax.lax.cond(t < num_steps, step,
                          lambda c, k: (c, jnp.float32(jnp.nan)), carry, keys)

    def point(carry, xs):
      j, ts_j, keys_j = xs
      metrics = evaluate(carry[0], valid_keys, "valid")
      if rem:
        run = lambda c: jax.lax.scan(masked_step, c, (ts_j, keys_j))
      else:
        run = lambda c: jax.lax.scan(step, c, keys_j)
      skip = lambda c: (c, jnp.full((eval_every,), jnp.nan, jnp.float32))
      carry, losses = jax.lax.cond(j < num_points - 1, run, skip, carry)
      return carry, (losses, metrics)

    xs = (jnp.arange(num_points), ts.reshape(num_points, eval_every),
          step_keys.reshape((num_points, eval_every) + step_keys.shape[1:]))
    carry, (losses, valid) = jax.lax.scan(point, (params, state), xs)
    out = {"train_loss": losses.reshape(-1)[:num_steps], "valid": valid}
    if num_test_batches:
      out["test"] = evaluate(carry[0], jax.random.split(k_test,
                                                        num_test_batches),
                             "test")
    else:
      out["test"] = {}
    if not num_valid_batches:
      out["valid"] = {}
    return out

  return fn


def _seed_keys(seeds: Sequence[int]) -> jax.Array:
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError("Need at least one seed.")
  return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


@dataclasses.dataclass
class Prepared:
  """A compiled, not yet executed batch of runs (:func:`prepare_run`,
  :func:`prepare_sweep`). ``compile_s`` includes tracing and lowering."""

  compiled: Any
  args: Tuple[Any, ...]
  eval_steps: np.ndarray
  compile_s: float
  num_runs: int

  def execute(self) -> RunResult:
    """Runs the program; ``wall_s`` is its execution time alone."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(self.compiled(*self.args))
    wall_s = time.perf_counter() - t0
    out = jax.device_get(out)
    return RunResult(
        train_loss=np.asarray(out["train_loss"], np.float32),
        eval_steps=self.eval_steps,
        valid={k: np.asarray(v, np.float32) for k, v in out["valid"].items()},
        test={k: np.asarray(v, np.float32) for k, v in out["test"].items()},
        wall_s=float(wall_s), compile_s=self.compile_s,
        num_runs=self.num_runs)


@dataclasses.dataclass
class Staged:
  """A traced and lowered, not yet compiled, batch of runs. Lowering is
  Python work (holds the GIL); :meth:`compile` is XLA work (releases it)."""

  lowered: Any
  args: Tuple[Any, ...]
  eval_steps: np.ndarray
  num_runs: int
  lower_s: float

  def flops(self) -> float:
    """XLA's static FLOP estimate (loop bodies counted once); a relative
    cost used to schedule big programs first. 0 if unavailable."""
    try:
      ca = self.lowered.cost_analysis()
      if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
      return float((ca or {}).get("flops", 0.0))
    except Exception:  # pylint: disable=broad-except
      return 0.0

  def compile(self) -> Prepared:
    t0 = time.perf_counter()
    compiled = self.lowered.compile()
    return Prepared(compiled, self.args, self.eval_steps,
                    self.lower_s + time.perf_counter() - t0, self.num_runs)


def _lower(fn, args, eval_steps, num_runs) -> Staged:
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  return Staged(lowered, tuple(args), eval_steps, num_runs,
                time.perf_counter() - t0)


def prepare_run(task, optimizer: Any, num_steps: int, seeds: Sequence[int],
                eval_every: Optional[int] = None, num_valid_batches: int = 2,
                num_test_batches: int = 0) -> Prepared:
  """Compiles :func:`run`'s program (see there for the arguments)."""
  return lower_run(task, optimizer, num_steps, seeds, eval_every,
                   num_valid_batches, num_test_batches).compile()


def lower_run(task, optimizer: Any, num_steps: int, seeds: Sequence[int],
              eval_every: Optional[int] = None, num_valid_batches: int = 2,
              num_test_batches: int = 0) -> Staged:
  """Traces and lowers :func:`run`'s program."""
  eval_every = eval_every or default_eval_every(num_steps)
  make_opt = optimizer_factory(optimizer, task, num_steps)
  fn = make_run_fn(task, lambda hp: make_opt({}), num_steps, eval_every,
                   num_valid_batches, num_test_batches)
  keys = _seed_keys(seeds)
  return _lower(jax.vmap(lambda k: fn(k, None)), (keys,),
                  eval_schedule(num_steps, eval_every), len(keys))


def run(task, optimizer: Any, num_steps: int, seeds: Sequence[int],
        eval_every: Optional[int] = None, num_valid_batches: int = 2,
        num_test_batches: int = 0) -> RunResult:
  """Trains ``task`` with ``optimizer`` from every seed (one jitted program).

  Args:
    task: a :class:`lopt.tasks.Task`.
    optimizer: an optimizer string (see :mod:`lopt.eval.specs`), a parsed
      :class:`~lopt.eval.specs.OptimizerSpec`, a
      :class:`~lopt.eval.specs.ResolvedRule`, or an optax transformation
      (plain ones get ``value=`` support added).
    num_steps: training steps per run.
    seeds: one run per seed, vmapped.
    eval_every: validation interval (default: ~20 points per run).
    num_valid_batches: validation batches averaged at each point.
    num_test_batches: test batches evaluated at the end (0: none).

  Returns:
    A :class:`RunResult` with ``train_loss`` of shape ``[S, num_steps]``.
  """
  return prepare_run(task, optimizer, num_steps, seeds, eval_every,
                     num_valid_batches, num_test_batches).execute()


def prepare_sweep(task, baseline: str, lrs: Sequence[float], num_steps: int,
                  seeds: Sequence[int],
                  hparams: Optional[Mapping[str, float]] = None,
                  eval_every: Optional[int] = None, num_valid_batches: int = 2,
                  num_test_batches: int = 0) -> Prepared:
  """Compiles :func:`run_sweep`'s program (see there for the arguments)."""
  return lower_sweep(task, baseline, lrs, num_steps, seeds, hparams,
                     eval_every, num_valid_batches,
                     num_test_batches).compile()


def lower_sweep(task, baseline: str, lrs: Sequence[float], num_steps: int,
                seeds: Sequence[int],
                hparams: Optional[Mapping[str, float]] = None,
                eval_every: Optional[int] = None, num_valid_batches: int = 2,
                num_test_batches: int = 0) -> Staged:
  """Traces and lowers :func:`run_sweep`'s program."""
  if baseline not in specs_lib.BASELINES:
    raise ValueError(f"Unknown baseline {baseline!r}; known: "
                     f"{', '.join(specs_lib.BASELINES)}.")
  lrs = [float(x) for x in lrs]
  if not lrs or min(lrs) <= 0:
    raise ValueError(f"Learning rates must be a non-empty list of positive "
                     f"numbers, got {lrs}.")
  eval_every = eval_every or default_eval_every(num_steps)
  static = {k: float(v) for k, v in (hparams or {}).items() if k != "lr"}

  def make_opt(lr):
    return specs_lib.baseline_transform(baseline, {**static, "lr": lr})

  fn = make_run_fn(task, make_opt, num_steps, eval_every, num_valid_batches,
                   num_test_batches)
  keys = _seed_keys(seeds)
  over_seeds = jax.vmap(fn, in_axes=(0, None))
  over_lrs = jax.vmap(over_seeds, in_axes=(None, 0))
  return _lower(over_lrs, (keys, jnp.asarray(lrs, jnp.float32)),
                  eval_schedule(num_steps, eval_every), len(keys) * len(lrs))


def run_sweep(task, baseline: str, lrs: Sequence[float], num_steps: int,
              seeds: Sequence[int], hparams: Optional[Mapping[str, float]] = None,
              eval_every: Optional[int] = None, num_valid_batches: int = 2,
              num_test_batches: int = 0) -> RunResult:
  """Runs baseline ``baseline`` at every learning rate in ``lrs`` from every
  seed: one program, ``vmap`` over learning rates of ``vmap`` over seeds
  (``lrs`` is a traced array, so the grid costs one compilation).

  Returns:
    A :class:`RunResult` with ``train_loss`` of shape ``[L, S, num_steps]``.
  """
  return prepare_sweep(task, baseline, lrs, num_steps, seeds, hparams,
                       eval_every, num_valid_batches,
                       num_test_batches).execute()


def optimizer_factory(optimizer: Any, task, num_steps: int
                      ) -> specs_lib.OptFactory:
  """``hparams -> transformation`` for any accepted optimizer form."""
  if isinstance(optimizer, str):
    optimizer = specs_lib.parse_optimizer(optimizer)
  if isinstance(optimizer, specs_lib.OptimizerSpec):
    spec = optimizer
    if spec.kind == "baseline":
      return lambda hp: specs_lib.baseline_transform(spec.name, spec.hp)
    optimizer = specs_lib.resolve_learned(spec)
  if isinstance(optimizer, specs_lib.ResolvedRule):
    tx = optimizer.transform(num_steps, param_meta=_param_meta(task))
    return lambda hp: tx
  if isinstance(optimizer, optax.GradientTransformationExtraArgs):
    return lambda hp: optimizer
  if isinstance(optimizer, optax.GradientTransformation):
    tx = optax.with_extra_args_support(optimizer)
    return lambda hp: tx
  raise ValueError(
      f"Cannot use {optimizer!r} as an optimizer: give a spec string, an "
      "OptimizerSpec or an optax GradientTransformation.")


def _param_meta(task):
  try:
    return task.param_meta
  except (NotImplementedError, AttributeError):
    return None
