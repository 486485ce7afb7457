"""One client call in a fresh process, for tests/test_proxy.py's https cases.

aiohttp builds its default TLS context when it is imported, from the environment
(``SSL_CERT_FILE``): only a fresh process started with it set trusts the test CA, as a
user's program behind a TLS-inspecting proxy would. Run with ``-W error``.

argv[1] is a JSON object: ``base_url``, ``api_key``, ``workflow_id``, ``call``
(``"list_runs"`` or ``"start_run"``) and ``client`` (keyword arguments of
CopyAIClient). Prints one JSON object: ``ok``, ``sleeps`` (backoffs taken), ``repr``,
``log`` (every record at DEBUG) and, on failure, ``error`` (its type, status, proxy,
str, repr and the whole formatted traceback).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sys
import traceback
from typing import Any

from copyai_async import CopyAIClient
from copyai_async.testing import FakeClock

from .proxy_support import resolve_test_hosts


async def _call(spec: dict[str, Any], clock: FakeClock) -> dict[str, Any]:
    client = CopyAIClient(spec["api_key"], base_url=spec["base_url"], clock=clock, **spec["client"])
    result: dict[str, Any] = {"repr": repr(client), "proxy": client.proxy}
    async with client:
        try:
            if spec["call"] == "start_run":
                await client.start_run(spec["workflow_id"], {"topic": "proxies"})
            else:
                await client.list_runs(spec["workflow_id"])
        except Exception as error:  # reported whole to the test
            result["ok"] = False
            result["error"] = {
                "type": type(error).__name__,
                "status": getattr(error, "status", None),
                "proxy": getattr(error, "proxy", None),
                "str": str(error),
                "repr": repr(error),
                "traceback": "".join(traceback.format_exception(error)),
            }
        else:
            result["ok"] = True
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    # A made-up *.test host reached directly (NO_PROXY, trust_env=False) is this machine.
    socket.getaddrinfo = resolve_test_hosts()
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logger = logging.getLogger("copyai_async")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    clock = FakeClock()
    result = asyncio.run(_call(spec, clock))
    result["sleeps"] = len(clock.sleeps)
    result["log"] = log.getvalue()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
