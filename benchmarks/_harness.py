"""What the benchmarks share: the fake server in a process of its own."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

KEY = "bench-key"
WORKFLOW = "WCFG-bench"


@contextmanager
def served(cmd: list[str], *, cwd: Path | None = None) -> Iterator[str]:
    """Run a server command that prints its base URL first; yield that URL, then stop it."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"(http://\S+/api)", line)
        if not match:
            raise RuntimeError(f"the server did not start ({' '.join(cmd[1:3])}): {line!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def fake_server(*options: str) -> AbstractContextManager[str]:
    """Run ``python -m copyai_async.testing`` with ``options``; yield its base URL."""
    cmd = [
        sys.executable,
        "-m",
        "copyai_async.testing",
        "--api-key",
        KEY,
        "--workflow",
        WORKFLOW,
        # As the published figures were measured: idle connections kept, no gzip (the
        # fake server's defaults now close idle connections after 5 s and gzip large
        # answers, as production does; the benchmarks measure the client, not those).
        "--keepalive-timeout",
        "0",
        "--no-gzip",
        *options,
    ]
    return served(cmd)
