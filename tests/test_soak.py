"""Soak: stream and wait for several minutes under faults; memory and tasks stay flat.

Not in the default run. One command (the duration in seconds is optional)::

    COPYAI_SOAK_SECONDS=300 .venv/bin/python -m pytest -m soak -s
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import pytest

from copyai_async import CopyAIClient, PollPolicy
from copyai_async.testing import FakeCopyAI, Fault, Schedule

pytestmark = pytest.mark.soak

FAULTS = (
    *[Fault.server_error(500)] * 4,
    *[Fault.server_error(503, html=True)] * 6,
    *[Fault.rate_limit("0")] * 3,
    *[Fault.rate_limit(None)] * 2,
    *[Fault.disconnect()] * 2,
    Fault.truncate(),
)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def test_soak_memory_and_tasks_stay_flat() -> None:
    seconds = float(os.environ.get("COPYAI_SOAK_SECONDS", "180"))
    policy = PollPolicy(initial=0.01, multiplier=1.5, max_interval=0.05, jitter=0.1)
    server = FakeCopyAI(fault_rate=0.18, faults=FAULTS, fault_methods=("GET",), seed=1)
    server.add_runs(5_000, schedule=Schedule.immediate())
    samples: list[tuple[float, float, int, int]] = []
    started = time.monotonic()
    async with (
        server,
        CopyAIClient(
            server.api_key,
            base_url=server.url,
            max_retries=10,
            backoff_base=0.001,
            backoff_max=0.01,
        ) as client,
    ):
        rounds = 0
        while time.monotonic() - started < seconds:
            streamed = [r.id async for r in client.iter_runs(server.workflow_id)]
            assert len(streamed) == len(set(streamed)) == len(server.runs())
            fresh = [
                server.add_run(schedule=Schedule.polls(("PROCESSING", i % 5))).id
                for i in range(200)
            ]
            waited = [
                r.id async for r in client.wait_for_runs(server.workflow_id, fresh, policy=policy)
            ]
            assert sorted(waited) == sorted(fresh)
            for run_id in fresh:  # keep the workflow's size steady
                server.delete_run(run_id)
            server.reset_stats()  # the fake's own request log is not ours to measure
            rounds += 1
            ours = [t for t in asyncio.all_tasks() if t.get_name().startswith("copyai_async.")]
            assert ours == []  # nothing of ours outlives a round
            samples.append(
                (time.monotonic() - started, _rss_mb(), len(asyncio.all_tasks()), rounds)
            )
    print("\n  seconds  rss MB  tasks  round")
    for at, rss, tasks, n in samples[:: max(1, len(samples) // 20)]:
        print(f"  {at:7.1f}  {rss:6.1f}  {tasks:5d}  {n:5d}")
    quarter = max(1, len(samples) // 4)
    early = statistics.median(s[1] for s in samples[:quarter])
    late = statistics.median(s[1] for s in samples[-quarter:])
    print(f"  rss: first quarter {early:.1f} MB, last quarter {late:.1f} MB; rounds {rounds}")
    assert late <= early + 20  # flat: no growth with rounds
    # All tasks (the fake server's connection handlers included) stay within a few.
    assert max(s[2] for s in samples[-quarter:]) <= max(s[2] for s in samples[:quarter]) + 5
