"""A listener in a process limited to 128 open files, for tests/test_listener.py.

    python tests/listener_worker.py capped|uncapped

It serves a FakeCopyAI and a listener (``max_connections`` 40, or 1000: more than the
process can open), and talks with the test over stdin/stdout, one JSON line each way:

1. it prints ``{"url": <the listener's URL>}``; the test floods the listener with
   connections that never finish a request, then sends ``flooded``;
2. it calls the API (its own FakeCopyAI, over loopback) for 2 s, counting failures and
   the connections the listener held; then waits for ``report`` (meanwhile the test
   closes the flood and delivers three events);
3. it prints its report and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import sys
import time
from typing import Any

OPEN_FILES = 128


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def _line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def main(scenario: str) -> dict[str, Any]:
    from copyai_async import CopyAIClient, CopyAIError
    from copyai_async.testing import FakeCopyAI

    records = _Count()
    logging.getLogger("copyai_async").addHandler(records)
    logging.getLogger("copyai_async").setLevel(logging.INFO)
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []  # what asyncio reports (a failed accept, say)
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    cap = 40 if scenario == "capped" else 1000
    calls = failures = max_open = 0
    # Idle connections to the API closed at once: every call opens one, as calls a
    # while apart do against the real API (so an exhausted process would fail them).
    async with (
        FakeCopyAI(keepalive_timeout=0.005) as server,
        CopyAIClient(server.api_key, base_url=server.url, max_connections=4, timeout=5) as client,
    ):
        run = await client.start_run(server.workflow_id, {})
        async with client.listen(max_connections=cap, request_timeout=1.0) as listener:
            print(json.dumps({"url": str(listener.url)}), flush=True)
            await _line()  # flooded
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                calls += 1
                try:
                    await client.get_run(server.workflow_id, run.id)
                except CopyAIError:
                    failures += 1
                if listener._server is not None:
                    max_open = max(max_open, listener._server.connections)
                await asyncio.sleep(0.02)
            print(json.dumps({"calls": calls}), flush=True)
            await _line()  # report
            stats = listener.stats
            port = listener.port
    # Out of descriptors, the FakeCopyAI (a plain aiohttp server) fails to accept too,
    # and asyncio reports it: only reports about the listener's socket count here.
    about_listener = [r for r in reports if f", {port})" in str(r.get("socket", ""))]
    return {
        "api_calls": calls,
        "api_failures": failures,
        "max_open": max_open,
        "accepted": stats.accepted,
        "timed_out": stats.timed_out,
        "accept_warnings": sum("cannot accept connections" in m for m in records.messages),
        "accept_recovered": sum("accepting connections again" in m for m in records.messages),
        "asyncio_errors": len(about_listener),
    }


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, hard))
    print(json.dumps(asyncio.run(main(sys.argv[1]))), flush=True)
