"""Run a program as ``python -m MODULE ...`` or ``python SCRIPT ...`` would, and say on
stderr when its code was done, for tests that time a program against the fake server.

    python tests/timed.py -m copyai_async runs wait WCFG-... WRUN-... --listen
    python tests/timed.py program.py

The last line on stderr is ``timed: done at <Unix time>``: written once the program has
returned (its ``async with`` blocks closed, its own exit handlers run), before the
interpreter's teardown, which takes tenths of a second on a busy machine whatever the
program does.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
import time

MARK = "timed: done at "


def _done() -> None:
    print(f"{MARK}{time.time():.6f}", file=sys.stderr, flush=True)


def main() -> None:
    atexit.register(_done)  # registered first: run after the program's own handlers
    if sys.argv[1] == "-m":
        module = sys.argv[2]
        sys.argv = [module, *sys.argv[3:]]
        sys.path[0] = os.getcwd()  # as `python -m` has it
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script = sys.argv[1]
        sys.argv = sys.argv[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` has it
        runpy.run_path(script, run_name="__main__")


def done_at(stderr: str) -> float:
    """When the program was done, from the stderr of a run under this module."""
    last = stderr.rstrip().splitlines()[-1]
    assert last.startswith(MARK), stderr[-2000:]
    return float(last.removeprefix(MARK))


if __name__ == "__main__":
    main()
