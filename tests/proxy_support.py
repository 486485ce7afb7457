"""A real HTTP proxy for the tests: proxy.py (from PyPI) in a subprocess, on loopback.

Its plugin, :class:`TestHosts`, makes made-up ``*.test`` host names reach 127.0.0.1 (so
the client sees a host that is not loopback, and proxies it, while every byte stays on
this machine), answers ``CONNECT`` to ``forbidden.test`` with 403 (a proxy's rules), and
records each request it forwards (``METHOD host:port``, one line) in the file named by
``COPYAI_TEST_PROXY_LOG``.

A made-up host must never reach a real resolver, from the proxy or from the client:
:func:`resolve_test_hosts` does for the client what the plugin does for the proxy.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
USER = "proxy-user"
PASSWORD = "s3cret:p@ss/word"  # ':', '@' and '/' must be percent-encoded in a URL
PASSWORD_IN_URL = "s3cret%3Ap%40ss%2Fword"

try:
    from proxy.http.exception import HttpRequestRejected
    from proxy.http.proxy import HttpProxyBasePlugin
except ImportError:  # pragma: no cover - only the proxy subprocess loads the plugin
    HttpProxyBasePlugin = object  # type: ignore[assignment,misc]  # the tests skip


class TestHosts(HttpProxyBasePlugin):  # type: ignore[misc]  # proxy.py is untyped here
    """proxy.py plugin: ``*.test`` is 127.0.0.1; ``forbidden.test`` is refused (403)."""

    def resolve_dns(self, host: str, port: int) -> tuple[str | None, Any]:
        return ("127.0.0.1", None) if host.endswith(".test") else (None, None)

    def before_upstream_connection(self, request: Any) -> Any:
        host = (request.host or b"").decode()
        method = (request.method or b"").decode()
        with open(os.environ["COPYAI_TEST_PROXY_LOG"], "a") as log:
            log.write(f"{method} {host}:{request.port}\n")
        if host.startswith("forbidden."):
            raise HttpRequestRejected(status_code=403, reason=b"Forbidden")
        return request


@attrs.define
class RunningProxy:
    """A proxy.py process: its URL (with credentials if it wants them) and its log."""

    port: int
    log: Path
    credentials: bool

    @property
    def url(self) -> str:
        """``http://[user:password@]127.0.0.1:port`` (the password percent-encoded)."""
        auth = f"{USER}:{PASSWORD_IN_URL}@" if self.credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    @property
    def bare_url(self) -> str:
        """The URL without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def seen(self) -> list[str]:
        """What it forwarded, ``METHOD host:port`` per request, oldest first."""
        return self.log.read_text().splitlines() if self.log.exists() else []

    def forget(self) -> None:
        """Clear the log."""
        self.log.write_text("")


def proxy_available() -> bool:
    """Whether proxy.py is installed (the ``test`` extra brings it)."""
    try:
        import proxy  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def running_proxy(*, credentials: bool) -> Iterator[RunningProxy]:
    """Start proxy.py on a free loopback port; stop it on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp, "port")
        log = Path(tmp, "forwarded.log")
        log.write_text("")
        argv = [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--num-acceptors",
            "1",
            "--num-workers",
            "1",
            "--log-level",
            "WARNING",
            "--plugins",
            "tests.proxy_support.TestHosts",
        ]
        if credentials:
            argv += ["--basic-auth", f"{USER}:{PASSWORD}"]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "COPYAI_TEST_PROXY_LOG": str(log),
        }
        process = subprocess.Popen(
            argv,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            port = _wait_for_port(process, port_file)
            yield RunningProxy(port=port, log=log, credentials=credentials)
        finally:
            process.terminate()
            try:
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck proxy
                process.kill()
                process.communicate()


def _wait_for_port(process: subprocess.Popen[bytes], port_file: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"proxy.py exited at start ({process.returncode}): {stderr}")
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text:
            port = int(text)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return port
        time.sleep(0.05)
    raise RuntimeError("proxy.py did not start listening within 30 s")


def resolve_test_hosts() -> Any:
    """A ``socket.getaddrinfo`` that answers ``*.test`` with 127.0.0.1 (and asks the real
    one for anything else): for the client's direct connections to a made-up host."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str) and host.endswith(".test"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    return getaddrinfo


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
