"""The learned-optimizer file: round trips and clear errors."""

import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt import io as io_lib


def _rule_theta(name="mlp"):
  rule = lopt.rules.get(name)
  theta = rule.init_meta_params(jax.random.PRNGKey(7))
  theta = jax.tree.map(lambda t: t + 0.123, theta)  # not the default
  return rule, theta


def _updates(opt, params, steps=5):
  state = opt.init(params)
  out = []
  for i in range(steps):
    g = jax.tree.map(lambda p: jnp.sin(p + i), params)
    u, state = opt.update(g, state, params, value=jnp.float32(1.0 / (i + 1)))
    params = jax.tree.map(lambda p, d: p + d, params, u)
    out.append(u)
  return out


@pytest.mark.parametrize("name", lopt.rules.names())
def test_roundtrip_identical_updates(tmp_path, name):
  rule, theta = _rule_theta(name)
  path = lopt.save(tmp_path / "opt.lopt", rule, theta, outer_steps=12,
                   config={"estimator": "es_single"})
  loaded = lopt.read(path)
  assert loaded.rule == rule
  assert loaded.header["provenance"]["outer_steps"] == 12
  assert loaded.header["format_version"] == io_lib.FORMAT_VERSION
  assert loaded.header["library_version"] == lopt.__version__
  for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(loaded.theta)):
    np.testing.assert_array_equal(a, b)
  params = {"w": jnp.linspace(-1, 1, 12).reshape(4, 3), "b": jnp.ones((3,))}
  ref = _updates(lopt.as_optax(rule, theta, 50), params)
  got = _updates(lopt.load(path, num_steps=50), params)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_no_partial_file_on_failed_write(tmp_path, monkeypatch):
  rule, theta = _rule_theta()
  target = tmp_path / "opt.lopt"

  def boom(*a, **k):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", boom)
  with pytest.raises(OSError):
    lopt.save(target, rule, theta)
  assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic(tmp_path):
  rule, theta = _rule_theta()
  p = lopt.save(tmp_path / "o.lopt", rule, theta)
  before = p.read_bytes()
  lopt.save(p, rule, jax.tree.map(lambda t: t * 2, theta))
  assert p.read_bytes() != before
  assert [x.name for x in tmp_path.iterdir()] == ["o.lopt"]


def _header_and_payload(path):
  blob = path.read_bytes()
  (n,) = struct.unpack("<Q", blob[5:13])
  return json.loads(blob[13:13 + n]), blob[13 + n:]


def _write(path, header, payload):
  head = json.dumps(header).encode()
  path.write_bytes(io_lib.MAGIC + struct.pack("<Q", len(head)) + head +
                   payload)


@pytest.fixture
def saved(tmp_path):
  rule, theta = _rule_theta()
  return lopt.save(tmp_path / "good.lopt", rule, theta)


def test_truncated_file(saved):
  blob = saved.read_bytes()
  saved.write_bytes(blob[:-10])
  with pytest.raises(lopt.LearnedOptimizerFileError, match="truncated"):
    lopt.read(saved)
  saved.write_bytes(blob[:20])
  with pytest.raises(lopt.LearnedOptimizerFileError, match="truncated"):
    lopt.read(saved)


def test_corrupted_payload(saved):
  blob = bytearray(saved.read_bytes())
  blob[-3] ^= 0xFF
  saved.write_bytes(bytes(blob))
  with pytest.raises(lopt.LearnedOptimizerFileError, match="corrupted"):
    lopt.read(saved)


def test_not_a_file_of_ours(tmp_path):
  p = tmp_path / "x.lopt"
  p.write_bytes(b"hello world, not an optimizer")
  with pytest.raises(ValueError, match="bad magic"):
    lopt.read(p)


def test_wrong_version(saved):
  header, payload = _header_and_payload(saved)
  header["format_version"] = 99
  _write(saved, header, payload)
  with pytest.raises(lopt.LearnedOptimizerFileError, match="version 99"):
    lopt.read(saved)


def test_unknown_rule(saved):
  header, payload = _header_and_payload(saved)
  header["rule"] = "magic_rule"
  _write(saved, header, payload)
  with pytest.raises(lopt.LearnedOptimizerFileError, match="magic_rule"):
    lopt.read(saved)


