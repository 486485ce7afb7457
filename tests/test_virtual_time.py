"""Users' tests on virtual time: with looptime's loop (``@pytest.mark.looptime``), the
plugin's fixtures follow the loop's clock, so a wait on runs lasting minutes takes a
moment of wall time, and deadlines hold on that same time."""

from __future__ import annotations

import time

import pytest

from copyai_async import CopyAIClient, PollTimeoutError, RunStatus
from copyai_async.testing import FakeCopyAI, Schedule

pytest.importorskip("looptime", reason="looptime (virtual loop time) needs Python 3.11+")


@pytest.mark.looptime
async def test_a_two_minute_run_is_awaited_in_a_moment(
    copyai_client: CopyAIClient, copyai_server: FakeCopyAI
) -> None:
    copyai_server.default_schedule = Schedule.seconds(("NEW", 5), ("PROCESSING", 115))
    began, wall = copyai_server.clock(), time.perf_counter()
    run = await copyai_client.start_and_wait(copyai_server.workflow_id, {"n": 1}, timeout=600)
    assert run.status is RunStatus.COMPLETE
    assert copyai_server.clock() - began >= 120  # the run took its two minutes...
    assert time.perf_counter() - wall < 3  # ...of loop time, not of wall time


@pytest.mark.looptime
async def test_fifty_five_minute_runs_are_awaited_in_a_moment(
    copyai_client: CopyAIClient, copyai_server: FakeCopyAI
) -> None:
    copyai_server.default_schedule = Schedule.seconds(("PROCESSING", 300), spread=0.2)
    wall = time.perf_counter()
    runs = [await copyai_client.start_run(copyai_server.workflow_id, {"n": n}) for n in range(50)]
    ids = [run.id for run in runs]
    waits = copyai_client.wait_for_runs(copyai_server.workflow_id, ids, timeout=900)
    done = [run async for run in waits]
    assert sorted(r.id for r in done) == sorted(ids)
    assert all(r.status is RunStatus.COMPLETE for r in done)
    assert time.perf_counter() - wall < 5


@pytest.mark.looptime
async def test_a_deadline_holds_on_the_loops_time(
    copyai_client: CopyAIClient, copyai_server: FakeCopyAI
) -> None:
    copyai_server.default_schedule = Schedule.seconds(("PROCESSING", 300))
    run = await copyai_client.start_run(copyai_server.workflow_id, {"n": 1})
    began, wall = copyai_server.clock(), time.perf_counter()
    with pytest.raises(PollTimeoutError):
        await copyai_client.wait_for_run(copyai_server.workflow_id, run.id, timeout=60)
    assert 60 <= copyai_server.clock() - began < 61
    assert time.perf_counter() - wall < 3
