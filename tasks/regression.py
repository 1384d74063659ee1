"""Synthetic linear and logistic regression.

From the config's ``data_seed`` a task draws inputs ``X ~ N(0, I_d)`` for
``n_train + n_valid + n_test`` rows (cut into disjoint splits in that order)
and a teacher ``w* ~ N(0, I_d / d)`` (so ``x^T w*`` has unit variance).

* Linear: ``y = X w* + noise * eps``; loss ``1/2 mean((X w + b - y)^2)``,
  ``loss_scale = (1 + init_scale^2 + noise^2) / 2`` (the expected loss at
  initialisation).
* Logistic: ``y ~ Bernoulli(sigmoid(sharpness * X w*))``, then each label
  flipped with probability ``label_noise``; loss = mean sigmoid binary
  cross-entropy of ``X w + b``, ``loss_scale = log 2``; metrics add
  accuracy.

Parameters: ``{"w": [d, 1], "b": [1]}`` with ``w ~ N(0, init_scale^2 / d)``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Union

import jax
import jax.numpy as jnp
import optax

from lopt.base import ParamMeta
from lopt.tasks import common
from lopt.tasks.base import PyTree, Task, TaskFamily, check_split

Array = jax.Array
Scalar = Union[float, int, Array]


@functools.partial(jax.jit, static_argnames=("n", "dim", "kind",
                                             "sharpness"))
def _generate(data_seed, noise, *, n: int, dim: int, kind: str,
              sharpness: float):
  """``(X, y)`` for ``n`` rows (one compiled program; traced seeds work)."""
  k_x, k_w, k_y, k_flip = jax.random.split(jax.random.PRNGKey(data_seed), 4)
  x = jax.random.normal(k_x, (n, dim), jnp.float32)
  w_star = jax.random.normal(k_w, (dim,), jnp.float32) / math.sqrt(dim)
  z = x @ w_star
  if kind == "linear":
    y = z + common.f32(noise) * jax.random.normal(k_y, (n,), jnp.float32)
  else:
    y = jax.random.bernoulli(k_y, jax.nn.sigmoid(sharpness * z))
    flip = jax.random.uniform(k_flip, (n,)) < noise
    y = jnp.logical_xor(y, flip).astype(jnp.float32)
  return x, y


class _Regression(Task):
  """Shared data generation, params and sampling."""

  kind = "linear"

  def __init__(self, dim: int = 16, batch_size: int = 32,
               n_train: int = 512, n_valid: int = 128, n_test: int = 128,
               noise: Scalar = 0.1, init_scale: Scalar = 1.0,
               data_seed: Scalar = 0, sharpness: float = 4.0,
               name: Optional[str] = None):
    for arg, v in (("dim", dim), ("batch_size", batch_size),
                   ("n_train", n_train), ("n_valid", n_valid),
                   ("n_test", n_test)):
      if int(v) < 1:
        raise ValueError(f"{arg} must be >= 1, got {v}.")
    self.dim, self.batch_size = int(dim), int(batch_size)
    self.noise, self.init_scale = noise, init_scale
    n = int(n_train) + int(n_valid) + int(n_test)
    x, y = _generate(data_seed, noise, n=n, dim=self.dim, kind=self.kind,
                     sharpness=float(sharpness))
    a, b = int(n_train), int(n_train) + int(n_valid)
    self._data = {"train": {"x": x[:a], "y": y[:a]},
                  "valid": {"x": x[a:b], "y": y[a:b]},
                  "test": {"x": x[b:], "y": y[b:]}}
    self.dataset = "synthetic"

  def init(self, key: Array) -> PyTree:
    w = jax.random.normal(key, (self.dim, 1), jnp.float32)
    return {"w": w * (common.f32(self.init_scale) / math.sqrt(self.dim)),
            "b": jnp.zeros((1,), jnp.float32)}

  @property
  def param_meta(self) -> PyTree:
    return {"w": ParamMeta("input", self.dim, 1),
            "b": ParamMeta("vector", 1, 1)}

  def sample_batch(self, key: Array, split: str = "train") -> PyTree:
    check_split(split)
    return common.sample_rows(key, self._data[split], self.batch_size)

  def predict(self, params: PyTree, x: Array) -> Array:
    return (x @ params["w"] + params["b"])[:, 0]


class LinearRegression(_Regression):
  """Least squares on synthetic Gaussian data (see module docstring)."""

  kind = "linear"

  def __init__(self, *args, name: Optional[str] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.loss_scale = (1.0 + common.f32(self.init_scale) ** 2
                       + common.f32(self.noise) ** 2) / 2.0
    self.name = name or "linear_regression"

  def loss(self, params: PyTree, batch: PyTree, key: Array = None) -> Array:
    common.check_batch(batch, {"x": (self.dim,), "y": ()}, self.name)
    return 0.5 * jnp.mean(jnp.square(self.predict(params, batch["x"])
                                     - batch["y"]))


class LogisticRegression(_Regression):
  """Binary logistic regression on synthetic data; ``noise`` is the
  label-flip probability."""

  kind = "logistic"

  def __init__(self, *args, name: Optional[str] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.loss_scale = math.log(2.0)
    self.name = name or "logistic_regression"

  def loss(self, params: PyTree, batch: PyTree, key: Array = None) -> Array:
    common.check_batch(batch, {"x": (self.dim,), "y": ()}, self.name)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(
        self.predict(params, batch["x"]), batch["y"]))

  def metrics(self, params, batch, key=None):
    common.check_batch(batch, {"x": (self.dim,), "y": ()}, self.name)
    logits = self.predict(params, batch["x"])
    return {"loss": jnp.mean(optax.sigmoid_binary_cross_entropy(
        logits, batch["y"])),
            "accuracy": jnp.mean(((logits > 0) == (batch["y"] > 0.5))
                                 .astype(jnp.float32))}


class RegressionFamily(TaskFamily):
  """Linear (``kind="linear"``) or logistic regressions of one shape class.

  ``sample(key)`` returns ``{"noise": U(noise_range), "init_scale":
  log-U(init_scale_range), "data_seed": int32}`` (``noise`` is the label
  noise std for linear, the flip probability for logistic).
  """

  _KEYS = ("noise", "init_scale", "data_seed")

  def __init__(self, kind: str = "linear", dim: int = 16,
               batch_size: int = 32,
               noise_range: tuple[float, float] = (0.0, 0.5),
               init_scale_range: tuple[float, float] = (0.5, 2.0),
               name: Optional[str] = None):
    if kind not in ("linear", "logistic"):
      raise ValueError(f"kind must be 'linear' or 'logistic', got {kind!r}.")
    self.kind, self.dim, self.batch_size = kind, int(dim), int(batch_size)
    self.noise_range = tuple(float(v) for v in noise_range)
    self.init_scale_range = tuple(float(v) for v in init_scale_range)
    self.name = name or f"{kind}_regression"
    self._cls = LinearRegression if kind == "linear" else LogisticRegression

  def sample(self, key: Array) -> PyTree:
    k1, k2, k3 = jax.random.split(key, 3)
    return {"noise": jax.random.uniform(k1, (), jnp.float32,
                                        *self.noise_range),
            "init_scale": common.log_uniform(k2, *self.init_scale_range),
            "data_seed": jax.random.randint(k3, (), 0, 2**31 - 1, jnp.int32)}

  def default_config(self) -> PyTree:
    lo, hi = self.noise_range
    return {"noise": jnp.float32(lo + 0.2 * (hi - lo)),
            "init_scale": jnp.float32(1.0), "data_seed": jnp.int32(0)}

  def task(self, config: PyTree) -> _Regression:
    common.check_config(config, self._KEYS, self.name)
    return self._cls(self.dim, self.batch_size, noise=config["noise"],
                     init_scale=config["init_scale"],
                     data_seed=config["data_seed"], name=self.name)
