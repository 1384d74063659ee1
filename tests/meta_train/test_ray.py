"""Distributed meta-training on a local Ray (loopback only).

One Ray instance for the module (started by a fixture after the first Ray
test, which checks that a run starting its own Ray and failing leaves no Ray
behind). Tiny problems (learnable SGD on the quadratic family) and a shared
persistent compilation cache keep the compile times small.
"""

import json
import logging
import os
import subprocess
import sys
import time

import jax
import numpy as np
import psutil
import pytest

import lopt
from lopt.meta_train import cli
from lopt.meta_train import distributed as D
from lopt.meta_train import estimators as E
from lopt.meta_train.checkpoint import Checkpointer
from lopt.meta_train.config import ConfigError, MetaTrainConfig
from lopt.meta_train.influence import InfluenceBalancing
from lopt.meta_train.logging import read_scalars
from lopt.meta_train.trainer import MetaTrainer

# Ray starts its daemons and workers as subprocesses (fork immediately
# followed by exec), which trips JAX's os.fork warning; as in
# lopt.meta_train.distributed.ray_connection, it is harmless here.
# With pytest-xdist (the README's test command), the module's tests share one
# worker ("loadgroup"), so that its one Ray instance serves them all.
pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:os\.fork\(\) was called:RuntimeWarning"),
    pytest.mark.xdist_group("ray"),
]

TINY = dict(rule="sgd", task_family="quadratic", num_tasks=4, trunc_length=5,
            horizon_min=6, horizon_max=20, outer_steps=4, log_every=1,
            checkpoint_every=0)
SETS = [f"{k}={v}" for k, v in TINY.items()]


