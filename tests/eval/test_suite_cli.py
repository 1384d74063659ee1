"""End-to-end: evaluate() record, report files, and the `lopt eval` CLI."""

import json
import os

import numpy as np
import pytest

import lopt.tasks
from lopt.eval import cli, report, suite, tuning
from lopt.eval import metrics as metrics_lib


@pytest.fixture
def registry(monkeypatch, Quad, logistic):
  """Stand-in tasks registered under names (fast to compile)."""
  tasks = {"quad": Quad(dim=4, h=(1.0, 4.0), noise=0.2, name="quad"),
           "logistic": logistic}

  def get(name):
    if name not in tasks:
      raise KeyError(f"Unknown task {name!r}. Valid task names: "
                     f"{', '.join(tasks)}.")
    return tasks[name]

  monkeypatch.setattr(lopt.tasks, "get", get)
  monkeypatch.setattr(lopt.tasks, "HELDOUT_TASKS", ("quad", "logistic"))
  return tasks


def _evaluate(tasks, tmp_path, **kw):
  args = dict(num_steps=40, seeds=2, baseline_sweep=["adam"],
              lrs={"adam": [1e-3, 1e-2, 1e-1]}, cache_dir=str(tmp_path / "c"),
              workers=2)
  args.update(kw)
  return suite.evaluate(["sgdm:lr=0.05"], tasks, **args)


def test_evaluate_record_report_and_cache(registry, tmp_path):
  events = []
  rec = _evaluate("heldout", tmp_path,
                  callback=lambda e, i: events.append((e, i)))
  assert events[0] == ("start", {"total": 4})
  assert sum(e == "done" for e, _ in events) == 4
  assert list(rec["tasks"]) == ["quad", "logistic"]
  lg = rec["tasks"]["logistic"]
  assert set(lg["runs"]) == {"adam (tuned)", "sgdm:lr=0.05"}
  tuned = lg["runs"]["adam (tuned)"]
  assert tuned["best_lr"] in (1e-3, 1e-2, 1e-1) and len(tuned["scores"]) == 3
  assert np.asarray(tuned["train_loss"]).shape == (2, 40)
  assert "accuracy" in lg["runs"]["sgdm:lr=0.05"]["final_valid"]
  sp = lg["speedups"]["sgdm:lr=0.05"]["adam (tuned)"]
  assert set(sp) >= {"value", "lower_bound", "text", "target"}
  summ = rec["summary"]["sgdm:lr=0.05"]["adam (tuned)"]
  assert summ["num_tasks"] == 2 and summ["median"] > 0
  lo, hi = summ["median_interval"]
  assert 0 <= lo <= hi and "seed bootstrap" in summ["interval"]

  paths = report.write_all(rec, str(tmp_path / "out"), tensorboard=True)
  with open(paths["json"]) as f:
    back = json.load(f)                     # strict JSON (no NaN tokens)
  assert back["tasks"]["quad"]["eval_steps"][-1] == 40
  md = open(paths["markdown"]).read()
  assert "| logistic |" in md and "**median**" in md and "adam (tuned)" in md
  assert f"[{lo:.2f}-{hi:.2f}]" in md and "90% seed bootstrap" in md
  for p in paths["curves"] + [paths["speedup"]]:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(paths["tensorboard"])
  assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp")]

  # Second evaluation: baselines come from the cache, numbers identical.
  rec2 = _evaluate("heldout", tmp_path)
  for t in ("quad", "logistic"):
    for label in ("adam (tuned)", "sgdm:lr=0.05"):
      r1, r2 = rec["tasks"][t]["runs"][label], rec2["tasks"][t]["runs"][label]
      assert r2["from_cache"] and not r1["from_cache"]
      assert r1["train_loss"] == r2["train_loss"]
      assert r1["final_loss"] == r2["final_loss"]


def test_markdown_handles_diverged_and_lower_bound():
  rec = {
      "config": {"num_steps": 10, "seeds": [0], "window": 1,
                 "smoothing": "none", "optimizers": ["x"]},
      "tasks": {"t": {
          "eval_steps": [0, 10],
          "runs": {
              "adam (tuned)": {"kind": "tuned", "final_loss": 1.0,
                               "final_loss_std": 0.0, "best_lr": 1e-3,
                               "at_edge": True, "final_valid": {},
                               "step_time_s": 1e-4},
              "x": {"kind": "learned", "final_loss": None,
                    "final_loss_std": None, "final_valid": {},
                    "step_time_s": 2e-4}},
          "speedups": {"x": {"adam (tuned)": {"text": ">= 10/10 (1.00x)"}}}}},
      "summary": {"x": {"adam (tuned)": {"median": 1.0, "iqm": 1.0}}},
  }
  md = report.markdown(rec)
  assert "diverged" in md and ">= 10/10" in md and "edge" in md


def test_cli_runs_and_prints_table(registry, tmp_path, capsys):
  out = tmp_path / "rep"
  code = cli.main(["--optimizer", "sgdm:lr=0.05", "--tasks", "quad",
                   "--steps", "20", "--seeds", "0,1", "--out", str(out),
                   "--cache-dir", str(tmp_path / "c"), "--num-lrs", "2",
                   "--lr-range", "1e-3:1e-1", "--no-plots",
                   "--no-progress"])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  assert "| quad |" in captured.out and "Results:" in captured.out
  # --no-progress (lopt meta-train's name; also -q / --quiet): no progress.
  assert not [l for l in captured.err.splitlines() if l.startswith("eval")]
  rec = json.loads((out / "results.json").read_text())
  assert rec["config"]["lrs"]["adam"] == [1e-3, 1e-1]
  assert rec["config"]["seeds"] == [0, 1]
  assert not (out / "speedup.png").exists()


