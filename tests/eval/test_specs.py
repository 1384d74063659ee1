"""Optimizer spec parsing and its error messages."""

import jax
import numpy as np
import pytest

import lopt
from lopt.eval import specs


def test_parse_baselines_fill_defaults():
  s = specs.parse_optimizer("adam:lr=1e-3")
  assert s.kind == "baseline" and s.name == "adam"
  assert s.hp == {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}
  s = specs.parse_optimizer("sgdm:lr=0.1,momentum=0.95")
  assert s.hp == {"lr": 0.1, "momentum": 0.95}
  assert s.label == "sgdm:momentum=0.95"
  s = specs.parse_optimizer(" AdamW : lr=3e-4 , wd=1e-2 ")
  assert s.name == "adamw" and s.hp["wd"] == 1e-2 and s.hp["lr"] == 3e-4
  assert specs.parse_optimizer("adam").hp["lr"] == 1e-3
  # canonical form is order-independent (cache key)
  assert (specs.parse_optimizer("adamw:wd=0.1,lr=0.01").canonical ==
          specs.parse_optimizer("adamw:lr=1e-2,wd=1e-1").canonical)


def test_parse_rule_and_learned():
  s = specs.parse_optimizer("rule:mlp,hidden=8")
  assert s.kind == "rule" and s.name == "mlp" and s.hp == {"hidden": 8}
  s = specs.parse_optimizer("some/dir/my_opt.lopt")
  assert s.kind == "learned" and s.label == "my_opt"
  # A run's exports are named by their run folder, so runs can be compared.
  assert specs.parse_optimizer("runs/a/best.lopt").label == "a/best"
  assert specs.parse_optimizer("runs/b/final.lopt").label == "b/final"
  assert specs.parse_optimizer("best.lopt").label == "best"
  assert specs.parse_optimizer("mlp_digits").kind == "learned"


@pytest.mark.parametrize("text, needle", [
    ("adma:lr=1e-3", "Unknown optimizer 'adma'"),
    ("adam:lr=", "needs both a key and a value"),
    ("adam:lr=abc", "lr='abc' is not a number"),
    ("adam:lr", "is not KEY=VALUE"),
    ("adam:lr=-1", "lr must be > 0"),
    ("adam:lr=nan", "must be finite"),
    ("adam:momentum=0.9", "adam has no hyper-parameter 'momentum'"),
    ("adam:lr=1,lr=2", "given twice"),
    ("", "Empty optimizer spec"),
    ("rule:", "write 'rule:NAME'"),
])
def test_bad_specs_one_clear_error(text, needle):
  with pytest.raises(ValueError, match=None) as e:
    specs.parse_optimizer(text)
  assert needle in str(e.value)


def test_unknown_learned_name_and_rule_are_value_errors(tmp_path):
  with pytest.raises(ValueError, match="Unknown optimizer 'no_such_opt'"):
    specs.resolve_learned(specs.parse_optimizer("no_such_opt"))
  with pytest.raises(ValueError, match="Unknown learned-optimizer rule"):
    specs.resolve_learned(specs.parse_optimizer("rule:nope"))
  bad = tmp_path / "broken.lopt"
  bad.write_bytes(b"not a learned optimizer")
  with pytest.raises(ValueError, match="Cannot load optimizer .*broken.lopt"):
    specs.resolve_learned(specs.parse_optimizer(str(bad)))


def test_learned_file_round_trip(tmp_path):
  rule = lopt.rules.get("sgd")
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  path = lopt.save(tmp_path / "sgd_opt.lopt", rule, theta)
  r = specs.resolve_learned(specs.parse_optimizer(str(path)))
  assert r.header["rule"] == "sgd"
  jax.tree.map(np.testing.assert_array_equal, r.theta, theta)


def test_lr_grid_is_log_spaced():
  g = specs.lr_grid("adam")
  assert len(g) == 7 and g[0] == 1e-4 and g[-1] == 0.1 and g[2] == 1e-3
  np.testing.assert_allclose(np.diff(np.log10(g)), 0.5, rtol=1e-5)
  with pytest.raises(ValueError):
    specs.lr_grid("adam", 0)


def test_baseline_transform_takes_traced_lr_and_value():
  tx = specs.baseline_transform("adam", {"lr": jax.numpy.float32(0.1)})
  p = {"w": jax.numpy.ones(3)}
  st = tx.init(p)
  up, _ = tx.update(p, st, p, value=jax.numpy.float32(1.0))
  np.testing.assert_allclose(up["w"], -0.1, rtol=1e-4)
