"""One process of the many-process coordination tests and benchmark (run as a script).

    python tests/coordination_worker.py '<json options>'

It prints ``ready`` once its client is open (subscribed to the shared events), waits for
``go`` on stdin, does its job, and prints one JSON line with what it saw. Times are
``time.time()``: every process of a run is on the same host, so they compare.

Jobs (``options["job"]``):

- ``load``: ``tasks`` loops calling ``get_run`` (every ``start_every``-th call a
  ``start_run`` instead, if set) for ``seconds``; reports each request's start, each
  answer's status, every error an API call raised, and the library's log records.
- ``listen``: a webhook listener registered for the workflow, until stdin closes.
- ``wait``: ``wait_for_runs`` over ``run_ids`` with polls 60 s apart, so that only the
  shared events can end the waits quickly (``"policy": "default"``: the default
  policy, as a baseline); reports when each wait ended.

``"rebuild": false`` makes the process offer Redis nothing to rebuild the rate and the
pause from after it lost them (a FLUSHALL; ``RedisCoordination(_rebuild=False)``): the
behaviour before they were rebuilt, as the baseline of that measurement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from types import SimpleNamespace
from typing import Any

import aiohttp

from copyai_async import CopyAIClient, PollPolicy, RedisCoordination


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO:
            self.records.append((record.created, record.levelname, record.getMessage()))


async def line() -> str:
    return (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()


def traced_session(starts: list[float], ends: list[tuple[float, int]]) -> aiohttp.ClientSession:
    trace = aiohttp.TraceConfig()

    async def on_start(_s: Any, _c: SimpleNamespace, _p: Any) -> None:
        starts.append(time.time())

    async def on_end(_s: Any, _c: SimpleNamespace, params: Any) -> None:
        ends.append((time.time(), params.response.status))

    trace.on_request_start.append(on_start)
    trace.on_request_end.append(on_end)
    return aiohttp.ClientSession(trace_configs=[trace])


async def main(options: dict[str, Any]) -> dict[str, Any]:
    records = Records()
    logger = logging.getLogger("copyai_async")
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    starts: list[float] = []
    ends: list[tuple[float, int]] = []
    errors: list[str] = []
    result: dict[str, Any] = {"starts": starts, "ends": ends, "errors": errors}
    async with (
        RedisCoordination(
            options["redis"],
            namespace=options["namespace"],
            _rebuild=options.get("rebuild", True),
        ) as coordination,
        traced_session(starts, ends) as session,
        CopyAIClient(
            options["api_key"],
            base_url=options["base_url"],
            rate_limit=options.get("rate"),
            max_connections=options.get("max_connections", 100),
            coordination=coordination,
            session=session,
        ) as client,
    ):
        workflow_id = options["workflow_id"]
        job = options["job"]
        if job == "listen":
            async with client.listen() as listener:
                await listener.register(workflow_id)
                print("ready", flush=True)
                await line()  # go
                await line()  # stdin closed: stop
                result["accepted"] = listener.stats.accepted
        else:
            print("ready", flush=True)
            await line()
        if job == "load":
            deadline = time.monotonic() + options["seconds"]
            start_every = options.get("start_every")
            calls = 0

            async def loop() -> None:
                nonlocal calls
                while time.monotonic() < deadline:
                    calls += 1
                    try:
                        if start_every and calls % start_every == 0:
                            await client.start_run(workflow_id, {"n": calls})
                        else:
                            await client.get_run(workflow_id, options["run_id"])
                    except Exception as exc:  # every failure is the finding
                        errors.append(f"{type(exc).__name__}: {exc}")

            await asyncio.gather(*(loop() for _ in range(options.get("tasks", 4))))
            result["calls"] = calls
        elif job == "wait":
            ended: dict[str, float] = {}
            policy = (
                PollPolicy()
                if options.get("policy") == "default"
                else PollPolicy(initial=60.0, max_interval=60.0, safety_interval=60.0)
            )
            async for run in client.wait_for_runs(workflow_id, options["run_ids"], policy=policy):
                ended[run.id] = time.time()
            result["ended"] = ended
        result["available"] = coordination.available
    result["logs"] = records.records
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
