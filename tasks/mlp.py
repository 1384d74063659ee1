"""MLP classifiers and an MLP autoencoder on the offline datasets.

Classifier: ``h_0 = x``, ``h_{l+1} = act(h_l W_l + b_l)``, logits
``= m * (h_L W_out + b_out)`` with ``m = 1`` (standard) or ``1/fan_in``
(muP, see :mod:`lopt.tasks.mup`); loss = mean softmax cross-entropy,
``loss_scale = log(num_classes)`` (chance level).

Autoencoder: the same dense stack mapping ``x -> x_hat`` with loss
``mean((x_hat - x)^2)`` over batch and features and ``loss_scale =
mean(x_train^2)`` (the loss of predicting zeros).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from lopt.base import ParamMeta
from lopt.tasks import common, datasets, mup
from lopt.tasks.base import PyTree, Task, TaskFamily, check_split

Array = jax.Array
Scalar = Union[float, int, Array]


def _check_sizes(hidden: Sequence[int], batch_size: int) -> tuple[int, ...]:
  hidden = tuple(int(h) for h in hidden)
  if any(h < 1 for h in hidden):
    raise ValueError(f"hidden sizes must be positive, got {hidden}.")
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  return hidden


class _DenseStack:
  """Params / metadata / forward of a chain of dense layers (shared)."""

  def __init__(self, sizes: tuple[int, ...], parametrization: str):
    self.sizes = sizes
    self.parametrization = mup.check_parametrization(parametrization)
    self.metas = mup.dense_metas(sizes)

  def init(self, key: Array, scale: Scalar) -> PyTree:
    zs = common.normals(key, [(m.fan_in, m.fan_out) for m in self.metas])
    return {f"linear_{i}": {
        "w": z * mup.init_std(m, scale, self.parametrization),
        "b": jnp.zeros((m.fan_out,), jnp.float32)}
            for i, (z, m) in enumerate(zip(zs, self.metas))}

  @property
  def param_meta(self) -> PyTree:
    return {f"linear_{i}": {"w": m, "b": ParamMeta("vector", 1, m.fan_out)}
            for i, m in enumerate(self.metas)}

  def apply(self, params: PyTree, x: Array, activation) -> Array:
    n = len(self.metas)
    for i in range(n):
      p = params[f"linear_{i}"]
      if i == n - 1:
        mult = mup.output_multiplier(self.metas[i].fan_in,
                                     self.parametrization)
        x = (x @ p["w"] + p["b"]) * mult if n > 1 else x @ p["w"] + p["b"]
      else:
        x = common.apply_activation(x @ p["w"] + p["b"], activation)
    return x


class _DenseTask(Task):
  """What the MLP tasks share: a dataset held on the device (``_load``) and
  a :class:`_DenseStack` (``self._stack``, built by the subclass) that
  ``init`` and ``param_meta`` read."""

  def _load(self, dataset: Union[str, datasets.Dataset],
            hidden: Sequence[int], batch_size: int) -> None:
    self.hidden = _check_sizes(hidden, batch_size)
    self._ds = datasets.resolve(dataset)
    self.dataset = self._ds.name
    self.batch_size = int(batch_size)
    self._data = datasets.device(self._ds)

  def init(self, key: Array) -> PyTree:
    return self._stack.init(key, self.init_scale)

  def data_fingerprint(self) -> str:
    return self._ds.fingerprint

  @property
  def param_meta(self) -> PyTree:
    return self._stack.param_meta


class MLPClassifier(_DenseTask):
  """MLP classifier on one of :data:`lopt.tasks.datasets.DATASETS`.

  Args:
    dataset: dataset name (e.g. ``"digits"``).
    hidden: hidden-layer widths, e.g. ``(32,)`` for 64-32-10 on digits.
    batch_size: examples per batch.
    activation: name or index into :data:`lopt.tasks.common.ACTIVATIONS`
      (may be traced).
    init_scale: multiplies every initial weight (may be traced).
    label_noise: probability of replacing a *train* label by a random class,
      drawn afresh per batch (may be traced).
    parametrization: ``"standard"`` or ``"mup"``.
    name: task name.
  """

  def __init__(self, dataset: Union[str, datasets.Dataset] = "digits",
               hidden: Sequence[int] = (32,), batch_size: int = 32,
               activation: Union[str, Scalar] = "relu",
               init_scale: Scalar = 1.0, label_noise: Scalar = 0.0,
               parametrization: str = "standard",
               name: Optional[str] = None):
    self._load(dataset, hidden, batch_size)
    (in_dim,) = self._ds.input_shape
    self.num_classes = self._ds.num_classes
    self._stack = _DenseStack((in_dim, *self.hidden, self.num_classes),
                              parametrization)
    self.parametrization = parametrization
    self.activation = common.activation_index(activation)
    self.init_scale = init_scale
    self.label_noise = label_noise
    self.loss_scale = math.log(self.num_classes)
    self.name = name or f"{self.dataset}_mlp_" + "x".join(
        map(str, self.hidden))

  def sample_batch(self, key: Array, split: str = "train") -> PyTree:
    check_split(split)
    k_idx, k_noise = jax.random.split(key)
    batch = datasets.sample(k_idx, self._ds, self._data[split],
                            self.batch_size)
    if split == "train":
      batch["y"] = common.noisy_labels(k_noise, batch["y"], self.num_classes,
                                       self.label_noise)
    return batch

  def logits(self, params: PyTree, x: Array) -> Array:
    return self._stack.apply(params, x, self.activation)

  def loss(self, params: PyTree, batch: PyTree, key: Array = None) -> Array:
    common.check_batch(batch, {"x": self._ds.input_shape, "y": ()}, self.name)
    return common.softmax_cross_entropy(self.logits(params, batch["x"]),
                                        batch["y"])

  def metrics(self, params, batch, key=None):
    common.check_batch(batch, {"x": self._ds.input_shape, "y": ()}, self.name)
    logits = self.logits(params, batch["x"])
    return {"loss": common.softmax_cross_entropy(logits, batch["y"]),
            "accuracy": common.accuracy(logits, batch["y"])}


def _activation_choices(activations: Sequence[Union[str, int]]) -> tuple:
  out = tuple(common.activation_index(a) for a in activations)
  if not out:
    raise ValueError("activations must be non-empty.")
  return out


class MLPClassifierFamily(TaskFamily):
  """MLP classifiers of one shape class (dataset, widths, batch size fixed).

  ``sample(key)`` returns ``{"init_scale": f32 (log-uniform in
  init_scale_range), "activation": i32 (uniform over activations),
  "label_noise": f32 (uniform in [0, label_noise_max])}``.
  """

  def __init__(self, dataset: Union[str, datasets.Dataset] = "digits",
               hidden: Sequence[int] = (32,),
               batch_size: int = 32,
               activations: Sequence[Union[str, int]] = common.ACTIVATIONS,
               init_scale_range: tuple[float, float] = (0.5, 2.0),
               label_noise_max: float = 0.0,
               parametrization: str = "standard",
               name: Optional[str] = None):
    self._dataset = datasets.resolve(dataset)
    self.dataset = self._dataset.name
    self.hidden = _check_sizes(hidden, batch_size)
    self.batch_size = int(batch_size)
    self.activations = _activation_choices(activations)
    self.init_scale_range = tuple(float(v) for v in init_scale_range)
    self.label_noise_max = float(label_noise_max)
    self.parametrization = mup.check_parametrization(parametrization)
    self.name = name or f"{self.dataset}_mlp_" + "x".join(
        map(str, self.hidden))

  _KEYS = ("init_scale", "activation", "label_noise")

  def sample(self, key: Array) -> PyTree:
    k1, k2, k3 = jax.random.split(key, 3)
    acts = jnp.asarray(self.activations, jnp.int32)
    return {
        "init_scale": common.log_uniform(k1, *self.init_scale_range),
        "activation": acts[jax.random.randint(k2, (), 0, len(acts))],
        "label_noise": jax.random.uniform(k3, (), jnp.float32, 0.0,
                                          self.label_noise_max),
    }

  def default_config(self) -> PyTree:
    return {"init_scale": jnp.float32(1.0),
            "activation": jnp.int32(self.activations[0]),
            "label_noise": jnp.float32(self.label_noise_max / 2)}

  def task(self, config: PyTree) -> MLPClassifier:
    common.check_config(config, self._KEYS, self.name)
    return MLPClassifier(self._dataset, self.hidden, self.batch_size,
                         activation=config["activation"],
                         init_scale=config["init_scale"],
                         label_noise=config["label_noise"],
                         parametrization=self.parametrization,
                         name=self.name)


class MLPAutoencoder(_DenseTask):
  """MLP autoencoder ``x -> x_hat`` on a dataset's features (see module
  docstring for the loss). ``hidden`` are the widths between input and
  reconstruction, e.g. ``(32, 16, 32)``."""

  def __init__(self, dataset: Union[str, datasets.Dataset] = "digits",
               hidden: Sequence[int] = (32, 16, 32), batch_size: int = 32,
               activation: Union[str, Scalar] = "relu",
               init_scale: Scalar = 1.0, name: Optional[str] = None):
    self._load(dataset, hidden, batch_size)
    (dim,) = self._ds.input_shape
    self._stack = _DenseStack((dim, *self.hidden, dim), "standard")
    self.activation = common.activation_index(activation)
    self.init_scale = init_scale
    x_train = self._ds.splits["train"]["x"].astype(np.float32)
    self.loss_scale = float(np.mean(np.square(x_train * self._ds.x_scale)))
    self.name = name or f"{self.dataset}_autoencoder"

  def sample_batch(self, key: Array, split: str = "train") -> PyTree:
    check_split(split)
    batch = datasets.sample(key, self._ds, self._data[split],
                            self.batch_size)
    return {"x": batch["x"]}

  def loss(self, params: PyTree, batch: PyTree, key: Array = None) -> Array:
    common.check_batch(batch, {"x": self._ds.input_shape}, self.name)
    x = batch["x"]
    return jnp.mean(jnp.square(self._stack.apply(params, x, self.activation)
                               - x))


class AutoencoderFamily(common.ScaleActivationFamily):
  """Autoencoders of one shape class; samples ``init_scale`` and
  ``activation`` like :class:`MLPClassifierFamily`."""

  def __init__(self, dataset: Union[str, datasets.Dataset] = "digits",
               hidden: Sequence[int] = (32, 16, 32), batch_size: int = 32,
               activations: Sequence[Union[str, int]] = common.ACTIVATIONS,
               init_scale_range: tuple[float, float] = (0.5, 2.0),
               name: Optional[str] = None):
    self._dataset = datasets.resolve(dataset)
    self.dataset = self._dataset.name
    self.hidden = _check_sizes(hidden, batch_size)
    self.batch_size = int(batch_size)
    self.activations = _activation_choices(activations)
    self.init_scale_range = tuple(float(v) for v in init_scale_range)
    self.name = name or f"{self.dataset}_autoencoder"

  def make_task(self, activation, init_scale) -> MLPAutoencoder:
    return MLPAutoencoder(self._dataset, self.hidden, self.batch_size,
                          activation=activation, init_scale=init_scale,
                          name=self.name)
