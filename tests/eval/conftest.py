"""Stand-in tasks for the eval tests (small, fast, known optima)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import lopt
from lopt.tasks import Task


class Quadratic(Task):
  """``0.5 * sum_i h_i (x_i - b_i)^2`` with ``b ~ noise * N(0, 1)`` per batch.

  With ``noise=0`` and a single curvature ``h``, SGD at ``lr = 1/h`` reaches
  the optimum in one step: the best learning rate is known exactly.
  """

  def __init__(self, dim=8, h=(1.0,), noise=0.0, name="quadratic"):
    self.dim = dim
    self.h = jnp.resize(jnp.asarray(h, jnp.float32), (dim,))
    self.noise = noise
    self.name = name

  def init(self, key):
    return {"x": jax.random.normal(key, (self.dim,)) + 1.0}

  def sample_batch(self, key, split="train"):
    return self.noise * jax.random.normal(key, (self.dim,))

  def loss(self, params, batch, key):
    return 0.5 * jnp.sum(self.h * (params["x"] - batch) ** 2)

  @property
  def param_meta(self):
    return {"x": lopt.ParamMeta("vector", 1, self.dim)}


class Logistic(Task):
  """Logistic regression on a fixed synthetic data set (has accuracy)."""

  name = "logistic"

  def __init__(self, n=256, d=6, batch=32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(42))
    self.xs = jax.random.normal(k1, (n, d))
    w = jax.random.normal(k2, (d,))
    self.ys = (self.xs @ w > 0).astype(jnp.int32)
    self.batch = batch

  def init(self, key):
    return {"w": jnp.zeros((self.xs.shape[1], 2)), "b": jnp.zeros((2,))}

  def sample_batch(self, key, split="train"):
    idx = jax.random.randint(key, (self.batch,), 0, self.xs.shape[0])
    return self.xs[idx], self.ys[idx]

  def _logits(self, params, x):
    return x @ params["w"] + params["b"]

  def loss(self, params, batch, key):
    x, y = batch
    logp = jax.nn.log_softmax(self._logits(params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

  def metrics(self, params, batch, key):
    x, y = batch
    acc = jnp.mean(jnp.argmax(self._logits(params, x), -1) == y)
    return {"loss": self.loss(params, batch, key), "accuracy": acc}

  @property
  def param_meta(self):
    d = self.xs.shape[1]
    return {"w": lopt.ParamMeta("output", d, 2),
            "b": lopt.ParamMeta("vector", 1, 2)}


@pytest.fixture
def quadratic():
  return Quadratic()


@pytest.fixture
def noisy_quadratic():
  return Quadratic(dim=16, h=(0.5, 2.0), noise=0.3, name="noisy_quadratic")


@pytest.fixture
def logistic():
  return Logistic()


@pytest.fixture
def Quad():
  """The :class:`Quadratic` class (test modules cannot import conftest in
  importlib mode)."""
  return Quadratic
