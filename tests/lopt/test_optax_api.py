"""Learned optimizers inside ordinary optax training loops."""

import jax
import jax.numpy as jnp
import optax
import pytest

import lopt


def _problem():
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (128, 8))
  w_true = jax.random.normal(kw, (8, 1))
  y = jnp.tanh(x @ w_true)

  def init(key):
    k1, k2 = jax.random.split(key)
    return {"l1": {"w": jax.random.normal(k1, (8, 16)) * 0.3,
                   "b": jnp.zeros(16)},
            "l2": {"w": jax.random.normal(k2, (16, 1)) * 0.3,
                   "b": jnp.zeros(1)}}

  def loss_fn(p):
    h = jax.nn.relu(x @ p["l1"]["w"] + p["l1"]["b"])
    return jnp.mean((h @ p["l2"]["w"] + p["l2"]["b"] - y) ** 2)

  return init(jax.random.PRNGKey(1)), loss_fn


@pytest.mark.parametrize("name", lopt.rules.names())
def test_plain_optax_loop_reduces_loss(name):
  params, loss_fn = _problem()
  rule = lopt.rules.get(name)
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  lr_boost = {"mlp", "mu_mlp", "velo", "mu_velo"}
  if name in lr_boost:  # default step scale 1e-3 is slow for 60 steps
    theta["log_step_scale"] = jnp.log(1e-2)
  opt = optax.chain(optax.clip_by_global_norm(10.0),
                    lopt.as_optax(rule, theta, num_steps=60))
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state, loss

  first = loss_fn(params)
  for _ in range(60):
    params, state, _ = step(params, state)
  assert float(loss_fn(params)) < 0.8 * float(first)


def test_inside_lax_scan():
  params, loss_fn = _problem()
  rule = lopt.rules.get("mlp")
  theta = rule.init_meta_params(jax.random.PRNGKey(0))
  theta["log_step_scale"] = jnp.log(1e-2)
  opt = lopt.as_optax(rule, theta, num_steps=100)

  def body(carry, _):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params, value=loss)
    return (optax.apply_updates(params, updates), state), loss

  (_, _), losses = jax.jit(lambda p: jax.lax.scan(
      body, (p, opt.init(p)), None, length=100))(params)
  assert bool(jnp.all(jnp.isfinite(losses)))
  assert float(losses[-10:].mean()) < 0.5 * float(losses[0])


def test_needs_params():
  rule = lopt.rules.get("mlp")
  opt = lopt.as_optax(rule, rule.init_meta_params(jax.random.PRNGKey(0)), 10)
  p = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="params"):
    opt.update(p, opt.init(p))
  with pytest.raises(ValueError, match="num_steps"):
    lopt.as_optax(rule, None, 0)
