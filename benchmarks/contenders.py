"""What the benchmarks compare: copyai_async and the loops people write by hand.

Each function does one job against the fake server and returns what it measured. The
baselines are what a user would write instead: a sequential page loop, one polling loop
per run gathered with ``asyncio.gather``, a single polling loop, each with aiohttp and
with httpx, decoding JSON only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import aiohttp
from _harness import KEY, WORKFLOW  # benchmarks/ is on sys.path when run

from copyai_async import CopyAIClient, PollPolicy

PAGE = 100
POOL = 100  # connections per client: the default of aiohttp and of httpx
TERMINAL = ("COMPLETE", "FAILED")
HEADERS = {"x-copy-ai-api-key": KEY}
SCHEDULE = PollPolicy(jitter=0)  # the baselines sleep as our default policy does


# -- streaming every run ----------------------------------------------------------------


async def stream_ours(url: str, runs: int) -> dict[str, Any]:
    count = 0
    async with CopyAIClient(KEY, base_url=url) as client:
        async for _ in client.iter_runs(WORKFLOW):
            count += 1
    return {"runs": count}


async def stream_aiohttp(url: str, runs: int) -> dict[str, Any]:
    count, page = 0, 1
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        while True:
            async with session.get(
                f"{url}/workflow/{WORKFLOW}/run", params={"page": page, "size": PAGE}
            ) as resp:
                resp.raise_for_status()
                body = await resp.json()
            batch = body["data"]["data"]
            count += len(batch)
            if len(batch) < PAGE:
                return {"runs": count}
            page += 1


async def stream_httpx(url: str, runs: int) -> dict[str, Any]:
    import httpx

    count, page = 0, 1
    async with httpx.AsyncClient(headers=HEADERS) as session:
        while True:
            resp = await session.get(
                f"{url}/workflow/{WORKFLOW}/run", params={"page": page, "size": PAGE}
            )
            resp.raise_for_status()
            batch = resp.json()["data"]["data"]
            count += len(batch)
            if len(batch) < PAGE:
                return {"runs": count}
            page += 1


# -- streaming, client-bound: the job alone, in one process --------------------------------


async def _job_times(
    job: Callable[[str, int], Awaitable[dict[str, Any]]], url: str, arg: dict[str, Any]
) -> dict[str, Any]:
    """Run ``job`` ``repeats`` times (after a warm-up, unless ``cold``); the wall and CPU
    seconds of each run of the job alone (not the process's start or imports)."""
    runs = arg["runs"]
    if not arg.get("cold"):
        await job(url, runs)
    walls, cpus = [], []
    for _ in range(arg["repeats"]):
        wall, cpu = time.perf_counter(), time.process_time()
        result = await job(url, runs)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if result["runs"] != runs:
            raise RuntimeError(f"streamed {result['runs']} of {runs}")
    return {"job_wall_s": walls, "job_cpu_s": cpus}


async def client_ours(url: str, arg: dict[str, Any]) -> dict[str, Any]:
    return await _job_times(stream_ours, url, arg)


async def client_aiohttp(url: str, arg: dict[str, Any]) -> dict[str, Any]:
    return await _job_times(stream_aiohttp, url, arg)


# -- waiting on many runs ---------------------------------------------------------------


async def wait_ours(url: str, finishes: dict[str, float]) -> dict[str, Any]:
    latencies: list[float] = []
    async with CopyAIClient(KEY, base_url=url) as client:
        async for run in client.wait_for_runs(WORKFLOW, list(finishes)):
            latencies.append(time.time() - finishes[run.id])
    return {"latencies": latencies}


async def wait_ours_rate(url: str, arg: dict[str, Any]) -> dict[str, Any]:
    """Ours with a client-wide ``rate_limit``: the server counts requests per second."""
    finishes = arg["finishes"]
    latencies: list[float] = []
    async with CopyAIClient(KEY, base_url=url, rate_limit=arg["rate"]) as client:
        async for run in client.wait_for_runs(WORKFLOW, list(finishes)):
            latencies.append(time.time() - finishes[run.id])
    return {"latencies": latencies}


async def _gather_loops(
    get_status: Callable[[str], Awaitable[str | None]],
    finishes: dict[str, float],
    fixed: float | None = None,
) -> dict[str, Any]:
    latencies: list[float] = []

    async def one(run_id: str) -> None:
        attempt = 0
        while await get_status(run_id) not in TERMINAL:
            await asyncio.sleep(fixed if fixed is not None else SCHEDULE.interval(attempt))
            attempt += 1
        latencies.append(time.time() - finishes[run_id])

    await asyncio.gather(*(one(run_id) for run_id in finishes))
    return {"latencies": latencies}


async def wait_aiohttp(
    url: str, finishes: dict[str, float], fixed: float | None = None
) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=HEADERS) as session:

        async def status(run_id: str) -> str | None:
            async with session.get(f"{url}/workflow/{WORKFLOW}/run/{run_id}") as resp:
                resp.raise_for_status()
                return (await resp.json())["data"].get("status")  # type: ignore[no-any-return]

        return await _gather_loops(status, finishes, fixed)


