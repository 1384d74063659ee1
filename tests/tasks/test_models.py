"""Model details: im2col conv equals lax.conv, the LM is causal, muP
metadata and initialisation."""

import jax
import jax.numpy as jnp
import numpy as np

import lopt.tasks as tasks
from lopt.tasks.conv import _conv3x3


def test_im2col_conv_matches_lax_conv():
  cases = [(8, 1, 4, 1), (8, 4, 6, 2), (7, 3, 5, 2)]  # size, c_in, c_out, s
  rng = np.random.default_rng(0)
  xs = [rng.normal(size=(2, n, n, c)).astype(np.float32)
        for n, c, _, _ in cases]
  ws = [rng.normal(size=(3, 3, c, o)).astype(np.float32)
        for _, c, o, _ in cases]

  @jax.jit
  def both(xs, ws):
    return [(jax.lax.conv_general_dilated(
        x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
             _conv3x3(x, w, s)) for (_, _, _, s), x, w in zip(cases, xs, ws)]

  for ref, ours in both(xs, ws):
    assert ref.shape == ours.shape
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_char_lm_is_causal():
  task = tasks.get("mup_transformer_w32")

  @jax.jit
  def logits_pair(key):
    params = task.init(key)
    tokens = task.sample_batch(key, "train")["tokens"][:, :-1]
    changed = tokens.at[:, 20:].set((tokens[:, 20:] + 1) % 128)
    return task.logits(params, tokens), task.logits(params, changed)

  a, b = logits_pair(jax.random.PRNGKey(0))
  np.testing.assert_allclose(a[:, :20], b[:, :20], atol=1e-5)
  assert not np.allclose(a[:, 20:], b[:, 20:])


def test_mup_metadata_and_output_init():
  mlp = tasks.get("mup_mlp_w256")
  meta = mlp.param_meta
  assert (meta["linear_0"]["w"].kind, meta["linear_0"]["w"].fan_in) == (
      "input", 64)
  assert (meta["linear_1"]["w"].kind, meta["linear_1"]["w"].fan_in) == (
      "hidden", 256)
  assert (meta["linear_2"]["w"].kind, meta["linear_2"]["w"].fan_in) == (
      "output", 256)
  assert meta["linear_2"]["b"].kind == "vector"
  std = tasks.MLPClassifier("digits", (256, 256), parametrization="standard")
  p_mup, p_std = jax.jit(lambda k: (mlp.init(k), std.init(k)))(
      jax.random.PRNGKey(0))
  # muP readout: N(0, 1) weights times a 1/fan_in forward multiplier;
  # standard: N(0, 1/fan_in) weights.
  assert abs(float(jnp.std(p_mup["linear_2"]["w"])) - 1.0) < 0.1
  assert abs(float(jnp.std(p_std["linear_2"]["w"])) - 1 / 16) < 0.01
  assert abs(float(jnp.std(p_mup["linear_1"]["w"])) - 1 / 16) < 0.01
  lm = tasks.get("mup_transformer_w128").param_meta
  assert lm["embed"].kind == "input" and lm["readout"]["w"].kind == "output"
  assert (lm["block_0"]["qkv"].kind, lm["block_0"]["qkv"].fan_in) == (
      "hidden", 128)
  assert lm["block_1"]["ln1"]["scale"].kind == "vector"
