"""Meta-training over a mixture of task families."""

import jax
import numpy as np
import pytest

from lopt.meta_train import estimators as E
from lopt.meta_train.config import ConfigError, MetaTrainConfig
from lopt.meta_train.trainer import MetaTrainer

TINY = dict(rule="sgd", task_family="quadratic,linear_regression",
            num_tasks=2, trunc_length=4, horizon_min=6, horizon_max=12,
            outer_steps=4, log_every=1, checkpoint_every=2)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_config_family_lists():
  assert MetaTrainConfig(**TINY).validate().family_names == [
      "quadratic", "linear_regression"]
  from_yaml = MetaTrainConfig.from_dict(
      dict(TINY, task_family=["quadratic", "iris_mlp"]))
  assert from_yaml.task_family == "quadratic,iris_mlp"
  with pytest.raises(ConfigError, match="unknown task family nope"):
    MetaTrainConfig(**dict(TINY, task_family="quadratic, nope")).validate()
  with pytest.raises(ConfigError, match="listed twice"):
    MetaTrainConfig(**dict(TINY, task_family="quadratic,quadratic")
                    ).validate()


def test_mixture_is_the_particle_weighted_mean_of_its_members():
  trainer = MetaTrainer(MetaTrainConfig(**TINY))
  mix = trainer.estimator
  assert isinstance(mix, E.Mixture)
  assert mix.names == ("quadratic", "linear_regression")
  theta = trainer.rule.init_meta_params(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(3)
  ws = mix.init(theta, key)
  grad, ws2, metrics = mix.estimate(theta, ws, key)
  want = []
  for i, m in enumerate(mix.members):
    s = m.init(theta, jax.random.fold_in(key, i))
    want.append(m.estimate(theta, s, jax.random.fold_in(key, i)))
  g0, g1 = want[0][0], want[1][0]
  for a, b, c in zip(_leaves(grad), _leaves(g0), _leaves(g1)):
    np.testing.assert_allclose(a, 0.5 * (b + c), rtol=1e-6, atol=1e-7)
  assert float(metrics["num_particles"]) == 2 * 2 * 1
  assert float(metrics["inner_steps"]) == sum(
      float(w[2]["inner_steps"]) for w in want)
  np.testing.assert_allclose(float(metrics["meta_loss/quadratic"]),
                             float(want[0][2]["meta_loss"]), rtol=1e-6)
  np.testing.assert_allclose(
      float(metrics["meta_loss"]),
      0.5 * sum(float(w[2]["meta_loss"]) for w in want), rtol=1e-6)
  # Each member keeps its own inner problems across outer steps.
  for new, (_, s, _) in zip(ws2, want):
    for a, b in zip(_leaves(new), _leaves(s)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_family_weights_weigh_the_members_estimates_and_losses():
  trainer = MetaTrainer(MetaTrainConfig(**dict(TINY, family_weights=[3, 1])))
  mix = trainer.estimator
  assert mix.weights == (1.5, 0.5)               # normalised to mean 1
  theta = trainer.rule.init_meta_params(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(3)
  grad, _, metrics = mix.estimate(theta, mix.init(theta, key), key)
  want = []
  for i, m in enumerate(mix.members):
    s = m.init(theta, jax.random.fold_in(key, i))
    want.append(m.estimate(theta, s, jax.random.fold_in(key, i)))
  for a, b, c in zip(_leaves(grad), _leaves(want[0][0]), _leaves(want[1][0])):
    np.testing.assert_allclose(a, 0.75 * b + 0.25 * c, rtol=1e-6, atol=1e-7)
  losses = [float(w[2]["meta_loss"]) for w in want]
  np.testing.assert_allclose(float(metrics["meta_loss"]),
                             0.75 * losses[0] + 0.25 * losses[1], rtol=1e-6)
  # The per-family losses are logged unweighted.
  np.testing.assert_allclose(float(metrics["meta_loss/linear_regression"]),
                             losses[1], rtol=1e-6)


def test_family_weights_weigh_the_best_theta_evaluation():
  cfg = dict(TINY, eval_every=2, eval_tasks=2, eval_steps=8)
  theta = MetaTrainer(MetaTrainConfig(**cfg)).rule.init_meta_params(
      jax.random.PRNGKey(0))
  single = [float(MetaTrainer(MetaTrainConfig(**dict(cfg, task_family=f)))
                  .evaluate_theta(theta))
            for f in ("quadratic", "linear_regression")]
  plain = float(MetaTrainer(MetaTrainConfig(**cfg)).evaluate_theta(theta))
  weighted = float(MetaTrainer(MetaTrainConfig(
      **dict(cfg, family_weights=[3, 1]))).evaluate_theta(theta))
  assert single[0] != pytest.approx(single[1], rel=1e-3)
  np.testing.assert_allclose(plain, 0.5 * (single[0] + single[1]), rtol=1e-5)
  np.testing.assert_allclose(weighted, 0.75 * single[0] + 0.25 * single[1],
                             rtol=1e-5)


def test_family_weights_config_errors_and_forms():
  assert MetaTrainConfig.from_dict(
      dict(TINY, family_weights="3, 1")).family_weights == [3.0, 1.0]
  assert MetaTrainConfig().with_overrides(
      ["family_weights=[1, 0.25]"]).family_weights == [1.0, 0.25]
  with pytest.raises(ConfigError, match="family_weights has 3 entries for 2 "
                     "task families"):
    MetaTrainConfig(**dict(TINY, family_weights=[1, 1, 1])).validate()
  with pytest.raises(ConfigError, match="positive and finite"):
    MetaTrainConfig(**dict(TINY, family_weights=[1, 0])).validate()
  with pytest.raises(ConfigError, match="'family_weights' expects"):
    MetaTrainConfig.from_dict(dict(TINY, family_weights=[True, 1]))
  with pytest.raises(ValueError, match="2 positive finite numbers"):
    E.Mixture(MetaTrainer(MetaTrainConfig(**TINY)).estimator.members,
              weights=[1, -1])


def test_mixture_slices_every_member():
  trainer = MetaTrainer(MetaTrainConfig(**TINY), task_indices=[1])
  assert all(list(m.task_indices) == [1] for m in trainer.estimator.members)
  assert trainer.estimator.num_particles_total == 2


def test_mixture_run_logs_per_family_and_resumes_bit_identically(tmp_path):
  cfg = MetaTrainConfig(**TINY)
  full = MetaTrainer(cfg).run(str(tmp_path / "full"), progress=False)
  assert {"meta/loss/quadratic", "meta/loss/linear_regression"} <= set(
      full.history[-1])
  MetaTrainer(cfg).run(str(tmp_path / "part"), progress=False, until=2)
  resumed = MetaTrainer(cfg).run(str(tmp_path / "part"), progress=False,
                                 resume=True)
  for a, b in zip(_leaves(full.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  assert all(np.all(np.isfinite(x)) for x in _leaves(full.state.theta))
