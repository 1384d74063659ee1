"""Smoothing, final loss, speedup and aggregation over tasks.

Conventions. A training curve ``c`` has one entry per step; ``c[t-1]`` is the
loss at (1-based) step ``t``. Curves are first averaged over seeds (a run
with a non-finite value makes the mean non-finite), then smoothed with a
trailing window mean of ``w`` steps::

    smooth(c)[t] = mean(c[max(0, t-w+1) .. t])

The *final smoothed loss* is ``smooth(c)[T-1] = mean(c[T-w .. T-1])``, the mean
over the last ``w`` steps (default ``w = max(1, round(0.05 * T))``, the last
5 % of training). Non-finite values count as ``+inf`` (worst).

Speedup of optimizer A (``T_A`` steps) over a baseline B (``T_B`` steps)::

    target  = final smoothed loss of A
    t_reach = min { t in 1..T_B : smooth(c_B)[t-1] <= target }
    speedup = t_reach / T_A

If B never reaches the target the speedup is the lower bound ``T_B / T_A``,
reported as ``">= T_B/T_A"``; a value below 1 means A is slower than B.
A speedup above 1 can only be measured when B runs longer than A
(``T_B > T_A``): with equal step counts the value is capped at 1.

Over a learning-rate sweep of B (:func:`speedup_over_sweep`), ``t_reach`` is
the fewest steps any rate of the sweep needs -- the strongest version of B
for that particular target, so the speedup is never overstated by a rate
that was tuned for a different budget.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def default_window(num_steps: int, fraction: float = 0.05) -> int:
  """Smoothing window in steps: ``max(1, round(fraction * num_steps))``."""
  return max(1, int(round(fraction * num_steps)))


def mean_curve(curves: np.ndarray) -> np.ndarray:
  """Mean over seeds (all leading axes) of ``[..., T]`` curves; non-finite
  entries become ``+inf``."""
  c = np.asarray(curves, np.float64)
  c = c.reshape(-1, c.shape[-1]).mean(axis=0) if c.ndim > 1 else c
  return np.where(np.isfinite(c), c, np.inf)


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
  """Trailing window mean (see module docstring); ``+inf`` propagates."""
  c = np.asarray(curve, np.float64)
  if c.ndim != 1:
    raise ValueError(f"smooth expects a 1-D curve, got shape {c.shape}.")
  if window < 1:
    raise ValueError(f"Smoothing window must be >= 1, got {window}.")
  c = np.where(np.isfinite(c), c, np.inf)
  bad = np.isinf(c)
  finite = np.where(bad, 0.0, c)
  csum = np.concatenate([[0.0], np.cumsum(finite)])
  nbad = np.concatenate([[0], np.cumsum(bad)])
  t = np.arange(1, len(c) + 1)
  lo = np.maximum(0, t - window)
  out = (csum[t] - csum[lo]) / (t - lo)
  return np.where(nbad[t] - nbad[lo] > 0, np.inf, out)


def final_loss(curves: np.ndarray, window: Optional[int] = None) -> float:
  """Final smoothed loss of ``[..., T]`` curves (mean over seeds first)."""
  c = mean_curve(curves)
  w = window if window is not None else default_window(len(c))
  return float(smooth(c, w)[-1])


@dataclasses.dataclass(frozen=True)
class Speedup:
  """Speedup of an optimizer over a baseline (see module docstring).

  Attributes:
    value: ``t_reach / T_A``, or the lower bound ``T_B / T_A``.
    lower_bound: the baseline never reached the target.
    steps_to_reach: ``t_reach`` (``None`` when never reached).
    steps: ``T_A``.
    baseline_steps: ``T_B``.
    target: the optimizer's final smoothed loss.
    baseline_index: over a sweep, the index of the run (learning rate) that
      reached the target first (``None`` otherwise).
  """

  value: float
  lower_bound: bool
  steps_to_reach: Optional[int]
  steps: int
  baseline_steps: int
  target: float
  baseline_index: Optional[int] = None

  def __str__(self) -> str:
    return format_speedup(self)

  def to_json(self) -> Dict:
    return dataclasses.asdict(self) | {"text": str(self)}


def format_speedup(s: Speedup) -> str:
  if not math.isfinite(s.target):
    return "diverged"
  if s.lower_bound:
    return f">= {s.baseline_steps}/{s.steps} ({s.value:.2f}x)"
  if s.value >= 1:
    return f"{s.value:.2f}x"
  return f"{s.steps_to_reach}/{s.steps} ({s.value:.2f}x)"


def speedup(curves: np.ndarray, baseline_curves: np.ndarray,
            window: Optional[int] = None) -> Speedup:
  """Speedup of ``curves`` (``[..., T_A]``) over ``baseline_curves``
  (``[..., T_B]``), both averaged over seeds and smoothed with the same
  window (default: :func:`default_window` of ``T_A``).

  A diverged optimizer (non-finite target) gets speedup 0.
  """
  s = speedup_over_sweep(curves, np.asarray(baseline_curves)[None], window)
  return dataclasses.replace(s, baseline_index=None)


def speedup_over_sweep(curves: np.ndarray, sweep_curves: np.ndarray,
                       window: Optional[int] = None) -> Speedup:
  """Speedup of ``curves`` (``[..., T_A]``) over the fastest run of a sweep
  ``sweep_curves`` (``[L, ..., T_B]``, e.g. one entry per learning rate):
  ``t_reach = min_l t_reach(l)`` (module docstring). Each sweep entry is
  averaged over its seeds and smoothed like ``curves``.
  """
  a = mean_curve(curves)
  w = window if window is not None else default_window(len(a))
  target = float(smooth(a, w)[-1])
  sweep = np.asarray(sweep_curves)
  t_a, t_b = len(a), int(sweep.shape[-1])
  if not math.isfinite(target):
    return Speedup(0.0, False, None, t_a, t_b, target)
  best: Optional[tuple] = None
  for i in range(sweep.shape[0]):
    reached = np.nonzero(smooth(mean_curve(sweep[i]), w) <= target)[0]
    if reached.size and (best is None or reached[0] + 1 < best[0]):
      best = (int(reached[0]) + 1, i)
  if best is None:
    return Speedup(t_b / t_a, True, None, t_a, t_b, target)
  return Speedup(best[0] / t_a, False, best[0], t_a, t_b, target, best[1])


def iqm(values: Sequence[float]) -> float:
  """Inter-quartile mean: mean after dropping ``floor(n/4)`` values from each
  end of the sorted list (``scipy.stats.trim_mean(x, 0.25)``)."""
  x = np.sort(np.asarray(values, np.float64))
  if x.size == 0:
    return float("nan")
  k = int(0.25 * x.size)
  return float(x[k:x.size - k].mean())


def aggregate(speedups: Sequence[Speedup]) -> Dict[str, float]:
  """Median and IQM of speedup values over tasks (lower bounds enter at
  their bound value), plus counts."""
  vals = [s.value for s in speedups]
  if not vals:
    return {"median": float("nan"), "iqm": float("nan"), "num_tasks": 0,
            "num_lower_bounds": 0, "num_faster": 0}
  return {
      "median": float(np.median(vals)),
      "iqm": iqm(vals),
      "num_tasks": len(vals),
      "num_lower_bounds": int(sum(s.lower_bound for s in speedups)),
      "num_faster": int(sum(v > 1 for v in vals)),
  }


def seed_bootstrap(per_task: Sequence[Tuple[np.ndarray, np.ndarray]],
                   window: Optional[int] = None, num_resamples: int = 200,
                   level: float = 0.9, seed: int = 0) -> Dict[str, List[float]]:
  """Seed-bootstrap interval of the median and IQM speedup over tasks.

  ``per_task`` holds, per task, ``(curves, sweep_curves)`` as passed to
  :func:`speedup_over_sweep`: ``[S, T_A]`` (one curve per seed) and
  ``[L, S, T_B]``. Each resample draws ``S`` seeds with replacement per
  task, independently for the optimizer and for the sweep (one draw shared by
  all of the sweep's learning rates, whose runs share seeds), recomputes every
  task's speedup and takes the median and IQM over tasks. Returns
  ``{"median": [lo, hi], "iqm": [lo, hi]}``, the central ``level`` interval
  of the resampled statistics.

  What it measures: how much the headline numbers depend on which seeds were
  run. With few seeds (3 in the README's command) it is a rough guide, not a
  calibrated confidence interval; with one seed it is a single point.
  """
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}.")
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be >= 1, got {num_resamples}.")
  if not per_task:
    return {"median": [float("nan")] * 2, "iqm": [float("nan")] * 2}
  rng = np.random.default_rng(seed)
  prepared = []
  for curves, sweep in per_task:
    c = np.asarray(curves, np.float64)
    c = c.reshape(-1, c.shape[-1])                            # [S, T_A]
    sw = np.asarray(sweep, np.float64)
    sw = sw.reshape(sw.shape[0], -1, sw.shape[-1])            # [L, S, T_B]
    prepared.append((c, sw))
  medians, iqms = [], []
  for _ in range(num_resamples):
    vals = []
    for c, sw in prepared:
      ic = rng.integers(0, c.shape[0], c.shape[0])
      isw = rng.integers(0, sw.shape[1], sw.shape[1])
      vals.append(speedup_over_sweep(c[ic], sw[:, isw], window).value)
    medians.append(float(np.median(vals)))
    iqms.append(iqm(vals))
  q = [(1 - level) / 2, 1 - (1 - level) / 2]
  return {"median": [float(x) for x in np.quantile(medians, q)],
          "iqm": [float(x) for x in np.quantile(iqms, q)]}
