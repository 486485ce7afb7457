"""A real ``redis-server`` on loopback for the coordination tests and benchmarks.

The binary is ``$COPYAI_REDIS_SERVER``, else ``redis-server`` on the PATH (Debian's
``redis-server`` package; ``.ci/run`` installs it). Without one the tests skip, saying
how to get it; with ``COPYAI_REQUIRE_REDIS=1`` (set by ``.ci/run``) that is an error
instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

BINARY = os.environ.get("COPYAI_REDIS_SERVER") or shutil.which("redis-server")
REASON = (
    "no redis-server binary: install Debian's redis-server package "
    "(apt-get install redis-server) or set COPYAI_REDIS_SERVER to one"
)


def require_redis() -> str:
    """The redis-server binary, else skip (or fail, with ``COPYAI_REQUIRE_REDIS=1``)."""
    if BINARY is None:
        if os.environ.get("COPYAI_REQUIRE_REDIS"):
            pytest.fail(f"COPYAI_REQUIRE_REDIS is set, but there is {REASON}", pytrace=False)
        pytest.skip(REASON)
    return BINARY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, without persistence; can be killed
    and started again on the same port.

    ``password`` makes it ask for one: the default user's, or with ``user``, that
    user's (an ACL user with every right). ``unix_dir`` (a name) also makes it listen
    on a unix socket, :attr:`socket`, in a directory of that name.
    """

    def __init__(
        self,
        binary: str,
        port: int | None = None,
        *,
        password: str | None = None,
        user: str | None = None,
        unix_dir: str | None = None,
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.password = password
        self.user = user
        self._dir = tempfile.TemporaryDirectory(prefix="copyai-redis-")
        self.socket: str | None = None
        if unix_dir is not None:
            (Path(self._dir.name) / unix_dir).mkdir()
            self.socket = str(Path(self._dir.name) / unix_dir / "redis.sock")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _options(self) -> list[str]:
        options = [
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--loglevel", "warning",
            "--enable-debug-command", "local",  # DEBUG SLEEP: a Redis that hangs
        ]  # fmt: skip
        if self.socket is not None:
            options += ["--unixsocket", self.socket, "--unixsocketperm", "700"]
        if self.password is not None and self.user is None:
            options += ["--requirepass", self.password]
        elif self.password is not None:
            options += ["--user", "default", "off", "--user", self.user or "",
                        "on", f">{self.password}", "~*", "&*", "+@all"]  # fmt: skip
        return options

    def start(self) -> RedisServer:
        self._proc = subprocess.Popen(
            [self.binary, *self._options()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    # Up, whether it answers or asks who is asking.
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}: {err}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, as when a host dies."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()

    def close(self) -> None:
        self.kill()
        self._dir.cleanup()


WORKER = Path(__file__).with_name("coordination_worker.py")


async def run_workers(
    options: list[dict[str, Any]], during: Callable[[], Awaitable[None]] | None = None
) -> list[dict[str, Any]]:
    """Run one :data:`WORKER` process per options dict: start them all, wait until each
    is ready, say go to all at once, run ``during`` (if given), then close their stdin
    and return what each printed (failing with its stderr if it failed)."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            json.dumps(option),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for option in options
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stderr is not None
            ready = await asyncio.wait_for(proc.stdout.readline(), 60)
            if ready != b"ready\n":
                raise AssertionError(
                    f"a worker did not start: {(await proc.stderr.read()).decode()}"
                )
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        await asyncio.gather(*(proc.stdin.drain() for proc in procs if proc.stdin))
        if during is not None:
            await during()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stderr is not None
            out, err = await asyncio.wait_for(
                asyncio.gather(proc.stdout.read(), proc.stderr.read()), 120
            )
            if await proc.wait() != 0:
                raise AssertionError(f"a worker failed:\n{err.decode()}")
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def max_in_window(times: Iterable[float], width: float = 1.0) -> int:
    """The most of ``times`` within any half-open window ``[t, t + width)``."""
    ordered = sorted(times)
    best = low = 0
    for high, t in enumerate(ordered):
        while ordered[low] <= t - width:
            low += 1
        best = max(best, high - low + 1)
    return best
