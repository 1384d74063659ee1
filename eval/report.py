"""Outputs of an evaluation record: JSON, a markdown table, PNG plots and
(optionally) TensorBoard curves. Every file is written atomically
(temp file + rename).

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global
backend switch), so they work headless and in threads.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lopt import files


def _clean(x: Any) -> Any:
  """Replaces non-finite floats by ``None`` (strict JSON)."""
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return _clean(x.item())
  if isinstance(x, np.ndarray):
    return _clean(x.tolist())
  return x


def write_json(record: Dict[str, Any], path: str) -> str:
  files.write_text(path, json.dumps(_clean(record), allow_nan=False,
                                    separators=(",", ":")) + "\n")
  return path


def read_json(path: str) -> Dict[str, Any]:
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------- markdown

def _fmt_loss(v: Optional[float], std: Optional[float] = None) -> str:
  if v is None:
    return "diverged"
  s = f"{v:.4g}"
  if std is not None and std > 0:
    s += f" ± {std:.2g}"
  return s


def _columns(record) -> List[str]:
  first = next(iter(record["tasks"].values()), {"runs": {}})
  return list(first["runs"])


def _fmt_stat(summary: Dict[str, Any], stat: str) -> str:
  v = summary.get(stat)
  if v is None or not math.isfinite(v):
    return "n/a"
  text = f"{v:.2f}x"
  iv = summary.get(f"{stat}_interval")
  if iv and all(x is not None and math.isfinite(x) for x in iv):
    text += f" [{iv[0]:.2f}-{iv[1]:.2f}]"
  return text


def markdown(record: Dict[str, Any]) -> str:
  """Markdown tables: final smoothed loss, speedup (per task + median / IQM),
  final validation metrics and wall-clock per step."""
  cfg = record["config"]
  cols = _columns(record)
  opts = cfg["optimizers"]
  tasks = list(record["tasks"])
  tuned = [c for c in cols if c not in opts]
  out: List[str] = []
  out.append(f"Held-out evaluation: {cfg['num_steps']} steps, "
             f"{len(cfg['seeds'])} seeds; smoothing: {cfg['smoothing']}.")
  out.append("")

  def table(header: Sequence[str], rows: Sequence[Sequence[str]]):
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
      out.append("| " + " | ".join(r) + " |")
    out.append("")

  out.append("**Final smoothed training loss** (mean over seeds ± std; "
             "tuned baselines show the chosen learning rate)")
  out.append("")
  rows = []
  for t in tasks:
    runs = record["tasks"][t]["runs"]
    row = [t]
    for c in cols:
      r = runs[c]
      cell = _fmt_loss(r["final_loss"], r.get("final_loss_std"))
      if r.get("kind") == "tuned":
        cell += f" (lr={r['best_lr']:.3g}{', edge' if r['at_edge'] else ''})"
      row.append(cell)
    rows.append(row)
  table(["task"] + cols, rows)

  if opts and tuned:
    bsteps = cfg.get("baseline_steps", cfg["num_steps"])
    out.append("**Speedup** = fewest steps any learning rate of the tuned "
               f"baseline's sweep (each run {bsteps} steps) needs to reach "
               "the optimizer's final smoothed loss / the optimizer's steps "
               "(`>= a/b`: never reached, lower bound; < 1: slower)")
    out.append("")
    header = ["task"] + [f"{o} vs {b}" for o in opts for b in tuned]
    rows = []
    for t in tasks:
      sp = record["tasks"][t]["speedups"]
      rows.append([t] + [sp[o][b]["text"] for o in opts for b in tuned])
    for stat in ("median", "iqm"):
      rows.append([f"**{stat}**"] + [
          _fmt_stat(record["summary"][o][b], stat)
          for o in opts for b in tuned])
    at_lr = [record["summary"][o][b].get("at_tuned_lr")
             for o in opts for b in tuned]
    if all(at_lr):
      for stat in ("median", "iqm"):
        rows.append([f"{stat}, tuned lr only"] +
                    [_fmt_stat(a, stat) for a in at_lr])
    table(header, rows)
    intervals = [record["summary"][o][b].get("interval")
                 for o in opts for b in tuned]
    if any(intervals):
      out.append(f"In brackets: interval of the "
                 f"{next(i for i in intervals if i)}: seeds drawn with "
                 "replacement per task, every speedup recomputed. It shows "
                 "how much the number depends on which seeds ran; it is not "
                 "a calibrated confidence interval.")
      out.append("")
    if all(at_lr):
      out.append("*tuned lr only*: the same speedup against the runs of the "
                 "tuned learning rate alone (the one with the lowest final "
                 "loss), not the fastest rate of the sweep for each target; "
                 "never lower than the headline value "
                 "(`speedups.*.at_tuned_lr` in results.json).")
      out.append("")

  metric_names = sorted({k for t in tasks
                         for r in record["tasks"][t]["runs"].values()
                         for k in r["final_valid"]})
  if metric_names:
    out.append("**Final validation metrics** (mean over seeds)")
    out.append("")
    header = ["task", "metric"] + cols
    rows = []
    for t in tasks:
      runs = record["tasks"][t]["runs"]
      for m in metric_names:
        rows.append([t, m] + [
            _fmt_loss(runs[c]["final_valid"][m])
            if m in runs[c]["final_valid"] else "–" for c in cols])
    table(header, rows)

  out.append("**Wall-clock per step** (ms per step per run, compiled program "
             "time / (steps x runs vmapped together); tuned baselines: "
             "amortised over the whole sweep)")
  out.append("")
  rows = []
  for t in tasks:
    runs = record["tasks"][t]["runs"]
    rows.append([t] + [f"{1e3 * runs[c]['step_time_s']:.3g}" for c in cols])
  table(["task"] + cols, rows)
  return "\n".join(out).rstrip() + "\n"


# -------------------------------------------------------------------- plots

def _figure(w: float, h: float):
  from matplotlib.figure import Figure
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  fig = Figure(figsize=(w, h), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def _save_png(fig, path: str) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", bbox_inches="tight")
  files.write_bytes(path, buf.getvalue())
  return path


def _arr(x) -> np.ndarray:
  return np.array([[np.nan if v is None else v for v in row] for row in x],
                  dtype=np.float64)


def _band(ax, xs, ys, label, color, window: int):
  """Seed-mean line (smoothed) with a min..max band over seeds."""
  ys = np.where(np.isfinite(ys), ys, np.nan)
  if window > 1:
    ys = np.stack([_nan_smooth(y, window) for y in ys])
  mean = np.nanmean(ys, axis=0) if np.isfinite(ys).any() else ys[0]
  ax.plot(xs, mean, color=color, label=label, lw=1.5)
  if ys.shape[0] > 1:
    ax.fill_between(xs, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0),
                    color=color, alpha=0.2, lw=0)


def _nan_smooth(y: np.ndarray, window: int) -> np.ndarray:
  from lopt.eval.metrics import smooth
  s = smooth(np.where(np.isfinite(y), y, np.inf), window)
  return np.where(np.isfinite(s), s, np.nan)


def _safe_name(s: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def plot_task(record: Dict[str, Any], task: str, path: str) -> str:
  """Learning curves on one task: training loss (smoothed, per-step) and
  validation metrics; seed-mean lines with min..max bands."""
  import matplotlib
  rec = record["tasks"][task]
  window = record["config"]["window"]
  runs = rec["runs"]
  valid_metrics = sorted({k for r in runs.values() for k in r["valid"]})
  n = 1 + len(valid_metrics)
  fig = _figure(5.0 * n, 3.8)
  colors = matplotlib.colormaps["tab10"].colors
  axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
  for i, (label, r) in enumerate(runs.items()):
    c = colors[i % len(colors)]
    ys = _arr(r["train_loss"])
    _band(axes[0], np.arange(1, ys.shape[1] + 1), ys, label, c, window)
    for ax, m in zip(axes[1:], valid_metrics):
      if m in r["valid"]:
        _band(ax, np.asarray(r.get("eval_steps", rec["eval_steps"])),
              _arr(r["valid"][m]), label, c, 1)
  axes[0].set_title(f"{task}: train loss (trailing mean, {window} steps)")
  for ax, m in zip(axes[1:], valid_metrics):
    ax.set_title(f"{task}: valid {m}")
  for ax, m in zip(axes, ["loss"] + valid_metrics):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if m == "loss":
      lines = [ln.get_ydata() for ln in ax.get_lines()]
      vals = np.concatenate([np.asarray(v, float) for v in lines]) if lines \
          else np.array([1.0])
      vals = vals[np.isfinite(vals)]
      if vals.size and vals.min() > 0 and vals.max() / vals.min() > 10:
        ax.set_yscale("log")
  axes[0].legend(fontsize=8)
  return _save_png(fig, path)


def plot_speedups(record: Dict[str, Any], path: str) -> Optional[str]:
  """Horizontal bars of speedup per task (log scale, 1x marked), one colour
  per optimizer, vs the first tuned baseline; hatched = lower bound."""
  import matplotlib
  opts = record["config"]["optimizers"]
  tasks = list(record["tasks"])
  if not opts or not tasks:
    return None
  tuned = [c for c in _columns(record) if c not in opts]
  if not tuned:
    return None
  ref = tuned[0]
  colors = matplotlib.colormaps["tab10"].colors
  fig = _figure(7.0, 0.8 + 0.45 * len(tasks) * max(1, len(opts)) + 0.8)
  ax = fig.add_subplot(1, 1, 1)
  h = 0.8 / len(opts)
  vals_all = []
  for j, o in enumerate(opts):
    for i, t in enumerate(tasks):
      s = record["tasks"][t]["speedups"][o][ref]
      v = max(float(s["value"] or 0.0), 1e-3)
      vals_all.append(v)
      ax.barh(i + j * h, v, height=h, color=colors[j % len(colors)],
              hatch="//" if s["lower_bound"] else None, edgecolor="k",
              lw=0.5, label=o if i == 0 else None)
      ax.text(v, i + j * h, " " + s["text"], va="center", fontsize=7)
  ax.axvline(1.0, color="k", lw=1, ls="--")
  ax.set_xscale("log")
  ax.set_xlim(min(0.5, min(vals_all) / 1.5), max(2.0, max(vals_all) * 3))
  ax.set_yticks(np.arange(len(tasks)) + h * (len(opts) - 1) / 2)
  ax.set_yticklabels(tasks)
  ax.invert_yaxis()
  summ = "\n".join(
      f"{o}: median {record['summary'][o][ref]['median']:.2f}x, "
      f"IQM {record['summary'][o][ref]['iqm']:.2f}x" for o in opts)
  ax.set_title(f"Speedup over {ref} (hatched: lower bound)\n{summ}",
               fontsize=9)
  ax.set_xlabel("speedup (x)")
  ax.legend(fontsize=8, loc="lower right")
  return _save_png(fig, path)


def write_tensorboard(record: Dict[str, Any], logdir: str) -> str:
  """Seed-mean training and validation curves as TensorBoard scalars
  (``<task>/<optimizer>/train_loss`` etc.), via tensorboardX."""
  from tensorboardX import SummaryWriter
  for task, rec in record["tasks"].items():
    for label, r in rec["runs"].items():
      w = SummaryWriter(os.path.join(logdir, _safe_name(task),
                                     _safe_name(label)))
      ys = np.nanmean(_arr(r["train_loss"]), axis=0)
      for t, y in enumerate(ys, start=1):
        if np.isfinite(y):
          w.add_scalar("train_loss", float(y), t)
      for m, v in r["valid"].items():
        for s, y in zip(r.get("eval_steps", rec["eval_steps"]),
                        np.nanmean(_arr(v), axis=0)):
          if np.isfinite(y):
            w.add_scalar(f"valid_{m}", float(y), int(s))
      w.close()
  return logdir


def write_all(record: Dict[str, Any], out_dir: str, plots: bool = True,
              tensorboard: bool = False) -> Dict[str, Any]:
  """Writes ``results.json``, ``results.md``, ``curves_<task>.png``,
  ``speedup.png`` (and ``tb/``) under ``out_dir``; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths: Dict[str, Any] = {
      "json": write_json(record, os.path.join(out_dir, "results.json")),
  }
  md = markdown(record)
  files.write_text(os.path.join(out_dir, "results.md"), md)
  paths["markdown"] = os.path.join(out_dir, "results.md")
  if plots:
    paths["curves"] = [
        plot_task(record, t, os.path.join(out_dir,
                                          f"curves_{_safe_name(t)}.png"))
        for t in record["tasks"]]
    sp = plot_speedups(record, os.path.join(out_dir, "speedup.png"))
    if sp:
      paths["speedup"] = sp
  if tensorboard:
    paths["tensorboard"] = write_tensorboard(record,
                                             os.path.join(out_dir, "tb"))
  return paths
