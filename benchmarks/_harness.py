"""What the benchmarks share: the fake server in a process of its own."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

KEY = "bench-key"
WORKFLOW = "WCFG-bench"


@contextmanager
def fake_server(*options: str) -> Iterator[str]:
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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"(http://\S+/api)", line)
        if not match:
            raise RuntimeError(f"the fake server did not start: {line!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
