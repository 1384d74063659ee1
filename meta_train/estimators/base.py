"""Shared machinery of the gradient estimators.

Every estimator implements one interface (:class:`GradientEstimator`)::

    worker_state = estimator.init(theta, key)
    grad, worker_state, metrics = estimator.estimate(theta, worker_state, key)

``init``'s key is the *seed* key (per-task randomness derives from it and the
global task index); ``estimate``'s key is the per-outer-step key (the same for
every worker of a distributed run). ``grad`` is the average over the
estimator's particles; ``metrics["num_particles"]`` is the weight a learner
uses to average several workers.

The antithetic estimators (ES-Single, PES, truncated ES, FullES) share
:func:`antithetic_unroll`: particle ``i`` is a pair of inner states unrolled
under ``theta + eps_i`` and ``theta - eps_i`` with common random numbers
(same data and init keys on both sides). Each step's loss difference
``d_t = L_t(+) - L_t(-)`` is credited to the *credit vector* in effect at that
step, and the estimate of a particle is ``sum_t credit_t * d_t / (2 s^2)``.
What differs between estimators is the perturbation and the credit:

=============  ========================  ==================================
estimator      perturbation eps          credit of a step
=============  ========================  ==================================
ES-Single      per episode (kept)        eps of the step's episode
PES            fresh each truncation     xi = sum of eps since episode start
truncated ES   fresh each truncation     eps of this truncation
FullES         per episode, whole run    eps
=============  ========================  ==================================

On a reset inside a truncation the credit becomes the perturbation of the new
episode (for PES: only this truncation's eps influenced the new episode), so
the loss of the first step of a new episode is never credited to the old
episode's noise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, NamedTuple, Optional, Protocol, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.meta_train import unroll as U

PyTree = Any
Array = jax.Array

REDUCTIONS = ("mean", "sum")


class GradientEstimator(Protocol):
  """A meta-gradient estimator over a slice of the task batch."""

  name: str
  num_particles_total: int

  def init(self, theta: PyTree, key: Array) -> PyTree:
    ...

  def estimate(self, theta: PyTree, worker_state: PyTree, key: Array
               ) -> Tuple[PyTree, PyTree, Dict[str, Array]]:
    ...


@dataclasses.dataclass(frozen=True, eq=False)
class EstimatorBase:
  """Common constructor arguments.

  Attributes:
    system: the :class:`lopt.meta_train.unroll.UnrollSystem` to unroll.
    num_tasks: number of tasks in the whole batch (used when ``task_indices``
      is None: this estimator owns tasks ``0 .. num_tasks-1``).
    trunc_length: K, inner steps per ``estimate`` call.
    num_particles: antithetic pairs (or TBPTT copies) per task.
    std: s, standard deviation of the perturbations ``eps ~ N(0, s^2 I)``.
    random_offsets: start each task's first episode at a random step.
    reduce: ``"mean"``: the meta-objective of a call is the mean per-step
      loss over the unrolled steps; ``"sum"``: their sum.
    task_indices: the global task indices this estimator (worker) owns.
  """

  system: Any
  num_tasks: int = 8
  trunc_length: int = 50
  num_particles: int = 1
  std: float = 0.01
  random_offsets: bool = True
  reduce: str = "mean"
  task_indices: Optional[Sequence[int]] = None

  name = "base"

  def __post_init__(self):
    for f in ("num_tasks", "trunc_length", "num_particles"):
      v = getattr(self, f)
      if int(v) < 1:
        raise ValueError(f"{type(self).__name__}: {f} must be >= 1, got {v}.")
    if not float(self.std) > 0:
      raise ValueError(f"{type(self).__name__}: std must be > 0, got "
                       f"{self.std}.")
    if self.reduce not in REDUCTIONS:
      raise ValueError(f"{type(self).__name__}: reduce must be one of "
                       f"{REDUCTIONS}, got {self.reduce!r}.")

  @property
  def indices(self) -> np.ndarray:
    if self.task_indices is None:
      return np.arange(self.num_tasks, dtype=np.int32)
    return np.asarray(self.task_indices, dtype=np.int32)

  @property
  def num_particles_total(self) -> int:
    return len(self.indices) * self.num_particles

  def _episodes(self, key: Array) -> U.Episode:
    return U.initial_episodes(self.system, key, self.indices,
                              self.num_particles, self.random_offsets)


class ESCarry(NamedTuple):
  ep: U.Episode
  inner: PyTree      # [2, P, ...] antithetic inner states
  eps: PyTree        # [P, ...]   current perturbation
  credit: PyTree     # [P, ...]   vector credited with d_t
  gsum: PyTree       # [P, ...]   sum_t credit_t * d_t
  fresh_avail: Array  # [P] the precomputed next-episode state is unused
  loss_sum: Array    # [P] sum of (L+ + L-)/2 over counted steps
  counted: Array     # [P] counted (finite, active) steps
  nonfinite: Array   # [P] steps with a non-finite loss
  resets: Array      # [P] resets (episode ends and non-finite)


def antithetic_unroll(system: U.UnrollSystem, theta: PyTree, ep: U.Episode,
                      inner: PyTree, eps: PyTree, credit: PyTree,
                      num_steps: int, *, std: float,
                      resample_on_reset: bool,
                      allow_reset: bool = True) -> ESCarry:
  """Unrolls ``num_steps`` antithetic steps with ``lax.scan``.

  Resets without control flow: before the scan, every particle's *next*
  episode (bookkeeping, noise and initial antithetic states) is built once;
  inside the scan a particle that must reset selects it (``jnp.where``).
  A ``lax.cond`` in the scan body would cost ~2.5x the step time on CPU
  (it breaks in-place updates of the carry). A particle that needs a
  second reset within one truncation (horizon shorter than K, or a fresh
  episode that is non-finite at once) idles -- its steps are masked -- until
  the next truncation starts its next episode; credit stays exact.

  Args:
    system: the inner problem.
    theta: unperturbed meta-parameters.
    ep: per-particle episodes ``[P]``.
    inner: antithetic inner states ``[2, P, ...]``.
    eps: current perturbations ``[P, ...]``.
    credit: credit vector at the first step ``[P, ...]``.
    num_steps: static number of steps.
    std: perturbation scale (for resampled noise).
    resample_on_reset: a new episode gets its own ES-Single noise (else it
      keeps ``eps``, as PES and truncated ES do).
    allow_reset: reset finished episodes (FullES passes False and masks the
      steps past the horizon instead).

  A step whose loss is not finite on either side ends that particle's
  episode (it resets at the next step). If ``system.nonfinite_loss`` is set,
  the non-finite side counts as that loss (diverging costs the penalty);
  otherwise the step is left out of the estimate and the meta-loss.
  Returns:
    The final :class:`ESCarry`.
  """
  num = ep.t.shape[0]
  penalty = getattr(system, "nonfinite_loss", None)
  zeros_p = jnp.zeros([num], jnp.float32)
  zi = jnp.zeros([num], jnp.int32)
  c0 = ESCarry(ep, inner, eps, credit,
               jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), eps),
               jnp.full([num], allow_reset), zeros_p, zi, zi, zi)
  if allow_reset:
    next_ep = U.next_episodes(system, ep)
    next_eps = (U.episode_noise(next_ep, theta, std) if resample_on_reset
                else eps)
    fresh = jax.vmap(lambda th: U.init_inner(system, th, next_ep))(
        U.perturbed(theta, next_eps))

  def body(c: ESCarry, _):
    need = U.needs_reset(c.ep)
    if allow_reset:
      use = need & c.fresh_avail
      active = ~need | use
      eps_ = U.tree_select(use, next_eps, c.eps)
      c = c._replace(
          ep=U.tree_select(use, next_ep, c.ep),
          inner=U.tree_select_axis(use, fresh, c.inner, 1),
          eps=eps_,
          credit=U.tree_select(use, eps_, c.credit),
          fresh_avail=c.fresh_avail & ~use,
          resets=c.resets + use.astype(jnp.int32))
    else:
      active = ~need
    theta_pm = U.perturbed(theta, c.eps)
    keys = U.step_keys(c.ep)
    step = jax.vmap(jax.vmap(system.step), in_axes=(0, 0, None))
    new_inner, loss = step(theta_pm, c.inner, keys)
    lp, lm = loss[0], loss[1]
    w = U.step_weights(system, c.ep.t, c.ep.horizon)
    finite = jnp.isfinite(lp) & jnp.isfinite(lm)
    if penalty is None:       # a non-finite step is left out of the estimate
      ok = finite & active
    else:                     # ... or counts as the penalty loss
      lp = jnp.where(jnp.isfinite(lp), lp, penalty)
      lm = jnp.where(jnp.isfinite(lm), lm, penalty)
      ok = active
    d = jnp.where(ok, w * (lp - lm), 0.0).astype(jnp.float32)
    c = c._replace(
        ep=c.ep._replace(t=c.ep.t + 1,
                         bad=jnp.where(active, ~finite, c.ep.bad)),
        inner=new_inner,
        gsum=U.tree_axpy(d, c.credit, c.gsum),
        loss_sum=c.loss_sum + jnp.where(ok, 0.5 * w * (lp + lm), 0.0),
        counted=c.counted + ok.astype(jnp.int32),
        nonfinite=c.nonfinite + (active & ~finite).astype(jnp.int32))
    return c, None

  c, _ = jax.lax.scan(body, c0, None, length=num_steps)
  return c


def es_gradient(c: ESCarry, std: float, denom: Array | float) -> PyTree:
  """``mean_i sum_t credit_{i,t} d_{i,t} / (2 s^2 denom_i)``."""
  denom = jnp.asarray(denom, jnp.float32)
  scale = 1.0 / (2.0 * std * std) / denom
  return jax.tree.map(
      lambda g: jnp.mean(U._bcast(jnp.broadcast_to(scale, g.shape[:1]), g) * g,
                         axis=0), c.gsum)


def es_metrics(c: ESCarry, num_steps: int) -> Dict[str, Array]:
  num = c.counted.shape[0]
  counted = jnp.sum(c.counted)
  return {
      "meta_loss": jnp.sum(c.loss_sum) / jnp.maximum(counted, 1),
      "inner_steps": jnp.asarray(2 * num * num_steps, jnp.float32),
      "resets": jnp.sum(c.resets).astype(jnp.float32),
      "nonfinite": jnp.sum(c.nonfinite).astype(jnp.float32),
      "num_particles": jnp.asarray(num, jnp.float32),
  }


def aggregate(results: Sequence[Tuple[PyTree, Dict[str, Array]]]
              ) -> Tuple[PyTree, Dict[str, Array]]:
  """Combines ``(grad, metrics)`` of several workers (each over its own
  slice of tasks) into the estimate over all their particles: gradients and
  the meta-loss are averaged weighted by ``metrics["num_particles"]``; counts
  (inner steps, resets, non-finite losses, particles) are summed. Equal to a
  single estimator over the union of the slices up to float rounding."""
  if not results:
    raise ValueError("aggregate() needs at least one (grad, metrics) pair.")
  weights = [jnp.asarray(m["num_particles"], jnp.float32) for _, m in results]
  total = sum(weights)
  grad = jax.tree.map(lambda *gs: sum(w * g for w, g in zip(weights, gs))
                      / total, *[g for g, _ in results])
  metrics = {k: sum(jnp.asarray(m[k], jnp.float32) for _, m in results)
             for k in ("inner_steps", "resets", "nonfinite", "num_particles")}
  metrics["meta_loss"] = sum(w * m["meta_loss"] for w, (_, m) in
                             zip(weights, results)) / total
  return grad, metrics
