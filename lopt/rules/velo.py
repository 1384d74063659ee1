"""VeLO-style learned optimizer: a per-tensor LSTM mixing a bank of
per-parameter MLPs (Metz et al. 2022, "VeLO: Training Versatile Learned
Optimizers by Scaling Up"), at a size that is cheap on a CPU.

Per step, for every parameter tensor ``t``:

1. the Adafactor accumulators and per-parameter features of
   :class:`~lopt.rules.mlp.PerParamMLP` are updated and their per-tensor
   RMS values computed;
2. a tensor-level summary ``z_t`` is formed: time features
   ``tanh(frac / s)`` (fraction of training done), loss features
   ``tanh((loss - ema_k) / |ema_3|)`` for three loss EMAs, the tensor's rank
   (one-hot: scalar / vector / matrix / higher) and ``log size``, and
   moment statistics ``0.1 log RMS`` of g, p, m_1..3 and sqrt(v);
3. an LSTM cell, shared across tensors with its own state per tensor, reads
   ``z_t``: ``(h_t, c_t) = LSTM(z_t, h_t, c_t)``;
4. a linear head maps ``h_t`` to mixing weights ``alpha_t = softmax(.)`` over
   a bank of ``K`` per-parameter MLPs and a per-tensor step-scale offset
   ``s_t``; the tensor's MLP weights are ``sum_k alpha_tk W_k`` (mixing in
   weight space, as VeLO does, so the per-parameter cost is one small MLP);
5. ``update = exp(log_step_scale + s_t) * d * exp(exp_mult * mg)`` with
   ``(d, mg)`` the mixed MLP's outputs (times ``1/fan_in`` for hidden tensors
   in the muP variant). With ``learned_schedule=True`` the exponent also
   holds the learned step schedule of :class:`~lopt.rules.mlp.PerParamMLP`,
   ``sum_s w_s tanh(frac / s)`` (meta-parameters ``schedule``, shared by all
   tensors, initialised to 0); off by default.

The loss is required (``uses_loss = True``): pass ``value=loss`` to the optax
transformation. Non-finite losses are ignored by the EMAs. At default
meta-parameters every bank member starts from the RMS-normalised momentum
direction of :class:`PerParamMLP`, so the rule starts as a sensible optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from lopt.rules import common
from lopt.rules.mlp import FEATURE_NAMES, PerParamMLP

PyTree = Any

_STAT_FEATURES = tuple(FEATURE_NAMES.index(n) for n in
                       ("g", "p", "m1", "m2", "m3", "rms"))


class VeLOState(NamedTuple):
  step: jax.Array         # int32 scalar
  num_steps: jax.Array    # float32 scalar
  leaves: PyTree          # params-structured tree of mlp.LeafState
  mu_scale: PyTree        # params-structured tree of float32 scalars
  lstm_h: jax.Array       # [num_tensors, lstm_hidden]
  lstm_c: jax.Array       # [num_tensors, lstm_hidden]
  loss_ema: jax.Array     # [3]


@dataclasses.dataclass(frozen=True)
class VeLOLite:
  """Per-tensor LSTM + bank of per-parameter MLPs; see module docstring.

  Attributes:
    lstm_hidden: LSTM state size per tensor.
    num_mlps: size ``K`` of the per-parameter MLP bank.
    hidden_sizes: hidden widths of each per-parameter MLP.
    timescales: time-feature timescales.
    initial_step_scale: ``exp(log_step_scale)`` at initialisation.
    exp_mult: multiplier of the magnitude output inside the exponential.
    mup: muP variant (hidden-tensor updates scaled by ``1/fan_in``).
    learned_schedule: add the per-parameter MLP rule's learned step schedule
      (a time-only decay next to the LSTM's per-tensor step scale).
  """

  lstm_hidden: int = 16
  num_mlps: int = 4
  hidden_sizes: Tuple[int, ...] = (4,)
  timescales: Tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
  initial_step_scale: float = 1e-3
  exp_mult: float = 0.1
  mup: bool = False
  learned_schedule: bool = False

  uses_loss = True

  def __post_init__(self):
    object.__setattr__(self, "hidden_sizes",
                       tuple(int(h) for h in self.hidden_sizes))
    object.__setattr__(self, "timescales",
                       tuple(float(t) for t in self.timescales))
    if self.lstm_hidden < 1 or self.num_mlps < 1:
      raise ValueError("lstm_hidden and num_mlps must be >= 1, got "
                       f"{self.lstm_hidden}, {self.num_mlps}.")

  @property
  def name(self) -> str:
    return "mu_velo" if self.mup else "velo"

  @property
  def _mlp(self) -> PerParamMLP:
    return PerParamMLP(hidden_sizes=self.hidden_sizes,
                       timescales=self.timescales,
                       initial_step_scale=self.initial_step_scale,
                       exp_mult=self.exp_mult, mup=self.mup,
                       # The per-tensor LSTM sets the step scale over time.
                       learned_schedule=False,
                       # Fixed, not the mlp rule's defaults (17 features and
                       # 1024 since session 17): velo's meta-parameters and
                       # per-tensor statistics stay those of its files.
                       features=FEATURE_NAMES, norm_sample=2048)

  @property
  def _summary_size(self) -> int:
    return (len(self.timescales) + len(common.LOSS_DECAYS) + 5
            + len(_STAT_FEATURES))

  def config(self) -> dict:
    cfg = dataclasses.asdict(self)
    cfg.pop("mup")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}

  def init_meta_params(self, key: jax.Array) -> PyTree:
    k_bank, k_x, k_h, k_head = jax.random.split(key, 4)
    bank = jax.vmap(self._mlp.init_meta_params)(
        jax.random.split(k_bank, self.num_mlps))
    bank.pop("log_step_scale")
    s, h = self._summary_size, self.lstm_hidden
    schedule = ({"schedule": jnp.zeros((len(self.timescales),))}
                if self.learned_schedule else {})
    return {
        **schedule,
        "bank": bank,
        "lstm": {
            "wx": jax.random.normal(k_x, (s, 4 * h)) / jnp.sqrt(s),
            "wh": jax.random.normal(k_h, (h, 4 * h)) / jnp.sqrt(h),
            # Forget-gate bias 1 (Jozefowicz et al. 2015).
            "b": jnp.zeros((4 * h,)).at[h:2 * h].set(1.0),
        },
        "head": {
            "w": 0.01 * jax.random.normal(k_head, (h, self.num_mlps + 1)),
            "b": jnp.zeros((self.num_mlps + 1,)),
        },
        "log_step_scale": jnp.log(common.f32(self.initial_step_scale)),
    }

  def init(self, theta, params, num_steps, param_meta=None) -> VeLOState:
    mlp_state = self._mlp.init(None, params, num_steps, param_meta)
    n = len(jax.tree.leaves(params))
    z = jnp.zeros((n, self.lstm_hidden), common.STATE_DTYPE)
    return VeLOState(mlp_state.step, mlp_state.num_steps, mlp_state.leaves,
                     mlp_state.mu_scale, z, z,
                     jnp.zeros((len(common.LOSS_DECAYS),), common.STATE_DTYPE))

  def update(self, theta, grads, state: VeLOState, params, loss=None):
    if loss is None:
      raise ValueError(f"The {self.name!r} rule reads the loss: pass it "
                       "as update(..., loss) / value=loss.")
    mlp = self._mlp
    treedef = jax.tree.structure(params)
    g_l = treedef.flatten_up_to(grads)
    p_l = treedef.flatten_up_to(params)
    ls_l = treedef.flatten_up_to(state.leaves)
    mu_l = treedef.flatten_up_to(state.mu_scale)

    # Loss EMAs (first step initialises them; non-finite losses ignored).
    ema, loss_feats = common.loss_features(loss, state.loss_ema, state.step)
    time_feats = common.time_features(state.step, state.num_steps,
                                      self.timescales)
    shared = jnp.concatenate([jnp.stack(time_feats), loss_feats])

    prepared = [mlp.leaf_prepare(g, p, ls) for g, p, ls in zip(g_l, p_l,
                                                                ls_l)]
    n = len(p_l)
    if n == 0:
      return grads, state._replace(step=state.step + 1, loss_ema=ema)
    summaries = []
    for p, (_, feats, inv) in zip(p_l, prepared):
      shape = jnp.shape(p)
      rank = jax.nn.one_hot(min(len(shape), 3), 4)
      size = jnp.log(common.f32(max(int(jnp.size(p)), 1))) / 10.0
      if inv is None:
        stats = jnp.zeros((len(_STAT_FEATURES),))
      else:
        stats = -0.1 * jnp.log(inv[jnp.asarray(_STAT_FEATURES)])
      summaries.append(jnp.concatenate([shared, rank, size[None], stats]))
    z = jnp.stack(summaries)                                          # [T, S]

    lw = theta["lstm"]
    hsz = self.lstm_hidden
    gates = z @ lw["wx"] + state.lstm_h @ lw["wh"] + lw["b"]
    i, f, g_, o = (gates[:, k * hsz:(k + 1) * hsz] for k in range(4))
    c = jax.nn.sigmoid(f) * state.lstm_c + jax.nn.sigmoid(i) * jnp.tanh(g_)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    head = h @ theta["head"]["w"] + theta["head"]["b"]                # [T, K+1]
    alpha = jax.nn.softmax(head[:, :self.num_mlps], axis=-1)
    log_scale = theta["log_step_scale"] + head[:, self.num_mlps]
    if self.learned_schedule:
      log_scale = log_scale + jnp.stack(time_feats) @ theta["schedule"]

    updates, new_ls = [], []
    for t, (p, mu, (ls, feats, inv)) in enumerate(zip(p_l, mu_l, prepared)):
      net = jax.tree.map(lambda w: jnp.tensordot(alpha[t], w, 1),
                         theta["bank"])
      updates.append(mlp.leaf_apply(net, time_feats, feats, inv,
                                    log_scale[t], mu, p))
      new_ls.append(ls)
    new_state = state._replace(step=state.step + 1,
                               leaves=treedef.unflatten(new_ls),
                               lstm_h=h, lstm_c=c, loss_ema=ema)
    return treedef.unflatten(updates), new_state
