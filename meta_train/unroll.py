"""Truncated unrolls of a batch of inner problems: the episode bookkeeping.

An *unrollable system* (:class:`UnrollSystem`) is the minimal interface the
gradient estimators need from an inner problem::

    horizon = system.sample_horizon(key)               # int32 scalar
    inner   = system.init(theta, key, horizon)         # a fresh episode
    inner, loss = system.step(theta, inner, key)       # one inner step

``loss`` is the per-step *meta-loss* ``L_t`` (already normalised). The same
estimator code runs on the exact-quadratic influence-balancing system
(:mod:`lopt.meta_train.influence`) and on learned-optimizer inner training
(:mod:`lopt.meta_train.inner`).

This module keeps per-particle *episode* bookkeeping (:class:`Episode`): the
particle's task key, its episode counter, the step within the episode and
the episode horizon. All randomness of a particle derives from its task key
and counters, and the task key derives from ``(seed key, global task
index)``, never from the layout of the batch, so a worker that owns a slice
of the tasks draws exactly what the single-process run draws for them.

Key derivation (``ek = fold_in(episodes_root(task_key), episode)``)::

    horizon      fold_in(ek, 0)
    inner init   fold_in(ek, 1)
    step t       fold_in(fold_in(ek, 2), t)
    ES-Single eps  fold_in(fold_in(ek, 3), particle)

A particle *resets* at the start of a step when its episode is over
(``t >= horizon``) or its previous step produced a non-finite meta-loss; the
loss of the step that follows a reset belongs to the new episode.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Tuple, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Array = jax.Array


@runtime_checkable
class UnrollSystem(Protocol):
  """An inner problem that can be unrolled one step at a time."""

  def init_meta_params(self, key: Array) -> PyTree:
    """Default theta."""

  def sample_horizon(self, key: Array) -> Array:
    """Episode length (int32 scalar, >= 1) for an episode key."""

  def init(self, theta: PyTree, key: Array, horizon: Array) -> PyTree:
    """Initial inner state of a fresh episode of length ``horizon``."""

  def step(self, theta: PyTree, inner: PyTree, key: Array
           ) -> Tuple[PyTree, Array]:
    """One inner step: ``(new_inner, meta_loss)``; pure and jittable."""

  # Optional attribute ``nonfinite_loss: Optional[float]``: when set, the ES
  # estimators count a non-finite step loss as this value (the problem still
  # resets), so that diverging is penalised instead of dropping out of the
  # estimate; when absent or None such steps are left out.
  #
  # Optional method ``step_weight(t, horizon) -> Array``: the weight of the
  # meta-loss of step ``t`` (0-based) of an episode of length ``horizon``;
  # the estimators weight each step's loss by it (absent: 1, a plain mean).


class Episode(NamedTuple):
  """Per-particle episode bookkeeping (leading axis: particles).

  Attributes:
    task_key: uint32 key of the particle's task (from seed and task index).
    task_index: global index of the particle's task.
    particle: index of the antithetic particle within its task.
    episode: episode counter (0 for the first episode).
    t: inner steps already taken in the current episode.
    horizon: length of the current episode.
    bad: the previous step produced a non-finite loss (forces a reset).
  """

  task_key: Array
  task_index: Array
  particle: Array
  episode: Array
  t: Array
  horizon: Array
  bad: Array


# ---------------------------------------------------------------------------
# key derivation
# ---------------------------------------------------------------------------


def task_keys(seed_key: Array, task_indices: Array) -> Array:
  """Task keys ``fold_in(seed_key, global_task_index)``."""
  return jax.vmap(lambda i: jax.random.fold_in(seed_key, i))(
      jnp.asarray(task_indices, jnp.uint32))


def _episodes_root(task_key: Array) -> Array:
  return jax.random.fold_in(task_key, 0)


def _offset_key(task_key: Array) -> Array:
  return jax.random.fold_in(task_key, 1)


def episode_key(task_key: Array, episode: Array) -> Array:
  return jax.random.fold_in(_episodes_root(task_key), episode)


def horizon_key(ek: Array) -> Array:
  return jax.random.fold_in(ek, 0)


def init_key(ek: Array) -> Array:
  return jax.random.fold_in(ek, 1)


def step_key(ek: Array, t: Array) -> Array:
  return jax.random.fold_in(jax.random.fold_in(ek, 2), t)


def noise_key(ek: Array, particle: Array) -> Array:
  return jax.random.fold_in(jax.random.fold_in(ek, 3), particle)


def truncation_noise_key(key: Array, task_index: Array, particle: Array
                         ) -> Array:
  """Per-truncation noise key (PES, truncated ES) from the estimate key."""
  return jax.random.fold_in(jax.random.fold_in(key, task_index), particle)


# ---------------------------------------------------------------------------
# tree helpers
# ---------------------------------------------------------------------------


def tree_select(pred: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Per-particle select: ``pred`` has shape ``[P]``; leaves ``[..., P, ...]``
  are selected along the axis whose size matches ``P`` (the leading one, or
  the second for ``[2, P, ...]`` antithetic stacks -- pass ``axis``)."""
  return jax.tree.map(lambda a, b: _sel(pred, a, b, 0), on_true, on_false)


