"""The ``lopt`` console command: dispatches to sub-commands.

``lopt meta-train ...`` and ``lopt eval ...`` need the ``lopt[train]`` extra;
they are imported lazily so that the core package stays light.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

_COMMANDS = {
    "meta-train": ("lopt.meta_train.cli", "Meta-train a learned optimizer."),
    "eval": ("lopt.eval.cli", "Evaluate optimizers on held-out tasks."),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print("usage: lopt {" + ",".join(_COMMANDS) + "} [options]\n")
    for name, (_, doc) in _COMMANDS.items():
      print(f"  {name:12s} {doc}")
    return 0
  if argv[0] in ("-V", "--version"):
    import lopt
    print(lopt.__version__)
    return 0
  cmd = argv[0]
  if cmd not in _COMMANDS:
    print(f"lopt: unknown command {cmd!r}; expected one of "
          f"{', '.join(_COMMANDS)}.", file=sys.stderr)
    return 2
  try:
    module = importlib.import_module(_COMMANDS[cmd][0])
  except ImportError as e:
    print(f"lopt {cmd}: needs the training extras ({e}). Install them with "
          "`pip install 'lopt[train]'`.", file=sys.stderr)
    return 2
  return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
  sys.exit(main())