def test_wrong_rule_shapes(saved):
  # A file claiming a rule whose meta-parameters have other shapes.
  header, payload = _header_and_payload(saved)
  header["rule_config"]["hidden_sizes"] = [7]
  _write(saved, header, payload)
  with pytest.raises(lopt.LearnedOptimizerFileError, match="does not match"):
    lopt.read(saved)
  header["rule"] = "sgd"
  header["rule_config"] = {}
  _write(saved, header, payload)
  with pytest.raises(lopt.LearnedOptimizerFileError, match="tensors"):
    lopt.read(saved)


@pytest.mark.parametrize("rule_config, match", [
    ([4], "rule_config must be a JSON object, got list"),
    ({"no_such_key": 1}, "bad rule_config for rule 'mlp'.*no_such_key"),
    ({"hidden_sizes": [0]}, "bad rule_config.*hidden_sizes must be positive"),
])
def test_bad_rule_config_in_header(saved, rule_config, match):
  header, payload = _header_and_payload(saved)
  header["rule_config"] = rule_config
  _write(saved, header, payload)
  with pytest.raises(lopt.LearnedOptimizerFileError, match=match):
    lopt.read(saved)


def test_missing_file_and_unknown_name():
  with pytest.raises(FileNotFoundError, match="shipped"):
    lopt.read("definitely_not_shipped_optimizer")
  with pytest.raises(FileNotFoundError):
    lopt.load("/nonexistent/dir/x.lopt", num_steps=10)


def test_save_rejects_wrong_theta(tmp_path):
  rule, theta = _rule_theta()
  with pytest.raises(ValueError, match="structure"):
    lopt.save(tmp_path / "x.lopt", rule, {"a": jnp.ones(2)})
  assert not (tmp_path / "x.lopt").exists()


def test_file_from_before_a_config_key_existed_loads_as_then(tmp_path):
  # Files written before the MLP rule gained `learned_schedule` have no such
  # key in their rule_config and no `schedule` tensor: they load as the rule
  # without the schedule (rules.config_added), with identical updates.
  rule = lopt.rules.get("mlp", learned_schedule=False)
  theta = jax.tree.map(lambda t: t + 0.123,
                       rule.init_meta_params(jax.random.PRNGKey(7)))
  path = lopt.save(tmp_path / "old.lopt", rule, theta)
  header, payload = _header_and_payload(path)
  del header["rule_config"]["learned_schedule"]
  _write(path, header, payload)
  assert lopt.rules.config_added("mlp") == {
      "learned_schedule": False, "loss_features": False,
      "features": list(lopt.rules.mlp.FEATURE_NAMES),
      "norm_sample": 2 ** 62}
  assert lopt.rules.config_added("sgd") == {}
  loaded = lopt.read(path)
  assert loaded.rule.learned_schedule is False
  assert "schedule" not in loaded.theta
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
  a = _updates(lopt.as_optax(rule, theta, num_steps=20), params)
  b = _updates(loaded.as_optax(num_steps=20), params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_file_without_norm_sample_normalises_over_every_element(tmp_path):
  # Files written before the MLP rule sampled its normaliser (no
  # `norm_sample` key) normalised each feature over the whole tensor: they
  # load with a sample larger than any tensor, not with today's default
  # (1024), whose sampled normaliser gives different updates on a tensor of
  # more elements.
  rule = lopt.rules.get("mlp", norm_sample=2 ** 62)
  theta = rule.init_meta_params(jax.random.PRNGKey(7))
  path = lopt.save(tmp_path / "old.lopt", rule, theta)
  header, payload = _header_and_payload(path)
  del header["rule_config"]["norm_sample"]
  _write(path, header, payload)
  loaded = lopt.read(path)
  assert loaded.rule.norm_sample == 2 ** 62
  assert lopt.rules.get("mlp").norm_sample == 1024
  params = {"w": jnp.sin(jnp.arange(48 * 64.0)).reshape(48, 64)}   # 3072
  a = _updates(lopt.as_optax(rule, theta, num_steps=20), params)
  b = _updates(loaded.as_optax(num_steps=20), params)
  c = _updates(lopt.as_optax(lopt.rules.get("mlp"), theta, num_steps=20),
               params)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["w"], y["w"])
  assert not np.allclose(a[-1]["w"], c[-1]["w"], rtol=1e-4, atol=0)
