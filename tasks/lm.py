"""A small character-level transformer language model on the running
Python's own standard-library sources (:func:`lopt.tasks.datasets.stdlib_text`,
the default) or on generated English-like text
(:func:`lopt.tasks.datasets.synthetic_text`, ``text="synthetic"``).

Pre-LayerNorm decoder: ``h = E[tokens] + P``; for each block
``h += Attn(LN(h))``, ``h += MLP(LN(h))`` with causal multi-head attention
(logit scale ``1/sqrt(d_head)``, or ``1/d_head`` under muP) and a
``d -> 4d -> d`` MLP; logits ``= m * LN(h) W_out + b`` (``m = 1/d`` under
muP). Loss: mean next-character softmax cross-entropy over the ``T``
positions of each window, ``loss_scale = log(vocab)`` (uniform prediction).
A batch is ``{"tokens": int32 [B, T + 1]}`` of windows starting at uniform
random offsets inside one split's contiguous region of the text.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from lopt.base import ParamMeta
from lopt.tasks import common, datasets, mup
from lopt.tasks.base import PyTree, Task, check_split

Array = jax.Array
Scalar = Union[float, int, Array]


def _layer_norm(x: Array, p: PyTree) -> Array:
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


class CharTransformerLM(Task):
  """Character-level transformer LM (see module docstring).

  Args:
    d_model: residual width; num_heads: attention heads (must divide
      d_model); num_layers: blocks; seq_len: context ``T``; batch_size: ``B``.
    activation: MLP activation (name or index, may be traced).
    init_scale: multiplies every initial weight (may be traced).
    parametrization: ``"standard"`` or ``"mup"``.
    text: the corpus, ``"stdlib"`` or ``"synthetic"``
      (:data:`lopt.tasks.datasets.TEXTS`).
  """

  def __init__(self, d_model: int = 64, num_heads: int = 4,
               num_layers: int = 2, seq_len: int = 32, batch_size: int = 16,
               activation: Union[str, Scalar] = "gelu",
               init_scale: Scalar = 1.0, parametrization: str = "standard",
               name: Optional[str] = None, text: str = "stdlib"):
    for arg, v in (("d_model", d_model), ("num_heads", num_heads),
                   ("num_layers", num_layers), ("seq_len", seq_len),
                   ("batch_size", batch_size)):
      if int(v) < 1:
        raise ValueError(f"{arg} must be >= 1, got {v}.")
    if d_model % num_heads:
      raise ValueError(f"num_heads={num_heads} must divide d_model="
                       f"{d_model}.")
    self.d_model, self.num_heads = int(d_model), int(num_heads)
    self.num_layers, self.seq_len = int(num_layers), int(seq_len)
    self.batch_size = int(batch_size)
    self.vocab_size = datasets.TEXT_VOCAB_SIZE
    self.parametrization = mup.check_parametrization(parametrization)
    self.activation = common.activation_index(activation)
    self.init_scale = init_scale
    if text not in datasets.TEXTS:
      raise ValueError(f"Unknown text corpus {text!r}; known: "
                       f"{datasets.TEXTS}.")
    self.dataset = f"{text}_text"
    self._text_name = text
    self._text = datasets.device_text(text)
    for split, t in self._text.items():
      if t.shape[0] < self.seq_len + 2:
        raise ValueError(f"The {split} text split has {t.shape[0]} "
                         f"characters, too few for seq_len={seq_len}.")
    self.loss_scale = math.log(self.vocab_size)
    self.name = name or "char_lm"

  def data_fingerprint(self) -> str:
    return datasets.text_fingerprint(self._text_name)

  @property
  def param_meta(self) -> PyTree:
    d, v, t = self.d_model, self.vocab_size, self.seq_len
    vec = lambda n: ParamMeta("vector", 1, n)  # noqa: E731
    ln = {"scale": vec(d), "bias": vec(d)}
    block = {"ln1": ln, "ln2": ln,
             "qkv": ParamMeta("hidden", d, 3 * d),
             "proj": ParamMeta("hidden", d, d),
             "mlp_in": ParamMeta("hidden", d, 4 * d), "mlp_in_b": vec(4 * d),
             "mlp_out": ParamMeta("hidden", 4 * d, d), "mlp_out_b": vec(d)}
    meta = {f"block_{i}": dict(block) for i in range(self.num_layers)}
    meta.update({"embed": ParamMeta("input", v, d),
                 "pos": ParamMeta("input", t, d), "ln_f": ln,
                 "readout": {"w": ParamMeta("output", d, v), "b": vec(v)}})
    return meta

  def init(self, key: Array) -> PyTree:
    """Weights ``N(0, std^2)`` with ``std`` from :func:`mup.init_std`
    (embeddings: ``std = init_scale``), LayerNorm scales 1, biases 0."""
    s, pz = self.init_scale, self.parametrization
    paths, treedef = jax.tree_util.tree_flatten_with_path(self.param_meta)
    weights = [i for i, (_, m) in enumerate(paths) if m.kind != "vector"]
    zs = common.normals(key, [(paths[i][1].fan_in, paths[i][1].fan_out)
                              for i in weights])
    out = []
    for path, m in paths:
      if m.kind == "vector":  # LayerNorm scales start at 1, biases at 0
        fill = 1.0 if getattr(path[-1], "key", "") == "scale" else 0.0
        out.append(jnp.full((m.fan_out,), fill, jnp.float32))
      else:
        z = zs[weights.index(len(out))]
        std = s if m.kind == "input" else mup.init_std(m, s, pz)
        out.append(z * std)
    return jax.tree_util.tree_unflatten(treedef, out)

  def sample_batch(self, key: Array, split: str = "train") -> PyTree:
    check_split(split)
    text = self._text[split]
    start = jax.random.randint(key, (self.batch_size,), 0,
                               text.shape[0] - self.seq_len)
    idx = start[:, None] + jnp.arange(self.seq_len + 1)[None, :]
    return {"tokens": text[idx]}

  def logits(self, params: PyTree, tokens: Array) -> Array:
    b, t = tokens.shape
    d, nh = self.d_model, self.num_heads
    dh = d // nh
    scale = mup.attention_scale(dh, self.parametrization)
    h = params["embed"][tokens] + params["pos"][:t]
    mask = jnp.tril(jnp.ones((t, t), bool))
    for i in range(self.num_layers):
      p = params[f"block_{i}"]
      x = _layer_norm(h, p["ln1"])
      q, k, v = jnp.split(x @ p["qkv"], 3, axis=-1)
      q, k, v = (a.reshape(b, t, nh, dh) for a in (q, k, v))
      att = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
      att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
      o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d)
      h = h + o @ p["proj"]
      x = _layer_norm(h, p["ln2"])
      x = common.apply_activation(x @ p["mlp_in"] + p["mlp_in_b"],
                                  self.activation)
      h = h + x @ p["mlp_out"] + p["mlp_out_b"]
    h = _layer_norm(h, params["ln_f"])
    mult = mup.output_multiplier(d, self.parametrization)
    return (h @ params["readout"]["w"]) * mult + params["readout"]["b"]

  def _check(self, batch):
    common.check_batch(batch, {"tokens": (self.seq_len + 1,)}, self.name)

  def loss(self, params: PyTree, batch: PyTree, key: Array = None) -> Array:
    self._check(batch)
    tokens = batch["tokens"]
    logits = self.logits(params, tokens[:, :-1])
    return common.softmax_cross_entropy(logits, tokens[:, 1:])

  def metrics(self, params, batch, key=None):
    self._check(batch)
    tokens = batch["tokens"]
    logits = self.logits(params, tokens[:, :-1])
    return {"loss": common.softmax_cross_entropy(logits, tokens[:, 1:]),
            "accuracy": common.accuracy(logits, tokens[:, 1:])}


class CharLMFamily(common.ScaleActivationFamily):
  """Character LMs of one shape class; samples ``init_scale`` (log-uniform
  in [0.5, 2]) and the MLP ``activation``."""

  def __init__(self, d_model: int = 64, num_heads: int = 4,
               num_layers: int = 2, seq_len: int = 32, batch_size: int = 16,
               activations: Sequence[Union[str, int]] = ("gelu", "relu",
                                                         "silu"),
               init_scale_range: tuple[float, float] = (0.5, 2.0),
               parametrization: str = "standard",
               name: Optional[str] = None, text: str = "stdlib"):
    self.kwargs = dict(d_model=d_model, num_heads=num_heads,
                       num_layers=num_layers, seq_len=seq_len,
                       batch_size=batch_size, parametrization=parametrization,
                       text=text)
    self.activations = tuple(common.activation_index(a) for a in activations)
    self.init_scale_range = tuple(float(v) for v in init_scale_range)
    self.name = name or "char_lm"
    CharTransformerLM(**self.kwargs)  # validate args early

  def make_task(self, activation, init_scale) -> CharTransformerLM:
    return CharTransformerLM(**self.kwargs, activation=activation,
                             init_scale=init_scale, name=self.name)
