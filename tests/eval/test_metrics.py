"""Speedup / smoothing metrics on synthetic curves with known answers."""

import math

import numpy as np
import pytest

from lopt.eval import metrics


def base_curve(t):
  """A decreasing loss curve as a function of the (1-based) step."""
  return 1.0 / (1.0 + 0.01 * np.asarray(t, np.float64))


def test_smooth_is_trailing_mean():
  c = np.array([4.0, 2.0, 6.0, 0.0, 2.0])
  np.testing.assert_allclose(metrics.smooth(c, 2), [4, 3, 4, 3, 1])
  np.testing.assert_allclose(metrics.smooth(c, 1), c)
  np.testing.assert_allclose(metrics.smooth(c, 10), np.cumsum(c) / np.arange(1, 6))


def test_smooth_propagates_nonfinite_inside_window_only():
  c = np.array([1.0, np.nan, 1.0, 1.0, 1.0])
  s = metrics.smooth(c, 2)
  assert np.isinf(s[1]) and np.isinf(s[2]) and s[3] == 1.0


def test_final_loss_mean_over_seeds_then_last_window():
  curves = np.array([[5.0, 3.0, 1.0, 1.0], [5.0, 3.0, 3.0, 3.0]])
  assert metrics.final_loss(curves, window=2) == pytest.approx(2.0)
  assert metrics.final_loss(np.array([[1.0, np.inf], [1.0, 1.0]]), 1) == math.inf


@pytest.mark.parametrize("factor", [2, 4])
def test_speedup_of_curve_shifted_by_factor_exact(factor):
  T = 500
  learned = base_curve(factor * np.arange(1, T + 1))       # L(t) = B(k t)
  baseline = base_curve(np.arange(1, factor * T + 1))      # B over k T steps
  s = metrics.speedup(learned[None], baseline[None], window=1)
  assert s.value == pytest.approx(factor)
  assert not s.lower_bound and s.steps_to_reach == factor * T
  assert str(s) == f"{factor:.2f}x"


def test_speedup_shifted_by_two_with_default_smoothing_is_close_to_two():
  T = 1000
  learned = base_curve(2 * np.arange(1, T + 1))
  baseline = base_curve(np.arange(1, 3 * T + 1))
  s = metrics.speedup(np.stack([learned, learned]), baseline[None])
  assert s.value == pytest.approx(2.0, rel=0.03)


def test_speedup_never_reached_is_lower_bound():
  T = 300
  learned = base_curve(2 * np.arange(1, T + 1))
  baseline = base_curve(np.arange(1, T + 1))               # same horizon
  s = metrics.speedup(learned[None], baseline[None], window=1)
  assert s.lower_bound and s.steps_to_reach is None
  assert s.value == pytest.approx(1.0)
  assert str(s).startswith(f">= {T}/{T}")


def test_speedup_below_one_when_slower():
  T = 400
  learned = base_curve(0.5 * np.arange(1, T + 1))          # half as fast
  baseline = base_curve(np.arange(1, T + 1))
  s = metrics.speedup(learned[None], baseline[None], window=1)
  assert s.value == pytest.approx(0.5)
  assert str(s) == f"{T // 2}/{T} (0.50x)"


def test_speedup_diverged_optimizer_is_zero():
  learned = np.array([[1.0, np.nan, np.nan]])
  s = metrics.speedup(learned, np.array([[1.0, 0.5, 0.1]]), window=1)
  assert s.value == 0.0 and str(s) == "diverged"


def test_aggregate_median_and_iqm():
  assert metrics.iqm([1, 2, 3, 4]) == pytest.approx(2.5)
  assert metrics.iqm([100, 1, 2, 3, 4, 5, 6, -50]) == pytest.approx(3.5)
  sp = [metrics.Speedup(v, lb, None, 10, 10, 0.1)
        for v, lb in [(1.0, False), (2.0, True), (4.0, False), (0.5, False)]]
  agg = metrics.aggregate(sp)
  assert agg["median"] == pytest.approx(1.5)
  assert agg["iqm"] == pytest.approx(1.5)
  assert agg["num_lower_bounds"] == 1 and agg["num_faster"] == 2


def test_speedup_over_sweep_takes_the_fastest_rate_for_the_target():
  T = 300
  learned = base_curve(2 * np.arange(1, T + 1))            # reaches B(2T)
  t = np.arange(1, 3 * T + 1)
  slow, fast, faster_early = (base_curve(0.5 * t), base_curve(t),
                              base_curve(1.5 * t))
  # A rate that is fast at first but stalls above the target never counts.
  stalls = np.maximum(faster_early, base_curve(1.9 * T))
  sweep = np.stack([slow, fast, stalls])[:, None]          # [L, S=1, 3T]
  s = metrics.speedup_over_sweep(learned[None], sweep, window=1)
  assert s.steps_to_reach == 2 * T and s.baseline_index == 1
  assert s.value == pytest.approx(2.0) and not s.lower_bound
  # Same answer as the single-curve speedup against the fastest rate.
  one = metrics.speedup(learned[None], fast[None], window=1)
  assert one.value == s.value and one.baseline_index is None
  # No rate reaches it within 3T/2 steps: lower bound 1.5x.
  s = metrics.speedup_over_sweep(learned[None], sweep[..., :3 * T // 2], 1)
  assert s.lower_bound and s.value == pytest.approx(1.5)
  assert s.baseline_index is None and str(s).startswith(f">= {3 * T // 2}/")


def _decaying(rate, steps, seeds_scale):
  """[S, T] curves exp(-rate * t * s) for per-seed scales s."""
  t = np.arange(1, steps + 1)
  return np.stack([np.exp(-rate * s * t) for s in seeds_scale])


def test_seed_bootstrap_collapses_when_seeds_agree():
  # Identical seeds: every resample is the original sample.
  opt = _decaying(0.02, 100, [1.0, 1.0, 1.0])
  sweep = np.stack([_decaying(r, 200, [1.0, 1.0, 1.0])
                    for r in (0.005, 0.01)])
  per_task = [(opt, sweep), (opt * 2, sweep)]
  point = metrics.aggregate([metrics.speedup_over_sweep(c, s)
                             for c, s in per_task])
  boot = metrics.seed_bootstrap(per_task, num_resamples=20)
  assert boot["median"] == pytest.approx([point["median"]] * 2)
  assert boot["iqm"] == pytest.approx([point["iqm"]] * 2)


def test_seed_bootstrap_widens_with_seed_spread_and_is_deterministic():
  opt = _decaying(0.02, 100, [0.6, 1.0, 1.6])       # seeds disagree
  sweep = np.stack([_decaying(r, 300, [0.8, 1.0, 1.2])
                    for r in (0.005, 0.01, 0.02)])
  per_task = [(opt, sweep)] * 3
  a = metrics.seed_bootstrap(per_task, num_resamples=100, seed=3)
  b = metrics.seed_bootstrap(per_task, num_resamples=100, seed=3)
  assert a == b
  lo, hi = a["median"]
  assert lo < hi
  assert a["iqm"][0] <= a["iqm"][1]


def test_seed_bootstrap_rejects_bad_arguments():
  with pytest.raises(ValueError, match="level"):
    metrics.seed_bootstrap([], level=1.5)
  with pytest.raises(ValueError, match="num_resamples"):
    metrics.seed_bootstrap([], num_resamples=0)
  empty = metrics.seed_bootstrap([])
  assert all(np.isnan(x) for x in empty["median"] + empty["iqm"])
