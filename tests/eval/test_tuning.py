"""Learning-rate sweeps: known best rate, divergence, cache."""

import math
import os

import numpy as np
import pytest

from lopt.eval import cache, runner, tuning


def test_sgd_sweep_picks_exact_step_on_quadratic(Quad):
  # f(x) = 0.5 h |x|^2, noise-free: SGD multiplies x by (1 - lr h) per step,
  # so lr = 1/h lands on the optimum in one step and is the known best rate;
  # lr = 1000/h overflows to +inf and must count as worst even though it is
  # the largest rate.
  h = 4.0
  task = Quad(dim=4, h=(h,))
  lrs = [0.1 / h, 0.5 / h, 1.0 / h, 1.8 / h, 1000.0 / h]
  tr = tuning.tune(task, "sgd", num_steps=10, seeds=[0, 1], lrs=lrs)
  assert tr.best_lr == pytest.approx(1.0 / h)
  assert tr.scores[2] == 0.0
  assert math.isinf(tr.scores[-1])
  assert tr.scores[0] > tr.scores[3] > tr.scores[1] > 0
  assert not tr.at_edge
  assert tr.sweep.train_loss.shape == (5, 2, 10)
  assert tr.best.train_loss.shape == (2, 10)
  assert tr.spec.hp["lr"] == pytest.approx(1.0 / h)


def test_adam_sweep_picks_known_rate_on_noisy_quadratic(Quad):
  # Adam moves each coordinate by ~lr per step: lr = 1e-4 barely leaves
  # |x0| ~ 1 in 200 steps, lr = 1 hovers at a noise floor of amplitude ~lr,
  # lr = 0.03 converges (measured scores ~8.1, ~0.74, ~1.9).
  task = Quad(dim=8, h=(1.0, 3.0), noise=0.3)
  tr = tuning.tune(task, "adam", num_steps=200, seeds=[0], lrs=[1e-4, 0.03, 1.0])
  assert tr.best_lr == 0.03
  assert tr.scores[0] > tr.scores[2] > tr.scores[1]


def test_select_best_nonfinite_is_worst_and_ties_pick_smaller():
  curves = np.ones((3, 2, 10))
  curves[0] = 5.0
  curves[2, 1, -1] = np.nan
  scores, best = tuning.select_best(curves, window=2)
  assert best == 1 and math.isinf(scores[2])
  scores, best = tuning.select_best(np.ones((3, 1, 4)), window=1)
  assert best == 0


def test_cache_hit_skips_work_and_gives_identical_numbers(Quad, tmp_path,
                                                          monkeypatch):
  task = Quad(dim=4, h=(1.0, 2.0), noise=0.2, name="noisy4")
  kw = dict(num_steps=40, seeds=[0, 1], lrs=[0.01, 0.1, 1.0],
            cache_dir=str(tmp_path))
  first = tuning.tune(task, "adam", **kw)
  assert not first.from_cache and os.path.isfile(first.cache_path)

  def boom(*a, **k):
    raise AssertionError("cache hit must not run the sweep")

  monkeypatch.setattr(runner, "lower_sweep", boom)
  again = tuning.tune(task, "adam", **kw)
  assert again.from_cache and again.cache_path == first.cache_path
  np.testing.assert_array_equal(again.sweep.train_loss, first.sweep.train_loss)
  for k in first.sweep.valid:
    np.testing.assert_array_equal(again.sweep.valid[k], first.sweep.valid[k])
  assert again.scores == first.scores and again.best_lr == first.best_lr
  assert again.sweep.wall_s == first.sweep.wall_s

  # A different horizon, seed set, grid or task is a different entry.
  for change in (dict(num_steps=41), dict(seeds=[0]), dict(lrs=[0.01, 0.1])):
    with pytest.raises(AssertionError, match="cache hit"):
      tuning.tune(task, "adam", **{**kw, **change})
  with pytest.raises(AssertionError, match="cache hit"):
    tuning.tune(Quad(dim=5, noise=0.2, name="noisy4"), "adam", **kw)
  # Same name and shapes, other data (e.g. the stdlib text of another
  # Python version): a different entry.
  other_data = Quad(dim=4, h=(1.0, 2.0), noise=0.2, name="noisy4")
  other_data.data_fingerprint = lambda: "another corpus"
  with pytest.raises(AssertionError, match="cache hit"):
    tuning.tune(other_data, "adam", **kw)
  # Another compute stack (here: other XLA flags) is a different entry.
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") +
                     " --xla_cpu_prefer_vector_width=256")
  with pytest.raises(AssertionError, match="cache hit"):
    tuning.tune(task, "adam", **kw)

  # A corrupt entry is recomputed (and rewritten), with the same numbers.
  monkeypatch.undo()
  with open(first.cache_path, "wb") as f:
    f.write(b"garbage")
  again = tuning.tune(task, "adam", **kw)
  assert not again.from_cache
  np.testing.assert_array_equal(again.sweep.train_loss, first.sweep.train_loss)
  assert cache.load(first.cache_path) is not None


def test_tune_rejects_non_baselines(Quad):
  with pytest.raises(ValueError, match="Can only tune baselines"):
    tuning.tune(Quad(), "rule:mlp", num_steps=5, seeds=[0])
