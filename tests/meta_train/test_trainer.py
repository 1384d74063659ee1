"""Outer loop, config, CLI, TensorBoard, checkpoints and resume."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
import lopt.tasks
from lopt.meta_train import cli
from lopt.meta_train.config import ConfigError, MetaTrainConfig, load_config
from lopt.meta_train.logging import TAGS, read_scalars
from lopt.meta_train.trainer import MetaTrainer

TINY = dict(rule="adam", task_family="digits_mlp", num_tasks=2,
            trunc_length=5, horizon_min=8, horizon_max=30, outer_steps=8,
            log_every=2, checkpoint_every=3, keep_checkpoints=2)


def _tiny(**kw):
  d = dict(TINY)
  d.update(kw)
  return MetaTrainConfig(**d)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape)
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def trainer():
  return MetaTrainer(_tiny())


def test_resume_is_bit_identical(trainer, tmp_path):
  full = trainer.run(str(tmp_path / "full"), progress=False)
  part = trainer.run(str(tmp_path / "part"), progress=False, until=4)
  assert int(part.state.step) == 4
  assert not os.path.exists(tmp_path / "part" / "final.lopt")
  resumed = trainer.run(str(tmp_path / "part"), resume=True, progress=False)
  assert int(resumed.state.step) == 8
  _assert_same(full.state, resumed.state)
  # theta moved, and the exported file holds the final theta.
  theta0 = trainer.rule.init_meta_params(jax.random.fold_in(
      jax.random.PRNGKey(0), 0))
  assert any(not np.array_equal(a, b) for a, b in
             zip(_leaves(theta0), _leaves(full.state.theta)))
  loaded = lopt.read(tmp_path / "part" / "final.lopt")
  _assert_same(loaded.theta, resumed.state.theta)
  prov = loaded.header["provenance"]
  assert prov["outer_steps"] == 8 and prov["config"]["rule"] == "adam"
  assert "date" in prov and prov["library_version"] == lopt.__version__
  best = lopt.read(tmp_path / "part" / "best.lopt")
  assert best.header["provenance"]["kind"] == "best"
  # keep_checkpoints=2: only the last two remain (6 and 8).
  steps = sorted(int(p) for p in os.listdir(tmp_path / "part" /
                                            "checkpoints") if p.isdigit())
  assert steps == [6, 8]


def test_same_seed_same_result(trainer):
  a = trainer.run(None, progress=False, until=3)
  b = trainer.run(None, progress=False, until=3)
  _assert_same(a.state, b.state)


def test_tensorboard_events_readable(trainer, tmp_path):
  trainer.run(str(tmp_path / "tb_run"), progress=True)
  scalars = read_scalars(tmp_path / "tb_run" / "tb")
  for tag in TAGS:
    assert tag in scalars, (tag, sorted(scalars))
  assert [s for s, _ in scalars["meta/loss"]] == [2, 4, 6, 8]
  assert all(np.isfinite(v) for _, v in scalars["meta/loss"])
  assert all(v > 0 for _, v in scalars["inner/steps_per_s"])
  rows = [json.loads(l) for l in open(tmp_path / "tb_run" / "tb" /
                                      "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 4, 6, 8]


class _NaNFamily:
  """A quadratic family whose tasks blow up for some configs: the learned
  SGD step is multiplied by a per-task factor drawn up to 1e4."""

  name = "nan_family"

  def sample(self, key):
    return {"gain": jnp.exp(jax.random.uniform(key, (), jnp.float32, 0.0,
                                               9.2))}

  def default_config(self):
    return {"gain": jnp.float32(1.0)}

  def task(self, config):
    return _NaNTask(config["gain"])


class _NaNTask(lopt.tasks.Task):
  loss_scale = 1.0

  def __init__(self, gain):
    self.gain = gain

  def init(self, key):
    return {"w": jax.random.normal(key, (4,))}

  def loss(self, params, batch, key=None):
    return self.gain * jnp.sum(params["w"] ** 2) * 10.0 ** batch

  def sample_batch(self, key, split="train"):
    return jax.random.uniform(key, (), jnp.float32, 0.0, 2.0)

  @property
  def param_meta(self):
    return {"w": lopt.ParamMeta("vector", 1, 4)}


def test_nonfinite_inner_problems_never_reach_theta():
  cfg = _tiny(rule="sgd", outer_steps=12, rule_config={"initial_lr": 0.3},
              num_tasks=4, horizon_min=20, horizon_max=40, trunc_length=10,
              std=0.5)
  tr = MetaTrainer(cfg, rule=lopt.rules.get("sgd", initial_lr=0.3),
                   family=_NaNFamily())
  res = tr.run(None, progress=False)
  assert float(res.state.nonfinite) > 0
  assert float(res.state.resets) > 0
  assert all(np.all(np.isfinite(x)) for x in _leaves(res.state.theta))
  assert sum(r["inner/nonfinite"] for r in res.history) == float(
      res.state.nonfinite)


def test_nonfinite_meta_gradient_is_skipped(trainer):
  state = trainer.init_state()
  theta = _leaves(state.theta)
  grad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.theta)
  metrics = {"meta_loss": jnp.float32(1.0), "resets": jnp.float32(0),
             "nonfinite": jnp.float32(0)}
  new, m = trainer.apply_gradient(state, grad, metrics)
  assert int(new.skipped) == 1 and float(m["skipped"]) == 1.0
  for a, b in zip(theta, _leaves(new.theta)):
    np.testing.assert_array_equal(a, b)
  grad = jax.tree.map(jnp.ones_like, state.theta)
  new, m = trainer.apply_gradient(state, grad, metrics)
  assert int(new.skipped) == 0


def test_config_file_overrides_and_errors(tmp_path):
  p = tmp_path / "cfg.yaml"
  p.write_text("rule: sgd\nnum_tasks: 3\nrule_config: {initial_lr: 0.05}\n")
  cfg = load_config(str(p), ["trunc_length=7", "random_offsets=false",
                             "std=1e-3"])
  assert (cfg.rule, cfg.num_tasks, cfg.trunc_length) == ("sgd", 3, 7)
  assert cfg.random_offsets is False and cfg.std == 1e-3
  assert cfg.rule_config == {"initial_lr": 0.05}
  # A dotted key sets one rule_config entry and keeps the others.
  cfg = load_config(str(p), ["rule_config.momentum=true"])
  assert cfg.rule_config == {"initial_lr": 0.05, "momentum": True}
  assert load_config(str(p), ["rule_config={}"]).rule_config == {}
  j = tmp_path / "cfg.json"
  j.write_text(json.dumps({"estimator": "pes", "schedule": "cosine"}))
  assert load_config(str(j)).estimator == "pes"
  for bad, msg in [(["rule=nope"], "unknown rule"),
                   (["task_family=nope"], "unknown task family"),
                   (["estimator=nope"], "unknown estimator"),
                   (["num_tasks=-2"], "num_tasks must be >= 1"),
                   (["horizon_min=50", "horizon_max=10"], "horizon_min"),
                   (["trunc_length=abc"], "expects int"),
                   (["colour=red"], "Unknown config field"),
                   (["rule_config={bogus: 1}"], "bad rule_config"),
                   (["rule_config.bogus=1"], "bad rule_config"),
                   (["rule_config.a.b=1"], "one rule_config entry"),
                   (["std.x=1"], "only rule_config takes a dotted key"),
                   (["loss_weighting=late"], "loss_weighting must be")]:
    with pytest.raises(ConfigError, match=msg):
      load_config(None, bad)


def test_init_from_starts_at_the_file_theta(tmp_path):
  rule = lopt.rules.get("adam")
  theta = jax.tree.map(lambda x: x + 0.25,
                       rule.init_meta_params(jax.random.PRNGKey(3)))
  path = lopt.save(tmp_path / "start.lopt", rule, theta)
  trainer = MetaTrainer(_tiny(init_from=str(path)).validate())
  state = trainer.init_state()
  _assert_same(state.theta, theta)
  _assert_same(state.best_theta, theta)
  fresh = MetaTrainer(_tiny()).init_state()
  assert not np.array_equal(_leaves(fresh.theta)[0], _leaves(theta)[0])
  # The run records where it started; the first update moves away from it.
  state, _ = trainer.step_fn(state)
  assert trainer.provenance()["config"]["init_from"] == str(path)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(_leaves(state.theta), _leaves(theta)))


def test_init_from_errors_before_work(tmp_path):
  with pytest.raises(ConfigError, match="init_from 'no_such_optimizer' "
                     "cannot be read"):
    _tiny(init_from="no_such_optimizer").validate()
  rule = lopt.rules.get("sgd")
  path = lopt.save(tmp_path / "sgd.lopt", rule,
                   rule.init_meta_params(jax.random.PRNGKey(0)))
  with pytest.raises(ConfigError, match="holds rule 'sgd'.*this run "
                     "meta-trains 'adam'"):
    _tiny(init_from=str(path)).validate()
  with pytest.raises(ConfigError, match="set rule and rule_config"):
    _tiny(rule="sgd", rule_config={"initial_lr": 0.5},
          init_from=str(path)).validate()
  # A shipped name resolves (and its rule must match too).
  with pytest.raises(ConfigError, match="holds rule 'mlp'"):
    _tiny(init_from="mlp_digits").validate()
  # mlp_digits reads all 23 features with a 2048-element normaliser sample,
  # not the rule's defaults since session 17 (17 features, 1024).
  with pytest.raises(ConfigError, match="set rule and rule_config"):
    _tiny(rule="mlp", init_from="mlp_digits").validate()
  _tiny(rule="mlp", rule_config={"features": "all", "norm_sample": 2048,
                                 "learned_schedule": True},
        init_from="mlp_digits").validate()


def test_schedule_warmup_cosine():
  tr_cfg = _tiny(schedule="cosine", warmup_steps=4, outer_steps=20,
                 learning_rate=1e-2, final_lr_fraction=0.1)
  from lopt.meta_train.trainer import build_schedule
  s = build_schedule(tr_cfg)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(4)), 1e-2, rtol=1e-5)
  np.testing.assert_allclose(float(s(20)), 1e-3, rtol=1e-4)


def test_cli_errors_before_work(tmp_path, capsys):
  out = tmp_path / "never"
  rc = cli.main(["--out", str(out), "--set", "rule=nope", "--set",
                 "num_tasks=-1"])
  err = capsys.readouterr().err
  assert rc == 2 and "unknown rule 'nope'" in err and "num_tasks" in err
  assert err.count("\n") == 1
  assert not out.exists()


def test_cli_run_and_resume(tmp_path, capsys):
  cfg = tmp_path / "cfg.yaml"
  cfg.write_text(
      "rule: sgd\nnum_tasks: 2\ntrunc_length: 4\n"
      "horizon_min: 6\n"
      "horizon_max: 12\nlog_every: 1\ncheckpoint_every: 2\n")
  out = tmp_path / "run"
  argv = ["--config", str(cfg), "--out", str(out), "--no-progress"]
  assert cli.main(argv + ["--set", "outer_steps=2"]) == 0
  # Progress on, stderr not a terminal (as under nohup or CI): plain lines.
  assert cli.main(["--out", str(out), "--resume",
                   "--set", "outer_steps=4"]) == 0
  captured = capsys.readouterr()
  lines = [l for l in captured.err.splitlines()
           if l.startswith("meta-train step")]
  # --no-progress (the first run) also gives plain lines, not silence.
  assert [l.split(" [")[0] for l in lines] == [
      "meta-train step 1/2", "meta-train step 2/2", "meta-train step 3/4",
      "meta-train step 4/4"]
  assert all(" s]: loss " in l and "inner steps/s" in l for l in lines)
  summary = json.loads(captured.out.strip().splitlines()[-1])
  assert summary["outer_steps"] == 4
  assert lopt.read(out / "final.lopt").header["provenance"]["outer_steps"] == 4
  assert sorted(os.listdir(out / "checkpoints")) == ["2", "4"]
  # A fresh run into a directory with checkpoints is refused.
  assert cli.main(argv + ["--set", "outer_steps=2"]) == 2
  assert "--resume" in capsys.readouterr().err
  # Resuming with a different shape-relevant config is refused.
  rc = cli.main(["--out", str(out), "--resume", "--set", "num_tasks=3"])
  assert rc == 2 and "differs" in capsys.readouterr().err


_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_every_config_in_configs_dir_validates():
  """Each config in configs/ (the model cards and docs/ run them) loads
  and validates: a renamed family, field or rule option fails here, not after
  someone starts a meta-training run."""
  paths = sorted(glob.glob(os.path.join(_REPO, "configs", "*.yaml")))
  assert paths, "no configs/*.yaml found"
  for path in paths:
    load_config(path).validate()



def test_evaluate_theta_follows_log_loss():
  """With ``log_loss`` the fixed-task evaluation that picks ``best.lopt`` is
  the weighted mean of ``log(max(l_t, 1e-8))``, the meta-training objective;
  without it, of ``l_t``. Recomputed here from the same tasks' curves."""
  from lopt.meta_train import unroll as U
  from lopt.meta_train.inner import train_curve
  kw = dict(eval_tasks=2, eval_steps=12, loss_weighting="linear")
  plain = MetaTrainer(_tiny(**kw))
  logged = MetaTrainer(_tiny(log_loss=True, **kw))
  shifted = MetaTrainer(_tiny(log_loss=True, log_loss_offset=0.05, **kw))
  theta = plain.initial_theta()
  fam, system = logged.families[0], logged.systems[0]
  t = jnp.arange(12, dtype=jnp.int32)
  w = U.step_weights(system, t, jnp.full_like(t, 12))
  curves = []
  for key in jax.random.split(logged._eval_key, 2):
    k_cfg, k_run = jax.random.split(key)
    task = fam.task(fam.sample(k_cfg))
    curves.append(task.normalize_loss(
        train_curve(logged.rule, theta, task, 12, k_run)))
  curves = jnp.stack(curves)
  assert float(jnp.min(curves)) > 1e-8
  want_log = float(jnp.mean(jnp.mean(w * jnp.log(curves), axis=1)))
  want_plain = float(jnp.mean(jnp.mean(w * curves, axis=1)))
  np.testing.assert_allclose(float(logged.evaluate_theta(theta)), want_log,
                             rtol=1e-5)
  np.testing.assert_allclose(float(plain.evaluate_theta(theta)), want_plain,
                             rtol=1e-5)
  want_shifted = float(jnp.mean(jnp.mean(w * jnp.log(curves + 0.05), axis=1)))
  np.testing.assert_allclose(float(shifted.evaluate_theta(theta)),
                             want_shifted, rtol=1e-5)
  assert want_log < want_shifted and want_log < 0 < want_plain


