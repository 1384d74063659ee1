"""Every registered task: init / loss / grad / a few Adam steps / determinism,
plus the registry's names, split constants and errors."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import lopt.tasks as tasks

STEPS = 6


@functools.lru_cache(maxsize=None)
def _run_fn(name):
  """One jitted function per task (compile time dominates this suite): init,
  loss and gradient on a fixed train batch, STEPS Adam steps on fresh train
  batches, the fixed batch's loss afterwards, and valid-split metrics."""
  task = tasks.get(name)
  opt = optax.adam(1e-2)

  def run(key):
    k_init, k_batch, k_steps = jax.random.split(key, 3)
    params = task.init(k_init)
    batch = task.sample_batch(k_batch, "train")

    def step(carry, k):
      p, s = carry
      l, g = jax.value_and_grad(task.loss)(p, task.sample_batch(k, "train"), k)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), (l, optax.tree.norm(g))

    (final, _), (train_losses, grad_norms) = jax.lax.scan(
        step, (params, opt.init(params)), jax.random.split(k_steps, STEPS))
    valid = task.sample_batch(k_batch, "valid")
    loss = task.loss(params, batch, k_batch)
    return {"params": params, "batch": batch, "loss": loss,
            "params_other_key": task.init(jax.random.fold_in(k_init, 1)),
            "grad_norms": grad_norms, "train_losses": train_losses,
            "after": task.loss(final, batch, k_batch),
            "metrics": task.metrics(final, valid, k_batch),
            "normalized": task.normalize_loss(loss)}

  # Compile once, without XLA's backend optimisations: the programs run for
  # a few milliseconds and compiling is most of this suite's time.
  compiled = jax.jit(run).lower(jax.random.PRNGKey(0)).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return task, compiled


