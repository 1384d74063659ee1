"""Meta-training over a mixture of task families.

One estimator per family (each over its own batch of ``num_tasks`` tasks of
that family, with its own inner problems and episodes); an outer step runs
every member and combines their estimates with :func:`aggregate` (weighted
by particles, i.e. the plain mean over families when each has the same
batch), optionally with per-family weights ``w_f``::

    g = sum_f n_f w_f g_f / (wbar sum_f n_f),  wbar = mean_f w_f
                                             meta_loss likewise

(with equal batches ``g = sum_f w_f g_f / sum_f w_f``: the gradient of the
``w``-weighted mean of the families' meta-losses). Families whose
normalised losses differ in scale weigh unequally in the plain mean (a
language-model family at ~0.3 of chance against digits MLPs at ~0.01
dominates it, docs/meta_training_experiments.md, session 14); the weights
rebalance the objective. Scaling each member's estimate before the particle
average keeps :func:`aggregate` linear, so workers that each own a slice of
every family's tasks combine to the same weighted estimate.

Meta-training on a distribution of problems rather than one family is what
makes learned optimizers generalise (VeLO, Metz et al. 2022; μLO, Therien et
al. 2024); families with different parameter shapes cannot share one
``vmap``, so each keeps its own batch. The member for family ``f`` uses the
outer-step key ``fold_in(key, f)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import jax

from lopt.meta_train.estimators.base import aggregate

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Mixture:
  """Sum of per-family estimators behind the estimator interface.

  Attributes:
    members: one estimator per family (same rule, same estimator type).
    names: the families' names (metric names ``meta_loss/<name>``).
    task_indices: the global task indices this estimator (a worker) owns in
      every family's batch (None: all); set on every member.
    weights: one positive weight per member (None: all equal); only their
      ratios matter.
  """

  members: Tuple[Any, ...]
  names: Tuple[str, ...] = ()
  task_indices: Optional[Sequence[int]] = None
  weights: Optional[Sequence[float]] = None

  def __post_init__(self):
    if len(self.members) < 1:
      raise ValueError("A mixture needs at least one member estimator.")
    names = tuple(self.names) or tuple(f"family{i}" for i in
                                       range(len(self.members)))
    if len(names) != len(self.members):
      raise ValueError(f"{len(names)} names for {len(self.members)} "
                       "member estimators.")
    object.__setattr__(self, "names", names)
    if self.weights is not None:
      w = tuple(float(x) for x in self.weights)
      if len(w) != len(self.members) or not all(
          math.isfinite(x) and x > 0 for x in w):
        raise ValueError(f"weights must be {len(self.members)} positive "
                         f"finite numbers, one per member; got {w}.")
      mean = sum(w) / len(w)
      object.__setattr__(self, "weights", tuple(x / mean for x in w))
    if self.task_indices is not None:
      object.__setattr__(self, "members", tuple(
          dataclasses.replace(m, task_indices=self.task_indices)
          for m in self.members))

  @property
  def num_particles_total(self) -> int:
    return sum(m.num_particles_total for m in self.members)

  def init(self, theta: PyTree, key: jax.Array) -> Tuple[PyTree, ...]:
    return tuple(m.init(theta, jax.random.fold_in(key, i))
                 for i, m in enumerate(self.members))

  def estimate(self, theta: PyTree, worker_state: Tuple[PyTree, ...],
               key: jax.Array
               ) -> Tuple[PyTree, Tuple[PyTree, ...], Dict[str, jax.Array]]:
    results, states, per_family = [], [], {}
    for i, (m, s) in enumerate(zip(self.members, worker_state)):
      g, s, metrics = m.estimate(theta, s, jax.random.fold_in(key, i))
      per_family[f"meta_loss/{self.names[i]}"] = metrics["meta_loss"]
      if self.weights is not None:
        w = self.weights[i]
        g = jax.tree.map(lambda x, w=w: x * w, g)
        metrics = dict(metrics, meta_loss=metrics["meta_loss"] * w)
      results.append((g, metrics))
      states.append(s)
    grad, metrics = aggregate(results)
    metrics.update(per_family)
    return grad, tuple(states), metrics
