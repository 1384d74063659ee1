"""Distributed meta-training on Ray: gradient workers as actors, one learner.

Layout::

    learner (this process)                      gradient workers (Ray actors)
    ----------------------                      -----------------------------
    theta_ref = ray.put(theta)      ------>     worker w owns tasks S_w: its own
    collect (grad_w, metrics_w)     <------     inner states + estimator state;
    g = aggregate(...)  # weighted by            grad_w = estimate(theta, ws_w,
                        # num_particles                     fold_in(root, k))
    theta = apply_gradient(g)

Each worker is a :class:`~lopt.meta_train.trainer.MetaTrainer` restricted to
its slice of the task batch (``task_indices``); per-task randomness derives
from ``(seed, global task index)`` and the estimate key from the outer step,
so the **synchronous** mode computes the same theta as the single-process
run (up to float rounding of the particle-weighted average,
:func:`lopt.meta_train.estimators.aggregate`). The **asynchronous** mode
keeps every worker busy: the learner applies an update as soon as it holds a
full batch worth of particles and drops estimates computed for a theta more
than ``max_staleness`` updates old (counted; see :class:`StalenessBook`).

Fault tolerance: actors are created with ``max_restarts``; a worker that dies
is restarted by Ray, re-initialises its inner problems on its next call and
the outer step it was part of is completed from the remaining workers (or
redone when none returned). Every remote wait has a timeout. The learner's
own crash is covered by checkpoint resume: checkpoints hold the same
:class:`~lopt.meta_train.trainer.TrainState` as single-process runs (the
workers' states are gathered and concatenated along the particle axis), so a
run can resume with another worker count or without Ray.

Synchronous steps go through a Ray Compiled Graph (``ray.dag``: one
``compute`` per worker bound to the learner's input, compiled once, executed
every step over shared-memory channels instead of a task submission per
call; measured back to back on the 2-core machine, bench/ray_scaling.py:
2-worker throughput 45.5-45.8 -> 48.0-49.3 outer steps/s). Theta goes into
the graph by value (a graph does not resolve object references). A step
whose graph execution fails (a worker died: Ray fails every output of the
graph) tears the graph down and is redone with plain actor calls, which run
the fault handling above; the graph is compiled again for the workers alive
at the next step. ``compiled_graph=False`` uses plain
calls throughout; a graph that does not compile (e.g. an older Ray) falls
back to them with a warning.

Ray is imported only when a session starts (``import lopt.meta_train`` and
single-process runs never import it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt import cpu_flags
from lopt.meta_train import cpu
from lopt.meta_train import estimators as estimators_lib
from lopt.meta_train.config import ConfigError, MetaTrainConfig
from lopt.meta_train.trainer import MetaTrainer, TrainState

PyTree = Any
log = logging.getLogger(__name__)

MODES = ("sync", "async")


class DistributedError(RuntimeError):
  """A distributed run cannot go on (all workers lost, a step failed on
  every worker, or a remote call timed out)."""


class DistributedTimeout(DistributedError, TimeoutError):
  """A remote call did not answer within ``RayOptions.timeout_s``."""

INLINE_THETA_BYTES = 64 * 1024


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class RayOptions:
  """How a run is distributed.

  Attributes:
    address: Ray cluster to connect to (e.g. ``"10.0.0.1:6379"`` or
      ``"auto"``); None starts a local Ray on loopback with ``num_cpus``.
    num_cpus: CPUs of the local Ray (default: the machine's cores).
    workers: gradient workers (0: as many as the cluster's CPUs allow at
      ``cpus_per_worker`` each, at most ``num_tasks``).
    cpus_per_worker: Ray CPUs reserved per worker actor.
    mode: ``"sync"`` (equal to the single-process run) or ``"async"``.
    max_staleness: async mode: estimates computed for a theta more than this
      many updates old are dropped.
    timeout_s: longest wait for any remote call (first calls compile).
    max_restarts: Ray restarts of a dead worker actor.
    max_redo: times an outer step is redone when no worker returned.
    single_thread_xla: single-threaded XLA in each worker (faster for small
      inner problems; one worker per core). Workers get the driver's
      ``XLA_FLAGS`` merged with :data:`lopt.cpu_flags.CPU_FLAGS` (less the
      single-thread flag when this is False).
    pin_cpus: pin worker ``w`` (all its threads) to core ``w mod cores``
      (:func:`lopt.meta_train.cpu.pin_to_cpu`); None: pin on a local Ray
      (``address`` None) whose workers do not outnumber its cores, never on
      a cluster (where workers cannot tell which cores Ray gave them).
      XLA's CPU runtime splits large loops over threads even when
      single-threaded; unpinned, two workers on two cores fight over both.
    compiled_graph: sync mode: run each step as a Ray Compiled Graph
      execution (module docstring); False: plain actor calls.
    worker_delays: test hook: seconds each worker sleeps per estimate.
  """

  address: Optional[str] = None
  num_cpus: Optional[int] = None
  workers: int = 0
  cpus_per_worker: float = 1.0
  mode: str = "sync"
  max_staleness: int = 1
  timeout_s: float = 600.0
  max_restarts: int = 3
  max_redo: int = 3
  single_thread_xla: bool = True
  pin_cpus: Optional[bool] = None
  compiled_graph: bool = True
  worker_delays: Optional[Sequence[float]] = None

  @classmethod
  def from_config(cls, config: MetaTrainConfig, **overrides) -> "RayOptions":
    """Options from the config's distribution fields, then ``overrides``
    (None values are ignored)."""
    d = dict(workers=config.workers, cpus_per_worker=config.cpus_per_worker,
             mode=config.ray_mode, max_staleness=config.max_staleness)
    d.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**d)

  def validate(self) -> "RayOptions":
    """Raises :class:`ConfigError` (one message) on bad values."""
    problems = []
    if self.mode not in MODES:
      problems.append(f"mode must be one of {MODES} (got {self.mode!r})")
    if self.workers < 0:
      problems.append(f"workers must be >= 0 (got {self.workers})")
    if not self.cpus_per_worker > 0:
      problems.append(f"cpus_per_worker must be > 0 (got "
                      f"{self.cpus_per_worker})")
    if self.max_staleness < 0:
      problems.append(f"max_staleness must be >= 0 (got "
                      f"{self.max_staleness})")
    if not self.timeout_s > 0:
      problems.append(f"timeout_s must be > 0 (got {self.timeout_s})")
    if self.max_restarts < 0 or self.max_redo < 0:
      problems.append("max_restarts and max_redo must be >= 0")
    if self.num_cpus is not None and self.num_cpus < 1:
      problems.append(f"num_cpus must be >= 1 (got {self.num_cpus})")
    if problems:
      raise ConfigError("Invalid Ray options: " + "; ".join(problems) + ".")
    return self


# ---------------------------------------------------------------------------
# pure helpers: task slices, worker-state layout, staleness bookkeeping
# ---------------------------------------------------------------------------


def split_tasks(num_tasks: int, workers: int) -> List[List[int]]:
  """Contiguous, balanced slices of ``range(num_tasks)`` (task-major order,
  so concatenating the workers' particles gives the single-process layout).
  """
  if workers < 1 or workers > num_tasks:
    raise ConfigError(f"workers must be in [1, num_tasks={num_tasks}] "
                      f"(got {workers}): every worker needs a task.")
  return [[int(i) for i in s]
          for s in np.array_split(np.arange(num_tasks), workers)]


def particle_axes(full: PyTree, part: PyTree) -> PyTree:
  """Per leaf, the axis along which the workers' states are concatenated:
  the one axis where the whole-batch state ``full`` and a worker's ``part``
  (shapes or arrays; ``part`` owns fewer tasks) differ in size, or -1 for
  leaves that do not depend on the tasks (taken from the first worker)."""

  def axis(f, p):
    fs, ps = tuple(np.shape(f)), tuple(np.shape(p))
    if len(fs) != len(ps):
      raise ValueError(f"worker state leaf of rank {len(ps)} where the "
                       f"whole-batch state has rank {len(fs)}")
    diff = [i for i, (a, b) in enumerate(zip(fs, ps)) if a != b]
    if len(diff) > 1:
      raise ValueError(f"worker state leaf {ps} differs from {fs} in more "
                       "than one axis")
    return diff[0] if diff else -1

  return jax.tree.map(axis, full, part)


def merge_states(states: Sequence[PyTree], axes: PyTree) -> PyTree:
  """Concatenates the workers' states (in task order) along ``axes``."""
  if len(states) == 1:
    return states[0]

  def cat(ax, *xs):
    return xs[0] if ax < 0 else np.concatenate(xs, axis=ax)

  return jax.tree.map(cat, axes, *states)


def split_state(state: PyTree, sizes: Sequence[int], axes: PyTree
                ) -> List[PyTree]:
  """Inverse of :func:`merge_states`: ``sizes`` particles per worker."""
  if len(sizes) == 1:
    return [state]
  cuts = np.cumsum(sizes)[:-1]

  def parts(ax, x):
    x = np.asarray(x)
    return ([x] * len(sizes) if ax < 0 else np.split(x, cuts, axis=ax))

  pieces = jax.tree.map(parts, axes, state)
  treedef = jax.tree.structure(axes)
  leaves = treedef.flatten_up_to(pieces)
  return [treedef.unflatten([leaf[w] for leaf in leaves])
          for w in range(len(sizes))]


@dataclasses.dataclass
class StalenessBook:
  """Bounded-staleness bookkeeping of the asynchronous learner (pure).

  ``offer(current, version)`` decides whether an estimate computed for theta
  version ``version`` may enter the update that produces version
  ``current + 1``: accepted iff ``current - version <= max_staleness``.
  Counts accepted and dropped estimates and the staleness of the accepted.
  """

  max_staleness: int
  accepted: int = 0
  dropped: int = 0
  staleness_sum: int = 0
  staleness_max: int = 0

  def offer(self, current: int, version: int) -> Tuple[bool, int]:
    staleness = int(current) - int(version)
    if staleness < 0:
      raise ValueError(f"estimate for theta version {version} is newer than "
                       f"the learner's version {current}")
    if staleness > self.max_staleness:
      self.dropped += 1
      return False, staleness
    self.accepted += 1
    self.staleness_sum += staleness
    self.staleness_max = max(self.staleness_max, staleness)
    return True, staleness


# ---------------------------------------------------------------------------
# the worker actor
# ---------------------------------------------------------------------------


class GradientWorker:
  """A gradient worker (run as a Ray actor): the estimator over its slice of
  the task batch, with its own inner problems and estimator state.

  ``compute(theta, version, key_index)`` returns the estimate of this slice
  for ``theta`` with outer-step key ``fold_in(root, key_index)`` (as the
  single-process run uses for outer step ``key_index``). An actor that Ray
  restarted has no state; it re-initialises its inner problems with the theta
  of its next call and says so (``reinitialised``).
  """

  def __init__(self, config: Dict[str, Any], task_indices: Sequence[int],
               index: int, rule: Any = None, family: Any = None,
               delay_s: float = 0.0, pin_core: Optional[int] = None):
    # Pin before any JAX work starts XLA's threads (a restarted actor runs
    # this again and lands on the same core).
    self._core = None if pin_core is None else cpu.pin_to_cpu(pin_core)
    cfg = MetaTrainConfig.from_dict(config)
    self._index = int(index)
    self._delay = float(delay_s)
    self._trainer = MetaTrainer(cfg, rule=rule, family=family,
                                task_indices=list(task_indices))
    root = self._trainer._outer_root
    estimate = self._trainer.estimator.estimate
    # The outer-step key is derived inside the jit (one dispatch per call).
    self._estimate = jax.jit(
        lambda theta, state, k: estimate(theta, state,
                                         jax.random.fold_in(root, k)),
        donate_argnums=1)
    self._state = None

  def ping(self) -> Dict[str, Any]:
    return {"worker": self._index, "pid": os.getpid(),
            "initialised": self._state is not None, "core": self._core}

  def init_state(self, theta: PyTree) -> int:
    """Fresh inner problems (seed key of the run); returns the pid."""
    self._state = self._trainer._init_worker(theta, self._trainer._worker_key)
    return os.getpid()

  def set_state(self, state: PyTree) -> int:
    self._state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    return os.getpid()

  def get_state(self) -> PyTree:
    if self._state is None:
      raise RuntimeError(f"worker {self._index} has no state yet")
    return jax.tree.map(np.asarray, jax.device_get(self._state))

  def compute(self, theta: PyTree, version: int, key_index: int
              ) -> Dict[str, Any]:
    t0, c0, w0 = time.perf_counter(), time.process_time(), time.time()
    reinit = self._state is None
    if reinit:
      self.init_state(theta)
    grad, self._state, metrics = self._estimate(
        theta, self._state, np.int32(key_index))
    grad, metrics = jax.device_get((grad, metrics))
    if self._delay > 0:
      time.sleep(self._delay)
    return {"grad": jax.tree.map(np.asarray, grad),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "version": int(version), "key_index": int(key_index),
            "worker": self._index, "pid": os.getpid(),
            "reinitialised": reinit,
            "compute_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "wall_start": w0, "wall_end": time.time()}


# ---------------------------------------------------------------------------
# Ray session
# ---------------------------------------------------------------------------


def import_ray():
  try:
    import ray
  except ImportError as e:  # pragma: no cover - ray is in the train extra
    raise ImportError("Distributed meta-training needs Ray: pip install "
                      "'lopt[train]' (or pip install ray).") from e
  return ray


#: Ray's single-machine mode (its default on macOS and Windows). On Linux Ray
#: replaces a node address of "127.0.0.1" with the primary interface's
#: address (``ray._private.services.resolve_ip_for_localhost``), so
#: ``_node_ip_address="127.0.0.1"`` alone leaves the daemons and workers
#: talking over, e.g., eth0's address; with this mode off Ray keeps loopback.
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def local_ray(num_cpus: int, **init_kwargs: Any) -> Iterator[Any]:
  """Starts a local Ray on the loopback address (127.0.0.1), yields the
  ``ray`` module and shuts it down on exit (also on error).

  Token auth and the dashboard are off. The daemons and workers of a local
  run then address each other at 127.0.0.1: Ray's single-machine mode
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, unless the caller set the
  variable) is on while it runs, and the process's settings are restored
  afterwards, so a later connection to a real cluster is not affected. If
  Ray still picks another address (a future Ray), a warning names it.
  """
  saved_env = {k: os.environ.get(k) for k in (_RAY_CLUSTER_ENV,
                                              "RAY_AUTH_MODE")}
  os.environ.setdefault("RAY_AUTH_MODE", "disabled")
  os.environ.setdefault(_RAY_CLUSTER_ENV, "0")
  ray = import_ray()
  # Ray reads the variable when it is first imported; if that was before
  # this call, set the value it was read into (private, hence guarded).
  constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
  saved_const = getattr(constants, "ENABLE_RAY_CLUSTER", None)
  if saved_const is not None and os.environ[_RAY_CLUSTER_ENV] == "0":
    constants.ENABLE_RAY_CLUSTER = False
  try:
    with _quiet_fork():
      ray.init(num_cpus=int(num_cpus), include_dashboard=False,
               _node_ip_address="127.0.0.1", **init_kwargs)
    ip = ray.util.get_node_ip_address()
    if ip != "127.0.0.1":
      log.warning("Ray: the local cluster runs on %s, not on 127.0.0.1 (Ray "
                  "did not keep the loopback address); its traffic stays on "
                  "this machine but uses that interface's address.", ip)
    yield ray
  finally:
    ray.shutdown()
    if saved_const is not None:
      constants.ENABLE_RAY_CLUSTER = saved_const
    for k, v in saved_env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


@contextlib.contextmanager
def ray_connection(address: Optional[str] = None,
                   num_cpus: Optional[int] = None) -> Iterator[Any]:
  """Yields the ``ray`` module connected to a cluster.

  Reuses a connection made by the caller (and leaves it open); otherwise
  starts a local Ray on loopback (``address=None``; token auth off,
  no dashboard) or connects to ``address``, and always shuts it down on exit,
  also on error.
  """
  ray = import_ray()
  if ray.is_initialized():
    yield ray
    return
  if address is None:
    n = int(num_cpus or os.cpu_count() or 1)
    log.info("Ray: starting a local cluster on 127.0.0.1 with %d CPUs", n)
    context = local_ray(n, logging_level=logging.WARNING)
  else:
    log.info("Ray: connecting to the cluster at %s", address)
    context = _remote_ray(ray, address)
  with context as connected:
    yield connected


@contextlib.contextmanager
def _quiet_fork() -> Iterator[None]:
  with warnings.catch_warnings():
    # Ray starts its daemons with fork+exec (harmless for JAX).
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
    yield


@contextlib.contextmanager
def _remote_ray(ray: Any, address: str) -> Iterator[Any]:
  try:
    with _quiet_fork():
      ray.init(address=address, logging_level=logging.WARNING)
    yield ray
  finally:
    ray.shutdown()


def _worker_env() -> Dict[str, str]:
  return {k: v for k, v in os.environ.items()
          if k.startswith("JAX_")}


# ---------------------------------------------------------------------------
# the learner
# ---------------------------------------------------------------------------


class RayMetaTrainer(MetaTrainer):
  """:class:`MetaTrainer` whose outer steps run on Ray gradient workers.

  ``run()`` behaves as the single-process one (same outputs: TensorBoard,
  ``metrics.jsonl``, checkpoints, ``final.lopt``/``best.lopt``,
  ``summary.json``) plus ``dist/*`` scalars: per-worker inner steps per
  second of compute, staleness, dropped/lost estimates, restarts. Ray is
  started (or connected) for the duration of ``run()`` / :meth:`session`.

  Args:
    config: the run's :class:`MetaTrainConfig`.
    options: :class:`RayOptions` (default: from the config's fields).
    rule, family: as for :class:`MetaTrainer` (pickled to the workers).
  """

  def __init__(self, config: MetaTrainConfig,
               options: Optional[RayOptions] = None, *, rule: Any = None,
               family: Any = None):
    super().__init__(config, rule=rule, family=family)
    self.options = (options or RayOptions.from_config(config)).validate()
    self._rule_arg, self._family_arg = rule, family
    self.step_fn = self._distributed_step
    self._init_worker = self._init_on_workers
    self._learn = jax.jit(self._learn_impl, donate_argnums=0)
    self.actors: List[Any] = []
    self.slices: List[List[int]] = []
    self.events: List[str] = []
    self.totals: Dict[str, float] = {}
    self._ray = None
    self._stop: Optional[int] = None
    self._checkpointing = False

  # -- learner half -----------------------------------------------------------

  def _learn_impl(self, state: TrainState, grads, metrics):
    grad, m = estimators_lib.aggregate(list(zip(grads, metrics)))
    return self.apply_gradient(state, grad, m)

  # -- session ----------------------------------------------------------------

  @contextlib.contextmanager
  def session(self) -> Iterator["RayMetaTrainer"]:
    """Connects to Ray, starts the worker actors; on exit kills them and
    shuts Ray down if this session started it (also on error)."""
    if self._ray is not None:
      yield self
      return
    opts = self.options
    with ray_connection(opts.address, opts.num_cpus) as ray:
      self._ray = ray
      try:
        self._start_workers()
        yield self
      finally:
        self._teardown_graph()
        for a in self.actors:
          with contextlib.suppress(Exception):
            ray.kill(a, no_restart=True)
        self.actors = []
        self._ray = None

  def _start_workers(self) -> None:
    ray, opts, cfg = self._ray, self.options, self.config
    cpus = float(ray.cluster_resources().get("CPU", 0))
    workers = opts.workers or max(1, int(cpus // opts.cpus_per_worker))
    workers = min(workers, cfg.num_tasks) if not opts.workers else workers
    if opts.address is None and workers * opts.cpus_per_worker > cpus:
      raise ConfigError(
          f"{workers} workers x {opts.cpus_per_worker} CPUs do not fit the "
          f"local Ray's {cpus:g} CPUs; lower workers or cpus_per_worker.")
    if workers * opts.cpus_per_worker > cpus:
      log.warning("Ray: %d workers x %g CPUs exceed the cluster's %g CPUs; "
                  "workers wait for resources (timeout %g s)", workers,
                  opts.cpus_per_worker, cpus, opts.timeout_s)
    self.slices = split_tasks(cfg.num_tasks, workers)
    self._sizes = [len(s) * cfg.num_particles for s in self.slices]
    env = _worker_env()
    env["XLA_FLAGS"] = cpu_flags.merge(os.environ.get("XLA_FLAGS"),
                                       single_thread=opts.single_thread_xla)
    cls = ray.remote(GradientWorker).options(
        num_cpus=opts.cpus_per_worker, max_restarts=opts.max_restarts,
        max_task_retries=0, runtime_env={"env_vars": env})
    delays = list(opts.worker_delays or [])
    pin = opts.pin_cpus
    if pin is None:
      pin = opts.address is None and workers * opts.cpus_per_worker <= cpus
    self.actors = [
        cls.remote(cfg.to_dict(), s, w, self._rule_arg, self._family_arg,
                   delays[w] if w < len(delays) else 0.0,
                   w if pin else None)
        for w, s in enumerate(self.slices)]
    self._alive = list(range(workers))
    self._recovering: set = set()
    self._pids: Dict[int, int] = {}
    self._inflight: Dict[Any, Tuple[int, int]] = {}
    self._book = StalenessBook(opts.max_staleness)
    self._theta_version = -1
    self._theta_ref = None
    self._theta_value = None
    self._actors_step = None
    self._key_index: Dict[int, int] = {}
    self._graph = None
    self._graph_workers: Tuple[int, ...] = ()
    self._graph_ok = self.options.compiled_graph and opts.mode == "sync"
    self.totals = {k: 0.0 for k in ("lost_estimates", "worker_restarts",
                                    "redone_steps", "dropped_stale",
                                    "discarded_in_flight", "graph_steps")}
    self.events = []
    pings = self._get([a.ping.remote() for a in self.actors],
                      "start the worker actors")
    self._pids = {p["worker"]: p["pid"] for p in pings}
    self.cores = {p["worker"]: p["core"] for p in pings}
    log.info("Ray: %d gradient worker(s) x %g CPU, %s mode%s, tasks %s%s",
             workers, opts.cpus_per_worker, opts.mode,
             f" (max staleness {opts.max_staleness})"
             if opts.mode == "async" else "", self.slices,
             f", pinned to cores {[self.cores[w] for w in range(workers)]}"
             if pin else "")
    # Layout of the workers' states inside the whole-batch state.
    theta = jax.eval_shape(self.rule.init_meta_params, self._theta_key)
    full = jax.eval_shape(self.estimator.init, theta, self._worker_key)
    part = jax.eval_shape(dataclasses.replace(
        self.estimator, task_indices=self.slices[0]).init, theta,
                          self._worker_key)
    self._axes = particle_axes(full, part)

  def _get(self, refs, what: str):
    """``ray.get`` with the session timeout and a clear message."""
    ray = self._ray
    try:
      return ray.get(refs, timeout=self.options.timeout_s)
    except ray.exceptions.GetTimeoutError:
      raise DistributedTimeout(
          f"Ray: no answer within {self.options.timeout_s:g} s while trying "
          f"to {what} ({len(self.actors)} workers x "
          f"{self.options.cpus_per_worker:g} CPUs requested; cluster CPUs: "
          f"{self._ray.cluster_resources().get('CPU', 0):g}). Raise the "
          "timeout (--ray-timeout) or check the cluster.") from None

  def _need_session(self):
    if self._ray is None:
      raise RuntimeError("RayMetaTrainer: no Ray session; call run() or use "
                         "`with trainer.session(): ...`.")

  # -- worker state -----------------------------------------------------------

  def _init_on_workers(self, theta: PyTree, key) -> PyTree:
    """``init_state``'s worker-state initialisation, done by the workers."""
    del key  # the workers use the run's seed key (same derivation)
    self._need_session()
    ref = self._ray.put(jax.device_get(theta))
    self._get([self.actors[w].init_state.remote(ref) for w in self._alive],
              "initialise the inner problems")
    self._actors_step = 0
    return self._gather(None)

  def _gather(self, previous: Optional[PyTree]) -> PyTree:
    """The whole-batch worker state from the workers (a permanently lost
    worker's slice is taken from ``previous``)."""
    self._drain()
    states = self._get([self.actors[w].get_state.remote()
                        for w in self._alive], "gather the worker states")
    got = dict(zip(self._alive, states))
    if len(got) < len(self.actors):
      if previous is None:
        raise DistributedError("Ray: a worker was lost for good before its "
                               "inner problems were initialised.")
      old = split_state(jax.device_get(previous), self._sizes, self._axes)
      got = {w: got.get(w, old[w]) for w in range(len(self.actors))}
    merged = merge_states([got[w] for w in range(len(self.actors))],
                          self._axes)
    return jax.tree.map(jnp.asarray, merged)

  def sync_worker_states(self, state: TrainState) -> TrainState:
    """``state`` with the workers' current inner problems (for checkpoints
    and results)."""
    self._need_session()
    return state._replace(worker_state=self._gather(state.worker_state))

  def _push_states(self, state: TrainState) -> None:
    parts = split_state(jax.device_get(state.worker_state), self._sizes,
                        self._axes)
    self._get([self.actors[w].set_state.remote(parts[w])
               for w in self._alive], "restore the worker states")
    self._actors_step = int(state.step)
    log.info("Ray: worker states restored at outer step %d", int(state.step))

  # -- fault handling ---------------------------------------------------------

  def _event(self, msg: str) -> None:
    self.events.append(msg)
    log.warning("Ray: %s", msg)

  def _lost(self, w: int, err: Exception, step: int, info: Dict) -> None:
    info["dist/lost_estimates"] += 1
    self.totals["lost_estimates"] += 1
    self._recovering.add(w)
    self._event(f"worker {w} lost at outer step {step} "
                f"({type(err).__name__}); Ray restarts it and it "
                "re-initialises its inner problems")

  def _await_restart(self, w: int) -> bool:
    """Waits (timeout) until worker ``w`` answers again; False (and the
    worker is dropped) when Ray gave up restarting it."""
    ray = self._ray
    deadline = time.monotonic() + self.options.timeout_s
    while True:
      try:
        ray.get(self.actors[w].ping.remote(),
                timeout=max(deadline - time.monotonic(), 0.01))
        self._recovering.discard(w)
        return True
      except ray.exceptions.ActorUnavailableError:
        if time.monotonic() > deadline:
          raise DistributedTimeout(f"Ray: worker {w} did not come back within "
                             f"{self.options.timeout_s:g} s") from None
        time.sleep(0.2)
      except ray.exceptions.GetTimeoutError:
        raise DistributedTimeout(f"Ray: worker {w} did not come back within "
                           f"{self.options.timeout_s:g} s") from None
      except ray.exceptions.RayActorError:
        self._recovering.discard(w)
        self._alive.remove(w)
        self._event(f"worker {w} is gone for good (Ray restarts exhausted: "
                    f"max_restarts={self.options.max_restarts}); "
                    f"{len(self._alive)} worker(s) remain")
        if not self._alive:
          raise DistributedError(
              "Ray: all gradient workers are lost.") from None
        return False

  def _submit(self, w: int, version: int) -> Optional[Any]:
    """Asks worker ``w`` for an estimate at the published theta (None when
    the worker is gone for good). Sync mode uses the key of outer step
    ``version`` (as the single-process run); async mode a per-worker
    truncation counter (starting at the run's first step)."""
    if w in self._recovering and not self._await_restart(w):
      return None
    if self.options.mode == "sync":
      k = version
    else:
      k = self._key_index.get(w, version)
      self._key_index[w] = k + 1
    ref = self.actors[w].compute.remote(self._theta_ref, version, k)
    self._inflight[ref] = (w, version)
    return ref

  def _receive(self, ref, step: int, info: Dict) -> Optional[Dict]:
    """The result of a finished estimate, or None if its worker died."""
    ray = self._ray
    w, _ = self._inflight.pop(ref)
    try:
      res = ray.get(ref, timeout=self.options.timeout_s)
    except ray.exceptions.RayActorError as e:
      self._lost(w, e, step, info)
      return None
    self._account(w, res, step, info)
    return res

  def _account(self, w: int, res: Dict, step: int, info: Dict) -> None:
    """Logs a received estimate of worker ``w`` (restart, throughput)."""
    if res["reinitialised"]:
      info["dist/worker_restarts"] += 1
      self.totals["worker_restarts"] += 1
      self._event(f"worker {w} restarted (pid {self._pids.get(w)} -> "
                  f"{res['pid']}); its inner problems were re-initialised "
                  f"at outer step {step}")
    self._pids[w] = res["pid"]
    m = res["metrics"]
    info[f"dist/worker{w}/inner_steps"] += m["inner_steps"]
    info[f"dist/worker{w}/compute_s"] += res["compute_s"]
    info[f"dist/worker{w}/cpu_s"] += res["cpu_s"]
    info[f"dist/worker{w}/estimates"] += 1

  def _wait_one(self, refs: List[Any], what: str):
    """The first of ``refs`` to finish (timeout with a clear message)."""
    ready, _ = self._ray.wait(refs, num_returns=1,
                              timeout=self.options.timeout_s)
    if not ready:
      raise self._timeout(refs, what)
    return ready[0]

  def _wait_all(self, refs: List[Any], what: str) -> None:
    """Waits until all of ``refs`` finished (timeout with a clear message)."""
    _, waiting = self._ray.wait(refs, num_returns=len(refs),
                                timeout=self.options.timeout_s)
    if waiting:
      raise self._timeout(waiting, what)

  def _timeout(self, refs: List[Any], what: str) -> DistributedTimeout:
    """The error for estimates ``refs`` that did not arrive in time."""
    return self._timeout_of(sorted({self._inflight[r][0] for r in refs}),
                            what)

  def _timeout_of(self, workers: Sequence[int], what: str
                  ) -> DistributedTimeout:
    """The error for estimates of ``workers`` that did not arrive in time."""
    return DistributedTimeout(
        f"Ray: {what}: no estimate from worker(s) {workers} within "
        f"{self.options.timeout_s:g} s (stuck worker, or the cluster lacks "
        "CPUs for the workers?); raise the timeout with --ray-timeout.")

  def _drain(self, version: Optional[int] = None,
             info: Optional[Dict] = None) -> None:
    """Waits for the in-flight estimates (async mode) before the worker
    states are gathered; they are not used: those older than the bound for
    learner ``version`` count as dropped, the others as discarded."""
    while self._inflight:
      ref = self._wait_one(list(self._inflight), "draining")
      w, v = self._inflight.pop(ref)
      try:
        self._ray.get(ref, timeout=self.options.timeout_s)
      except self._ray.exceptions.RayActorError:
        self._recovering.add(w)
        continue
      if version is not None and not self._book.offer(version, v)[0]:
        self.totals["dropped_stale"] += 1
        if info is not None:
          info["dist/dropped_stale"] += 1
      else:
        self.totals["discarded_in_flight"] += 1

  # -- one outer step ---------------------------------------------------------

  def _publish(self, state: TrainState) -> None:
    step = int(state.step)
    if self._theta_version != step:
      theta = jax.tree.map(np.asarray, jax.device_get(state.theta))
      nbytes = sum(x.nbytes for x in jax.tree.leaves(theta))
      # A small theta goes by value inside each call (Ray inlines arguments
      # under ~100 KB into the task; measured 1.3 ms instead of 2.5 ms per
      # 2-worker round trip here); a large one once into the object store.
      self._theta_ref = (theta if nbytes <= INLINE_THETA_BYTES
                         else self._ray.put(theta))
      self._theta_value = theta      # compiled graphs take values only
      self._theta_version = step

  def _distributed_step(self, state: TrainState
                        ) -> Tuple[TrainState, Dict[str, Any]]:
    """One outer step (sync: every worker once; async: a batch worth of
    fresh-enough estimates), then the learner update."""
    self._need_session()
    step = int(state.step)
    if self._actors_step != step:
      self._push_states(state)      # a restored checkpoint
      self._key_index = {}
    self._actors_step = None
    info: Dict[str, float] = _Counter()
    t0 = time.perf_counter()
    if self.options.mode == "sync":
      results = self._sync_collect(state, info)
    else:
      results = self._async_collect(state, info)
    info["dist/wait_s"] = time.perf_counter() - t0
    state, m = self._learn(state, [r["grad"] for r in results],
                           [{k: np.float32(v) for k, v in
                             r["metrics"].items()} for r in results])
    n = step + 1
    self._actors_step = n
    if n == self._stop or (self._checkpointing and
                           self.config.checkpoint_every > 0 and
                           n % self.config.checkpoint_every == 0):
      self._drain(n, info)
      state = self.sync_worker_states(state)
    info["dist/workers"] = float(len(self._alive))
    out = dict(m)
    out.update(info)
    return state, out

  # -- compiled graph (sync mode) ---------------------------------------------

  def _teardown_graph(self) -> None:
    if self._graph is not None:
      graph, self._graph = self._graph, None
      with contextlib.suppress(Exception):
        graph.teardown()

  def _compiled_graph(self):
    """The compiled graph of the alive workers' ``compute`` (built when the
    set of alive workers changed); None when graphs are off or unavailable,
    or a worker is recovering (plain calls handle that)."""
    if not self._graph_ok or self._recovering or not self._alive:
      return None
    workers = tuple(self._alive)
    if self._graph is not None and self._graph_workers == workers:
      return self._graph
    self._teardown_graph()
    try:
      from ray.dag import InputNode, MultiOutputNode
      with InputNode() as inp:
        dag = MultiOutputNode([self.actors[w].compute.bind(inp[0], inp[1],
                                                           inp[2])
                               for w in workers])
      self._graph = dag.experimental_compile()
      self._graph_workers = workers
    except Exception as e:  # pylint: disable=broad-except
      self._graph_ok = False
      self._graph = None
      log.warning("Ray: compiled graph unavailable (%s: %s); using plain "
                  "actor calls", type(e).__name__, e)
    return self._graph

  def _graph_collect(self, graph, step: int, info: Dict
                     ) -> Optional[List[Dict]]:
    """One step as one graph execution; None when it failed (the graph is
    torn down and the caller redoes the step with plain calls)."""
    ray = self._ray
    try:
      refs = graph.execute(self._theta_value, step, step)
      results = [ray.get(r, timeout=self.options.timeout_s) for r in refs]
    except (ray.exceptions.GetTimeoutError,
            ray.exceptions.RayChannelTimeoutError):
      raise self._timeout_of(list(self._graph_workers),
                             f"outer step {step}") from None
    except Exception as e:  # pylint: disable=broad-except
      # A worker died: Ray fails every output of the graph, also those of
      # workers that finished. Their estimates are lost; the step is redone.
      n = len(self._graph_workers)
      info["dist/lost_estimates"] += n
      self.totals["lost_estimates"] += n
      self._teardown_graph()
      # Which one died is not said; each is pinged (and waited for while
      # Ray restarts it) before the plain calls.
      self._recovering.update(self._graph_workers)
      self._event(f"outer step {step}: compiled-graph execution failed "
                  f"({type(e).__name__}); redoing it with plain actor calls")
      if isinstance(e, ray.exceptions.RayTaskError):
        # An error raised inside compute, not a lost worker: plain calls
        # raise it again if it is not specific to the graph; if it is, the
        # graph is not rebuilt every step.
        self._graph_ok = False
        log.warning("Ray: compiled graph disabled for this run after %s: %s",
                    type(e).__name__, e)
      return None
    for w, res in zip(self._graph_workers, results):
      self._account(w, res, step, info)
    self.totals["graph_steps"] += 1
    return results

  def _sync_collect(self, state: TrainState, info: Dict) -> List[Dict]:
    step = int(state.step)
    self._publish(state)
    graph = self._compiled_graph()
    if graph is not None:
      results = self._graph_collect(graph, step, info)
      if results is not None:
        return results
      info["dist/redone_steps"] += 1
      self.totals["redone_steps"] += 1
    for attempt in range(self.options.max_redo + 1):
      refs = [self._submit(w, step) for w in list(self._alive)]
      live = [r for r in refs if r is not None]
      if live:            # one wait for all (each extra call is a round trip)
        self._wait_all(live, f"outer step {step}")
      results = []
      for ref in live:
        res = self._receive(ref, step, info)
        if res is not None:
          results.append(res)
      if results:
        if len(results) < len(refs):
          self._event(f"outer step {step} completed from {len(results)} of "
                      f"{len(refs)} workers")
        return results
      info["dist/redone_steps"] += 1
      self.totals["redone_steps"] += 1
      self._event(f"outer step {step}: no worker returned an estimate; "
                  f"redoing it ({attempt + 1}/{self.options.max_redo})")
    raise DistributedError(f"Ray: outer step {step} failed on every worker "
                       f"{self.options.max_redo + 1} times.")

  def _async_collect(self, state: TrainState, info: Dict) -> List[Dict]:
    step = int(state.step)
    self._publish(state)
    busy = {w for w, _ in self._inflight.values()}
    for w in list(self._alive):
      if w not in busy:
        self._submit(w, step)
    target = self.config.num_tasks * self.config.num_particles
    got, results = 0.0, []
    while got < target:
      if not self._inflight:
        raise DistributedError("Ray: all gradient workers are lost.")
      ref = self._wait_one(list(self._inflight), f"outer step {step}")
      w, version = self._inflight[ref]
      res = self._receive(ref, step, info)
      if res is not None:
        ok, s = self._book.offer(step, version)
        if ok:
          results.append(res)
          got += res["metrics"]["num_particles"]
          info["dist/staleness_sum"] += s
          info["dist/staleness_count"] += 1
          info["dist/staleness_max"] = max(info["dist/staleness_max"], s)
        else:
          info["dist/dropped_stale"] += 1
          self.totals["dropped_stale"] += 1
          log.debug("Ray: dropped a stale estimate of worker %d "
                    "(version %d, learner at %d)", w, version, step)
      if got < target and w in self._alive:
        self._submit(w, step)   # (the completing worker gets the new
                                # theta at the next step)
    return results

  # -- the loop ---------------------------------------------------------------

  def run(self, out_dir: Optional[str] = None, resume: bool = False,
          progress: bool = True, callback=None, until: Optional[int] = None):
    """As :meth:`MetaTrainer.run`, on Ray (started or connected here and
    always shut down again, also on error)."""
    self._stop = (self.config.outer_steps if until is None else
                  min(int(until), self.config.outer_steps))
    self._checkpointing = out_dir is not None
    try:
      with self.session():
        return super().run(out_dir, resume=resume, progress=progress,
                           callback=callback, until=until)
    finally:
      self._stop, self._checkpointing = None, False

  def _summarise(self, n, pending, state, dt):
    row = super()._summarise(n, pending, state, dt)
    ms = [{k: v for k, v in m.items() if k.startswith("dist/")}
          for m in pending]
    tot = lambda k: float(sum(m.get(k, 0.0) for m in ms))
    for k in ("lost_estimates", "worker_restarts", "redone_steps",
              "dropped_stale"):
      row[f"dist/{k}"] = tot(f"dist/{k}")
    row["dist/workers"] = float(ms[-1].get("dist/workers", 0.0))
    row["dist/learner_wait_fraction"] = tot("dist/wait_s") / max(dt, 1e-9)
    if self.options.mode == "async":
      cnt = tot("dist/staleness_count")
      row["dist/staleness_mean"] = tot("dist/staleness_sum") / max(cnt, 1)
      row["dist/staleness_max"] = max(m.get("dist/staleness_max", 0.0)
                                      for m in ms)
    for w in range(len(self.slices)):
      secs = tot(f"dist/worker{w}/compute_s")
      row[f"dist/worker{w}/inner_steps_per_s"] = (
          tot(f"dist/worker{w}/inner_steps") / secs if secs > 0 else 0.0)
      row[f"dist/worker{w}/estimates"] = tot(f"dist/worker{w}/estimates")
    return row

  def summary(self, state: TrainState) -> Dict[str, Any]:
    out = super().summary(state)
    out["distributed"] = dict(
        workers=len(self.slices), mode=self.options.mode,
        address=self.options.address or "local",
        **{k: int(v) for k, v in self.totals.items()})
    return out


class _Counter(dict):
  """A dict of floats that reads missing keys as 0."""

  def __missing__(self, key):
    return 0.0
