"""Progress reporting for long commands (``lopt meta-train``, ``lopt eval``).

On a terminal: a `rich <https://rich.readthedocs.io>`_ progress bar (done /
total, elapsed, remaining, and a line of text from the caller). Anywhere else
-- a log file, ``nohup``, CI -- a bar cannot redraw and would stay silent
until the end, so each update prints one plain line instead::

    <label> <done>/<total> [<elapsed> s]: <text>
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
  """A progress bar on a terminal, one plain line per update elsewhere.

  Args:
    label: what is counted, e.g. ``"meta-train step"``; starts every plain
      line and names the bar.
    total: the count at which the work is done.
    start: the count already done (a resumed run).
    enabled: ``False`` prints nothing at all.
    bar: ``False`` prints the plain lines even on a terminal.
    stream: where to write (default: ``sys.stderr`` at construction).
  """

  def __init__(self, label: str, total: int, *, start: int = 0,
               enabled: bool = True, bar: bool = True,
               stream: Optional[TextIO] = None):
    self.label = label
    self.total = int(total)
    self.enabled = enabled
    self.stream = stream if stream is not None else sys.stderr
    self.plain = not (bar and getattr(self.stream, "isatty",
                                      lambda: False)())
    self._t0 = time.time()
    self._bar = None
    if not enabled or self.plain:
      return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.progress import Progress as _RichProgress
    self._bar = _RichProgress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[text]}"),
        console=Console(file=self.stream), transient=False)
    self._bar.start()
    self._task = self._bar.add_task(label, total=self.total, completed=start,
                                    text="")

  def update(self, completed: int, text: str = "") -> None:
    """``completed`` of ``total`` are done; ``text`` says what was last."""
    if not self.enabled:
      return
    if self._bar is None:
      print(f"{self.label} {completed}/{self.total} "
            f"[{time.time() - self._t0:.0f} s]: {text}", file=self.stream,
            flush=True)
      return
    self._bar.update(self._task, completed=completed, text=text)

  def close(self) -> None:
    """Stops the bar (idempotent); the last state stays on screen."""
    if self._bar is not None:
      self._bar.stop()
      self._bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
