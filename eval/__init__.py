"""Held-out evaluation of learned optimizers against tuned baselines.

Quick use::

    import lopt.eval as le
    record = le.evaluate(["my_opt.lopt", "adam:lr=1e-3"], "heldout",
                         num_steps=1000, seeds=3, baseline_sweep=["adam"],
                         cache_dir="~/.cache/lopt/eval")
    le.write_all(record, "reports/my_opt")   # JSON, markdown, PNG plots

or from the shell: ``lopt eval --optimizer my_opt.lopt --tasks heldout``.

Modules: :mod:`~lopt.eval.specs` (optimizer strings), :mod:`~lopt.eval.runner`
(jitted runs: ``lax.scan`` over steps, ``vmap`` over seeds / learning rates),
:mod:`~lopt.eval.tuning` (learning-rate sweeps), :mod:`~lopt.eval.cache`
(on-disk cache, atomic writes), :mod:`~lopt.eval.metrics` (smoothing,
speedup, median / IQM), :mod:`~lopt.eval.suite` (the orchestration),
:mod:`~lopt.eval.report` (JSON / markdown / plots / TensorBoard),
:mod:`~lopt.eval.cli` (``lopt eval``).
"""

from lopt.eval.metrics import (Speedup, aggregate, final_loss, iqm, smooth,
                               speedup)
from lopt.eval.report import markdown, write_all
from lopt.eval.runner import RunResult, run, run_sweep
from lopt.eval.specs import BASELINES, OptimizerSpec, lr_grid, parse_optimizer
from lopt.eval.suite import evaluate, resolve_tasks
from lopt.eval.tuning import TuneResult, tune

__all__ = [
    "BASELINES", "OptimizerSpec", "RunResult", "Speedup", "TuneResult",
    "aggregate", "evaluate", "final_loss", "iqm", "lr_grid", "markdown",
    "parse_optimizer", "resolve_tasks", "run", "run_sweep", "smooth",
    "speedup", "tune", "write_all",
]
