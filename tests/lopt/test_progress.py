"""lopt.progress: plain lines off a terminal, silence when disabled, a bar
on a terminal."""

import io
import re

from lopt.progress import Progress


class _Tty(io.StringIO):

  def isatty(self):
    return True


def test_plain_lines_off_a_terminal():
  out = io.StringIO()
  with Progress("meta-train step", 4, start=2, stream=out) as p:
    assert p.plain
    p.update(3, "loss 1.0")
    p.update(4, "loss 0.5")
  lines = out.getvalue().splitlines()
  assert len(lines) == 2
  assert re.fullmatch(r"meta-train step 3/4 \[\d+ s\]: loss 1\.0", lines[0])
  assert re.fullmatch(r"meta-train step 4/4 \[\d+ s\]: loss 0\.5", lines[1])


def test_bar_false_prints_plain_lines_on_a_terminal():
  out = _Tty()
  p = Progress("meta-train step", 2, bar=False, stream=out)
  assert p.plain
  p.update(1, "loss 1.0")
  assert re.fullmatch(r"meta-train step 1/2 \[\d+ s\]: loss 1\.0\n",
                      out.getvalue())


def test_disabled_prints_nothing():
  for stream in (io.StringIO(), _Tty()):
    p = Progress("eval", 3, enabled=False, stream=stream)
    p.update(1, "x")
    p.close()
    assert stream.getvalue() == ""


def test_bar_on_a_terminal_shows_count_and_text():
  out = _Tty()
  p = Progress("eval", 2, stream=out)
  assert not p.plain
  p.update(2, "quad: adam")
  p.close()
  p.close()  # idempotent
  text = out.getvalue()
  assert "eval" in text and "2/2" in text and "quad: adam" in text
  assert "eval 2/2 [" not in text  # a bar, not a plain line