async def wait_aiohttp_1s(url: str, finishes: dict[str, float]) -> dict[str, Any]:
    """The docs' advice as people write it: poll each run every second."""
    return await wait_aiohttp(url, finishes, fixed=1.0)


async def wait_httpx(url: str, finishes: dict[str, float]) -> dict[str, Any]:
    import httpx

    # httpx's default pool is 100 connections, as aiohttp's is: the same concurrency. The
    # loops queue on a semaphore of that size rather than in the pool: httpcore 1.0 rescans
    # every queued request on each release (encode/httpx#3215, encode/httpcore#1035), so
    # 10,000 requests queued in the pool took over 10 minutes of CPU a measurement.
    limit = asyncio.Semaphore(POOL)
    async with httpx.AsyncClient(headers=HEADERS, timeout=60) as session:

        async def status(run_id: str) -> str | None:
            async with limit:
                resp = await session.get(f"{url}/workflow/{WORKFLOW}/run/{run_id}")
            resp.raise_for_status()
            return resp.json()["data"].get("status")  # type: ignore[no-any-return]

        return await _gather_loops(status, finishes)


# -- waiting by listing sweeps ----------------------------------------------------------


async def sweep_ours(url: str, arg: dict[str, Any]) -> dict[str, Any]:
    """``wait_for_runs`` on every run of ``finishes`` with ``PollPolicy(sweep=...)``: the
    detection latency of each run (from its finish, on the server's Unix clock), and how
    often the wait yielded runs (each must come once). A deadline well past the last
    finish ends a wait that would never end (the wait then raises)."""
    finishes: dict[str, float] = arg["finishes"]
    policy = PollPolicy(sweep=arg["sweep"])
    latencies: list[float] = []
    seen: set[str] = set()
    yielded = strangers = 0
    async with CopyAIClient(KEY, base_url=url) as client:
        async for run in client.wait_for_runs(
            WORKFLOW, list(finishes), policy=policy, timeout=arg["timeout"]
        ):
            yielded += 1
            if run.id not in finishes:
                strangers += 1
                continue
            latencies.append(time.time() - finishes[run.id])
            seen.add(run.id)
    return {
        "latencies": latencies,
        "yielded": yielded,
        "distinct": len(seen),
        "strangers": strangers,
    }


# -- waiting with webhook events ---------------------------------------------------------


async def events_ours(url: str, arg: dict[str, Any]) -> dict[str, Any]:
    """Start ``runs`` runs that finish at random times, then wait on them all: by polling
    alone, or with a listener registered (``listen``). The server's clock and ours are
    the machine's: a run finishes ``seconds`` after its ``createdAt``."""
    import random

    rng = random.Random(arg["seed"])
    low, high = arg["finish"]
    # Each run read on its own (sweep=False): the scenario compares polls of runs with
    # and without events; sweeps of the listing are the sweep scenario's.
    policy = PollPolicy(sweep=False, safety_interval=arg.get("safety") or 30.0)
    seconds: dict[str, float] = {}
    latencies: list[float] = []
    yielded: list[str] = []
    async with CopyAIClient(KEY, base_url=url) as client, contextlib.AsyncExitStack() as stack:
        if arg["listen"]:
            listener = await stack.enter_async_context(client.listen())
            await listener.register(WORKFLOW)
        gate = asyncio.Semaphore(50)

        async def start() -> None:
            wait = rng.uniform(low, high)
            async with gate:
                run = await client.start_run(WORKFLOW, {"seconds": wait})
            seconds[run.id] = wait

        await asyncio.gather(*(start() for _ in range(arg["runs"])))
        async for run in client.wait_for_runs(WORKFLOW, list(seconds), policy=policy):
            assert run.created_at is not None
            finished = run.created_at.timestamp() + seconds[run.id]
            latencies.append(time.time() - finished)
            yielded.append(run.id)
        events = listener.stats.accepted if arg["listen"] else 0
    return {
        "latencies": latencies,
        "yielded_once": len(yielded) == len(set(yielded)) == arg["runs"],
        "events": events,
    }


# -- waits that learn how long runs take -----------------------------------------------------


