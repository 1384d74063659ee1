"""Random quadratics with controlled conditioning, noiseless or noisy.

For dimension ``d``, a task draws from its config's ``data_seed`` a random
rotation ``Q`` (QR of a Gaussian matrix; identity when ``rotate=False``) and
a minimiser ``x* ~ N(0, I)``; the spectrum is
``lambda_i = cond^{-i/(d-1)}`` (so ``lambda_max = 1``,
``lambda_min = 1/cond``) with ``log(cond)`` from the config, and
``H = Q diag(lambda) Q^T``. The loss on a batch ``{"shift": c}`` is

    L(x; c) = 1/(2d) (x - x* - c)^T H (x - x* - c),

a noisy-quadratic model: train batches draw ``c ~ N(0, noise^2 I)`` (so the
gradient is ``H (x - x* - c) / d``), valid / test batches use ``c = 0``, i.e.
the population objective up to the constant ``noise^2 tr(H) / (2d)``.
Parameters start at ``x_0 ~ N(0, init_scale^2 I)``; the loss normaliser is
the expected initial loss ``loss_scale = mean(lambda) (1 + init_scale^2) / 2``.
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp

from lopt.base import ParamMeta
from lopt.tasks import common
from lopt.tasks.base import PyTree, Task, TaskFamily, check_split

Array = jax.Array
Scalar = Union[float, int, Array]


@functools.partial(jax.jit, static_argnames=("dim", "rotate"))
def _generate(data_seed, log_cond, *, dim: int, rotate: bool):
  """``(lambda, H, x*)`` (one compiled program; traced configs work)."""
  k_rot, k_opt = jax.random.split(jax.random.PRNGKey(data_seed))
  t = jnp.linspace(0.0, 1.0, dim, dtype=jnp.float32)
  eigenvalues = jnp.exp(-common.f32(log_cond) * t)
  if rotate:
    q, _ = jnp.linalg.qr(jax.random.normal(k_rot, (dim, dim), jnp.float32))
    hessian = (q * eigenvalues) @ q.T
  else:
    hessian = jnp.diag(eigenvalues)
  optimum = jax.random.normal(k_opt, (dim,), jnp.float32)
  return eigenvalues, hessian, optimum


class QuadraticTask(Task):
  """A ``dim``-dimensional random quadratic (see module docstring)."""

  def __init__(self, dim: int = 10, log_cond: Scalar = 3.0,
               noise: Scalar = 0.0, init_scale: Scalar = 1.0,
               data_seed: Scalar = 0, rotate: bool = True,
               name: Optional[str] = None):
    if int(dim) < 2:
      raise ValueError(f"dim must be >= 2, got {dim}.")
    self.dim = int(dim)
    self.noise, self.init_scale = noise, init_scale
    self.eigenvalues, self.hessian, self.optimum = _generate(
        data_seed, log_cond, dim=self.dim, rotate=bool(rotate))
    self.loss_scale = (jnp.mean(self.eigenvalues)
                       * (1.0 + common.f32(init_scale) ** 2) / 2.0)
    self.dataset = "synthetic"
    self.name = name or "quadratic"

  def init(self, key: Array) -> PyTree:
    return {"x": common.f32(self.init_scale)
                 * jax.random.normal(key, (self.dim,), jnp.float32)}

  @property
  def param_meta(self) -> PyTree:
    return {"x": ParamMeta("vector", 1, self.dim)}

  def sample_batch(self, key: Array, split: str = "train") -> PyTree:
    check_split(split)
    if split != "train" or (common.is_concrete(self.noise)
                            and float(self.noise) == 0.0):
      return {"shift": jnp.zeros((self.dim,), jnp.float32)}
    return {"shift": common.f32(self.noise)
                     * jax.random.normal(key, (self.dim,), jnp.float32)}

  def loss(self, params: PyTree, batch: PyTree, key: Array = None) -> Array:
    if jnp.shape(batch.get("shift", None)) != (self.dim,):
      raise ValueError(f"Task {self.name!r} expects a batch "
                       f"{{'shift': float32[{self.dim}]}}; use "
                       f"task.sample_batch.")
    r = params["x"] - self.optimum - batch["shift"]
    return 0.5 * (r @ self.hessian @ r) / self.dim


class QuadraticFamily(TaskFamily):
  """Random quadratics of dimension ``dim``.

  ``sample(key)`` returns ``{"log_cond": U(log_cond_range), "noise":
  U(noise_range), "init_scale": log-U(init_scale_range), "data_seed":
  int32}``.
  """

  _KEYS = ("log_cond", "noise", "init_scale", "data_seed")

  def __init__(self, dim: int = 10,
               log_cond_range: tuple[float, float] = (0.0, 3.0 * 2.302585),
               noise_range: tuple[float, float] = (0.0, 0.0),
               init_scale_range: tuple[float, float] = (0.5, 2.0),
               rotate: bool = True, name: Optional[str] = None):
    self.dim, self.rotate = int(dim), bool(rotate)
    self.log_cond_range = tuple(float(v) for v in log_cond_range)
    self.noise_range = tuple(float(v) for v in noise_range)
    self.init_scale_range = tuple(float(v) for v in init_scale_range)
    self.name = name or "quadratic"
    QuadraticTask(dim)  # validate

  def sample(self, key: Array) -> PyTree:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "log_cond": jax.random.uniform(k1, (), jnp.float32,
                                       *self.log_cond_range),
        "noise": jax.random.uniform(k2, (), jnp.float32, *self.noise_range),
        "init_scale": common.log_uniform(k3, *self.init_scale_range),
        "data_seed": jax.random.randint(k4, (), 0, 2**31 - 1, jnp.int32),
    }

  def default_config(self) -> PyTree:
    lo, hi = self.log_cond_range
    return {"log_cond": jnp.float32(hi), "noise": jnp.float32(
        sum(self.noise_range) / 2), "init_scale": jnp.float32(1.0),
            "data_seed": jnp.int32(0)}

  def task(self, config: PyTree) -> QuadraticTask:
    common.check_config(config, self._KEYS, self.name)
    return QuadraticTask(self.dim, log_cond=config["log_cond"],
                         noise=config["noise"],
                         init_scale=config["init_scale"],
                         data_seed=config["data_seed"], rotate=self.rotate,
                         name=self.name)