def tree_select_axis(pred: Array, on_true: PyTree, on_false: PyTree,
                     axis: int) -> PyTree:
  return jax.tree.map(lambda a, b: _sel(pred, a, b, axis), on_true, on_false)


def _sel(pred, a, b, axis):
  shape = [1] * a.ndim
  shape[axis] = pred.shape[0]
  return jnp.where(pred.reshape(shape), a, b)


def gaussian_like(key: Array, tree: PyTree, std: float | Array) -> PyTree:
  """``N(0, std^2 I)`` sample with the structure of ``tree`` (float32)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  out = [std * jax.random.normal(k, jnp.shape(x), jnp.float32)
         for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, out)


def tree_axpy(a: Array, x: PyTree, y: PyTree) -> PyTree:
  """``a * x + y`` leafwise (``a`` broadcast over the particle axis)."""
  return jax.tree.map(lambda xi, yi: _bcast(a, xi) * xi + yi, x, y)


def _bcast(a, x):
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def perturbed(theta: PyTree, eps: PyTree) -> PyTree:
  """Antithetic stack ``[theta + eps, theta - eps]`` with shape ``[2, P, ...]``.
  """
  return jax.tree.map(
      lambda t, e: jnp.stack([t + e, t - e]).astype(jnp.asarray(t).dtype),
      theta, eps)


# ---------------------------------------------------------------------------
# episodes
# ---------------------------------------------------------------------------


def start_episode(system: UnrollSystem, task_key: Array, task_index: Array,
                  particle: Array, episode: Array) -> Episode:
  """Bookkeeping of a fresh episode number ``episode`` (one particle)."""
  ek = episode_key(task_key, episode)
  horizon = jnp.maximum(jnp.asarray(system.sample_horizon(horizon_key(ek)),
                                    jnp.int32), 1)
  return Episode(task_key=task_key,
                 task_index=jnp.asarray(task_index, jnp.int32),
                 particle=jnp.asarray(particle, jnp.int32),
                 episode=jnp.asarray(episode, jnp.int32),
                 t=jnp.zeros([], jnp.int32), horizon=horizon,
                 bad=jnp.zeros([], bool))


def initial_episodes(system: UnrollSystem, seed_key: Array,
                     task_indices: np.ndarray, num_particles: int,
                     random_offsets: bool) -> Episode:
  """Episodes of all particles of the tasks ``task_indices``, flattened
  task-major (particle axis ``P = len(task_indices) * num_particles``).

  With ``random_offsets`` the first episode of each task starts at a step
  drawn uniformly in ``[0, horizon)`` (the same for all particles of a task)
  so that resets are spread out over outer steps.
  """
  idx = jnp.asarray(np.asarray(task_indices), jnp.int32)
  tk = task_keys(seed_key, idx)
  tk = jnp.repeat(tk, num_particles, axis=0)
  idx = jnp.repeat(idx, num_particles)
  part = jnp.tile(jnp.arange(num_particles, dtype=jnp.int32),
                  len(task_indices))
  ep = jax.vmap(lambda k, i, p: start_episode(system, k, i, p, 0))(
      tk, idx, part)
  if random_offsets:
    u = jax.vmap(lambda k: jax.random.uniform(_offset_key(k)))(tk)
    t0 = jnp.floor(u * ep.horizon).astype(jnp.int32)
    ep = ep._replace(t=jnp.minimum(t0, ep.horizon - 1))
  return ep


def next_episodes(system: UnrollSystem, ep: Episode) -> Episode:
  """Bookkeeping of every particle's next episode (batched)."""
  return jax.vmap(lambda k, i, p, e: start_episode(system, k, i, p, e + 1))(
      ep.task_key, ep.task_index, ep.particle, ep.episode)


def init_inner(system: UnrollSystem, theta_p: PyTree, ep: Episode) -> PyTree:
  """Inner states for batched episodes under per-particle ``theta_p``."""

  def one(th, k, e, h):
    return system.init(th, init_key(episode_key(k, e)), h)

  return jax.vmap(one)(theta_p, ep.task_key, ep.episode, ep.horizon)


def step_keys(ep: Episode) -> Array:
  return jax.vmap(lambda k, e, t: step_key(episode_key(k, e), t))(
      ep.task_key, ep.episode, ep.t)


def episode_noise(ep: Episode, theta: PyTree, std: float) -> PyTree:
  """ES-Single noise of each particle's current episode, ``[P, ...]``."""
  return jax.vmap(
      lambda k, e, p: gaussian_like(noise_key(episode_key(k, e), p), theta,
                                    std))(ep.task_key, ep.episode, ep.particle)


def step_weights(system: UnrollSystem, t: Array, horizon: Array) -> Array:
  """Weights of the meta-losses of steps ``t`` of episodes of length
  ``horizon`` (1 without ``system.step_weight``)."""
  fn = getattr(system, "step_weight", None)
  if fn is None:
    return jnp.ones(jnp.shape(t), jnp.float32)
  return jnp.asarray(fn(t, horizon), jnp.float32)


def needs_reset(ep: Episode) -> Array:
  return (ep.t >= ep.horizon) | ep.bad


def broadcast_theta(theta: PyTree, num: int) -> PyTree:
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (num,) + jnp.shape(x)),
                      theta)