async def adaptive_ours(url: str, arg: dict[str, Any]) -> dict[str, Any]:
    """Start ``warm`` runs lasting ``learn`` seconds (each its own draw) and wait on each,
    then ``runs`` more lasting ``then`` seconds, one started every ``spacing`` s, each
    awaited by its own ``start_and_wait``. With ``adaptive``, the second lot is placed on
    what the first taught. The policy is the default scaled by ``scale`` (a time scale:
    runs of 20-40 s measured at 0.1 as runs of 2-4 s with every interval a tenth).
    Returns the second lot's detection delays and the server's run GETs for it."""
    import random

    rng = random.Random(arg["seed"])
    scale = arg["scale"]
    policy = PollPolicy(
        initial=1.0 * scale,
        max_interval=10.0 * scale,
        adaptive=arg["adaptive"],
    )
    latencies: list[float] = []
    stats_url = url.rsplit("/api", 1)[0] + "/_fake/stats"

    async with CopyAIClient(KEY, base_url=url) as client, aiohttp.ClientSession() as plain:

        async def run_gets() -> int:
            async with plain.get(stats_url) as resp:
                return int((await resp.json())["run_gets"])

        async def one(bounds: tuple[float, float], delay: float, record: bool) -> None:
            seconds = rng.uniform(*bounds)
            await asyncio.sleep(delay)
            run = await client.start_and_wait(WORKFLOW, {"seconds": seconds}, policy=policy)
            seen = time.time()
            assert run.created_at is not None
            if record:
                latencies.append(seen - (run.created_at.timestamp() + seconds))

        spacing = arg["spacing"]
        await asyncio.gather(*(one(arg["learn"], i * spacing, False) for i in range(arg["warm"])))
        before = await run_gets()
        await asyncio.gather(*(one(arg["then"], i * spacing, True) for i in range(arg["runs"])))
        gets = await run_gets() - before
        learned = client.durations(WORKFLOW)
    return {
        "latencies": latencies,
        "gets": gets,
        "schedule": list(learned.schedule),
        "observed": learned.observed,
    }


# -- bulk runs: a workflow over every row ---------------------------------------------------


