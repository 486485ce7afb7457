"""Many processes, one key: the Redis coordination measured (docs: Running many workers).

    python benchmarks/coordination.py            # the full measurements (about 3 minutes)
    python benchmarks/coordination.py --tiny     # seconds: checks the harness works

Each measurement runs worker processes (tests/coordination_worker.py, one client each)
against the fake server in this process and a real ``redis-server`` (Debian's package,
or ``$COPYAI_REDIS_SERVER``), twice side by side: shared (one namespace) and the
baseline, the same processes each on its own limits (a namespace each: nothing shared).

1. Rate: 8 processes with ``rate_limit=50`` for 30 s; the most requests the server saw
   in any one second.
2. Pause: 8 processes at 50/s; one request gets a 429 with ``Retry-After: 2``; requests
   any process sent in the 2 s after that answer arrived.
3. Events: a listener in one process, a wait on 200 runs in another; from each
   completion event's delivery to the listener until the wait on that run ends
   (baseline: the waiting process without shared events, on the default poll policy).
4. Outage: 4 processes for 8 s; Redis killed at 2 s and started again at 4 s; API calls
   that failed, and how long after the restart each process shared limits again.
5. Flush: 4 processes, 6 requests under way in each, sharing ``rate_limit=20`` for 6 s
   (1.2 s of starts booked ahead); ``FLUSHALL`` at 3 s; the most requests the server
   saw in any one second, over 3 runs. Side by side: Redis rebuilding the rate from
   what the processes saw, and the baseline, the processes offering nothing (the
   behaviour before the rebuild), alternating.

    python benchmarks/coordination.py --only flush   # just this one (about a minute)

Results go to ``results/coordination.json``; ratios are shared / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from copyai_async.testing import FakeCopyAI, Fault, Schedule  # noqa: E402
from tests.redis_support import BINARY, REASON, RedisServer, max_in_window, run_workers  # noqa: E402


def _job(server: FakeCopyAI, redis: RedisServer, namespace: str, **job: Any) -> dict[str, Any]:
    return {
        "base_url": server.url,
        "api_key": server.api_key,
        "redis": redis.url,
        "namespace": namespace,
        "workflow_id": server.workflow_id,
        **job,
    }


def _namespaces(shared: bool, count: int) -> list[str]:
    one = f"bench-{uuid.uuid4().hex[:8]}"
    return [one if shared else f"{one}-{i}" for i in range(count)]


def _errors(results: list[dict[str, Any]]) -> int:
    return sum(len(r["errors"]) for r in results)


async def rate(redis: RedisServer, shared: bool, procs: int, seconds: float) -> dict[str, Any]:
    async with FakeCopyAI(request_log_size=1_000_000) as server:
        run = server.add_runs(1)[0]
        jobs = [
            _job(server, redis, ns, job="load", rate=50, seconds=seconds, run_id=run.id)
            for ns in _namespaces(shared, procs)
        ]
        results = await run_workers(jobs)
        arrived = [r.received_at for r in server.requests]
    return {
        "processes": procs,
        "rate_limit": 50,
        "seconds": seconds,
        "max_per_second": max_in_window(arrived),
        "requests": len(arrived),
        "errors": _errors(results),
    }


async def pause(redis: RedisServer, shared: bool, procs: int) -> dict[str, Any]:
    async with FakeCopyAI() as server:
        run = server.add_runs(1)[0]
        jobs = [
            _job(server, redis, ns, job="load", rate=50, seconds=7, run_id=run.id)
            for ns in _namespaces(shared, procs)
        ]

        async def during() -> None:
            await asyncio.sleep(2)
            server.inject(Fault.rate_limit(retry_after=2), method="GET")

        results = await run_workers(jobs, during)
    answered = min(t for r in results for t, status in r["ends"] if status == 429)
    starts = sorted(t for r in results for t in r["starts"])
    set_at = [t for r in results for t, _, m in r["logs"] if m.startswith("paused every process")]
    return {
        "processes": procs,
        "sent_within_2s": sum(answered < t < answered + 2.0 for t in starts),
        "silence_s": round(min(t for t in starts if t > answered) - answered, 3),
        "pause_set_after_429_ms": round((set_at[0] - answered) * 1000, 2) if set_at else None,
        "errors": _errors(results),
    }


async def events(redis: RedisServer, shared: bool, runs: int) -> dict[str, Any]:
    async with FakeCopyAI() as server:
        made = [
            server.add_run(schedule=Schedule.seconds(("PROCESSING", 3600))) for _ in range(runs)
        ]
        listen_ns, wait_ns = _namespaces(shared, 2)
        jobs = [
            _job(server, redis, listen_ns, job="listen"),
            _job(
                server,
                redis,
                wait_ns,
                job="wait",
                run_ids=[r.id for r in made],
                policy="events" if shared else "default",
            ),
        ]

        async def during() -> None:
            await asyncio.sleep(1.0)
            for i, run in enumerate(made):
                elapsed = server.clock() - run.created_mono
                server.reschedule(run, Schedule.seconds(("PROCESSING", elapsed + 0.5 + i * 0.05)))
            # Until every run is over and the slowest baseline poll (10 s apart) saw it.
            await asyncio.sleep(0.5 + runs * 0.05 + (2.0 if shared else 12.0))

        results = await run_workers(jobs, during)
        delivered = {
            d.run_id: d.sent_at for d in server.delivered if d.event_type == "workflowRun.completed"
        }
    ended = results[1]["ended"]
    late = sorted((ended[run_id] - delivered[run_id]) * 1000 for run_id in ended)
    return {
        "runs": runs,
        "ended": len(ended),
        "p50_ms": round(statistics.median(late), 1),
        "p99_ms": round(late[min(len(late) - 1, round(0.99 * (len(late) - 1)))], 1),
        "max_ms": round(late[-1], 1),
        "errors": _errors(results),
    }


async def outage(procs: int) -> dict[str, Any]:
    assert BINARY is not None
    redis = RedisServer(BINARY).start()
    restarted = 0.0
    try:
        async with FakeCopyAI() as server:
            run = server.add_runs(1)[0]
            jobs = [
                _job(
                    server, redis, ns, job="load", rate=50, seconds=8, run_id=run.id, start_every=10
                )
                for ns in _namespaces(True, procs)
            ]

            async def during() -> None:
                nonlocal restarted
                await asyncio.sleep(2)
                redis.kill()
                await asyncio.sleep(2)
                redis.start()
                restarted = time.time()

            results = await run_workers(jobs, during)
    finally:
        redis.close()
    back = [
        min((t for t, _, m in r["logs"] if "available again" in m), default=None) for r in results
    ]
    return {
        "processes": procs,
        "calls": sum(r["calls"] for r in results),
        "failed_calls": _errors(results),
        "warnings_per_process": [
            sum(level == "WARNING" for _, level, _ in r["logs"]) for r in results
        ],
        "shared_again_after_restart_s": [
            None if t is None else round(t - restarted, 2) for t in back
        ],
    }


async def flush(redis: RedisServer, rebuild: bool, procs: int, seconds: float) -> dict[str, Any]:
    async with FakeCopyAI(request_log_size=100_000) as server:
        run = server.add_runs(1)[0]
        (namespace,) = _namespaces(True, 1)
        job = _job(
            server,
            redis,
            namespace,
            job="load",
            rate=20,
            tasks=6,
            seconds=seconds,
            run_id=run.id,
            rebuild=rebuild,
        )
        flushed = 0.0

        async def during() -> None:
            nonlocal flushed
            await asyncio.sleep(seconds / 2)
            async with aioredis.Redis.from_url(redis.url) as raw:
                await raw.flushall()
            flushed = server.clock()

        results = await run_workers([job] * procs, during)
        arrived = [r.received_at for r in server.requests]
    return {
        "max_per_second": max_in_window(arrived),
        "in_second_after_flush": sum(flushed <= t < flushed + 1.0 for t in arrived),
        "requests": len(arrived),
        "errors": _errors(results),
    }


async def flushes(redis: RedisServer, tiny: bool) -> dict[str, Any]:
    procs, seconds, repeats = (2, 3.0, 1) if tiny else (4, 6.0, 3)
    runs: dict[str, list[dict[str, Any]]] = {"rebuilt": [], "baseline": []}
    for _ in range(repeats):  # alternating, so that both see the same machine
        runs["rebuilt"].append(await flush(redis, True, procs, seconds))
        runs["baseline"].append(await flush(redis, False, procs, seconds))
    return {
        variant: {
            "processes": procs,
            "rate_limit": 20,
            "max_per_second": [r["max_per_second"] for r in done],
            "in_second_after_flush": [r["in_second_after_flush"] for r in done],
            "requests": [r["requests"] for r in done],
            "errors": sum(r["errors"] for r in done),
        }
        for variant, done in runs.items()
    }


async def main(tiny: bool, only: str | None = None) -> dict[str, Any]:
    if BINARY is None:
        raise SystemExit(REASON)
    redis = RedisServer(BINARY).start()
    results: dict[str, Any] = {}
    try:
        procs, seconds, runs = (2, 3.0, 20) if tiny else (8, 30.0, 200)
        steps: list[tuple[str, Callable[[bool], Awaitable[dict[str, Any]]]]] = [
            ("rate", lambda shared: rate(redis, shared, procs, seconds)),
            ("pause", lambda shared: pause(redis, shared, procs)),
            ("events", lambda shared: events(redis, shared, runs)),
        ]
        for name, measure in steps:
            if only in (None, name):
                results[name] = {"shared": await measure(True), "baseline": await measure(False)}
                print(name, json.dumps(results[name]), flush=True)
        if only in (None, "outage"):
            results["outage"] = await outage(2 if tiny else 4)
            print("outage", json.dumps(results["outage"]), flush=True)
        if only in (None, "flush"):
            results["flush"] = await flushes(redis, tiny)
            print("flush", json.dumps(results["flush"]), flush=True)
    finally:
        redis.close()
    if only is None:
        summarise(results)
    return results


def summarise(r: dict[str, Any]) -> None:
    print("\nratios are shared / baseline")
    print(
        f"rate:   max per second {r['rate']['shared']['max_per_second']} vs "
        f"{r['rate']['baseline']['max_per_second']} "
        f"({r['rate']['shared']['max_per_second'] / r['rate']['baseline']['max_per_second']:.3f})"
    )
    print(
        f"pause:  sent within 2 s of the 429: {r['pause']['shared']['sent_within_2s']} vs "
        f"{r['pause']['baseline']['sent_within_2s']}"
    )
    print(
        f"events: p99 {r['events']['shared']['p99_ms']} ms vs {r['events']['baseline']['p99_ms']}"
        f" ms ({r['events']['shared']['p99_ms'] / r['events']['baseline']['p99_ms']:.4f})"
    )
    print(f"outage: {r['outage']['failed_calls']} failed calls of {r['outage']['calls']}")
    print(
        f"flush:  max per second {r['flush']['rebuilt']['max_per_second']} vs "
        f"{r['flush']['baseline']['max_per_second']} (limit 20)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: check the harness")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    parser.add_argument(
        "--only", choices=["rate", "pause", "events", "outage", "flush"], help="one measurement"
    )
    args = parser.parse_args()
    measured = asyncio.run(main(args.tiny, args.only))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coordination.json").write_text(json.dumps(measured, indent=2) + "\n")
