"""The client against HTTP stacks nobody here wrote: the keep-alive edge, and gzip.

A server closes a keep-alive connection once it has been idle for its timeout (uvicorn
and Node: 5 s; gunicorn: 2 s; load balancers: 60 s); aiohttp keeps idle connections for
15 s. A request sent on a pooled connection just as the server closes it is lost: for a
GET aiohttp sends it again, but a start was lost (before the fix: 6 to 13% of starts
swept across the edge against aiohttp.web and Hypercorn; Hypercorn even created runs whose
start the client reported as failed). Each stack here closes idle connections after
0.3 s, and starts are sent at 0.3 s ± 4 ms after the last answer.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import aiohttp
import pytest

from copyai_async import CopyAIClient, CopyAIError, PollPolicy, RunStatus
from copyai_async.testing import FakeCopyAI, Schedule

from .real_servers import (
    API_KEY,
    WORKFLOW,
    CopyAIApp,
    aiohttp_server,
    hypercorn_server,
    uvicorn_server,
)

IDLE = 0.3  # the servers' idle keep-alive timeout, in seconds
CLIENTS = 10
ROUNDS = 6
STACKS = ["fake-in-process", "aiohttp.web", "uvicorn", "hypercorn"]


@asynccontextmanager
async def _stack(
    name: str, *, polls_each: int = 0
) -> AsyncIterator[tuple[str, str, Callable[[], int]]]:
    """(base URL, workflow id, count of runs the server created) for a stack."""
    if name == "fake-in-process":
        fake = FakeCopyAI(keepalive_timeout=IDLE)
        fake.default_schedule = Schedule.polls(("PROCESSING", polls_each))
        async with fake:
            yield fake.url, fake.workflow_id, lambda: fake.stats.runs_started
        return
    if name == "aiohttp.web":
        fake = FakeCopyAI(keepalive_timeout=IDLE)
        fake.default_schedule = Schedule.polls(("PROCESSING", polls_each))
        with aiohttp_server(fake) as url:
            yield url, fake.workflow_id, lambda: fake.stats.runs_started
        return
    app = CopyAIApp(polls_each=polls_each)
    serve = uvicorn_server if name == "uvicorn" else hypercorn_server
    with serve(app, idle=IDLE) as url:
        yield url, WORKFLOW, lambda: app.starts


def _sweep(k: int, n: int) -> float:
    """The k-th of n sleeps, spread over IDLE ± 4 ms in a scattered order."""
    return IDLE - 0.004 + 0.008 * ((k * 7919) % n) / n


@pytest.mark.parametrize("stack", STACKS)
async def test_no_start_lost_or_repeated_at_the_keepalive_edge(stack: str) -> None:
    failures: list[str] = []
    started: list[str] = []

    async def one_client(i: int, url: str, workflow: str) -> None:
        async with CopyAIClient(API_KEY, base_url=url) as client:
            for r in range(ROUNDS):
                for _ in range(2):
                    try:
                        run = await client.start_run(workflow, {"client": i, "round": r})
                    except CopyAIError as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    else:
                        started.append(run.id)
                await asyncio.sleep(_sweep(i * ROUNDS + r, CLIENTS * ROUNDS))

    async with _stack(stack) as (url, workflow, created):
        await asyncio.gather(*(one_client(i, url, workflow) for i in range(CLIENTS)))
        made = created()
    assert failures == []
    assert len(started) == CLIENTS * ROUNDS * 2
    assert len(set(started)) == len(started)
    assert made == len(started)  # the server created exactly the runs reported


@pytest.mark.parametrize("stack", STACKS)
async def test_polls_at_the_keepalive_edge_end_every_wait(
    stack: str, caplog: pytest.LogCaptureFixture
) -> None:
    edge = PollPolicy(initial=IDLE, multiplier=1.0, max_interval=IDLE, jitter=0.03)
    async with (
        _stack(stack, polls_each=4) as (url, workflow, _created),
        CopyAIClient(API_KEY, base_url=url) as client,
    ):
        ids = [(await client.start_run(workflow, {"n": n})).id for n in range(20)]
        done = [run async for run in client.wait_for_runs(workflow, ids, policy=edge)]
    assert sorted(run.id for run in done) == sorted(ids)
    assert all(run.status is RunStatus.COMPLETE for run in done)
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


# -- gzip -------------------------------------------------------------------------------


@contextmanager
def _served(stack: str, app: CopyAIApp) -> Iterator[str]:
    serve = uvicorn_server if stack == "uvicorn" else hypercorn_server
    with serve(app, idle=5.0) as url:
        yield url


@pytest.mark.parametrize("stack", ["uvicorn", "hypercorn"])
async def test_gzipped_answers_from_asgi_servers(stack: str) -> None:
    app = CopyAIApp(gzip_min_size=512)
    with _served(stack, app) as url:
        async with CopyAIClient(API_KEY, base_url=url) as client:
            started = await asyncio.gather(
                *(client.start_run(WORKFLOW, {"text": "x" * 40, "n": n}) for n in range(250))
            )
            listed = [run async for run in client.iter_runs(WORKFLOW)]
    assert sorted(run.id for run in listed) == sorted(run.id for run in started)
    assert [run.id for run in listed] == [run["id"] for run in app.runs[::-1]]
    assert all(run.input is not None and run.input["text"] == "x" * 40 for run in listed)
    assert app.gzipped >= 3  # the pages of 100 runs came compressed


async def test_gzipped_answers_from_aiohttp_web() -> None:
    async with FakeCopyAI() as server:  # gzips answers of 1 KiB and more, by default
        server.add_runs(1_000, schedule=Schedule.immediate(), input={"text": "y" * 50})
        async with CopyAIClient(server.api_key, base_url=server.url) as client:
            listed = [run.id async for run in client.iter_runs(server.workflow_id)]
        url = f"{server.url}/workflow/{server.workflow_id}/run?size=100"
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(url, headers={"x-copy-ai-api-key": server.api_key}) as resp,
        ):
            raw = await resp.read()
            encoding = resp.headers.get("Content-Encoding")
    assert listed == [fake.id for fake in server.runs()]
    assert all("gzip" in r.headers.get("Accept-Encoding", "") for r in server.requests)
    assert encoding == "gzip"
    assert len(json.loads(gzip.decompress(raw))["data"]["data"]) == 100
