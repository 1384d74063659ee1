"""Estimators on the exact-quadratic influence-balancing system."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.meta_train import estimators as E
from lopt.meta_train.influence import InfluenceBalancing

NUM_SEEDS = 2000
HORIZON = 27          # not a multiple of K: episode ends inside truncations
K = 10
NUM_TRUNCS = 8        # 80 steps: two episode ends inside the unroll
STD = 0.1


def _summed_estimates(est, system, num_truncs, num_seeds=NUM_SEEDS):
  theta = system.init_meta_params(None)

  def run(seed):
    key = jax.random.PRNGKey(seed)
    ws = est.init(theta, key)

    def body(ws, j):
      g, ws, _ = est.estimate(theta, ws, jax.random.fold_in(key, j + 1))
      return ws, g["theta"]

    _, gs = jax.lax.scan(body, ws, jnp.arange(num_truncs))
    return jnp.sum(gs)

  return np.asarray(jax.jit(jax.vmap(run))(jnp.arange(num_seeds)),
                    np.float64)


@pytest.fixture(scope="module")
def system():
  return InfluenceBalancing(horizon=HORIZON)


@pytest.fixture(scope="module")
def true_grad(system):
  theta = system.init_meta_params(None)
  return float(jax.grad(lambda th: system.total_loss(th, K * NUM_TRUNCS))(
      theta)["theta"])


@pytest.fixture(scope="module")
def es_single_stats(system):
  est = E.get("es_single", system, num_tasks=1, trunc_length=K, std=STD,
              random_offsets=False, reduce="sum")
  g = _summed_estimates(est, system, NUM_TRUNCS)
  return g.mean(), g.std() / np.sqrt(len(g))


def test_quadratic_is_exact(system):
  # Sanity: the total loss is a quadratic in theta (3 points determine it).
  f = lambda x: float(system.total_loss({"theta": jnp.float32(x)}, 80))
  xs = np.array([-1.0, 0.0, 1.0, 0.5])
  ys = np.array([f(x) for x in xs])
  coef = np.polyfit(xs[:3], ys[:3], 2)
  np.testing.assert_allclose(np.polyval(coef, xs[3]), ys[3], rtol=1e-4)


@pytest.mark.parametrize("name", ["es_single", "pes"])
def test_online_estimators_unbiased(system, true_grad, name, es_single_stats):
  if name == "es_single":
    mean, se = es_single_stats
  else:
    est = E.get(name, system, num_tasks=1, trunc_length=K, std=STD,
                random_offsets=False, reduce="sum")
    g = _summed_estimates(est, system, NUM_TRUNCS)
    mean, se = g.mean(), g.std() / np.sqrt(len(g))
  assert abs(mean - true_grad) < 4 * se, (name, mean, true_grad, se)
  assert se < 0.1 * abs(true_grad)  # the test has power


def test_full_es_unbiased(system):
  theta = system.init_meta_params(None)
  true = float(jax.grad(lambda th: system.total_loss(th, HORIZON))(theta)[
      "theta"])
  est = E.get("full_es", system, num_tasks=1, std=STD, reduce="sum")
  g = _summed_estimates(est, system, 1)
  mean, se = g.mean(), g.std() / np.sqrt(len(g))
  assert abs(mean - true) < 4 * se, (mean, true, se)
  # Two FullES calls = two episodes.
  g2 = _summed_estimates(est, system, 2)
  assert abs(g2.mean() - 2 * true) < 4 * g2.std() / np.sqrt(len(g2))


@pytest.mark.parametrize("name", ["tbptt", "truncated_es"])
def test_truncated_estimators_biased(system, true_grad, es_single_stats, name):
  est = E.get(name, system, num_tasks=1, trunc_length=K, std=STD,
              random_offsets=False, reduce="sum")
  g = _summed_estimates(est, system, NUM_TRUNCS)
  se = max(g.std() / np.sqrt(len(g)), es_single_stats[1])
  assert abs(g.mean() - true_grad) > 10 * se, (name, g.mean(), true_grad, se)


def test_random_offsets_unbiased(system):
  """With a random start offset the estimate matches the gradient of the
  loss of the steps actually unrolled (mixture over offsets)."""
  est = E.get("es_single", system, num_tasks=1, trunc_length=K, std=STD,
              random_offsets=True, reduce="sum")
  theta = system.init_meta_params(None)
  n = 1000
  offsets = np.asarray(jax.vmap(
      lambda s: est.init(theta, jax.random.PRNGKey(s)).ep.t[0])(jnp.arange(n)))
  assert len(np.unique(offsets)) > 10
  g = _summed_estimates(est, system, 4, num_seeds=n)
  grad_at = jax.jit(jax.vmap(lambda o: jax.grad(
      lambda th: system.total_loss(th, 4 * K, o))(theta)["theta"]))
  target = float(np.mean(np.asarray(grad_at(jnp.asarray(offsets)))))
  assert abs(g.mean() - target) < 4 * g.std() / np.sqrt(n)


def _variance(name, system, k):
  est = E.get(name, system, num_tasks=1, trunc_length=k, std=STD,
              random_offsets=False, reduce="sum")
  g = _summed_estimates(est, system, system.horizon // k, num_seeds=500)
  return g.var()


def test_variance_vs_number_of_truncations():
  """Near the optimum of the episode loss the total gradient is small but
  each step's theta still moves later losses: PES's accumulated xi then
  multiplies loss differences it did not cause and its variance grows with
  the number of truncations, while ES-Single's summed estimate equals the
  FullES estimate whatever K (Li et al. 2023, Sec. 5)."""
  base = InfluenceBalancing(horizon=50, target=2.0)
  grad = lambda x: float(jax.grad(lambda t: base.total_loss(t, 50))(
      {"theta": jnp.float32(x)})["theta"])
  g0, g1 = grad(0.0), grad(1.0)
  theta_star = -g0 / (g1 - g0)
  system = InfluenceBalancing(horizon=50, target=2.0,
                              theta0=1.1 * theta_star)
  ks = (50, 10, 1)   # 1, 5 and 50 truncations per episode
  es = [_variance("es_single", system, k) for k in ks]
  pes = [_variance("pes", system, k) for k in ks]
  assert max(es) < 1.5 * min(es), es
  assert pes[1] > 10 * pes[0] and pes[2] > 10 * pes[0], pes
  assert pes[2] > 10 * es[2], (pes, es)


def test_mean_reduction_divides_by_k(system):
  theta = system.init_meta_params(None)
  key = jax.random.PRNGKey(3)
  kw = dict(num_tasks=2, trunc_length=K, std=STD)
  gs = {}
  for red in ("sum", "mean"):
    est = E.get("es_single", system, reduce=red, **kw)
    ws = jax.jit(est.init)(theta, key)
    gs[red] = float(jax.jit(est.estimate)(theta, ws, key)[0]["theta"])
  np.testing.assert_allclose(gs["mean"] * K, gs["sum"], rtol=1e-5)


class _Exploding:
  """theta * x grows until it overflows: non-finite losses inside episodes."""

  max_horizon = 40

  def init_meta_params(self, key):
    return {"a": jnp.float32(3.0)}

  def sample_horizon(self, key):
    return jax.random.randint(key, [], 20, 41)

  def init(self, theta, key, horizon):
    return jnp.float32(1.0)

  def step(self, theta, x, key):
    x = x * jnp.exp(theta["a"]) * 30.0
    return x, x - x / 2 + jnp.float32(0.0) * jnp.log(1e-38 * x - 1.0)


@pytest.mark.parametrize("name", ["es_single", "pes", "truncated_es",
                                  "full_es", "tbptt"])
def test_nonfinite_inner_losses_reset_and_are_counted(name):
  system = _Exploding()
  theta = system.init_meta_params(None)
  est = E.get(name, system, num_tasks=3, trunc_length=10, std=0.01)
  ws = est.init(theta, jax.random.PRNGKey(0))
  step = jax.jit(est.estimate)
  total_nonfinite = 0.0
  for j in range(6):
    g, ws, m = step(theta, ws, jax.random.PRNGKey(j))
    total_nonfinite += float(m["nonfinite"])
    if name != "tbptt":
      assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
  assert total_nonfinite > 0


def test_estimator_rejects_bad_sizes(system):
  with pytest.raises(ValueError, match="trunc_length"):
    E.get("es_single", system, trunc_length=0)
  with pytest.raises(ValueError, match="std"):
    E.get("pes", system, std=-1.0)
  with pytest.raises(ValueError, match="Unknown gradient estimator"):
    E.get("nope", system)


def test_slices_equal_whole_batch(system):
  """Per-task randomness derives from (seed, global task index): two workers
  on halves of the tasks average to the single-worker estimate."""
  sysr = InfluenceBalancing(horizon=23)
  theta = sysr.init_meta_params(None)
  key = jax.random.PRNGKey(7)
  for name in ("es_single", "pes"):
    whole = E.get(name, sysr, num_tasks=4, trunc_length=K, std=STD)
    halves = [E.get(name, sysr, num_tasks=4, trunc_length=K, std=STD,
                    task_indices=idx) for idx in ([0, 1], [2, 3])]
    ws = jax.jit(whole.init)(theta, key)
    wss = [jax.jit(h.init)(theta, key) for h in halves]
    steps = [jax.jit(e.estimate) for e in [whole] + halves]
    for j in range(3):
      k = jax.random.fold_in(key, j)
      g, ws, _ = steps[0](theta, ws, k)
      parts = [f(theta, w, k) for f, w in zip(steps[1:], wss)]
      wss = [p[1] for p in parts]
      avg = sum(float(p[0]["theta"]) * float(p[2]["num_particles"])
                for p in parts) / 4
      np.testing.assert_allclose(avg, float(g["theta"]), rtol=1e-5)
      agg, m = E.aggregate([(p[0], p[2]) for p in parts])
      np.testing.assert_allclose(float(agg["theta"]), float(g["theta"]),
                                 rtol=1e-5)
      assert float(m["num_particles"]) == 4.0


def test_at_most_one_reset_per_truncation_then_idle():
  """Horizon 4 < K = 10: each particle starts its next episode at once and
  idles (masked steps) after a second episode end until the next truncation.
  """
  system = InfluenceBalancing(horizon=4)
  theta = system.init_meta_params(None)
  est = E.get("es_single", system, num_tasks=3, trunc_length=K, std=STD,
              random_offsets=False)
  ws = est.init(theta, jax.random.PRNGKey(0))
  c = jax.jit(lambda th, ws: E.antithetic_unroll(
      system, th, ws.ep, ws.inner, ws.eps, ws.eps, K, std=STD,
      resample_on_reset=True))(theta, ws)
  np.testing.assert_array_equal(np.asarray(c.resets), [1, 1, 1])
  np.testing.assert_array_equal(np.asarray(c.counted), [8, 8, 8])
  np.testing.assert_array_equal(np.asarray(c.ep.episode), [1, 1, 1])


class _Cliff:
  """Loss theta^2 + 1 while theta < 0.05, non-finite beyond: a step past the
  cliff diverges. Episodes of 5 steps, so resets happen inside a
  truncation."""

  max_horizon = 5

  def __init__(self, penalty=None):
    self.nonfinite_loss = penalty

  def init_meta_params(self, key):
    return {"a": jnp.float32(0.0)}

  def sample_horizon(self, key):
    return jnp.int32(5)

  def init(self, theta, key, horizon):
    return jnp.float32(0.0)

  def step(self, theta, x, key):
    a = theta["a"]
    return x, jnp.where(a < 0.05, a * a + 1.0, jnp.nan)


@pytest.mark.parametrize("name", ["es_single", "pes", "truncated_es"])
def test_nonfinite_penalty_makes_divergence_cost(name):
  """Without a penalty, the particles that fall off the cliff drop out of
  the estimate and the meta-loss; with ``nonfinite_loss`` they count as the
  penalty, so the estimate points up the cliff (theta is pushed away)."""
  theta = {"a": jnp.float32(0.0)}
  out = {}
  for pen in (None, 10.0):
    system = _Cliff(pen)
    est = E.get(name, system, num_tasks=64, trunc_length=10, std=0.1)
    ws = est.init(theta, jax.random.PRNGKey(0))
    g, ws, m = jax.jit(est.estimate)(theta, ws, jax.random.PRNGKey(1))
    out[pen] = (float(g["a"]), float(m["meta_loss"]), float(m["nonfinite"]))
  (g0, l0, n0), (g1, l1, n1) = out[None], out[10.0]
  assert n0 > 0 and n1 > 0                    # divergence happened in both
  assert l0 < 1.1 < l1                        # only counted with a penalty
  # Loss to the right of 0 is 10 instead of missing: a large positive
  # gradient (gradient descent moves theta away from the cliff).
  assert g1 > 10 * abs(g0) and g1 > 1.0


def test_inner_training_charges_loss_clip_for_nonfinite_steps():
  import lopt
  import lopt.tasks
  from lopt.meta_train.inner import InnerTraining
  fam = lopt.tasks.get_family("quadratic")
  rule = lopt.rules.get("sgd")
  assert InnerTraining(rule, fam).nonfinite_loss is None
  assert InnerTraining(rule, fam, loss_clip=3.0).nonfinite_loss == 3.0


class _LateWeighted(InfluenceBalancing):
  """Influence balancing whose step ``t`` of ``T`` counts ``2 (t + 1/2) / T``
  (InnerTraining's ``loss_weighting="linear"``)."""

  def step_weight(self, t, horizon):
    return 2.0 * (t.astype(jnp.float32) + 0.5) / horizon.astype(jnp.float32)

  def weighted_total_loss(self, theta, num_steps):
    def body(carry, _):
      s, t = carry
      s = jnp.where(t >= self.horizon, jnp.ones_like(s), s)
      t = jnp.where(t >= self.horizon, 0, t)
      s, loss = self.step(theta, s, None)
      return (s, t + 1), self.step_weight(t, jnp.int32(self.horizon)) * loss

    init = (jnp.ones([self.dim], jnp.float32), jnp.int32(0))
    return jnp.sum(jax.lax.scan(body, init, None, length=num_steps)[1])


@pytest.mark.parametrize("name", ["es_single", "pes"])
def test_step_weights_are_estimated_without_bias(true_grad, name):
  system = _LateWeighted(horizon=HORIZON)
  theta = system.init_meta_params(None)
  weighted = float(jax.grad(lambda th: system.weighted_total_loss(
      th, K * NUM_TRUNCS))(theta)["theta"])
  est = E.get(name, system, num_tasks=1, trunc_length=K, std=STD,
              random_offsets=False, reduce="sum")
  g = _summed_estimates(est, system, NUM_TRUNCS)
  mean, se = g.mean(), g.std() / np.sqrt(len(g))
  assert abs(mean - weighted) < 4 * se, (name, mean, weighted, se)
  # The weighting changes the objective measurably.
  assert abs(mean - true_grad) > 10 * se, (name, mean, true_grad, se)


def test_inner_training_step_weights():
  import lopt
  import lopt.tasks
  from lopt.meta_train.inner import InnerTraining
  rule, fam = lopt.rules.get("sgd"), lopt.tasks.get_family("digits_mlp")
  t = jnp.arange(40)
  uniform = InnerTraining(rule, fam).step_weight(t, jnp.int32(40))
  np.testing.assert_array_equal(uniform, np.ones(40, np.float32))
  linear = InnerTraining(rule, fam, loss_weighting="linear").step_weight(
      t, jnp.int32(40))
  assert np.all(np.diff(np.asarray(linear)) > 0)
  np.testing.assert_allclose(float(jnp.mean(linear)), 1.0, rtol=1e-6)
  quad = InnerTraining(rule, fam, loss_weighting="quadratic").step_weight(
      t, jnp.int32(40))
  np.testing.assert_allclose(quad, 3 * ((np.arange(40) + 0.5) / 40) ** 2,
                             rtol=1e-6)
  np.testing.assert_allclose(float(jnp.mean(quad)), 1 - 1 / (4 * 40 ** 2),
                             rtol=1e-6)
  final = InnerTraining(rule, fam, loss_weighting="final").step_weight(
      t, jnp.int32(40))
  np.testing.assert_array_equal(final, np.where(np.arange(40) >= 36, 10, 0))
  np.testing.assert_allclose(float(jnp.mean(final)), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="loss_weighting must be one of"):
    InnerTraining(rule, fam, loss_weighting="late")
