"""Task families: configs sampled under vmap, batches of tasks of one shape
class trained under vmap, and traced configs agreeing with concrete ones."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt.tasks as tasks

NO_OPT = {"xla_backend_optimization_level": 0}  # tiny programs: compile fast


def _compile(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=NO_OPT)


def test_every_family_samples_configs_under_vmap():
  fams = {n: tasks.get_family(n) for n in tasks.list_families()}

  def sample_all(key):
    keys = jax.random.split(key, 3)
    return {n: jax.vmap(f.sample)(keys) for n, f in fams.items()}

  sample = _compile(sample_all, jax.random.PRNGKey(0))
  out, again = sample(jax.random.PRNGKey(0)), sample(jax.random.PRNGKey(0))
  for name, fam in fams.items():
    default = fam.default_config()
    assert jax.tree.structure(out[name]) == jax.tree.structure(default), name
    for leaf, d, a in zip(jax.tree.leaves(out[name]), jax.tree.leaves(default),
                          jax.tree.leaves(again[name])):
      assert leaf.shape == (3,) and leaf.dtype == jnp.asarray(d).dtype, name
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(a))
    # init_scale is drawn per task, so the 3 configs differ.
    scales = np.asarray(out[name]["init_scale"])
    assert len(set(scales.tolist())) == 3, name
    assert (scales >= 0.5).all() and (scales <= 2.0).all(), name


def _train(family, config, key, steps=8):
  task = family.task(config)
  opt = optax.adam(1e-2)
  k_init, k_batch, k_steps = jax.random.split(key, 3)
  params = task.init(k_init)
  batch = task.sample_batch(k_batch, "train")

  def step(carry, k):
    p, s = carry
    g = jax.grad(task.loss)(p, task.sample_batch(k, "train"), k)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (final, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                               jax.random.split(k_steps, steps))
  return {"before": task.loss(params, batch, k_batch),
          "after": task.loss(final, batch, k_batch),
          "normalized": task.normalize_loss(task.loss(params, batch, k_batch))}


@pytest.mark.parametrize("name", ["digits_mlp", "quadratic_noisy",
                                  "linear_regression"])
def test_batch_of_tasks_trains_under_vmap(name):
  fam = tasks.get_family(name)
  n = 4
  configs = jax.vmap(fam.sample)(jax.random.split(jax.random.PRNGKey(1), n))
  keys = jax.random.split(jax.random.PRNGKey(2), n)
  batched = _compile(jax.vmap(lambda c, k: _train(fam, c, k)), configs, keys)
  out = jax.tree.map(np.asarray, batched(configs, keys))
  assert all(np.isfinite(v).all() for v in out.values())
  assert (out["after"] < out["before"]).all(), out
  assert len(set(out["before"].tolist())) == n  # different tasks
  assert ((out["normalized"] > 0.05) & (out["normalized"] < 10)).all()
  if name == tasks.DEFAULT_META_TRAIN_FAMILY:
    # A traced config (lax.switch over activations, traced init scale) gives
    # the same numbers as the concrete config of one task.
    i = int(np.argmax(np.asarray(configs["activation"]) != 0))
    config_i = jax.tree.map(lambda x: x[i], configs)
    single = _compile(lambda k: _train(fam, config_i, k), keys[i])
    ref = jax.tree.map(np.asarray, single(keys[i]))
    for k in ref:
      np.testing.assert_allclose(out[k][i], ref[k], rtol=2e-4, atol=1e-5)


def test_label_noise_changes_only_train_labels():
  fam = tasks.get_family("digits_mlp_noisy")
  config = dict(fam.default_config(), label_noise=jnp.float32(1.0))
  noisy, clean = fam.task(config), tasks.get("digits_mlp")
  key = jax.random.PRNGKey(3)
  tr_noisy = noisy.sample_batch(key, "train")
  tr_clean = clean.sample_batch(key, "train")
  np.testing.assert_array_equal(tr_noisy["x"], tr_clean["x"])
  assert (tr_noisy["y"] != tr_clean["y"]).any()
  for split in ("valid", "test"):
    np.testing.assert_array_equal(noisy.sample_batch(key, split)["y"],
                                  clean.sample_batch(key, split)["y"])


def test_every_family_builds_tasks_from_traced_configs():
  """Trace-only check (no compile): vmapped init + loss + grad over sampled
  configs for every family."""
  for name in tasks.list_families():
    fam = tasks.get_family(name)

    def init_loss(config, key, fam=fam):
      task = fam.task(config)
      params = task.init(key)
      batch = task.sample_batch(key, "train")
      loss, grads = jax.value_and_grad(task.loss)(params, batch, key)
      return task.normalize_loss(loss), grads

    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    configs = jax.eval_shape(jax.vmap(fam.sample), keys)
    loss, grads = jax.eval_shape(jax.vmap(init_loss), configs, keys)
    assert loss.shape == (2,), name
    params = jax.eval_shape(
        lambda k, fam=fam: fam.task(fam.default_config()).init(k), keys[0])
    assert jax.tree.map(lambda g: g.shape[1:], grads) == jax.tree.map(
        lambda p: p.shape, params), name