def test_cli_progress_is_plain_lines_off_a_terminal(registry, tmp_path,
                                                    capsys):
  code = cli.main(["--optimizer", "sgdm:lr=0.05", "--tasks", "quad",
                   "--steps", "20", "--seeds", "1", "--out",
                   str(tmp_path / "rep"), "--cache-dir", str(tmp_path / "c"),
                   "--num-lrs", "2", "--no-plots"])
  err = capsys.readouterr().err
  assert code == 0, err
  lines = [l for l in err.splitlines() if l.startswith("eval")]
  assert lines[0] == "eval: 2 runs"
  assert lines[1].startswith("eval 1/2 [") and "quad:" in lines[1]
  assert lines[-1].startswith("eval 2/2 [")


@pytest.mark.parametrize("argv, needle", [
    (["--optimizer", "adma:lr=1e-3"], "Unknown optimizer 'adma'"),
    (["--optimizer", "adam:lr=oops"], "lr='oops' is not a number"),
    (["--optimizer", "adam:lr="], "needs both a key and a value"),
    (["--optimizer", "no_such_file.lopt"], "no_such_file.lopt"),
    (["--optimizer", "sgd", "--tasks", "quad,nope"], "Unknown task 'nope'"),
    (["--optimizer", "sgd", "--seeds", "x"], "--seeds"),
    (["--optimizer", "sgd", "--lr-range", "1:0"], "--lr-range"),
    (["--optimizer", "sgd", "--baseline-sweep", "rule:mlp"],
     "Can only tune baselines"),
    (["--optimizer", "sgd", "--steps", "0"], "num_steps must be >= 1"),
])
def test_cli_bad_input_one_clear_error(registry, tmp_path, capsys, argv,
                                       needle):
  code = cli.main(argv + ["--out", str(tmp_path / "o"), "--no-cache", "-q"])
  err = capsys.readouterr().err
  assert code == 2
  assert needle in err
  assert err.count("lopt eval: error:") == 1 and "Traceback" not in err
  assert not (tmp_path / "o").exists()


def test_cli_unreadable_learned_file(registry, tmp_path, capsys):
  bad = tmp_path / "bad.lopt"
  bad.write_bytes(b"LOPT\x00garbage")
  code = cli.main(["--optimizer", str(bad), "--tasks", "quad", "--no-cache",
                   "-q", "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err
  assert code == 2 and "Cannot load optimizer" in err and "bad.lopt" in err


def test_cli_help_and_usage_errors(capsys):
  assert cli.main(["--help"]) == 0
  assert "--optimizer" in capsys.readouterr().out
  assert cli.main(["--bogus-flag"]) == 2


def test_real_registry_unknown_task_message():
  with pytest.raises(ValueError, match="Unknown task 'not_a_task'"):
    suite.resolve_tasks("not_a_task")
  held = suite.resolve_tasks("heldout")
  assert [t.name for t in held] == list(lopt.tasks.HELDOUT_TASKS)


def test_baseline_sweeps_run_longer_and_tuned_record_is_cut(registry,
                                                            tmp_path):
  rec = _evaluate("logistic", tmp_path, baseline_steps=100)
  assert rec["config"]["baseline_steps"] == 100
  lg = rec["tasks"]["logistic"]
  tuned = lg["runs"]["adam (tuned)"]
  # Tuned record: the first 40 steps of the 100-step runs, lr chosen there.
  assert tuned["sweep_steps"] == 100
  assert np.asarray(tuned["train_loss"]).shape == (2, 40)
  assert max(tuned["eval_steps"]) <= 40
  assert tuned["final_loss"] == pytest.approx(
      metrics_lib.final_loss(np.asarray(tuned["train_loss"]),
                             rec["config"]["window"]))
  sp = lg["speedups"]["sgdm:lr=0.05"]["adam (tuned)"]
  assert sp["baseline_steps"] == 100 and sp["steps"] == 40
  assert 0 < sp["value"] <= 100 / 40
  if not sp["lower_bound"]:
    assert sp["baseline_lr"] in (1e-3, 1e-2, 1e-1)
  # Against the tuned learning rate's own 100-step runs (not the sweep's
  # fastest rate per target): recomputed from the cached sweep, never lower.
  at_lr = sp["at_tuned_lr"]
  sweep = tuning.tune(registry["logistic"], "adam", num_steps=100, seeds=[0, 1],
                      lrs=[1e-3, 1e-2, 1e-1], cache_dir=str(tmp_path / "c"),
                      **{k: rec["config"][k] for k in (
                          "eval_every", "num_valid_batches",
                          "num_test_batches")})
  assert sweep.from_cache
  full = sweep.sweep.train_loss[[1e-3, 1e-2, 1e-1].index(tuned["best_lr"])]
  want = metrics_lib.speedup(
      np.asarray(lg["runs"]["sgdm:lr=0.05"]["train_loss"]), full,
      rec["config"]["window"])
  assert (at_lr["value"], at_lr["lower_bound"]) == (want.value,
                                                    want.lower_bound)
  assert at_lr["value"] >= sp["value"]
  summ = rec["summary"]["sgdm:lr=0.05"]["adam (tuned)"]
  assert summ["at_tuned_lr"]["median"] == at_lr["value"]   # one task
  assert "tuned lr only" in report.markdown(rec)
  # Default: the optimizer's steps (speedup capped at 1).
  rec = _evaluate("logistic", tmp_path)
  assert rec["config"]["baseline_steps"] == 40
  assert rec["tasks"]["logistic"]["speedups"]["sgdm:lr=0.05"][
      "adam (tuned)"]["value"] <= 1
  with pytest.raises(ValueError, match="baseline_steps must be >= num_steps"):
    _evaluate("logistic", tmp_path, baseline_steps=39)
