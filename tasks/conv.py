"""A small convolutional classifier on 8x8 images (sklearn digits).

``h_0 = x`` reshaped to ``[B, side, side, 1]`` (NHWC);
``h_{l+1} = act(conv3x3(h_l, K_l, stride_l) + b_l)`` with stride 1 for the
first layer and 2 afterwards (SAME padding); logits ``= mean_{hw}(h_L) W +
b``; loss = mean softmax cross-entropy, ``loss_scale = log(num_classes)``.
Kernels are ``[3, 3, C_in, C_out]`` (HWIO) with ``fan_in = 9 C_in``,
initialised ``N(0, s^2 / fan_in)``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from lopt.base import ParamMeta
from lopt.tasks import common, datasets
from lopt.tasks.base import PyTree, Task, check_split

Array = jax.Array
Scalar = Union[float, int, Array]
_KSIZE = 3


def _conv3x3(h: Array, w: Array, stride: int) -> Array:
  """SAME-padded ``stride``-strided convolution (NHWC input, HWIO kernel) as
  one matmul over im2col patches; equals ``lax.conv_general_dilated`` but
  runs several times faster on CPU inside ``lax.scan`` for these tiny
  images."""
  kh, kw, c_in, c_out = w.shape
  _, height, width, _ = h.shape
  out_h, out_w = -(-height // stride), -(-width // stride)
  pad_h = max((out_h - 1) * stride + kh - height, 0)
  pad_w = max((out_w - 1) * stride + kw - width, 0)
  hp = jnp.pad(h, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                   (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  patches = jnp.concatenate(
      [hp[:, dy:dy + stride * (out_h - 1) + 1:stride,
          dx:dx + stride * (out_w - 1) + 1:stride, :]
       for dy in range(kh) for dx in range(kw)], axis=-1)
  return patches @ w.reshape(kh * kw * c_in, c_out)


class ConvClassifier(Task):
  """Conv net ``channels[0] -> ... -> channels[-1] -> pool -> dense``."""

  def __init__(self, dataset: Union[str, datasets.Dataset] = "digits",
               channels: Sequence[int] = (16, 32), batch_size: int = 32,
               activation: Union[str, Scalar] = "relu",
               init_scale: Scalar = 1.0, name: Optional[str] = None):
    self.channels = tuple(int(c) for c in channels)
    if not self.channels or any(c < 1 for c in self.channels):
      raise ValueError(f"channels must be positive, got {channels}.")
    if int(batch_size) < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    self._ds = datasets.resolve(dataset)
    self.dataset = self._ds.name
    self.batch_size = int(batch_size)
    (dim,) = self._ds.input_shape
    side = int(round(math.sqrt(dim)))
    if side * side != dim:
      raise ValueError(f"ConvClassifier needs square single-channel images; "
                       f"dataset {dataset!r} has {dim} features.")
    self.side = side
    self._data = datasets.device(self._ds)
    self.num_classes = self._ds.num_classes
    self.activation = common.activation_index(activation)
    self.init_scale = init_scale
    self.loss_scale = math.log(self.num_classes)
    self.name = name or f"{self.dataset}_conv"

  def data_fingerprint(self) -> str:
    return self._ds.fingerprint

  @property
  def param_meta(self) -> PyTree:
    meta, c_in = {}, 1
    for i, c in enumerate(self.channels):
      kind = "input" if i == 0 else "hidden"
      meta[f"conv_{i}"] = {"w": ParamMeta(kind, _KSIZE * _KSIZE * c_in, c),
                           "b": ParamMeta("vector", 1, c)}
      c_in = c
    meta["readout"] = {"w": ParamMeta("output", c_in, self.num_classes),
                       "b": ParamMeta("vector", 1, self.num_classes)}
    return meta

  def init(self, key: Array) -> PyTree:
    metas = sorted(self.param_meta.items())
    shapes = [((_KSIZE, _KSIZE, m["w"].fan_in // (_KSIZE * _KSIZE),
                m["w"].fan_out) if layer.startswith("conv")
               else (m["w"].fan_in, m["w"].fan_out)) for layer, m in metas]
    zs = common.normals(key, shapes)
    return {layer: {"w": z * (self.init_scale / math.sqrt(m["w"].fan_in)),
                    "b": jnp.zeros((m["w"].fan_out,), jnp.float32)}
            for z, (layer, m) in zip(zs, metas)}

  def sample_batch(self, key: Array, split: str = "train") -> PyTree:
    check_split(split)
    return datasets.sample(key, self._ds, self._data[split],
                           self.batch_size)

  def logits(self, params: PyTree, x: Array) -> Array:
    h = x.reshape(x.shape[0], self.side, self.side, 1)
    for i in range(len(self.channels)):
      p = params[f"conv_{i}"]
      stride = 1 if i == 0 else 2
      h = _conv3x3(h, p["w"], stride)
      h = common.apply_activation(h + p["b"], self.activation)
    h = jnp.mean(h, axis=(1, 2))
    return h @ params["readout"]["w"] + params["readout"]["b"]

  def loss(self, params: PyTree, batch: PyTree, key: Array = None) -> Array:
    common.check_batch(batch, {"x": self._ds.input_shape, "y": ()}, self.name)
    return common.softmax_cross_entropy(self.logits(params, batch["x"]),
                                        batch["y"])

  def metrics(self, params, batch, key=None):
    common.check_batch(batch, {"x": self._ds.input_shape, "y": ()}, self.name)
    logits = self.logits(params, batch["x"])
    return {"loss": common.softmax_cross_entropy(logits, batch["y"]),
            "accuracy": common.accuracy(logits, batch["y"])}


class ConvClassifierFamily(common.ScaleActivationFamily):
  """Conv classifiers of one shape class; samples ``init_scale``
  (log-uniform in [0.5, 2]) and ``activation``."""

  def __init__(self, dataset: Union[str, datasets.Dataset] = "digits",
               channels: Sequence[int] = (16, 32), batch_size: int = 32,
               activations: Sequence[Union[str, int]] = common.ACTIVATIONS,
               init_scale_range: tuple[float, float] = (0.5, 2.0),
               name: Optional[str] = None):
    self._dataset = datasets.resolve(dataset)
    self.dataset, self.channels = self._dataset.name, tuple(channels)
    self.batch_size = int(batch_size)
    self.activations = tuple(common.activation_index(a) for a in activations)
    self.init_scale_range = tuple(float(v) for v in init_scale_range)
    self.name = name or f"{self.dataset}_conv"
    ConvClassifier(self._dataset, channels, batch_size)  # validate early

  def make_task(self, activation, init_scale) -> ConvClassifier:
    return ConvClassifier(self._dataset, self.channels, self.batch_size,
                          activation=activation, init_scale=init_scale,
                          name=self.name)
