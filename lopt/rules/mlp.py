"""Per-parameter MLP learned optimizer with Adafactor-style features.

The "small_fc / adafac" family of Metz et al. 2022, "Practical tradeoffs
between memory, compute, and performance in learned optimizers" (and its
muP variant from Therien et al. 2024, "muLO: Compute-Efficient
Meta-Generalization of Learned Optimizers").

For every parameter element the rule builds features from the gradient g,
the parameter p and float32 accumulators (decays ``b_k``)::

    m_k  = b_k m_k + (1 - b_k) g                     momenta, k = 1..3
    v    = b_v v + (1 - b_v) g^2                     RMS accumulator
    r_k  = b_k r_k + (1 - b_k) mean_col(g^2)         factored row/column
    c_k  = b_k c_k + (1 - b_k) mean_row(g^2)         second moments
    vhat_k = r_k c_k^T / mean(r_k)                   (tensors with ndim >= 2;
                                                      full v_k otherwise)

features x = [g, p, m_1..3, sqrt(v), rsqrt(v), g rsqrt(v), m_1..3 rsqrt(v),
vhat_1..3, rsqrt(vhat_1..3), g rsqrt(vhat_1..3), m_1..3 rsqrt(vhat_1..3)]
(with ``rsqrt(x) = 1/sqrt(x + eps)``, ``sqrt(v)`` computed as
``v rsqrt(v)``, and for factored tensors ``rsqrt(vhat_k)`` as the product
of row and column factors ``rsqrt(r_k) rsqrt(c_k) sqrt(mean(r_k))``), each
divided by its RMS over the tensor (``x_f / sqrt(mean(x_f^2) + eps)``; for
tensors above ``norm_sample`` elements the mean runs over a fixed evenly
strided subset of that size), and time features ``tanh(frac / s)`` of the
fraction of training done ``frac = step / num_steps``.
A small MLP (ReLU) maps the features to a direction ``d`` and a magnitude
``mg``, plus a linear skip path from the features to ``d``::

    update = exp(log_step_scale + sum_s w_s tanh(frac / s))
             * d * exp(exp_mult * mg) * mu_scale

(``d`` and ``mg`` clipped to ``[-output_clip, output_clip]``, default 10).
The learned step schedule ``sum_s w_s tanh(frac / s)`` (meta-parameters
``schedule`` = ``w``, one per timescale, initialised to 0 so the schedule
starts flat) lets the rule anneal its step over training. Without it the
only time-dependent path is the magnitude output, whose range
``exp(exp_mult * [-c, c])`` is ``[0.37, 2.7]`` at the defaults, and the
skip path cannot shrink at all: measured, that rule kept a constant step
size late in training and its loss spiked on wider and deeper held-out
MLPs (docs/meta_training_experiments.md). ``learned_schedule=False`` is the
rule without it (files written before it existed load as such).

With ``loss_features=True`` the rule also reads the training loss (pass
``value=loss``): the VeLO-style features ``tanh((loss - ema_k) / |ema_3|)``
of three loss EMAs (:func:`lopt.rules.common.loss_features`) enter, like the
time features, as per-tensor constants -- into the first layer's bias
(weights ``w_loss``) and into the log step scale (weights ``loss_scale``) --
so they cost nothing per element. Both are initialised to 0: at
initialisation (or warm-started from a file without them) the rule's updates
are exactly those of the rule without loss features. They let the rule tell
a falling loss from a plateau or a spike, which the per-parameter features
cannot see.

``features`` selects which of the 23 features the network reads (default,
since session 17, the ``"lean"`` preset: without the six raw ``vhat_k`` and
``rsqrt(vhat_k)``, leaving 17; ``"all"`` reads all 23): fewer inputs per
hidden unit and skip weight, the compute / performance trade-off of Metz et
al. 2022. A feature not read is neither computed nor normalised; a rule with
a subset is exactly the full rule with the other features' first-layer and
skip weights at zero.

``mu_scale`` is 1 in standard parametrisation and ``1/fan_in`` for hidden
tensors in the muP variant (``mup=True`` with ``param_meta``; without
``param_meta`` the muP rule behaves exactly as standard parametrisation).

Implementation note (measured, see docs/performance.md): the tiny
network is written as elementwise multiply-adds over the feature arrays with
scalar weights -- the per-tensor feature normalisation and the time features
(constant per tensor) are folded into those scalars -- so XLA fuses the whole
rule into a couple of passes over the parameters. Stacking features into an
``[N, F]`` array and multiplying by ``[F, H]`` is several times slower on CPU.

The skip path is initialised to ``-m_1 rsqrt(v)`` (normalised), so the rule at
its default meta-parameters is an RMS-normalised momentum method with step
``exp(log_step_scale)`` -- a sensible starting point for meta-training. With
the output layer and skip weights zeroed, the update is exactly zero.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from lopt.rules import common

PyTree = Any

_EPS = 1e-8
_NORM_EPS = 1e-12

FEATURE_NAMES: Tuple[str, ...] = (
    "g", "p", "m1", "m2", "m3", "rms", "rsqrt_v", "g_rsqrt_v",
    "m1_rsqrt_v", "m2_rsqrt_v", "m3_rsqrt_v",
    "vhat1", "vhat2", "vhat3", "rsqrt_vhat1", "rsqrt_vhat2", "rsqrt_vhat3",
    "g_rsqrt_vhat1", "g_rsqrt_vhat2", "g_rsqrt_vhat3",
    "m1_rsqrt_vhat1", "m2_rsqrt_vhat2", "m3_rsqrt_vhat3")
NUM_FEATURES = len(FEATURE_NAMES)
_SKIP_INIT_NAME = "m1_rsqrt_v"

#: The ``features="lean"`` preset: the 17 features without the six raw
#: factored second moments ``vhat_k`` and ``rsqrt(vhat_k)`` (the gradient and
#: momenta normalised by them stay). Per element that is 6 fewer inputs to
#: every hidden unit and to the skip path, and the normaliser loses its
#: ``vhat`` rows: ~20% more meta-training throughput (docs/performance.md),
#: the compute/quality trade-off studied by Metz et al. 2022.
LEAN_FEATURES: Tuple[str, ...] = tuple(
    n for n in FEATURE_NAMES
    if not (n.startswith("vhat") or n.startswith("rsqrt_vhat")))
FEATURE_PRESETS = {"all": FEATURE_NAMES, "lean": LEAN_FEATURES}


class LeafState(NamedTuple):
  """Accumulators of one parameter tensor (all float32)."""
  m: jax.Array        # [3, *shape]   momenta
  v: jax.Array        # [*shape]      RMS accumulator
  row: jax.Array      # [3, *shape[:-1]] (ndim>=2) or [3, *shape] (full)
  col: Optional[jax.Array]  # [3, *shape[:-2], shape[-1]] (ndim>=2) or None


class MLPState(NamedTuple):
  step: jax.Array         # int32 scalar
  num_steps: jax.Array    # float32 scalar, the horizon
  leaves: PyTree          # params-structured tree of LeafState
  mu_scale: PyTree        # params-structured tree of float32 scalars
  loss_ema: Optional[jax.Array] = None   # [3] with loss_features, else None


def _factored(shape) -> bool:
  return len(shape) >= 2


def _init_leaf(p) -> LeafState:
  shape = tuple(jnp.shape(p))
  z = lambda s: jnp.zeros(s, common.STATE_DTYPE)
  if _factored(shape):
    return LeafState(z((3,) + shape), z(shape), z((3,) + shape[:-1]),
                     z((3,) + shape[:-2] + shape[-1:]))
  return LeafState(z((3,) + shape), z(shape), z((3,) + shape), None)


def _row_col_factors(r, c) -> tuple:
  """Per-row and per-column factors of the factored second moments (any
  leading axes): ``vhat = r[..., :, None] * c_vhat[..., None, :]`` and
  ``rsqrt(vhat) := r_rs[..., :, None] * c_rs[..., None, :]``. Returns
  ``(r, c_vhat, r_rs, c_rs)``."""
  mean_r = common.safe_mean(r, axis=-1, keepdims=True)
  return (r, c / (mean_r + 1e-30), jax.lax.rsqrt(r + _EPS),
          jax.lax.rsqrt(c + _EPS) * jnp.sqrt(mean_r + _EPS))


def _second_moments(ls: LeafState, shape) -> tuple:
  """Adafactor second-moment estimates ``vhat_k`` and ``rsqrt(vhat_k)``,
  broadcastable to ``shape``.

  Factored (ndim >= 2): ``vhat_k = r_k c_k^T / mean(r_k)`` and
  ``rsqrt(vhat_k) := rsqrt(r_k + eps) rsqrt(c_k + eps) sqrt(mean(r_k) + eps)``
  -- products of per-row and per-column factors, so no per-element
  square root is needed and nothing of size [3, *shape] is materialised.
  Unfactored: the full accumulator ``v_k`` and ``rsqrt(v_k + eps)``.
  """
  if not _factored(shape):
    return ([ls.row[k] for k in range(3)],
            [jax.lax.rsqrt(ls.row[k] + _EPS) for k in range(3)])
  vhat, rs = [], []
  for k in range(3):
    r, c_vhat, r_rs, c_rs = _row_col_factors(ls.row[k], ls.col[k])
    vhat.append(r[..., :, None] * c_vhat[..., None, :])
    rs.append(r_rs[..., :, None] * c_rs[..., None, :])
  return vhat, rs


def _features_from(g, p, m, v, vhat, rs_vhat) -> list:
  """The 23 per-parameter features (order of ``FEATURE_NAMES``)."""
  rsqrt_v = jax.lax.rsqrt(v + _EPS)
  feats = [g, p, m[0], m[1], m[2], v * rsqrt_v, rsqrt_v, g * rsqrt_v,
           m[0] * rsqrt_v, m[1] * rsqrt_v, m[2] * rsqrt_v]
  feats += list(vhat)
  feats += list(rs_vhat)
  feats += [g * rs_vhat[k] for k in range(3)]
  feats += [m[k] * rs_vhat[k] for k in range(3)]
  return feats


# Every feature is a product a * b of one "a" factor and one "b" factor:
#   a in [1, rsqrt(v), rsqrt(vhat_1..3), vhat_1..3]     (rows of A)
#   b in [g, p, m_1..3, v, 1]                           (rows of B)
# so the mean squares of all 23 features are entries of the small matrix
# mean(A^2 B^2^T) -- one [8, n] x [n, 7] product (see _feature_inv_rms).
_A_ONE, _A_RV, _A_RS, _A_VH = 0, 1, 2, 5         # rows of A (RS, VH: 3 each)
_B_G, _B_P, _B_M, _B_V, _B_ONE = 0, 1, 2, 5, 6   # rows of B (M: 3)
_FEATURE_FACTORS = (
    [(_A_ONE, _B_G), (_A_ONE, _B_P)]
    + [(_A_ONE, _B_M + k) for k in range(3)]
    + [(_A_RV, _B_V), (_A_RV, _B_ONE), (_A_RV, _B_G)]
    + [(_A_RV, _B_M + k) for k in range(3)]
    + [(_A_VH + k, _B_ONE) for k in range(3)]
    + [(_A_RS + k, _B_ONE) for k in range(3)]
    + [(_A_RS + k, _B_G) for k in range(3)]
    + [(_A_RS + k, _B_M + k) for k in range(3)])
assert len(_FEATURE_FACTORS) == NUM_FEATURES


def sample_stride(shape, norm_sample: int) -> int:
  """Stride of the normaliser's subsample of a tensor of ``shape``: about
  ``size / norm_sample``, and coprime with the last dimension so that the
  row-major subsample visits every column and every row (a stride sharing a
  factor with the width would see only some columns: a dead unit's column,
  whose rsqrt features are far above the rest, could then be missed and its
  normalised features blow up)."""
  n = math.prod(shape)
  stride = max(1, -(-n // max(1, int(norm_sample))))
  if stride > 1 and len(shape) >= 2:
    while math.gcd(stride, shape[-1]) != 1:
      stride += 1
  return stride


def _factor_rows(g, p, ls: LeafState, stride: int, need_vhat: bool = True):
  """The factor arrays ``A`` [8, n'] and ``B`` [7, n'] at every
  ``stride``-th element (row-major) of the tensor, ``n' = ceil(n / stride)``;
  ``A[i] * B[j]`` equals the feature with factors ``(i, j)`` exactly as
  :func:`_features_from` computes it. Returns ``(A, B, vh_ms)``.
  With ``need_vhat=False`` (no selected feature reads a ``vhat_k`` row) ``A``
  has only its first 5 rows and ``vh_ms`` is None.

  A factored tensor read at every element (``stride == 1``) gets ``A``
  without its three ``vhat_k`` rows and their mean squares ``vh_ms`` [3]
  instead: ``vhat_k[l, i, j] = r_li cv_lj`` (``l`` the leading axes) is an
  outer product, so ``mean(vhat_k^2) = mean_l(mean_i r_li^2 mean_j cv_lj^2)``
  (the same values up to float rounding, no ``[3, n]`` ``vhat`` array, and a
  5-row product: 9% more meta-training throughput, docs/performance.md).
  Otherwise ``vh_ms`` is None."""
  shape = g.shape
  sample = lambda x: x.reshape(x.shape[0], -1)[:, ::stride]   # [K, n']
  rv = jax.lax.rsqrt(sample(ls.v[None]) + _EPS)
  vh_ms = vh = None
  if _factored(shape):
    r, c_vhat, r_rs, c_rs = _row_col_factors(ls.row, ls.col)
    # The rsqrt(vhat_k) rows: the factors' outer products at the sampled
    # elements, as strided slices of the broadcast products (XLA fuses the
    # slice and computes only the sampled elements). Gathering the factors
    # at static sample indices instead made XLA recompute them at every
    # sampled element in scalar code: 206 -> 182 us per step on
    # bench/apply.py.
    rs = sample(r_rs[..., :, None] * c_rs[..., None, :])
    if need_vhat and stride == 1:
      lead = tuple(range(1, r.ndim - 1))
      vh_ms = jnp.mean(jnp.mean(jnp.square(r), -1) *
                       jnp.mean(jnp.square(c_vhat), -1), axis=lead)
    elif need_vhat:
      vh = sample(r[..., :, None] * c_vhat[..., None, :])
  else:
    vh = sample(ls.row)
    rs = jax.lax.rsqrt(vh + _EPS)
    if not need_vhat:
      vh = None
  one = jnp.ones_like(rv)
  a = jnp.concatenate([one, rv, rs] + ([] if vh is None else [vh]))
  b = jnp.concatenate([sample(g[None]), sample(p[None]), sample(ls.m),
                       sample(ls.v[None]), one])
  return a, b, vh_ms


def _resolve_features(features) -> Tuple[str, ...]:
  """``features`` (a preset name or feature names) as a tuple of names in
  ``FEATURE_NAMES`` order; one clear error for anything else."""
  if isinstance(features, str):
    if features not in FEATURE_PRESETS:
      raise ValueError(
          f"Unknown feature preset {features!r}: use one of "
          f"{sorted(FEATURE_PRESETS)} or a list of feature names from "
          f"{list(FEATURE_NAMES)}.")
    return FEATURE_PRESETS[features]
  names = [str(n) for n in features]
  unknown = [n for n in names if n not in FEATURE_NAMES]
  if unknown:
    raise ValueError(f"Unknown feature(s) {unknown}; known: "
                     f"{list(FEATURE_NAMES)} (or a preset: "
                     f"{sorted(FEATURE_PRESETS)}).")
  if len(set(names)) != len(names):
    raise ValueError(f"features lists a feature twice: {names}.")
  if _SKIP_INIT_NAME not in names:
    raise ValueError(
        f"features must include {_SKIP_INIT_NAME!r}: the skip path starts "
        "as RMS-normalised momentum, so that meta-training starts from a "
        "working optimizer.")
  return tuple(n for n in FEATURE_NAMES if n in names)


def _bcast(d: jax.Array, ndim: int) -> jax.Array:
  return jnp.reshape(d, (3,) + (1,) * ndim)


@dataclasses.dataclass(frozen=True)
class PerParamMLP:
  """Per-parameter MLP rule (Adafactor features); see module docstring.

  Attributes:
    hidden_sizes: widths of the hidden ReLU layers of the per-parameter MLP.
    momentum_decays: decays of the three momenta (and factored moments).
    rms_decay: decay of the RMS accumulator.
    timescales: timescales ``s`` of the ``tanh(frac / s)`` time features.
    initial_step_scale: ``exp(log_step_scale)`` at initialisation.
    exp_mult: multiplier of the magnitude output inside the exponential.
    norm_sample: the per-tensor feature RMS is computed over an evenly
      strided subset of about this many elements (exact for tensors that are
      not larger). 1024 since session 17 (2048 before): with the 17
      features, meta-training runs ~1.3x faster than the 23-feature,
      2048-sample rule, at the same held-out quality in two seeds
      (docs/meta_training_experiments.md, sessions 16-17).
    output_clip: the direction ``d`` and magnitude ``mg`` outputs are
      clipped to ``[-output_clip, output_clip]`` (0: off), which bounds one
      element's step by ``exp(log_step_scale) * c * exp(exp_mult * c)``.
    learned_schedule: add the learned step schedule
      ``sum_s w_s tanh(frac / s)`` to the log step scale (module docstring).
    loss_features: read the training loss and feed its EMA features to the
      first layer's bias and the log step scale (module docstring).
    features: the per-parameter features the network reads: names from
      ``FEATURE_NAMES`` (kept in that order; must include ``m1_rsqrt_v``,
      the skip path's initial direction) or a preset, ``"lean"``
      (``LEAN_FEATURES``, the default since session 17: 17 features, without
      the raw ``vhat_k`` and ``rsqrt(vhat_k)``) or ``"all"`` (all 23, the
      default before). Features not read are not computed.
    mup: muP variant (hidden-tensor updates scaled by ``1/fan_in``).
  """

  hidden_sizes: Tuple[int, ...] = (4,)
  momentum_decays: Tuple[float, float, float] = (0.9, 0.99, 0.999)
  rms_decay: float = 0.999
  timescales: Tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
  initial_step_scale: float = 1e-3
  exp_mult: float = 0.1
  norm_sample: int = 1024
  output_clip: float = 10.0
  learned_schedule: bool = True
  loss_features: bool = False
  features: Tuple[str, ...] = LEAN_FEATURES
  mup: bool = False

  # Config keys added after the first learned-optimizer files were written,
  # with the value that reproduces those files' behaviour (lopt.io fills a
  # key in when a stored rule_config lacks it). Files before ``norm_sample``
  # normalised over every element (2**62: stride 1); files before
  # ``features`` read all 23.
  CONFIG_ADDED = {"learned_schedule": False, "loss_features": False,
                  "features": list(FEATURE_NAMES), "norm_sample": 2 ** 62}

  @property
  def uses_loss(self) -> bool:
    return self.loss_features

  def __post_init__(self):
    object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in
                                                   self.hidden_sizes))
    object.__setattr__(self, "momentum_decays",
                       tuple(float(d) for d in self.momentum_decays))
    object.__setattr__(self, "timescales",
                       tuple(float(t) for t in self.timescales))
    if any(h < 1 for h in self.hidden_sizes):
      raise ValueError(f"hidden_sizes must be positive, got "
                       f"{self.hidden_sizes}.")
    if len(self.momentum_decays) != 3:
      raise ValueError("momentum_decays must have exactly 3 entries, got "
                       f"{self.momentum_decays}.")
    if self.initial_step_scale <= 0:
      raise ValueError("initial_step_scale must be > 0.")
    if not self.output_clip >= 0:
      raise ValueError(f"output_clip must be >= 0 (0: off), got "
                       f"{self.output_clip}.")
    object.__setattr__(self, "features", _resolve_features(self.features))

  @property
  def _feature_idx(self) -> Tuple[int, ...]:
    """Indices into ``FEATURE_NAMES`` of the features read."""
    return tuple(FEATURE_NAMES.index(n) for n in self.features)

  @property
  def name(self) -> str:
    return "mu_mlp" if self.mup else "mlp"

  def config(self) -> dict:
    cfg = dataclasses.asdict(self)
    cfg.pop("mup")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}

  # -- meta-parameters -----------------------------------------------------
  def init_meta_params(self, key: jax.Array) -> PyTree:
    num_features = len(self.features)
    sizes = (num_features,) + self.hidden_sizes
    keys = jax.random.split(key, len(sizes) + 1)
    layers = []
    for i in range(len(self.hidden_sizes)):
      fan_in = sizes[i] + (len(self.timescales) if i == 0 else 0)
      w = jax.random.normal(keys[i], (sizes[i], sizes[i + 1])) / jnp.sqrt(
          fan_in)
      layer = {"w": w, "b": jnp.zeros((sizes[i + 1],))}
      if i == 0:
        layer["w_time"] = jax.random.normal(
            keys[-1], (len(self.timescales), sizes[1])) / jnp.sqrt(fan_in)
        if self.loss_features:
          layer["w_loss"] = jnp.zeros((len(common.LOSS_DECAYS), sizes[1]))
      layers.append(layer)
    out_w = 0.1 * jax.random.normal(keys[len(self.hidden_sizes)],
                                    (sizes[-1], 2)) / jnp.sqrt(sizes[-1])
    skip = jnp.zeros((num_features,)).at[
        self.features.index(_SKIP_INIT_NAME)].set(-1.0)
    theta = {
        "layers": layers,
        "out": {"w": out_w, "b": jnp.zeros((2,))},
        "skip": skip,
        "log_step_scale": jnp.log(common.f32(self.initial_step_scale)),
    }
    if self.learned_schedule:
      theta["schedule"] = jnp.zeros((len(self.timescales),))
    if self.loss_features:
      theta["loss_scale"] = jnp.zeros((len(common.LOSS_DECAYS),))
    return theta

  def log_step_scale(self, theta, time_feats, loss_feats=None) -> jax.Array:
    """``log_step_scale + sum_s w_s tanh(frac / s) + loss_feats @
    loss_scale`` (the schedule term only with ``learned_schedule``, the
    loss term only with ``loss_features``)."""
    log_scale = theta["log_step_scale"]
    if self.learned_schedule:
      log_scale = log_scale + jnp.stack(time_feats) @ theta["schedule"]
    if self.loss_features:
      log_scale = log_scale + loss_feats @ theta["loss_scale"]
    return log_scale

  # -- state -----------------------------------------------------------------
  def init(self, theta, params, num_steps, param_meta=None) -> MLPState:
    del theta
    mu_scale = common.mup_scales(params, param_meta if self.mup else None)
    loss_ema = (jnp.zeros((len(common.LOSS_DECAYS),), common.STATE_DTYPE)
                if self.loss_features else None)
    return MLPState(step=jnp.zeros([], jnp.int32),
                    num_steps=common.f32(num_steps),
                    leaves=jax.tree.map(_init_leaf, params),
                    mu_scale=mu_scale, loss_ema=loss_ema)

  # -- update ------------------------------------------------------------------
  def _accumulate(self, g, ls: LeafState) -> LeafState:
    nd = g.ndim
    d = _bcast(jnp.asarray(self.momentum_decays, jnp.float32), nd)
    m = d * ls.m + (1 - d) * g[None]
    g2 = jnp.square(g)
    v = self.rms_decay * ls.v + (1 - self.rms_decay) * g2
    if _factored(g.shape):
      dr = _bcast(jnp.asarray(self.momentum_decays, jnp.float32), nd - 1)
      row = dr * ls.row + (1 - dr) * common.safe_mean(g2, axis=-1)[None]
      col = dr * ls.col + (1 - dr) * common.safe_mean(g2, axis=-2)[None]
    else:
      row = d * ls.row + (1 - d) * g2[None]
      col = ls.col
    return LeafState(m, v, row, col)

  def _features(self, g, p, ls: LeafState) -> list:
    vhat, rs_vhat = _second_moments(ls, g.shape)
    feats = _features_from(g, p, ls.m, ls.v, vhat, rs_vhat)
    return [feats[i] for i in self._feature_idx]

  def leaf_prepare(self, g, p, ls: LeafState):
    """Updates one tensor's accumulators; returns ``(ls, feats, inv)`` with
    ``inv[f] = 1 / RMS(feats[f])`` over the tensor (scalars)."""
    g = common.f32(g)
    ls = self._accumulate(g, ls)
    if g.size == 0:
      return ls, None, None
    feats = self._features(g, common.f32(p), ls)
    inv = self._feature_inv_rms(g, common.f32(p), ls)
    return ls, feats, inv

  def _feature_inv_rms(self, g, p, ls: LeafState) -> jax.Array:
    """``1 / RMS`` of every feature over the tensor.

    For tensors larger than ``norm_sample`` elements the RMS is taken over a
    fixed, evenly strided subset of about ``norm_sample`` elements (exact for
    smaller tensors). The reductions would otherwise dominate the rule's cost
    (23 passes over the tensor, see docs/performance.md).
    """
    stride = sample_stride(g.shape, self.norm_sample)
    factors = [_FEATURE_FACTORS[i] for i in self._feature_idx]
    need_vhat = any(a >= _A_VH for a, _ in factors)
    a, b, vh_ms = _factor_rows(g, p, ls, stride, need_vhat)
    # mean(f^2) for f = A_i B_j is (A^2 (B^2)^T)_ij / n': one small matrix
    # product instead of 23 reductions (which compile to ~90 tiny kernels per
    # tensor whose launch overhead exceeds the arithmetic; docs/performance.md).
    ms = jnp.dot(jnp.square(a), jnp.square(b).T,
                 precision=jax.lax.Precision.HIGHEST) / a.shape[-1]
    if vh_ms is not None:
      # The vhat rows of the [8, 7] table, computed separably (only their
      # column _B_ONE is read).
      ms = jnp.concatenate([ms, jnp.broadcast_to(vh_ms[:, None], (3, 7))])
    rows, cols = zip(*factors)
    return jax.lax.rsqrt(ms[jnp.array(rows), jnp.array(cols)] + _NORM_EPS)

  def leaf_apply(self, net, time_feats, feats, inv, log_scale, mu_scale,
                 p, loss_feats=None) -> jax.Array:
    """Applies the per-parameter network ``net`` (one set of weights, the
    structure of ``init_meta_params`` less ``log_step_scale``) to one
    tensor's features, as scalar-weighted elementwise multiply-adds
    (``loss_feats``: with ``loss_features``, the loss EMA features)."""
    if feats is None:
      return jnp.zeros(jnp.shape(p), jnp.result_type(p))
    layers = net["layers"]
    first = layers[0]
    w_eff = first["w"] * inv[:, None]                                 # [F, H]
    b_eff = first["b"] + jnp.stack(time_feats) @ first["w_time"]      # [H]
    if self.loss_features:
      b_eff = b_eff + loss_feats @ first["w_loss"]
    skip_eff = net["skip"] * inv                                      # [F]
    hidden = [
        jax.nn.relu(b_eff[j] + sum(w_eff[f, j] * feats[f]
                                   for f in range(len(feats))))
        for j in range(w_eff.shape[1])
    ]
    for layer in layers[1:]:
      w, b = layer["w"], layer["b"]
      hidden = [jax.nn.relu(b[k] + sum(w[j, k] * hidden[j]
                                       for j in range(len(hidden))))
                for k in range(w.shape[1])]
    w, b = net["out"]["w"], net["out"]["b"]
    direction = b[0] + sum(w[j, 0] * hidden[j] for j in range(len(hidden)))
    direction = direction + sum(skip_eff[f] * feats[f]
                                for f in range(len(feats)))
    magnitude = b[1] + sum(w[j, 1] * hidden[j] for j in range(len(hidden)))
    if self.output_clip:
      # The features are normalised by a tensor-wide RMS, so one element
      # can sit far outside the typical range (e.g. a weight whose gradient
      # is always ~0); unclipped, its direction and exp(magnitude) explode.
      c = self.output_clip
      direction = jnp.clip(direction, -c, c)
      magnitude = jnp.clip(magnitude, -c, c)
    scale = jnp.exp(log_scale) * mu_scale
    step = scale * direction * jnp.exp(self.exp_mult * magnitude)
    return step.astype(jnp.result_type(p))

  def _leaf_update(self, theta, time_feats, loss_feats, log_scale, g, p, ls,
                   mu_scale):
    ls, feats, inv = self.leaf_prepare(g, p, ls)
    upd = self.leaf_apply(theta, time_feats, feats, inv, log_scale, mu_scale,
                          p, loss_feats)
    return upd, ls

  def update(self, theta, grads, state: MLPState, params, loss=None):
    loss_ema, loss_feats = state.loss_ema, None
    if self.loss_features:
      if loss is None:
        raise ValueError(f"The {self.name!r} rule with loss_features reads "
                         "the loss: pass it as update(..., loss) / "
                         "value=loss.")
      loss_ema, loss_feats = common.loss_features(loss, state.loss_ema,
                                                  state.step)
    time_feats = common.time_features(state.step, state.num_steps,
                                      self.timescales)
    log_scale = self.log_step_scale(theta, time_feats, loss_feats)
    pairs = jax.tree.map(
        lambda g, p, ls, s: self._leaf_update(theta, time_feats, loss_feats,
                                              log_scale, g, p, ls, s),
        grads, params, state.leaves, state.mu_scale)
    treedef = jax.tree.structure(params)
    flat = treedef.flatten_up_to(pairs)
    updates = treedef.unflatten([u for u, _ in flat])
    leaves = treedef.unflatten([ls for _, ls in flat])
    return updates, state._replace(step=state.step + 1, leaves=leaves,
                                   loss_ema=loss_ema)
