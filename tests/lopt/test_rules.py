"""Properties every learned-optimizer rule must have."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.rules import mlp as mlp_lib

ALL_RULES = lopt.rules.names()


def _params(dtype=jnp.float32):
  k = iter(jax.random.split(jax.random.PRNGKey(0), 8))
  return {
      "scalar": jnp.asarray(0.5, dtype),
      "vector": jax.random.normal(next(k), (7,), dtype),
      "matrix": jax.random.normal(next(k), (5, 3), dtype),
      "conv": jax.random.normal(next(k), (3, 3, 2, 4), dtype),
      "nested": {"deeper": {"w": jax.random.normal(next(k), (4, 6), dtype)},
                 "empty": jnp.zeros((0, 3), dtype),
                 "none": None,
                 "empty_dict": {}},
  }


def _grads(params, seed=1):
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
  return tdef.unflatten([jax.random.normal(k, jnp.shape(p)).astype(p.dtype)
                         for k, p in zip(keys, leaves)])


def _run(rule, theta, params, steps=2, meta=None):
  state = rule.init(theta, params, 10, meta)
  upd = None
  for i in range(steps):
    upd, state = rule.update(theta, _grads(params, i), state, params,
                             jnp.float32(2.0 - 0.1 * i))
    params = optax.apply_updates(params, upd)
  return upd, state, params


@pytest.mark.parametrize("name", ALL_RULES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_any_pytree_jit_dtypes(name, dtype):
  rule = lopt.rules.get(name)
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  params = _params(dtype)
  run = jax.jit(lambda th, p: _run(rule, th, p))
  upd, state, new_params = run(theta, params)
  assert jax.tree.structure(upd) == jax.tree.structure(params)
  for u, p in zip(jax.tree.leaves(upd), jax.tree.leaves(params)):
    assert u.shape == p.shape and u.dtype == p.dtype
    assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32))))
  # Non-empty leaves actually move.
  assert float(jnp.abs(upd["matrix"].astype(jnp.float32)).sum()) > 0
  # Accumulators are float32 whatever the parameter dtype (documented).
  for leaf in jax.tree.leaves(state):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32


# The muP variants share every code path but the update scale (tested below).
@pytest.mark.parametrize("name", ["sgd", "adam", "mlp", "velo"])
def test_vmap_over_particles_matches_loop(name):
  rule = lopt.rules.get(name)
  thetas = jax.vmap(rule.init_meta_params)(jax.random.split(
      jax.random.PRNGKey(3), 3))
  # Perturb so particles differ even for rules with key-free init.
  thetas = jax.tree.map(lambda t: t + 0.01 * jnp.arange(3).reshape(
      (3,) + (1,) * (t.ndim - 1)), thetas)
  params = _params()
  run = lambda th: _run(rule, th, params)[0]
  batched = jax.jit(jax.vmap(run))(thetas)
  run_single = jax.jit(run)
  for i in range(3):
    single = run_single(jax.tree.map(lambda t: t[i], thetas))
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
      np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("name", ALL_RULES)
def test_config_roundtrip_and_registry(name):
  rule = lopt.rules.get(name)
  assert rule.name == name
  again = lopt.rules.get(name, **rule.config())
  assert again == rule


def test_unknown_rule_and_bad_config():
  with pytest.raises(ValueError, match="Unknown learned-optimizer rule"):
    lopt.rules.get("nope")
  with pytest.raises(ValueError, match="Bad config"):
    lopt.rules.get("mlp", not_a_field=1)
  with pytest.raises(ValueError, match="hidden_sizes"):
    lopt.rules.get("mlp", hidden_sizes=(0,))


def test_learnable_adam_matches_optax_adam():
  rule = lopt.rules.get("adam")
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  params = {"w": jax.random.normal(jax.random.PRNGKey(1), (6, 4)),
            "b": jnp.zeros((4,))}
  ref = optax.adam(1e-3)
  ours = lopt.as_optax(rule, theta, 100)

  def body(carry, key):
    p_ref, s_ref, p_ours, s_ours = carry
    g = jax.tree.map(lambda x: jax.random.normal(key, x.shape) + x, p_ref)
    u_ref, s_ref = ref.update(g, s_ref, p_ref)
    u_ours, s_ours = ours.update(g, s_ours, p_ours)
    return (optax.apply_updates(p_ref, u_ref), s_ref,
            optax.apply_updates(p_ours, u_ref), s_ours), (u_ref, u_ours)

  init = (params, ref.init(params), params, ours.init(params))
  _, (u_ref, u_ours) = jax.lax.scan(body, init,
                                    jax.random.split(jax.random.PRNGKey(2),
                                                     100))
  for a, b in zip(jax.tree.leaves(u_ref), jax.tree.leaves(u_ours)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-9)


def test_learnable_sgd_is_sgd():
  rule = lopt.rules.get("sgd", initial_lr=0.05)
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  p = {"w": jnp.ones((3,))}
  g = {"w": jnp.arange(3.0)}
  u, _ = rule.update(theta, g, rule.init(theta, p, 10), p)
  np.testing.assert_allclose(u["w"], -0.05 * g["w"], rtol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "mu_mlp", "velo", "mu_velo"])
def test_zero_output_leaves_params_unchanged(name):
  rule = lopt.rules.get(name)
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  nets = theta["bank"] if "bank" in theta else theta
  nets["out"] = jax.tree.map(jnp.zeros_like, nets["out"])
  nets["skip"] = jnp.zeros_like(nets["skip"])
  params = _params()
  upd, _, new_params = jax.jit(lambda th, p: _run(rule, th, p))(theta, params)
  for u in jax.tree.leaves(upd):
    assert float(jnp.abs(u).max(initial=0.0)) == 0.0
  for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(), (5,), (4, 3), (3, 3, 2, 4)])
def test_features_finite_for_zero_grads_and_params(shape):
  rule = lopt.rules.get("mlp")
  z = jnp.zeros(shape)
  ls = mlp_lib._init_leaf(z)
  for _ in range(2):
    ls, feats, inv = rule.leaf_prepare(z, z, ls)
    assert all(bool(jnp.all(jnp.isfinite(f))) for f in feats)
    assert bool(jnp.all(jnp.isfinite(inv)))
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  params = {"x": z}
  upd, _, _ = _run(rule, theta, params)
  assert bool(jnp.all(jnp.isfinite(upd["x"])))


@pytest.mark.parametrize("shape", [(40, 30), (5, 6, 7), (3, 3, 4, 8),
                                   (500,)])
def test_sampled_feature_norm_uses_exact_features(shape):
  """The normaliser is 1/RMS of exactly the features at every stride-th
  element (and of all elements for small tensors)."""
  rule = lopt.rules.get("mlp", features="all", norm_sample=64)
  p = jax.random.normal(jax.random.PRNGKey(1), shape)
  g = jax.random.normal(jax.random.PRNGKey(2), shape)
  ls = mlp_lib._init_leaf(p)
  ls = rule._accumulate(g, ls)
  ls = rule._accumulate(0.5 * g + 1.0, ls)
  feats = rule._features(g, p, ls)
  assert len(feats) == mlp_lib.NUM_FEATURES
  stride = -(-g.size // 64)
  inv = rule._feature_inv_rms(g, p, ls)
  want = jnp.stack([
      1 / jnp.sqrt(jnp.mean(jnp.broadcast_to(f, shape).reshape(-1)[::stride]
                            ** 2) + 1e-12) for f in feats])
  np.testing.assert_allclose(inv, want, rtol=1e-5)
  # And for small tensors the normaliser is exact.
  exact = lopt.rules.get("mlp", features="all", norm_sample=10**6)
  inv = exact._feature_inv_rms(g, p, ls)
  want = jnp.stack([1 / jnp.sqrt(jnp.mean(f**2) + 1e-12) for f in feats])
  np.testing.assert_allclose(inv, want, rtol=1e-5)


@pytest.mark.parametrize("name", ["mu_mlp", "mu_velo"])
def test_mup_scales_hidden_updates_by_fan_in(name):
  mu_rule = lopt.rules.get(name)
  sp_rule = lopt.rules.get(name[3:])
  theta = mu_rule.init_meta_params(jax.random.PRNGKey(0))
  params = {"inp": jnp.ones((3, 8)), "hid": jnp.ones((8, 8)) * 0.5,
            "out": jnp.ones((8, 2)), "b": jnp.zeros((8,))}
  meta = {"inp": lopt.ParamMeta("input", 3, 8),
          "hid": lopt.ParamMeta("hidden", 8, 8),
          "out": lopt.ParamMeta("output", 8, 2),
          "b": lopt.ParamMeta("vector", 1, 8)}
  u_mu, _, _ = _run(mu_rule, theta, params, steps=1, meta=meta)
  u_sp, _, _ = _run(sp_rule, theta, params, steps=1, meta=meta)
  u_none, _, _ = _run(mu_rule, theta, params, steps=1, meta=None)
  np.testing.assert_allclose(u_mu["hid"], u_sp["hid"] / 8, rtol=1e-5)
  for k in ("inp", "out", "b"):
    np.testing.assert_allclose(u_mu[k], u_sp[k], rtol=1e-6)
  # Without metadata the muP rule is standard parametrisation.
  for k in params:
    np.testing.assert_allclose(u_none[k], u_sp[k], rtol=1e-6)


def test_param_meta_errors():
  rule = lopt.rules.get("mu_mlp")
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  params = {"a": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="param_meta"):
    rule.init(theta, params, 10, {"b": lopt.ParamMeta()})
  with pytest.raises(TypeError, match="ParamMeta"):
    rule.init(theta, params, 10, {"a": 3})
  with pytest.raises(ValueError, match="kind"):
    lopt.ParamMeta("middle", 1, 1)


@pytest.mark.parametrize("name", ["velo", "mu_velo"])
def test_velo_bank_keeps_all_23_features_and_the_2048_sample(name):
  # velo's per-parameter MLPs are not configured by the mlp rule's defaults
  # (17 features and 1024 since session 17): its meta-parameters and
  # per-tensor statistics stay those of the files it wrote.
  rule = lopt.rules.get(name)
  assert rule._mlp.features == mlp_lib.FEATURE_NAMES
  assert rule._mlp.norm_sample == 2048
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  assert theta["bank"]["layers"][0]["w"].shape[1] == mlp_lib.NUM_FEATURES
  assert theta["bank"]["skip"].shape[1] == mlp_lib.NUM_FEATURES


def test_velo_requires_loss():
  rule = lopt.rules.get("velo")
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  opt = lopt.as_optax(rule, theta, 10)
  params = {"w": jnp.ones((2, 2))}
  state = opt.init(params)
  with pytest.raises(ValueError, match="value=loss"):
    opt.update(params, state, params)


def test_velo_ignores_nonfinite_loss_in_emas():
  rule = lopt.rules.get("velo")
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  params = {"w": jnp.ones((3, 2))}
  state = rule.init(theta, params, 10)
  _, state = rule.update(theta, params, state, params, jnp.float32(1.0))
  _, state2 = rule.update(theta, params, state, params, jnp.float32(jnp.nan))
  np.testing.assert_array_equal(state2.loss_ema, state.loss_ema)


def test_normaliser_subsample_visits_every_row_and_column():
  for shape in [(128, 128), (64, 128), (784, 256), (300, 7), (5, 6, 128)]:
    stride = mlp_lib.sample_stride(shape, 2048)
    idx = np.arange(0, int(np.prod(shape)), stride)
    cols = set((idx % shape[-1]).tolist())
    rows = set((idx // shape[-1]).tolist())
    assert cols == set(range(shape[-1])), shape
    assert rows == set(range(int(np.prod(shape[:-1])))), shape
    assert len(idx) <= 2048 * 1.01 + 1


def test_output_clip_bounds_the_step_of_an_outlier_element():
  """An element whose gradient is always zero among large ones (outside the
  normaliser's subsample) has huge normalised rsqrt features; the clipped
  outputs bound its step, unclipped it explodes."""
  g = jax.random.normal(jax.random.PRNGKey(1), (64, 64)).at[3, 5].set(0.0)
  params = {"w": jnp.zeros((64, 64))}
  steps = {}
  for clip in (10.0, 0.0):
    rule = lopt.rules.get("mlp", output_clip=clip)
    theta = rule.init_meta_params(jax.random.PRNGKey(0))
    theta = dict(theta, out={"w": jnp.ones_like(theta["out"]["w"]),
                             "b": theta["out"]["b"]})
    state = rule.init(theta, params, 10)
    for _ in range(3):
      upd, state = rule.update(theta, {"w": g}, state, params)
    steps[clip] = float(jnp.max(jnp.abs(upd["w"])))
  rule = lopt.rules.get("mlp")
  bound = float(jnp.exp(theta["log_step_scale"])) * 10.0 * np.exp(
      rule.exp_mult * 10.0)
  assert steps[10.0] <= bound * (1 + 1e-5)
  assert steps[0.0] > 2 * bound            # the clip is what bounds it
  with pytest.raises(ValueError, match="output_clip"):
    lopt.rules.get("mlp", output_clip=-1.0)


@pytest.mark.parametrize("name", ["mlp", "velo"])
def test_learned_schedule_scales_the_step_by_exp_of_time_features(name):
  rule = lopt.rules.get(name, learned_schedule=True)
  plain = lopt.rules.get(name, learned_schedule=False)
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  assert theta["schedule"].shape == (len(rule.timescales),)
  assert not float(jnp.abs(theta["schedule"]).max())   # starts flat
  params = _params()
  theta_plain = {k: v for k, v in theta.items() if k != "schedule"}
  steps = 4
  u_plain = _run(plain, theta_plain, params, steps)[0]
  # Zero schedule: exactly the rule without it.
  u0 = _run(rule, theta, params, steps)[0]
  for a, b in zip(jax.tree.leaves(u0), jax.tree.leaves(u_plain)):
    np.testing.assert_array_equal(a, b)
  # Schedule w: the update is multiplied by exp(sum_s w_s tanh(frac / s)),
  # frac = step / num_steps (one update from the same state at step 3 of 10).
  w = jnp.asarray([0.3, -0.7, 0.2, -1.1, 0.5])
  g = _grads(params)
  st = rule.init(theta, params, 10)._replace(step=jnp.asarray(3, jnp.int32))
  loss = jnp.float32(1.5)
  u = rule.update(dict(theta, schedule=w), g, st, params, loss)[0]
  u_ref = rule.update(theta, g, st, params, loss)[0]
  factor = float(np.exp(sum(float(wi) * np.tanh(0.3 / s)
                            for wi, s in zip(w, rule.timescales))))
  for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref)):
    np.testing.assert_allclose(a, factor * b, rtol=1e-5, atol=1e-12)


def test_loss_features_start_as_the_rule_without_them():
  rule = lopt.rules.get("mlp", loss_features=True)
  plain = lopt.rules.get("mlp")
  assert rule.uses_loss and not plain.uses_loss
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  assert theta["layers"][0]["w_loss"].shape == (3, rule.hidden_sizes[0])
  assert not float(jnp.abs(theta["loss_scale"]).max())
  plain_theta = {k: v for k, v in theta.items() if k != "loss_scale"}
  plain_theta["layers"] = [{k: v for k, v in layer.items() if k != "w_loss"}
                           for layer in theta["layers"]]
  params = _params()
  u_lf, st_lf, _ = _run(rule, theta, params, 4)
  u_plain = _run(plain, plain_theta, params, 4)[0]
  for a, b in zip(jax.tree.leaves(u_lf), jax.tree.leaves(u_plain)):
    np.testing.assert_array_equal(a, b)
  assert st_lf.loss_ema.shape == (3,)
  # loss_scale w: the update is multiplied by exp(w . tanh((l - ema) / |ema_3|))
  # (one update from the same state).
  w = jnp.asarray([0.4, -0.9, 1.3])
  g = _grads(params)
  loss = jnp.float32(0.5)
  u = rule.update(dict(theta, loss_scale=w), g, st_lf, params, loss)[0]
  u_ref = rule.update(theta, g, st_lf, params, loss)[0]
  _, feats = lopt.rules.common.loss_features(loss, st_lf.loss_ema, st_lf.step)
  assert float(jnp.abs(feats).max()) > 0.1       # the loss dropped: informative
  factor = float(np.exp(np.dot(np.asarray(w), np.asarray(feats))))
  for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref)):
    np.testing.assert_allclose(a, factor * b, rtol=1e-5, atol=1e-12)


def test_loss_features_need_the_loss_and_skip_nonfinite_ones():
  rule = lopt.rules.get("mlp", loss_features=True)
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  theta["layers"][0]["w_loss"] = jnp.ones_like(theta["layers"][0]["w_loss"])
  params = {"w": jnp.ones((3, 2))}
  opt = lopt.as_optax(rule, theta, 10)
  with pytest.raises(ValueError, match="value=loss"):
    opt.update(params, opt.init(params), params)
  state = rule.init(theta, params, 10)
  _, state = rule.update(theta, params, state, params, jnp.float32(1.0))
  u, state2 = rule.update(theta, params, state, params, jnp.float32(jnp.nan))
  np.testing.assert_array_equal(state2.loss_ema, state.loss_ema)
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(u))


def test_files_without_loss_features_load_without_them():
  # The shipped files were written before the option existed: their
  # rule_config has no "loss_features" key (lopt.rules.config_added).
  loaded = lopt.read("mlp_digits")
  assert "loss_features" not in loaded.header["rule_config"]
  assert loaded.rule.loss_features is False and not loaded.rule.uses_loss
  assert "loss_scale" not in loaded.theta


@pytest.mark.parametrize("norm_sample", [2048, 16])
def test_feature_subset_is_the_full_rule_with_those_weights_zeroed(
    norm_sample):
  """``features="lean"`` computes exactly what the 23-feature rule computes
  when the first-layer rows and skip weights of the dropped features are
  zero (on small tensors read whole and on sampled ones)."""
  lean = lopt.rules.get("mlp", features="lean", norm_sample=norm_sample)
  full = lopt.rules.get("mlp", features="all", norm_sample=norm_sample)
  assert lean.features == mlp_lib.LEAN_FEATURES
  assert len(lean.features) == 17 and full.features == mlp_lib.FEATURE_NAMES
  theta = lean.init_meta_params(jax.random.PRNGKey(3))
  keep = np.asarray([n in lean.features for n in mlp_lib.FEATURE_NAMES])
  w0 = np.zeros((mlp_lib.NUM_FEATURES, lean.hidden_sizes[0]), np.float32)
  w0[keep] = np.asarray(theta["layers"][0]["w"])
  skip = np.zeros((mlp_lib.NUM_FEATURES,), np.float32)
  skip[keep] = np.asarray(theta["skip"])
  theta_full = dict(theta, skip=jnp.asarray(skip),
                    layers=[dict(theta["layers"][0], w=jnp.asarray(w0))])
  # The dropped weights are not in the lean theta at all.
  assert theta["layers"][0]["w"].shape == (17, lean.hidden_sizes[0])
  assert theta["skip"].shape == (17,)
  params = _params()
  u_lean, st_lean, p_lean = _run(lean, theta, params, 4)
  u_full, st_full, p_full = _run(full, theta_full, params, 4)
  for a, b in zip(jax.tree.leaves(u_lean), jax.tree.leaves(u_full)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-10)
  assert any(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(u_lean))
  # The state (accumulators) does not depend on the features read.
  for a, b in zip(jax.tree.leaves(st_lean), jax.tree.leaves(st_full)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_feature_subsets_round_trip_and_bad_ones_fail_clearly():
  names = ["m1_rsqrt_v", "g", "rms"]            # any order: stored in canon.
  rule = lopt.rules.get("mlp", features=names)
  assert rule.features == ("g", "rms", "m1_rsqrt_v")
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  # The skip path starts as -m1 rsqrt(v), wherever that feature sits.
  np.testing.assert_array_equal(theta["skip"], [0.0, 0.0, -1.0])
  again = lopt.rules.get("mlp", **rule.config())
  assert again == rule and again.config()["features"] == list(rule.features)
  # The default (since session 17) is the lean preset; "all" reads all 23.
  assert lopt.rules.get("mlp", features="lean") == lopt.rules.get("mlp")
  assert lopt.rules.get("mlp").features == mlp_lib.LEAN_FEATURES
  assert (lopt.rules.get("mlp", features="all").features
          == mlp_lib.FEATURE_NAMES)
  with pytest.raises(ValueError, match="Unknown feature preset 'tiny'"):
    lopt.rules.get("mlp", features="tiny")
  with pytest.raises(ValueError, match=r"Unknown feature\(s\) \['vhat4'\]"):
    lopt.rules.get("mlp", features=["g", "vhat4", "m1_rsqrt_v"])
  with pytest.raises(ValueError, match="twice"):
    lopt.rules.get("mlp", features=["g", "g", "m1_rsqrt_v"])
  with pytest.raises(ValueError, match="must include 'm1_rsqrt_v'"):
    lopt.rules.get("mlp", features=["g", "p"])


def test_files_without_features_load_with_all_23():
  loaded = lopt.read("mlp_digits")
  assert "features" not in loaded.header["rule_config"]
  assert loaded.rule.features == mlp_lib.FEATURE_NAMES
  assert loaded.theta["skip"].shape == (mlp_lib.NUM_FEATURES,)
