"""The jitted runner against hand-written optax loops."""

import jax
import numpy as np
import optax
import pytest

import lopt
from lopt.eval import runner


def hand_loop(task, opt, num_steps, seeds):
  """The documented key scheme, one Python step at a time."""

  @jax.jit
  def step(params, state, k_train, t):
    kb, kl = jax.random.split(jax.random.fold_in(k_train, t))
    batch = task.sample_batch(kb, "train")
    loss, grads = jax.value_and_grad(task.loss)(params, batch, kl)
    updates, state = opt.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state, loss

  curves = []
  for seed in seeds:
    k_init, k_train, _, _ = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = task.init(k_init)
    state = opt.init(params)
    losses = []
    for t in range(num_steps):
      params, state, loss = step(params, state, k_train, t)
      losses.append(float(loss))
    curves.append(losses)
  return np.asarray(curves)


def test_adam_spec_matches_hand_written_optax_loop(logistic):
  res = runner.run(logistic, "adam:lr=1e-3", 60, seeds=[0, 3], eval_every=25,
                   num_test_batches=2)
  assert res.train_loss.shape == (2, 60)
  ref = hand_loop(logistic, optax.adam(1e-3), 60, [0, 3])
  np.testing.assert_allclose(res.train_loss, ref, rtol=2e-5, atol=1e-7)
  np.testing.assert_array_equal(res.eval_steps, [0, 25, 50, 60])
  assert set(res.valid) == {"loss", "accuracy"}
  assert res.valid["accuracy"].shape == (2, 4)
  assert res.test["loss"].shape == (2,)
  assert res.wall_s > 0 and res.step_time_s > 0


def test_learned_rule_matches_as_optax_loop(noisy_quadratic):
  rule = lopt.rules.get("mlp")
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  tx = lopt.as_optax(rule, theta, 40, param_meta=noisy_quadratic.param_meta)
  res = runner.run(noisy_quadratic, "rule:mlp", 40, seeds=[1])
  ref = hand_loop(noisy_quadratic, tx, 40, [1])
  np.testing.assert_allclose(res.train_loss, ref, rtol=1e-5, atol=1e-6)


def test_same_seed_same_result_and_seeds_differ(noisy_quadratic):
  a = runner.run(noisy_quadratic, "sgdm:lr=0.05", 30, seeds=[0, 1, 0],
                 eval_every=7)
  np.testing.assert_array_equal(a.train_loss[0], a.train_loss[2])
  assert not np.allclose(a.train_loss[0], a.train_loss[1])
  # 30 = 4 x 7 + 2: the short last segment is run, its padding is not.
  np.testing.assert_array_equal(a.eval_steps, [0, 7, 14, 21, 28, 30])
  assert a.valid["loss"].shape == (3, 6) and np.isfinite(a.train_loss).all()
  assert np.isfinite(a.valid["loss"]).all()
  assert a.valid["loss"][0, -1] < a.valid["loss"][0, 0]


def test_sweep_shapes_and_matches_single_runs(logistic):
  sw = runner.run_sweep(logistic, "adam", [1e-3, 1e-2], 30, seeds=[0, 1],
                        eval_every=10)
  assert sw.train_loss.shape == (2, 2, 30) and sw.num_runs == 4
  single = runner.run(logistic, "adam:lr=1e-2", 30, seeds=[0, 1],
                      eval_every=10)
  np.testing.assert_allclose(sw.select(1).train_loss, single.train_loss,
                             rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(sw.select(1).valid["accuracy"],
                             single.valid["accuracy"])


def test_plain_optax_transformation_and_initial_validation(quadratic):
  res = runner.run(quadratic, optax.sgd(0.5), 5, seeds=[0], eval_every=5)
  assert np.all(np.diff(res.train_loss[0]) < 0)
  # Noise-free quadratic: validation at step 0 is the loss before any
  # update, i.e. the first training loss.
  np.testing.assert_allclose(res.valid["loss"][0, 0], res.train_loss[0, 0],
                             rtol=1e-6)


def test_bad_arguments(quadratic):
  with pytest.raises(ValueError, match="num_steps"):
    runner.run(quadratic, "adam", 0, seeds=[0])
  with pytest.raises(ValueError, match="seed"):
    runner.run(quadratic, "adam", 5, seeds=[])
  with pytest.raises(ValueError, match="eval_every"):
    runner.run(quadratic, "adam", 5, seeds=[0], eval_every=-1)
  with pytest.raises(ValueError, match="Unknown baseline"):
    runner.run_sweep(quadratic, "adamax", [1e-3], 5, seeds=[0])
  with pytest.raises(ValueError, match="positive"):
    runner.run_sweep(quadratic, "adam", [0.0], 5, seeds=[0])
  with pytest.raises(ValueError, match="Cannot use"):
    runner.run(quadratic, 3.0, 5, seeds=[0])
