"""HTTP stacks nobody on this project wrote, serving a small Copy.ai, each in its own thread.

- uvicorn and Hypercorn serve :class:`CopyAIApp`, a minimal ASGI Copy.ai (the three run
  endpoints, in memory; runs are COMPLETE at once). The servers' own HTTP handling
  (keep-alive, closing idle connections, framing, ``Date``) is what is under test.
- aiohttp.web serves :class:`~copyai_async.testing.FakeCopyAI`, a plain aiohttp.web app.

Each runs its own event loop in a thread, as a separate process would: the client's loop
does not see the server close a connection before the kernel says so.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from copyai_async.testing import FakeCopyAI

API_KEY = "test-key"
WORKFLOW = "WCFG-real-server"
Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class CopyAIApp:
    """A minimal Copy.ai Workflow API as an ASGI app (thread-safe counters).

    Args:
        gzip_min_size: gzip answers of at least this many bytes for clients that accept it.
        polls_each: GETs of a run that see it PROCESSING before it is COMPLETE.
    """

    def __init__(self, *, gzip_min_size: int | None = 1024, polls_each: int = 0) -> None:
        self.polls_each = polls_each
        self.runs: list[dict[str, Any]] = []  # oldest first
        self._polls: dict[str, int] = {}
        self.starts = 0
        self.requests = 0
        self.gzipped = 0
        self._gzip_min_size = gzip_min_size
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, answer = self._route(
            scope["method"], scope["path"], scope["query_string"], body, headers
        )
        raw = json.dumps(answer).encode()
        out = [(b"content-type", b"application/json")]
        least = self._gzip_min_size
        if least is not None and len(raw) >= least and "gzip" in headers.get("accept-encoding", ""):
            raw = gzip.compress(raw)
            out.append((b"content-encoding", b"gzip"))
            with self._lock:
                self.gzipped += 1
        out.append((b"content-length", str(len(raw)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": raw})

    def _route(
        self, method: str, path: str, query: bytes, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any]:
        if path == "/_stats":  # for a server in another process: what it has done (no key)
            with self._lock:
                return 200, {"starts": self.starts, "requests": self.requests}
        with self._lock:
            self.requests += 1
        if headers.get("x-copy-ai-api-key") != API_KEY:
            return 401, {"status": "error", "errorCode": "UNAUTHORIZED"}
        parts = path.strip("/").split("/")
        if parts[:2] != ["api", "workflow"] or len(parts) not in (4, 5) or parts[3] != "run":
            return 404, {"status": "error", "errorCode": "NOT_FOUND"}
        workflow = parts[2]
        if method == "POST" and len(parts) == 4:
            try:
                start = json.loads(body)
            except ValueError:
                return 400, {"status": "error", "errorCode": "BAD_REQUEST"}
            if not isinstance(start, dict) or not isinstance(start.get("startVariables"), dict):
                return 422, {"status": "error", "errorCode": "REQUEST_INVALID"}
            run = {
                "id": f"WRUN-{uuid.uuid4()}",
                "workflowId": workflow,
                "status": "COMPLETE",
                "input": start["startVariables"],
                "output": {"text": "done"},
                "metadata": start.get("metadata"),
                "createdAt": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "credits": 1,
            }
            with self._lock:
                self.runs.append(run)
                self.starts += 1
            return 200, {"status": "success", "data": {"id": run["id"]}}
        if method != "GET":
            return 405, {"status": "error", "errorCode": "METHOD_NOT_ALLOWED"}
        with self._lock:
            runs = [r for r in self.runs if r["workflowId"] == workflow]
        if len(parts) == 5:
            for run in runs:
                if run["id"] == parts[4]:
                    with self._lock:
                        seen = self._polls[run["id"]] = self._polls.get(run["id"], 0) + 1
                    if seen <= self.polls_each:
                        run = {**run, "status": "PROCESSING", "output": None}
                    return 200, {"status": "success", "data": run}
            return 404, {"status": "error", "errorCode": "NOT_FOUND"}
        params = parse_qs(query.decode())
        page = int(params.get("page", ["1"])[0])
        size = int(params.get("size", ["10"])[0])
        newest = runs[::-1]
        chunk = newest[(page - 1) * size : page * size]
        return 200, {"status": "success", "data": {"total": len(runs), "data": chunk}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def uvicorn_thread(app: Any, **config: Any) -> Iterator[threading.Thread]:
    """uvicorn serving the ASGI ``app`` on 127.0.0.1 in its own thread and event loop.

    ``config`` goes to ``uvicorn.Config``. Yields the server's thread, with its port as
    ``thread.port``; on exit the server is stopped and the thread joined."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.port = sock.getsockname()[1]  # type: ignore[attr-defined]
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        yield thread
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextmanager
def uvicorn_server(app: CopyAIApp, *, idle: float) -> Iterator[str]:
    """uvicorn (h11) serving ``app``, closing connections idle for ``idle`` seconds."""
    # timeout_keep_alive is typed int; uvicorn hands it to loop.call_later.
    with uvicorn_thread(app, http="h11", lifespan="off", timeout_keep_alive=idle) as thread:
        yield f"http://127.0.0.1:{thread.port}/api"  # type: ignore[attr-defined]


@contextmanager
def hypercorn_server(app: CopyAIApp, *, idle: float) -> Iterator[str]:
    """Hypercorn (asyncio) serving ``app``, closing connections idle for ``idle`` seconds."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    port = _free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.keep_alive_timeout = idle
    config.accesslog = None
    config.errorlog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    async def main() -> None:
        task = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait))
        while not task.done():  # until it accepts connections
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            break
        ready.set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("hypercorn did not start")
        yield f"http://127.0.0.1:{port}/api"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@contextmanager
def aiohttp_server(server: FakeCopyAI) -> Iterator[str]:
    """``server`` (a plain aiohttp.web app) on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    async def main() -> None:
        async with server:
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("aiohttp.web did not start")
        yield server.url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def main() -> None:
    """``python -m tests.real_servers {uvicorn,hypercorn} IDLE``: serve until killed.

    Prints the base URL; ``GET /_stats`` (no key) answers the starts it took."""
    import sys

    stack, idle = sys.argv[1], float(sys.argv[2])
    serve = uvicorn_server if stack == "uvicorn" else hypercorn_server
    with serve(CopyAIApp(), idle=idle) as url:
        print(url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
