"""``lopt info`` / :mod:`lopt.info`: a file's description matches the file."""

import json

import jax
import numpy as np
import pytest

import lopt
from lopt import cli, info


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  rule = lopt.rules.get("mlp")
  theta = rule.init_meta_params(jax.random.PRNGKey(3))
  prov = {"estimator": "es_single", "outer_steps": 7,
          "task_family": "digits_mlp,iris_mlp", "best_loss": 0.25,
          "config": {"rule": "mlp", "seed": 0, "num_tasks": 4}}
  path = tmp_path_factory.mktemp("info") / "mine.lopt"
  lopt.save(path, rule, theta, **prov)
  return path, rule, theta, prov


def test_describe_matches_the_saved_file(saved):
  path, rule, theta, prov = saved
  d = info.describe(path)
  assert d["name"] == "mine" and d["path"] == str(path)
  assert not d["shipped"] and d["model_card"] is None
  assert d["rule"] == "mlp"
  assert d["num_meta_params"] == lopt.tree_size(theta)
  assert d["provenance"] == prov
  assert d["format_version"] == 1 and d["library_version"] == lopt.__version__
  leaves = jax.tree_util.tree_leaves(theta)
  assert len(d["tensors"]) == len(leaves)
  for t, leaf in zip(d["tensors"], leaves):
    a = np.asarray(leaf, np.float64)
    assert t["shape"] == list(a.shape)
    np.testing.assert_allclose(t["rms"], np.sqrt(np.mean(a * a)), rtol=1e-6)
    if a.ndim == 0:
      assert t["value"] == pytest.approx(float(a))
  # The config as loaded includes the rule's defaults (not only what the
  # file stored), and JSON round-trips.
  assert d["rule_config"]["norm_sample"] == rule.config()["norm_sample"]
  assert json.loads(json.dumps(d)) == d


def test_text_names_the_feature_preset_and_provenance(saved):
  path, _, _, _ = saved
  text = info.format_text(info.describe(path))
  assert "lean (17 features)" in text       # the rule's default preset
  assert "(verified)" in text
  for key in ("estimator", "outer_steps", "num_tasks"):
    assert key in text
  assert "task_family" in text and "digits_mlp,iris_mlp" in text


def test_list_shows_every_shipped_optimizer(capsys):
  assert cli.main(["info"]) == 0
  out = capsys.readouterr().out
  names = lopt.shipped_names()
  assert names, "checkpoints/ ships no learned optimizer"
  for name in names:
    assert any(line.startswith(name + " ") for line in out.splitlines())


def test_json_of_a_shipped_name(capsys):
  name = lopt.shipped_names()[0]
  assert info.main([name, "--json"]) == 0
  (d,) = json.loads(capsys.readouterr().out)
  assert d["name"] == name and d["shipped"]
  assert d["model_card"] and d["model_card"].endswith(name + ".md")
  assert d == info.describe(name)


def test_corrupted_file_is_one_error_line(saved, tmp_path, capsys):
  path = saved[0]
  blob = bytearray(path.read_bytes())
  blob[-1] ^= 0xFF                                # flip a payload byte
  bad = tmp_path / "bad.lopt"
  bad.write_bytes(bytes(blob))
  assert info.main([str(bad)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "corrupted" in err[0] and "bad.lopt" in err[0]


def test_unknown_name(capsys):
  assert info.main(["no_such_optimizer"]) == 2
  err = capsys.readouterr().err
  assert "not a shipped name" in err and "no_such_optimizer" in err
