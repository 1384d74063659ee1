"""The README's "Use a learned optimizer" snippet runs as written on a flax
model and trains it."""

import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _usage_blocks() -> list[str]:
  """The Python code blocks of the README's "Use a learned optimizer"."""
  text = README.read_text()
  section = text.split("## Use a learned optimizer", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def _usage_snippet() -> list[str]:
  block = _usage_blocks()[0]
  return [line.split("#")[0].rstrip() for line in block.splitlines()
          if line.strip()]


def test_readme_snippet_trains_a_flax_model():
  lines = _usage_snippet()
  assert lines[0] == "import lopt"
  setup = [l for l in lines if "opt.update(" not in l]
  (step,) = [l for l in lines if "opt.update(" in l]

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(1)(nn.tanh(nn.Dense(32)(x)))

  model = MLP()
  x = jax.random.normal(jax.random.PRNGKey(0), (128, 8))
  y = jnp.sin(x @ jnp.arange(1.0, 9.0) / 8.0)[:, None]
  params = model.init(jax.random.PRNGKey(1), x)

  def loss_fn(p):
    return jnp.mean((model.apply(p, x) - y) ** 2)

  ns = {"params": params}
  exec("\n".join(setup), ns)                    # import, load, init
  step_code = compile(step, "README", "exec")
  losses = []
  for _ in range(50):
    loss, grads = jax.value_and_grad(loss_fn)(ns["params"])
    ns.update(grads=grads, loss=loss)
    exec(step_code, ns)                         # updates, state = opt.update(...)
    ns["params"] = optax.apply_updates(ns["params"], ns["updates"])
    losses.append(float(loss))
  assert all(jnp.isfinite(jnp.asarray(losses)))
  assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_readme_jitted_train_step():
  (code,) = [b for b in _usage_blocks() if "@jax.jit" in b]

  x = jax.random.normal(jax.random.PRNGKey(0), (64, 4))
  y = x @ jnp.array([1.0, -2.0, 0.5, 3.0])
  params = {"w": jnp.zeros(4), "b": jnp.zeros(())}

  def loss_fn(p, batch):
    bx, by = batch
    return jnp.mean((bx @ p["w"] + p["b"] - by) ** 2)

  ns = {"params": params, "loss_fn": loss_fn}
  exec(code, ns)
  params, state, losses = ns["params"], ns["state"], []
  for _ in range(100):
    params, state, loss = ns["train_step"](params, state, (x, y))
    losses.append(float(loss))
  assert all(jnp.isfinite(jnp.asarray(losses)))
  assert losses[-1] < 0.5 * losses[0], losses[::20]
