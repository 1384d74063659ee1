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


def test_parse_learned_with_scale():
  s = specs.parse_optimizer("mlp_digits_lm:scale=0.5")
  assert s.kind == "learned" and s.name == "mlp_digits_lm"
  assert s.hp == {"scale": 0.5}
  assert s.label == "mlp_digits_lm:scale=0.5"
  assert s.canonical == "mlp_digits_lm:scale=0.5"
  s = specs.parse_optimizer("runs/a/best.lopt: scale = 2")
  assert s.name == "runs/a/best.lopt" and s.label == "a/best:scale=2"
  # scale 1 is the optimizer itself: same label as without it.
  assert specs.parse_optimizer("mlp_digits:scale=1").label == "mlp_digits"
  # A colon earlier in a path is part of the name.
  assert specs.parse_optimizer("d:x/o.lopt:scale=0.25").name == "d:x/o.lopt"


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
    ("mlp_digits:scale=0", "scale must be > 0"),
    ("mlp_digits:scale=-1", "scale must be > 0"),
    ("mlp_digits:scale=x", "scale='x' is not a number"),
    ("mlp_digits:scale=1,scale=2", "given twice"),
    ("mlp_digits:lr=1e-3", "optionally 'NAME:scale=C'"),
    ("adam:scale=2", "adam has no hyper-parameter 'scale'"),
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


def test_learned_scale_multiplies_every_update(tmp_path):
  rule = lopt.rules.get("mlp")
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  path = str(lopt.save(tmp_path / "m.lopt", rule, theta))
  plain = specs.resolve_learned(specs.parse_optimizer(path))
  half = specs.resolve_learned(specs.parse_optimizer(path + ":scale=0.5"))
  assert plain.scale == 1.0 and half.scale == 0.5
  params = {"w": jax.numpy.linspace(-1.0, 1.0, 12).reshape(3, 4),
            "b": jax.numpy.ones(4)}
  grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
  outs = []
  for r in (plain, half):
    tx = r.transform(num_steps=10)
    st = tx.init(params)
    for _ in range(3):   # the state evolves identically: scale is outside
      up, st = tx.update(grads, st, params, value=jax.numpy.float32(1.0))
    outs.append(up)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 0.5 * a,
                                                       rtol=1e-6),
               *outs)
  assert float(jax.numpy.abs(outs[0]["w"]).max()) > 0


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