def _cfg(**kw):
  d = dict(TINY)
  d.update(kw)
  return MetaTrainConfig(**d)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _ray_processes():
  """Ray daemons / workers that are descendants of this process."""
  names = ("raylet", "gcs_server", "ray::", "default_worker", "plasma",
           "dashboard", "log_monitor", "monitor.py", "runtime_env")
  out = []
  for p in psutil.Process().children(recursive=True):
    try:
      text = " ".join([p.name()] + p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      continue
    if any(n in text for n in names):
      out.append(p)
  return out


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
  """A local Ray for the module; the workers (which get the driver's JAX_*
  variables) share a persistent compilation cache, so only the first run
  and no restart compiles from scratch."""
  pytest.importorskip("ray")
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla")),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    with D.local_ray(2, logging_level=logging.WARNING) as ray:
      yield ray
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


# -- pure pieces (no Ray) ------------------------------------------------------


def test_staleness_book_and_layout():
  book = D.StalenessBook(max_staleness=1)
  # learner version, estimate version -> accepted?
  for current, version, ok in [(0, 0, True), (3, 2, True), (3, 1, False),
                               (5, 5, True), (5, 0, False)]:
    assert book.offer(current, version) == (ok, current - version)
  assert (book.accepted, book.dropped, book.staleness_max) == (3, 2, 1)
  zero = D.StalenessBook(max_staleness=0)
  assert zero.offer(4, 4) == (True, 0) and zero.offer(4, 3) == (False, 1)
  with pytest.raises(ValueError, match="newer"):
    zero.offer(1, 2)

  assert D.split_tasks(5, 2) == [[0, 1, 2], [3, 4]]
  with pytest.raises(ConfigError, match="every worker needs a task"):
    D.split_tasks(2, 3)
  # The workers' states concatenate to the whole-batch state (any estimator
  # layout: [P] bookkeeping, [2, P, ...] antithetic inner states).
  system = InfluenceBalancing(horizon=23)
  theta, key = system.init_meta_params(None), jax.random.PRNGKey(3)
  kw = dict(num_tasks=4, num_particles=2, trunc_length=5)
  whole = E.get("pes", system, **kw).init(theta, key)
  parts = [E.get("pes", system, task_indices=s, **kw).init(theta, key)
           for s in D.split_tasks(4, 2)]
  axes = D.particle_axes(whole, parts[0])
  assert 1 in jax.tree.leaves(axes) and 0 in jax.tree.leaves(axes)
  merged = D.merge_states(jax.device_get(parts), axes)
  for a, b in zip(_leaves(whole), _leaves(merged)):
    np.testing.assert_array_equal(a, b)
  back = D.split_state(merged, [4, 4], axes)
  for p, q in zip(parts, back):
    for a, b in zip(_leaves(p), _leaves(q)):
      np.testing.assert_array_equal(a, b)

  with pytest.raises(ConfigError, match="mode"):
    D.RayOptions(mode="fast").validate()


def test_cli_without_ray_flags_never_imports_ray(tmp_path):
  code = ("import sys; from lopt.meta_train import cli, distributed; "
          "rc = cli.main(['--print-config']); "
          "assert 'ray' not in sys.modules, 'ray imported'; "
          "rc2 = cli.main(['--workers', '2', '--out', 'x']); "
          "sys.exit(10 * rc + rc2)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 2, r.stderr      # --workers without --ray: error
  assert "need --ray or --ray-address" in r.stderr


# -- on Ray --------------------------------------------------------------------


@pytest.mark.ray
def test_ray_is_shut_down_after_an_error():
  """A run that starts its own Ray and fails (here: the worker actors do not
  answer within the timeout) raises a clear error, shuts Ray down and leaves
  no Ray process behind. Runs before the module's Ray is started."""
  ray = pytest.importorskip("ray")
  assert not ray.is_initialized()
  trainer = D.RayMetaTrainer(
      _cfg(), D.RayOptions(workers=2, num_cpus=2, timeout_s=0.05))
  with pytest.raises(D.DistributedTimeout,
                     match="start the worker actors.*--ray-timeout"):
    trainer.run(None, progress=False)
  assert not ray.is_initialized()
  assert trainer.actors == []
  deadline = time.time() + 30
  while _ray_processes() and time.time() < deadline:
    time.sleep(0.5)
  assert not _ray_processes(), [p.cmdline() for p in _ray_processes()]


@pytest.mark.ray
def test_local_ray_runs_on_loopback(ray_local):
  """The local cluster's daemons and workers use 127.0.0.1 (Ray on Linux
  would otherwise swap it for the primary interface's address)."""
  ray = ray_local

  @ray.remote
  def node_ip():
    import ray as r
    return r.util.get_node_ip_address()

  assert ray.util.get_node_ip_address() == "127.0.0.1"
  assert ray.get(node_ip.remote(), timeout=60) == "127.0.0.1"
  assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
  raylets = [p for p in _ray_processes() if "raylet" in p.name()]
  assert raylets and all("--node_ip_address=127.0.0.1" in p.cmdline()
                         for p in raylets)


@pytest.mark.ray
def test_sync_ray_equals_single_process(ray_local, tmp_path, capsys):
  """2 workers x 2 tasks, synchronous: the same theta and inner problems as
  one process over the 4 tasks. Checkpoints have the single-process layout:
  a single-process checkpoint resumes on Ray (CLI) to the same result, with
  the same files and TensorBoard plus dist/* scalars."""
  reference = MetaTrainer(_cfg())
  single = reference.run(None, progress=False)
  res = D.RayMetaTrainer(_cfg(), D.RayOptions(workers=2, timeout_s=120)).run(
      None, progress=False)
  for a, b in zip(_leaves(single.state), _leaves(res.state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  out = tmp_path / "run"
  reference.run(str(out), progress=False, until=2)     # checkpoint at 2
  argv = ["--out", str(out), "--resume", "--no-progress", "--ray",
          "--workers", "2", "--ray-timeout", "120"]
  assert cli.main(argv) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["outer_steps"] == 4
  assert summary["distributed"]["workers"] == 2
  assert summary["distributed"]["lost_estimates"] == 0
  # Every step ran as one compiled-graph execution.
  assert summary["distributed"]["graph_steps"] == 2
  theta = lopt.read(out / "final.lopt").theta
  for a, b in zip(_leaves(single.state.theta), _leaves(theta)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  ckpt = Checkpointer(out / "checkpoints")
  try:
    restored = ckpt.restore(single.state)
  finally:
    ckpt.close()
  for a, b in zip(_leaves(single.state.worker_state),
                  _leaves(restored.worker_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  scalars = read_scalars(out / "tb")
  for tag in ("meta/loss", "dist/worker0/inner_steps_per_s",
              "dist/worker1/inner_steps_per_s", "dist/lost_estimates"):
    assert [s for s, _ in scalars[tag]][-2:] == [3, 4], tag
  assert all(v > 0 for _, v in scalars["dist/worker1/inner_steps_per_s"])


@pytest.mark.ray
def test_killed_worker_is_restarted(ray_local, caplog):
  trainer = D.RayMetaTrainer(_cfg(outer_steps=6),
                             D.RayOptions(workers=2, timeout_s=120))

  masks = {}

  def thread_masks(pid):
    return {tuple(sorted(os.sched_getaffinity(t.id)))
            for t in psutil.Process(pid).threads()}

  def kill(n, row, state):
    if n == 1:      # local Ray, 2 workers on 2 cores: each pinned to its own
      masks.update({w: thread_masks(p) for w, p in trainer._pids.items()})
    if n == 2:
      ray_local.kill(trainer.actors[1], no_restart=False)

  with caplog.at_level(logging.WARNING, logger=D.__name__):
    res = trainer.run(None, progress=False, callback=kill)
  cpus = sorted(os.sched_getaffinity(0))
  assert masks == {w: {(cpus[w % len(cpus)],)} for w in (0, 1)}
  assert int(res.state.step) == 6
  assert all(np.all(np.isfinite(x)) for x in _leaves(res.state.theta))
  restarts = sum(r["dist/worker_restarts"] for r in res.history)
  assert restarts >= 1 and trainer.totals["worker_restarts"] >= 1
  assert "worker 1 restarted" in caplog.text
  # The kill broke the step's compiled graph: redone with plain calls, then
  # a new graph for the remaining steps.
  assert "compiled-graph execution failed" in caplog.text
  assert trainer.totals["redone_steps"] >= 1
  assert trainer.totals["graph_steps"] >= 3
  assert res.history[-1]["dist/workers"] == 2.0


@pytest.mark.ray
def test_async_drops_stale_estimates(ray_local):
  """Bound 0: an estimate is used only for the theta it was computed for.
  With two workers, each update leaves the other worker's in-flight estimate
  one version behind, so it is dropped (counted) when it returns (during
  the run, or when the learner drains the workers at the end)."""
  cfg = _cfg(outer_steps=6, ray_mode="async", max_staleness=0)
  trainer = D.RayMetaTrainer(cfg, D.RayOptions.from_config(
      cfg, workers=2, timeout_s=120))
  res = trainer.run(None, progress=False)
  assert int(res.state.step) == 6
  assert all(np.all(np.isfinite(x)) for x in _leaves(res.state.theta))
  assert max(r["dist/staleness_max"] for r in res.history) == 0.0
  dropped = trainer.totals["dropped_stale"]
  assert dropped == sum(r["dist/dropped_stale"] for r in res.history)
  assert dropped >= 1 and trainer._book.dropped == dropped
  assert trainer._book.accepted >= 2 * 6


@pytest.mark.ray
def test_sync_ray_mixture_equals_single_process(ray_local):
  """A mixture of families: each worker owns its slice of every family's
  batch; the result equals the single-process run."""
  cfg = _cfg(task_family="quadratic,linear_regression", outer_steps=3)
  single = MetaTrainer(cfg).run(None, progress=False)
  res = D.RayMetaTrainer(cfg, D.RayOptions(workers=2, timeout_s=120)).run(
      None, progress=False)
  for a, b in zip(_leaves(single.state), _leaves(res.state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.ray
def test_object_store_theta_and_plain_calls_match_single_process(
    ray_local, monkeypatch):
  """A theta too large to travel inline goes through the object store for
  plain calls and by value into the compiled graph; both paths give the
  single-process theta."""
  monkeypatch.setattr(D, "INLINE_THETA_BYTES", 0)
  single = MetaTrainer(_cfg(outer_steps=3)).run(None, progress=False)
  for compiled in (True, False):
    trainer = D.RayMetaTrainer(_cfg(outer_steps=3), D.RayOptions(
        workers=2, timeout_s=120, compiled_graph=compiled))
    res = trainer.run(None, progress=False)
    assert trainer.totals["graph_steps"] == (3 if compiled else 0)
    assert trainer.totals["lost_estimates"] == 0
    for a, b in zip(_leaves(single.state.theta), _leaves(res.state.theta)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