def _finite(tree):
  # Host-side NumPy checks: eager jnp ops would compile once per leaf shape.
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", tasks.list_tasks())
def test_task_trains_and_is_deterministic(name):
  task, run = _run_fn(name)
  out = run(jax.random.PRNGKey(0))
  assert task.name == name
  # init -> loss: a finite float32 scalar; jax.grad gives finite, nonzero
  # gradients (their global norm at every Adam step).
  assert out["loss"].shape == () and out["loss"].dtype == jnp.float32
  assert _finite(out["loss"]) and _finite(out["grad_norms"])
  assert (np.asarray(out["grad_norms"]) > 0).all()
  for leaf in jax.tree.leaves(out["params"]):
    assert leaf.dtype == jnp.float32
  # A few Adam steps reduce the loss on fixed train batches.
  assert _finite(out["train_losses"])
  assert float(out["after"]) < float(out["loss"]), (
      name, float(out["loss"]), float(out["after"]))
  # Meta-loss normaliser puts the initial loss on a comparable scale.
  assert 0.05 < float(out["normalized"]) < 10.0, float(out["normalized"])
  assert "loss" in out["metrics"]
  if "accuracy" in out["metrics"]:
    assert 0.0 <= float(out["metrics"]["accuracy"]) <= 1.0
  # Same key -> same params and batches; another key -> different ones.
  again = run(jax.random.PRNGKey(0))
  for a, b in zip(jax.tree.leaves((out["params"], out["batch"])),
                  jax.tree.leaves((again["params"], again["batch"]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(out["params"]),
                             jax.tree.leaves(out["params_other_key"])))


@pytest.mark.parametrize("name", tasks.list_tasks())
def test_param_meta_matches_params(name):
  task = tasks.get(name)
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  meta = task.param_meta
  assert jax.tree.structure(meta) == jax.tree.structure(shapes)
  for m, s in zip(jax.tree.leaves(meta), jax.tree.leaves(shapes)):
    assert isinstance(m, lopt.ParamMeta)
    if len(s.shape) >= 2:
      assert m.kind in ("input", "hidden", "output")
      assert m.fan_in == math.prod(s.shape[:-1]) and m.fan_out == s.shape[-1]
    else:
      assert m.kind == "vector" and m.fan_out == max(1, math.prod(s.shape))


def test_registry_names_and_split():
  names, families = tasks.list_tasks(), tasks.list_families()
  assert set(families) <= set(names)
  assert tasks.DEFAULT_META_TRAIN_FAMILY in tasks.META_TRAIN_FAMILIES
  assert set(tasks.META_TRAIN_FAMILIES) <= set(families)
  assert set(tasks.HELDOUT_TASKS) <= set(names)
  assert not set(tasks.HELDOUT_TASKS) & set(tasks.META_TRAIN_FAMILIES)
  assert not set(tasks.FILE_TASKS) & set(names)
  assert set(tasks.FILE_TASKS) <= set(tasks.list_tasks(include_file_tasks=True))
  # Held-out = a dataset never meta-trained on, a new architecture, or
  # larger width / depth than any meta-training family on that dataset.
  meta = [tasks.get_family(f) for f in tasks.META_TRAIN_FAMILIES]
  meta_data = {getattr(f, "dataset", "synthetic") for f in meta}
  for name in tasks.HELDOUT_TASKS:
    t = tasks.get(name)
    if t.dataset not in meta_data or not isinstance(t, tasks.MLPClassifier):
      continue
    same = [f for f in meta if getattr(f, "dataset", None) == t.dataset]
    assert (max(t.hidden) > max(max(f.hidden) for f in same)
            or len(t.hidden) > max(len(f.hidden) for f in same)), name


def test_default_meta_train_family_is_digits_64_32_10_batch_32():
  fam = tasks.get_family(tasks.DEFAULT_META_TRAIN_FAMILY)
  task = fam.task(fam.default_config())
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  assert [tuple(s["w"].shape) for _, s in sorted(shapes.items())] == [
      (64, 32), (32, 10)]
  batch = task.sample_batch(jax.random.PRNGKey(0))
  assert batch["x"].shape == (32, 64) and batch["y"].shape == (32,)
  assert task.loss_scale == pytest.approx(math.log(10))


def test_unknown_names_raise_one_clear_error():
  with pytest.raises(KeyError) as e:
    tasks.get("no_such_task")
  msg = str(e.value)
  assert "no_such_task" in msg and "digits_mlp" in msg and "char_lm" in msg
  with pytest.raises(tasks.UnknownNameError, match="quadratic_noisy"):
    tasks.get_family("nope")


def test_bad_inputs_raise_clear_errors():
  task = tasks.get("digits_mlp")
  params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="split"):
    task.sample_batch(jax.random.PRNGKey(0), "training")
  with pytest.raises(ValueError, match=r"batch\['x'\] has shape"):
    task.loss(params, {"x": jnp.zeros((4, 13)), "y": jnp.zeros((4,), int)},
              None)
  with pytest.raises(ValueError, match="keys"):
    task.loss(params, {"inputs": jnp.zeros((4, 64))}, None)
  lm = tasks.get("char_lm")
  with pytest.raises(ValueError, match="tokens"):
    lm.loss(jax.eval_shape(lm.init, jax.random.PRNGKey(0)),
            {"tokens": jnp.zeros((2, 5), int)}, None)
  fam = tasks.get_family("digits_mlp")
  with pytest.raises(ValueError, match="keys"):
    fam.task({"init_scale": 1.0})
  with pytest.raises(ValueError, match="scalar"):
    fam.task(jax.vmap(fam.sample)(jax.random.split(jax.random.PRNGKey(0), 2)))
  with pytest.raises(ValueError, match="Unknown dataset"):
    tasks.MLPClassifier("imagenet")
  with pytest.raises(ValueError, match="activation"):
    tasks.MLPClassifier("digits", activation="swishy")
  with pytest.raises(ValueError, match="parametrization"):
    tasks.MLPClassifierFamily("digits", parametrization="ntk")


def test_tasks_first_built_inside_a_trace_hold_concrete_arrays(monkeypatch):
  """get() / dataset device arrays first requested under eval_shape must not
  tie the memoised task to that trace (later compiled calls still work)."""
  from lopt.tasks import datasets, registry

  names = ("quadratic", "iris_mlp")
  for n in names:
    monkeypatch.delitem(registry._TASK_CACHE, n, raising=False)
  datasets._device.cache_clear()
  jax.eval_shape(lambda k: [tasks.get(n).init(k) for n in names],
                 jax.random.PRNGKey(0))
  for n in names:
    task = tasks.get(n)
    run = jax.jit(lambda k, t=task: t.loss(t.init(k), t.sample_batch(k), k))
    compiled = run.lower(jax.random.PRNGKey(0)).compile()
    assert np.isfinite(float(compiled(jax.random.PRNGKey(0))))
