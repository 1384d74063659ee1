"""Learned-optimizer inner training as an unrollable system.

:class:`InnerTraining` wraps a rule (``lopt.rules``) and a task family
(``lopt.tasks``) into the :class:`~lopt.meta_train.unroll.UnrollSystem`
interface the estimators use. An inner state holds the task config, the task
parameters and the rule's optimizer state; one step samples a training
batch, computes the loss and gradient, applies the rule and returns the
per-step meta-loss::

    L_t = normalize(loss_t)                      meta_loss="train"
    L_t = normalize(valid_loss(params_{t+1}))    meta_loss="valid"
    L_t = log(normalize(...) + c)                log_loss=True
                                                 (c: log_loss_offset, 0 default)

and the estimators weight step ``t`` of an episode of length ``T`` by
``step_weight(t, T)``: 1 (``loss_weighting="uniform"``), ``2 (t + 1/2) / T``
(``"linear"``), ``3 ((t + 1/2) / T)^2`` (``"quadratic"``) or 10 on the last
tenth of the episode and 0 before (``"final"``), the last three emphasising
the end of training (each has mean ~1 over the episode).

``normalize`` is the task's own normaliser (``task.normalize_loss``; for
classifiers, chance level ~ 1) so tasks of a family are on one scale.
Horizons are log-uniform integers in ``[horizon_min, horizon_max]``. Each
episode draws a new task config from the family.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Array = jax.Array

META_LOSSES = ("train", "valid")
LOSS_WEIGHTINGS = ("uniform", "linear", "quadratic", "final")


class InnerState(NamedTuple):
  config: PyTree      # task config (pytree of scalars)
  params: PyTree      # task parameters
  opt_state: PyTree   # rule state


def log_uniform_int(key: Array, low: int, high: int) -> Array:
  """Integer ``n`` with ``log n ~ U(log low, log(high + 1))``, clipped to
  ``[low, high]``."""
  u = jax.random.uniform(key, (), jnp.float32, math.log(low),
                         math.log(high + 1))
  return jnp.clip(jnp.floor(jnp.exp(u)).astype(jnp.int32), low, high)


@dataclasses.dataclass(frozen=True, eq=False)
class InnerTraining:
  """Inner training of tasks from ``family`` with ``rule``.

  Attributes:
    rule: a learned-optimizer rule (``lopt.rules.get(...)``).
    family: a :class:`lopt.tasks.TaskFamily`.
    horizon_min, horizon_max: bounds of the log-uniform episode lengths.
    meta_loss: ``"train"`` (loss of the training batch of the step, before
      the update: free) or ``"valid"`` (loss of a validation batch after the
      update: one extra forward pass).
    log_loss: use ``log`` of the normalised loss (floored at 1e-8).
    log_loss_offset: ``c`` in ``log(l + c)`` (with ``log_loss``; 0: plain
      log). The log counts a relative improvement the same at every loss
      level, so a family trained to ~1e-5 outweighs one that stays at 0.3;
      ``c`` caps that: below ``l ~ c`` the meta-loss flattens.
    loss_clip: clip the normalised per-step loss at this value (0: off).
      A non-finite loss triggers a reset; with ``loss_clip`` on it also
      counts as ``loss_clip`` in the ES estimates (:attr:`nonfinite_loss`),
      so a diverging optimizer pays the worst clipped loss instead of
      dropping out of the estimate.
    loss_weighting: how the steps of an episode count in the meta-loss
      (:meth:`step_weight`): ``"uniform"`` (the mean loss over training) or
      ``"linear"`` (step ``t`` of ``T`` weighted ``2 (t + 1/2) / T``, mean 1
      over the episode: later steps count more, so the meta-objective moves
      toward the loss at the end of training, which is what a user -- and
      the held-out speedup -- measures) or ``"quadratic"`` (weight
      ``3 ((t + 1/2) / T)^2``, mean ``1 - 1/(4 T^2)``: more so; the first
      tenth of an episode carries 0.1 % of the weight, the last tenth 27 %)
      or ``"final"`` (weight 10 for ``t >= 0.9 T``, 0 before: only the loss
      at the end of training counts; most truncations then carry no signal).
  """

  rule: Any
  family: Any
  horizon_min: int = 100
  horizon_max: int = 1000
  meta_loss: str = "train"
  log_loss: bool = False
  log_loss_offset: float = 0.0
  loss_clip: float = 0.0
  loss_weighting: str = "uniform"

  def __post_init__(self):
    if not 1 <= int(self.horizon_min) <= int(self.horizon_max):
      raise ValueError(
          f"horizons need 1 <= horizon_min <= horizon_max, got "
          f"horizon_min={self.horizon_min}, horizon_max={self.horizon_max}.")
    if self.meta_loss not in META_LOSSES:
      raise ValueError(f"meta_loss must be one of {META_LOSSES}, got "
                       f"{self.meta_loss!r}.")
    if not self.log_loss_offset >= 0:
      raise ValueError(
          f"log_loss_offset must be >= 0, got {self.log_loss_offset}.")
    if self.loss_clip < 0:
      raise ValueError(f"loss_clip must be >= 0, got {self.loss_clip}.")
    if self.loss_weighting not in LOSS_WEIGHTINGS:
      raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, "
                       f"got {self.loss_weighting!r}.")
    # Build one task eagerly so that datasets the family memoises as device
    # arrays are created outside any jit trace (else they could leak tracers).
    with jax.ensure_compile_time_eval():
      self.family.task(self.family.default_config())

  @property
  def nonfinite_loss(self):
    """Meta-loss charged for a non-finite step (None: leave it out)."""
    return float(self.loss_clip) if self.loss_clip else None

  def step_weight(self, t: Array, horizon: Array) -> Array:
    """Weight of the meta-loss of step ``t`` (0-based) of an episode of
    length ``horizon`` (see ``loss_weighting``)."""
    if self.loss_weighting == "uniform":
      return jnp.ones(jnp.shape(t), jnp.float32)
    x = (jnp.asarray(t, jnp.float32) + 0.5) / jnp.maximum(
        jnp.asarray(horizon, jnp.float32), 1.0)
    if self.loss_weighting == "linear":
      return 2.0 * x
    if self.loss_weighting == "final":
      return jnp.where(x >= 0.9, 10.0, 0.0).astype(jnp.float32)
    return 3.0 * jnp.square(x)

  @property
  def max_horizon(self) -> int:
    return int(self.horizon_max)

  def init_meta_params(self, key: Array) -> PyTree:
    return self.rule.init_meta_params(key)

  def sample_horizon(self, key: Array) -> Array:
    return log_uniform_int(key, int(self.horizon_min), int(self.horizon_max))

  def init(self, theta: PyTree, key: Array, horizon: Array) -> InnerState:
    k_cfg, k_init = jax.random.split(key)
    config = self.family.sample(k_cfg)
    task = self.family.task(config)
    params = task.init(k_init)
    opt_state = self.rule.init(theta, params, horizon, task.param_meta)
    return InnerState(config, params, opt_state)

  def step(self, theta: PyTree, inner: InnerState, key: Array
           ) -> Tuple[InnerState, Array]:
    task = self.family.task(inner.config)
    k_batch, k_loss, k_valid = jax.random.split(key, 3)
    batch = task.sample_batch(k_batch, "train")
    loss, grads = jax.value_and_grad(task.loss)(inner.params, batch, k_loss)
    updates, opt_state = self.rule.update(theta, grads, inner.opt_state,
                                          inner.params, loss)
    params = optax.apply_updates(inner.params, updates)
    if self.meta_loss == "valid":
      kb, kl = jax.random.split(k_valid)
      meta = task.loss(params, task.sample_batch(kb, "valid"), kl)
    else:
      meta = loss
    meta = task.normalize_loss(meta).astype(jnp.float32)
    if self.log_loss:
      meta = log_meta_loss(meta, self.log_loss_offset)
    if self.loss_clip:
      meta = jnp.where(jnp.isfinite(meta), jnp.minimum(meta, self.loss_clip),
                       meta)
    return InnerState(inner.config, params, opt_state), meta


LOG_LOSS_FLOOR = 1e-8


def log_meta_loss(normalized_loss: Array, offset: float = 0.0) -> Array:
  """``log(max(l + c, 1e-8))`` of a normalised loss ``l`` (``log_loss=True``,
  ``c = log_loss_offset``): the floor keeps a task trained to zero loss (e.g.
  a small separable classifier) at a finite meta-loss of
  ``log(1e-8) = -18.4``."""
  return jnp.log(jnp.maximum(normalized_loss + offset, LOG_LOSS_FLOOR))


def train_curve(rule: Any, theta: PyTree, task: Any, num_steps: int,
                key: Array) -> Array:
  """Losses of ``num_steps`` steps of training ``task`` with ``rule``
  (one ``lax.scan``; jittable). Returns the training losses ``[num_steps]``
  (before each update)."""
  k_init, k_run = jax.random.split(key)
  params = task.init(k_init)
  state = rule.init(theta, params, num_steps, task.param_meta)

  def body(carry, t):
    params, state = carry
    kb, kl = jax.random.split(jax.random.fold_in(k_run, t))
    loss, grads = jax.value_and_grad(task.loss)(
        params, task.sample_batch(kb, "train"), kl)
    updates, state = rule.update(theta, grads, state, params, loss)
    return (optax.apply_updates(params, updates), state), loss

  _, losses = jax.lax.scan(body, (params, state), jnp.arange(num_steps))
  return losses