def test_log_loss_offset_in_the_inner_meta_loss_and_config_errors():
  """The per-step meta-loss the estimators see is ``log(l + c)``; a negative
  offset, or one without ``log_loss``, fails validation with one message."""
  from lopt.meta_train.inner import log_meta_loss
  l = jnp.asarray([0.0, 1e-9, 1e-3, 0.5])
  np.testing.assert_allclose(log_meta_loss(l), np.log([1e-8, 1e-8, 1e-3, 0.5]),
                             rtol=1e-6)
  np.testing.assert_allclose(log_meta_loss(l, 0.01),
                             np.log(np.asarray(l) + 0.01), rtol=1e-6)
  tr = MetaTrainer(_tiny(log_loss=True, log_loss_offset=0.01))
  system = tr.systems[0]
  assert system.log_loss and system.log_loss_offset == 0.01
  theta = tr.initial_theta()
  inner = system.init(theta, jax.random.PRNGKey(0), jnp.asarray(20))
  key = jax.random.PRNGKey(1)
  _, meta = system.step(theta, inner, key)
  task = system.family.task(inner.config)
  k_batch, k_loss, _ = jax.random.split(key, 3)
  loss = task.loss(inner.params, task.sample_batch(k_batch, "train"), k_loss)
  np.testing.assert_allclose(
      float(meta), float(jnp.log(task.normalize_loss(loss) + 0.01)), rtol=1e-5)
  for bad, msg in [(dict(log_loss=True, log_loss_offset=-1.0),
                    "log_loss_offset must be >= 0"),
                   (dict(log_loss_offset=0.1), "needs log_loss: true")]:
    with pytest.raises(ConfigError, match=msg):
      _tiny(**bad).validate()