def _rows(arg: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The input, read lazily as ``run_batch`` reads a file: one small row each, whose
    ``seconds`` (drawn uniformly within ``finish``) say when its run finishes (the server
    runs with ``--finish-from seconds``)."""
    import random

    rng = random.Random(arg["seed"])
    low, high = arg["finish"]
    return ({"topic": f"row {i}", "seconds": rng.uniform(low, high)} for i in range(arg["rows"]))


async def _listening(client: CopyAIClient, stack: contextlib.AsyncExitStack) -> Any:
    listener = await stack.enter_async_context(client.listen())
    await listener.register(WORKFLOW)
    return listener


def _timing_journal() -> dict[str, float]:
    """Make the batches of this process use a journal whose calls are timed; returns the
    totals, filled in as it runs: CPU of the event loop's thread and wall seconds spent
    in the journal, its durable commits (one each ``intend``) and hint commits."""
    from copyai_async import _batch
    from copyai_async._journal import Journal

    totals = {"cpu_s": 0.0, "wall_s": 0.0, "intents": 0.0, "hint_commits": 0.0}
    depth = [0]

    def timed(name: str) -> Callable[..., Any]:
        method = getattr(Journal, name)

        def call(self: Journal, *args: Any, **kwargs: Any) -> Any:
            if name == "intend":
                totals["intents"] += 1
            elif name == "flush" and self._hints:
                totals["hint_commits"] += 1
            if depth[0]:  # inside a timed call already (a hint that flushes)
                return method(self, *args, **kwargs)
            depth[0] += 1
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return method(self, *args, **kwargs)
            finally:
                totals["wall_s"] += time.perf_counter() - wall
                totals["cpu_s"] += time.thread_time() - cpu
                depth[0] -= 1

        return call

    calls = ("__init__", "get", "unsettled", "intend", "started", "ended", "delivered")
    timing = type("TimedJournal", (Journal,), {n: timed(n) for n in (*calls, "flush", "close")})
    # The batch builds its journal by this name: a benchmark-only swap, in its own process.
    _batch.Journal = timing  # type: ignore[attr-defined,assignment]
    return totals


async def batch_ours(url: str, arg: dict[str, Any]) -> dict[str, Any]:
    """``run_batch`` over ``rows`` rows with a client-wide ``rate_limit``: with a journal
    file (``journal``: its path) or none, polling alone or with a listener (``listen``);
    with the time spent in the journal's calls measured (``time_journal``)."""
    rows, results, ok = arg["rows"], 0, 0
    seen: set[int] = set()
    journal_time = _timing_journal() if arg.get("time_journal") else None
    async with (
        CopyAIClient(KEY, base_url=url, rate_limit=arg["rate"]) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        listener = await _listening(client, stack) if arg["listen"] else None
        batch = client.run_batch(
            WORKFLOW, _rows(arg), journal=arg["journal"], max_running=arg["max_running"]
        )
        async with batch:
            async for result in batch:
                results += 1
                ok += result.ok
                seen.add(result.row)
        events = listener.stats.accepted if listener is not None else 0
    once = len(seen) == results == rows
    return {"results": results, "ok": ok, "once": once, "events": events, "journal": journal_time}


async def batch_gather(url: str, arg: dict[str, Any]) -> dict[str, Any]:
    """What a careful user writes by hand: ``start_and_wait`` for every row, gathered, at
    most ``max_running`` at once (a semaphore), on the same rate-limited client (with a
    listener, when ``listen``); no journal (a crash loses track of every run in flight)."""
    rows = arg["rows"]
    window = asyncio.Semaphore(arg["max_running"])
    async with (
        CopyAIClient(KEY, base_url=url, rate_limit=arg["rate"]) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        listener = await _listening(client, stack) if arg["listen"] else None

        async def one(row: dict[str, Any]) -> bool:
            async with window:
                run = await client.start_and_wait(WORKFLOW, row, raise_on_failure=False)
            return run.status.value == "COMPLETE"

        done = await asyncio.gather(*(one(row) for row in _rows(arg)))
        events = listener.stats.accepted if listener is not None else 0
    return {"results": len(done), "ok": sum(done), "once": len(done) == rows, "events": events}


async def journal_alone(url: str, arg: dict[str, Any]) -> dict[str, Any]:
    """The journal alone, driven through a batch's calls for ``rows`` rows: each row read
    (``get``), its intent recorded with those of its ``chunk`` (one durable commit), its
    start key taken, then ``started``, ``ended`` and ``delivered``. ``chunk=1`` is what a
    batch at a full window writes (each freed place reads one row, whose intent goes
    alone), 64 what it writes while its window fills. Timed alone, CPU and wall (the
    wall includes the fsyncs: the event loop waits on them)."""
    from copyai_async._journal import Journal

    rows, chunk, digest = arg["rows"], arg["chunk"], "0" * 16
    journal = Journal(arg["path"], workflow_id=WORKFLOW)
    wall, cpu = time.perf_counter(), time.process_time()
    for first in range(0, rows, chunk):
        block = range(first, min(rows, first + chunk))
        for row in block:
            journal.get(row)
        journal.intend((row, digest, 0) for row in block)
        for row in block:
            journal.started(row, f"run-{journal.start_key(row, 0)}")
        for row in block:
            journal.ended(row, "COMPLETE")
        for row in block:
            journal.delivered(row)
    journal.close()
    return {"job_wall_s": time.perf_counter() - wall, "job_cpu_s": time.process_time() - cpu}


# -- one wait, end to end ---------------------------------------------------------------

TINY = PollPolicy(initial=0.0001, multiplier=1.0, max_interval=0.0001, jitter=0)


async def single_ours(url: str, run_id: str) -> dict[str, Any]:
    async with CopyAIClient(KEY, base_url=url) as client:
        run = await client.wait_for_run(WORKFLOW, run_id, policy=TINY)
    return {"status": run.status.value}


async def single_aiohttp(url: str, run_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        while True:
            async with session.get(f"{url}/workflow/{WORKFLOW}/run/{run_id}") as resp:
                resp.raise_for_status()
                status = (await resp.json())["data"].get("status")
            if status in TERMINAL:
                return {"status": status}
            await asyncio.sleep(TINY.initial)


async def single_httpx(url: str, run_id: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(headers=HEADERS) as session:
        while True:
            resp = await session.get(f"{url}/workflow/{WORKFLOW}/run/{run_id}")
            resp.raise_for_status()
            status = resp.json()["data"].get("status")
            if status in TERMINAL:
                return {"status": status}
            await asyncio.sleep(TINY.initial)


CONTENDERS: dict[str, dict[str, Callable[..., Coroutine[Any, Any, dict[str, Any]]]]] = {
    "stream": {"ours": stream_ours, "aiohttp": stream_aiohttp, "httpx": stream_httpx},
    "client": {"ours": client_ours, "aiohttp": client_aiohttp},
    "wait": {
        "ours": wait_ours,
        "aiohttp": wait_aiohttp,
        "httpx": wait_httpx,
        "aiohttp-1s": wait_aiohttp_1s,
    },
    "rate": {"ours": wait_ours_rate},
    "sweep": {"sweep": sweep_ours, "get_only": sweep_ours},
    "events": {"polling": events_ours, "webhooks": events_ours},
    "adaptive": {"learning": adaptive_ours, "plain": adaptive_ours},
    "single": {"ours": single_ours, "aiohttp": single_aiohttp, "httpx": single_httpx},
    "batch": {"ours": batch_ours, "gather": batch_gather},
    "journal": {"ours": journal_alone},
}
