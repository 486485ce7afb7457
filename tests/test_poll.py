"""The poller: policy, wait/watch of one run, many runs, deadlines, grace, rate, cancellation.

Single-run timing is checked on a FakeClock (virtual seconds); many-run waits use the
real clock with millisecond intervals.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
import random
import sys
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import attrs
import pytest

from copyai_async import (
    START_KEY,
    AuthenticationError,
    BadRequestError,
    CopyAIClient,
    NotFoundError,
    PollFailedError,
    PollPolicy,
    PollTimeoutError,
    RunFailedError,
    RunStatus,
    ServerError,
    UnprocessableEntityError,
    WorkflowRun,
)
from copyai_async._budget import Budget
from copyai_async._client import COPYAI_RUNS
from copyai_async._poll import RunHints, RunPoll, Target
from copyai_async.testing import FakeClock, FakeCopyAI, Fault, Schedule

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

# Waits on many runs here read each run on its own (sweep=False): these tests are about
# the per-run polls; reading the listing instead is tests/test_sweep.py's.
FAST = PollPolicy(initial=0.001, multiplier=2.0, max_interval=0.004, jitter=0.0, sweep=False)
LIFECYCLE = Schedule.polls(("NEW", 1), ("WAITING", 1), ("PROCESSING", 2), ("RETRYING", 1))


def _tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("copyai_async.")]


async def _quiet(server: FakeCopyAI) -> None:
    for _ in range(100):
        await asyncio.sleep(0)
    assert _tasks() == []
    await asyncio.wait_for(server.idle(), 5)


@pytest.fixture
async def live(server: FakeCopyAI) -> AsyncIterator[CopyAIClient]:
    """A client on the real clock, for waits whose timing is real (and tiny)."""
    async with CopyAIClient(server.api_key, base_url=server.url) as c:
        yield c


# -- PollPolicy -------------------------------------------------------------------------


def test_policy_defaults_and_growth() -> None:
    policy = PollPolicy()
    assert (policy.initial, policy.multiplier, policy.max_interval, policy.jitter) == (
        1.0,
        1.5,
        10.0,
        0.1,
    )
    assert [policy.interval(n) for n in range(7)] == [1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375, 10.0]
    assert policy.interval(10_000) == 10.0
    rng = random.Random(5)
    for n in range(20):
        delay = policy.delay(n, rng)
        assert policy.interval(n) * 0.95 <= delay <= policy.interval(n) * 1.05
        assert delay <= policy.max_interval * 1.05


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"initial": 0}, ValueError, "initial"),
        ({"initial": -1}, ValueError, "initial"),
        ({"initial": math.inf}, ValueError, "initial"),
        ({"initial": math.nan}, ValueError, "initial"),
        ({"max_interval": 0}, ValueError, "max_interval"),
        ({"multiplier": 0.5}, ValueError, "multiplier"),
        ({"initial": 5, "max_interval": 2}, ValueError, "max_interval"),
        ({"jitter": -0.1}, ValueError, "jitter"),
        ({"jitter": 1.5}, ValueError, "jitter"),
        ({"jitter": math.nan}, ValueError, "jitter"),
        ({"not_found_grace": -1}, ValueError, "not_found_grace"),
        ({"initial": "1"}, TypeError, "initial"),
        ({"jitter": None}, TypeError, "jitter"),
        ({"max_failed_polls": -1}, ValueError, "max_failed_polls"),
        ({"max_failed_polls": 10**7}, ValueError, "max_failed_polls"),
        ({"max_failed_polls": 1.5}, TypeError, "max_failed_polls"),
        ({"max_failed_polls": True}, TypeError, "max_failed_polls"),
        ({"rechecks": 0.5}, TypeError, "rechecks"),
        ({"rechecks": "0.5"}, TypeError, "rechecks"),
        ({"rechecks": [0.5, "1"]}, TypeError, "rechecks"),
        ({"rechecks": [0.5, 0]}, ValueError, "rechecks"),
        ({"rechecks": [math.inf]}, ValueError, "rechecks"),
        ({"rechecks": [1.0] * 11}, ValueError, "at most 10"),
    ],
)
def test_policy_validation(kwargs: dict[str, Any], exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        PollPolicy(**kwargs)


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        PollPolicy().initial = 2  # type: ignore[misc]
    assert PollPolicy(rechecks=[1, 2]).rechecks == (1.0, 2.0)
    assert PollPolicy(rechecks=()).rechecks == ()


# -- RunPoll: one run's timing, without sockets or time ----------------------------------

RUNNING = WorkflowRun(id="WRUN-1", workflow_id="WCFG-1", status=RunStatus.PROCESSING)
FINISHED = WorkflowRun(id="WRUN-1", workflow_id="WCFG-1", status=RunStatus.COMPLETE)
STEADY = PollPolicy(initial=10, multiplier=1, max_interval=10, jitter=0, safety_interval=20)


def _run_poll(
    policy: PollPolicy = STEADY,
    *,
    hints: RunHints | None = None,
    deadline: float | None = None,
    started_at: float | None = None,
) -> RunPoll[WorkflowRun]:
    async def never(_workflow_id: str, _run_id: str) -> WorkflowRun:  # pragma: no cover
        raise AssertionError("RunPoll sends nothing")

    target = Target(workflow_id="WCFG-1", run_id="WRUN-1", read=never, started_at=started_at)
    return RunPoll(
        target,
        kind=COPYAI_RUNS,
        policy=policy,
        rng=random.Random(0),
        hints=hints,
        now=0.0,
        deadline=deadline,
        time_limit=deadline,
    )


def _drive(
    state: RunPoll[WorkflowRun], until: float, events: dict[float, str] | None = None
) -> list[float]:
    """The times its polls go out until ``until`` (each reads RUNNING, answered at
    once); ``events`` maps a time to an event arriving then ("hint")."""
    sent: list[float] = []
    pending = sorted((events or {}).items())
    while True:
        at = state.due()
        if pending and pending[0][0] < at:
            when, _ = pending.pop(0)
            state.hint(when)
            continue
        if at >= until:
            return sent
        state.sent(at)
        sent.append(at)
        assert not state.read(RUNNING, at)


def test_run_poll_follows_the_schedule() -> None:
    assert _drive(_run_poll(), 45) == [0, 10, 20, 30, 40]


def test_run_poll_checks_an_event_then_rechecks_without_moving_the_schedule() -> None:
    hints = RunHints(FakeClock())
    hints.attach()
    state = _run_poll(hints=hints)
    hints.hint("WRUN-1", "WCFG-1", final=True)
    # An event at 13 s: checked at once, re-checked 0.5, 1 and 2 s apart; the schedule's
    # polls at 20 and 30 s are where they were (a forged event delays nothing).
    assert _drive(state, 35, {13: "hint"}) == [0, 10, 13, 13.5, 14.5, 16.5, 20, 30]
    assert not hints.claims_final("WRUN-1")  # the check contradicted it


def test_run_poll_events_cost_at_most_one_plus_rechecks_each() -> None:
    state = _run_poll(PollPolicy(initial=100, max_interval=100, jitter=0, rechecks=(1, 1)))
    times = _drive(state, 100, {5: "hint", 5.5: "hint", 50: "hint"})
    # Each event: a check at once, then the re-checks (1 s apart here); a second event
    # before they are over starts them again. Never more than 1 + 2 polls per event.
    assert times == [0, 5, 5.5, 6.5, 7.5, 50, 51, 52]


def test_run_poll_checks_again_after_a_poll_in_flight_during_an_event() -> None:
    state = _run_poll()
    state.sent(0.0)
    assert state.hint(0.1) is False  # in flight: it cannot move the poll out already
    assert not state.read(RUNNING, 0.2)  # this reading may be older than the event
    assert state.due() == 0.2  # so it is checked at once
    state.sent(0.2)
    assert not state.read(RUNNING, 0.3)  # contradicted: the re-checks follow
    assert state.due() == pytest.approx(0.8)


def test_run_poll_final_look() -> None:
    # Polls every 10 s; the deadline at 45 s: one more at 44 s (FINAL_LOOK before it).
    assert _drive(_run_poll(deadline=45), 45) == [0, 10, 20, 30, 40, 44]
    # A reading at most FINAL_LOOK before the final look is fresh: none is added.
    assert _drive(_run_poll(deadline=41.5), 41.5) == [0, 10, 20, 30, 40]
    # A short timeout: a quarter of it.
    assert _drive(_run_poll(deadline=2), 2) == [0, 1.5]
    # Watched by a listener, a run just started is not polled first; the final look is.
    hints = RunHints(FakeClock())
    hints.attach()
    hints.cover(None)
    quiet = _run_poll(PollPolicy(), hints=hints, deadline=8, started_at=0.0)
    assert _drive(quiet, 8) == [7]
    timeout = quiet.timeout_error(8.0)
    assert timeout.age == 1.0
    assert "last status PROCESSING, read 1.0 s before" in str(timeout)


def test_run_poll_final_look_is_sent_once_even_if_it_fails() -> None:
    state = _run_poll(deadline=45)
    assert _drive(state, 44) == [0, 10, 20, 30, 40]
    assert state.due() == 44
    state.sent(44)
    assert state.missed(ServerError("boom", method="GET", path="/p", status=503), 44.5) is None
    assert state.due() > 45  # no second final look, however stale the reading
    assert state.timeout_error(45).age == 5.0


def test_run_poll_a_failed_check_is_checked_again() -> None:
    hints = RunHints(FakeClock())
    hints.attach()
    state = _run_poll(hints=hints)
    state.sent(0)
    assert not state.read(RUNNING, 0)
    hints.hint("WRUN-1", "WCFG-1", final=True)
    assert state.hint(3) is True
    state.sent(3)
    outage = ServerError("boom", method="GET", path="/p", status=503)
    assert state.missed(outage, 3) is None
    assert state.failures == 0  # a poll an event caused does not count toward giving up
    assert hints.claims_final("WRUN-1")  # a failed poll contradicts nothing
    assert state.due() == 3.5  # the re-checks, as for a contradicted event
    state.sent(3.5)
    assert not state.read(RUNNING, 3.5)
    assert not hints.claims_final("WRUN-1")  # the first reading after it did


def test_run_poll_forged_events_during_an_outage_do_not_end_the_wait() -> None:
    # A 503 for every poll for 10 s, and an event every second (each a new claim): the
    # events' polls fail too, but only the schedule's count toward max_failed_polls,
    # and each event costs at most 1 + len(rechecks) polls.
    state = _run_poll(PollPolicy(initial=2, multiplier=1, max_interval=2, jitter=0))
    outage = ServerError("boom", method="GET", path="/p", status=503)
    sent: list[float] = []
    events = [float(t) for t in range(1, 10)]
    while True:
        at = state.due()
        if events and events[0] < at:
            state.hint(events.pop(0))
            continue
        if at >= 10:
            break
        state.sent(at)
        sent.append(at)
        assert state.missed(outage, at) is None
    assert state.failures == 5  # the schedule's polls at 0, 2, 4, 6 and 8 s
    assert len(sent) <= 5 + 9 * (1 + 3)


def test_run_poll_an_event_during_a_check_is_checked_by_the_next_poll() -> None:
    hints = RunHints(FakeClock())
    hints.attach()
    state = _run_poll(hints=hints)
    hints.hint("WRUN-1", "WCFG-1", final=True)
    state.hint(1)
    state.sent(1)  # checks the first event
    hints.hint("WRUN-1", "WCFG-1", final=True)
    assert state.hint(1.1) is False  # a second event while the check is out
    assert not state.read(RUNNING, 1.2)  # older than the second event: contradicts nothing
    assert hints.claims_final("WRUN-1")
    assert state.due() == 1.2  # the second event is checked at once
    state.sent(1.2)
    assert not state.read(RUNNING, 1.3)
    assert not hints.claims_final("WRUN-1")


# -- wait_for_run: statuses -------------------------------------------------------------


async def test_wait_through_every_status(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=LIFECYCLE)
    seen: list[RunStatus] = []
    run = await client.wait_for_run(
        server.workflow_id, fake.id, on_status=lambda r: seen.append(r.status)
    )
    assert run.status is RunStatus.COMPLETE
    assert run.output is not None
    assert seen == [
        RunStatus.NEW,
        RunStatus.WAITING,
        RunStatus.PROCESSING,
        RunStatus.RETRYING,
        RunStatus.COMPLETE,
    ]
    assert server.stats.requests == 6
    # First poll at once, then one sleep per further poll, growing within the jitter.
    policy = PollPolicy()
    assert len(clock.sleeps) == 5
    half = policy.jitter / 2
    for n, slept in enumerate(clock.sleeps):
        assert policy.interval(n) * (1 - half) <= slept <= policy.interval(n) * (1 + half)


def test_jitter_keeps_the_mean_interval() -> None:
    import random

    policy = PollPolicy(jitter=0.4)
    rng = random.Random(5)
    sleeps = [policy.delay(10, rng) for _ in range(20_000)]
    assert min(sleeps) >= 10 * 0.8
    assert max(sleeps) <= 10 * 1.2
    # The mean is the interval (so jitter adds no requests), within sampling error.
    assert abs(sum(sleeps) / len(sleeps) - 10) < 0.05


async def test_first_poll_is_immediate(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.immediate())
    await client.wait_for_run(server.workflow_id, fake.id)
    assert clock.sleeps == []
    assert server.stats.requests == 1


async def test_failed_raises_with_the_run(client: CopyAIClient, server: FakeCopyAI) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 2), final="FAILED"))
    with pytest.raises(RunFailedError) as info:
        await client.wait_for_run(server.workflow_id, fake.id)
    assert info.value.run.status is RunStatus.FAILED
    assert info.value.run_id == fake.id
    assert fake.id in str(info.value)
    assert "FAILED" in str(info.value)


async def test_failed_returned_when_asked(client: CopyAIClient, server: FakeCopyAI) -> None:
    fake = server.add_run(schedule=Schedule.immediate("FAILED"))
    run = await client.wait_for_run(server.workflow_id, fake.id, raise_on_failure=False)
    assert run.status is RunStatus.FAILED


async def test_unknown_status_keeps_polling_sleeps_and_warns_once(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PAUSED", 4)))
    seen: list[str | None] = []
    run = await client.wait_for_run(
        server.workflow_id, fake.id, on_status=lambda r: seen.append(r.raw_status)
    )
    assert run.status is RunStatus.COMPLETE
    assert seen == ["PAUSED", "COMPLETE"]
    assert len(clock.sleeps) == 4
    assert all(s > 0.5 for s in clock.sleeps)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'PAUSED'" in warnings[0].getMessage()
    assert fake.id in warnings[0].getMessage()


async def test_async_callback_is_awaited(client: CopyAIClient, server: FakeCopyAI) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 2)))
    seen: list[RunStatus] = []

    async def record(run: WorkflowRun) -> None:
        await asyncio.sleep(0)
        seen.append(run.status)

    await client.wait_for_run(server.workflow_id, fake.id, on_status=record)
    assert seen == [RunStatus.PROCESSING, RunStatus.COMPLETE]


async def test_callback_error_ends_the_wait(client: CopyAIClient, server: FakeCopyAI) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 5)))

    def explode(run: WorkflowRun) -> None:
        raise LookupError("from the callback")

    with pytest.raises(LookupError, match="from the callback"):
        await client.wait_for_run(server.workflow_id, fake.id, on_status=explode)
    assert server.stats.requests == 1


# -- deadlines --------------------------------------------------------------------------


async def test_deadline_cuts_the_long_sleep(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 100)))
    policy = PollPolicy(initial=30, max_interval=60, jitter=0)
    with pytest.raises(PollTimeoutError) as info:
        await client.wait_for_run(server.workflow_id, fake.id, timeout=45, policy=policy)
    # Polls at 0 and 30; the next (at 75 s) would cross the deadline: a final look
    # goes out 1 s before it instead (FINAL_LOOK), and the wait ends at 45.
    assert clock.now == pytest.approx(45.0)
    assert clock.sleeps == [30.0, pytest.approx(14.0), pytest.approx(1.0)]
    gets = [r.received_at for r in server.requests if r.method == "GET"]
    assert len(gets) == 3
    err = info.value
    assert err.age == pytest.approx(1.0)
    assert "read 1.0 s before" in str(err)
    assert isinstance(err, TimeoutError)
    assert err.run is not None
    assert err.run.status is RunStatus.PROCESSING
    assert err.timeout == 45
    assert err.run_id == fake.id
    assert "45 s timeout" in str(err)
    assert "PROCESSING" in str(err)


async def test_deadline_during_retries(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 100)))
    server.inject(*[Fault.server_error(503)] * 50, path=fake.id)
    async with CopyAIClient(
        server.api_key,
        base_url=server.url,
        clock=clock,
        max_retries=50,
        backoff_base=4,
        backoff_max=8,
    ) as patient:
        with pytest.raises(PollTimeoutError) as info:
            await patient.wait_for_run(server.workflow_id, fake.id, timeout=20)
    assert clock.now == pytest.approx(20.0)
    assert info.value.run is None
    assert isinstance(info.value.__cause__, ServerError)
    assert "never read" in str(info.value)


async def test_deadline_during_retry_after(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.immediate())
    server.inject(Fault.rate_limit("30"))
    with pytest.raises(PollTimeoutError):
        await client.wait_for_run(server.workflow_id, fake.id, timeout=10)
    assert clock.now == pytest.approx(10.0)  # not 30: the pause ends at the deadline


async def test_deadline_during_a_hanging_request(live: CopyAIClient, server: FakeCopyAI) -> None:
    fake = server.add_run(schedule=Schedule.immediate())
    server.hold()
    started = time.monotonic()
    with pytest.raises(PollTimeoutError):
        await live.wait_for_run(server.workflow_id, fake.id, timeout=0.2)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.5  # within a small margin of the deadline
    await _quiet(server)


async def test_retry_after_honoured_while_polling(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 1)))
    server.inject(Fault.rate_limit("7"))
    run = await client.wait_for_run(server.workflow_id, fake.id)
    assert run.status is RunStatus.COMPLETE
    assert 7.0 in clock.sleeps


# -- the 404 grace window ---------------------------------------------------------------


async def test_not_found_just_after_start_is_polled_again(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.default_schedule = Schedule.polls(("PROCESSING", 1))
    server.inject(*[Fault.status_code(404, error_code="NOT_FOUND")] * 2, method="GET")
    run = await client.start_and_wait(server.workflow_id, {"x": 1})
    assert run.status is RunStatus.COMPLETE
    assert [r.status for r in server.requests] == [200, 404, 404, 200, 200]


async def test_not_found_after_the_grace_window_is_raised(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    started = await client.start_run(server.workflow_id, {})
    server.inject(*[Fault.status_code(404, error_code="NOT_FOUND")] * 100, method="GET")
    policy = PollPolicy(initial=1, max_interval=1, jitter=0, not_found_grace=5)
    with pytest.raises(NotFoundError):
        await client.wait_for_run(server.workflow_id, started.id, policy=policy)
    assert clock.now == pytest.approx(5.0)  # polled at 0..4, raised at 5


async def test_not_found_for_a_run_not_started_here_is_raised_at_once(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    with pytest.raises(NotFoundError):
        await client.wait_for_run(server.workflow_id, "WRUN-typo")
    assert clock.sleeps == []
    assert server.stats.requests == 1


# -- watch_run --------------------------------------------------------------------------


async def test_watch_yields_changes_and_ends_after_terminal(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("NEW", 2), ("PROCESSING", 3), final="FAILED"))
    seen = [run.status async for run in client.watch_run(server.workflow_id, fake.id)]
    assert seen == [RunStatus.NEW, RunStatus.PROCESSING, RunStatus.FAILED]
    assert server.stats.requests == 6


async def test_watch_timeout_starts_at_iteration(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 100)))
    watcher = client.watch_run(server.workflow_id, fake.id, timeout=5)
    clock.advance(100)  # time before iterating does not count
    seen: list[str] = []
    with pytest.raises(PollTimeoutError):
        await _collect(watcher, seen)
    assert seen == [fake.id]  # one reading: PROCESSING
    assert clock.now == pytest.approx(105.0)


async def test_watch_break_leaves_nothing(live: CopyAIClient, server: FakeCopyAI) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 100)))
    async for run in live.watch_run(server.workflow_id, fake.id, policy=FAST):
        assert run.status is RunStatus.PROCESSING
        break
    await _quiet(server)


# -- wait_for_runs ----------------------------------------------------------------------


async def test_many_runs_each_once_failed_yielded(live: CopyAIClient, server: FakeCopyAI) -> None:
    rng = random.Random(11)
    fakes = [
        server.add_run(
            schedule=Schedule.polls(
                ("PROCESSING", rng.randint(0, 6)), final=rng.choice(["COMPLETE", "FAILED"])
            )
        )
        for _ in range(120)
    ]
    ids = [f.id for f in fakes]
    got = [run async for run in live.wait_for_runs(server.workflow_id, ids + ids[:10], policy=FAST)]
    assert sorted(r.id for r in got) == sorted(ids)
    assert all(r.is_terminal for r in got)
    assert {r.status for r in got} == {RunStatus.COMPLETE, RunStatus.FAILED}
    # Each run polled until terminal and no further: steps + 1 polls.
    polls = server.stats.by_path
    for fake in fakes:
        expected = int(fake.schedule.steps[0][1]) + 1
        assert polls[f"GET /api/workflow/{server.workflow_id}/run/{fake.id}"] == expected


async def test_many_runs_errors_come_last_as_a_group(
    live: CopyAIClient, server: FakeCopyAI
) -> None:
    good = [server.add_run(schedule=Schedule.polls(("PROCESSING", 3))).id for _ in range(5)]
    broken = server.add_run(schedule=Schedule.polls(("PROCESSING", 3))).id
    server.inject(*[Fault.server_error(503)] * 20, path=broken)
    ids = ["WRUN-missing-1", *good, broken, "WRUN-missing-2"]
    got: list[str] = []
    async with CopyAIClient(
        server.api_key, base_url=server.url, max_retries=1, backoff_base=0.001
    ) as impatient:
        with pytest.raises(ExceptionGroup) as info:
            await _collect(impatient.wait_for_runs(server.workflow_id, ids, policy=FAST), got)
    assert sorted(got) == sorted(good)  # every other run first
    group = info.value
    assert "3 of 8 runs" in str(group)
    kinds = [type(e) for e in group.exceptions]
    assert kinds == [NotFoundError, PollFailedError, NotFoundError]  # in the order given
    for error, run_id in zip(
        group.exceptions, ["WRUN-missing-1", broken, "WRUN-missing-2"], strict=True
    ):
        assert run_id in str(error)
    gave_up = group.exceptions[1]
    assert isinstance(gave_up, PollFailedError)
    assert gave_up.failures == FAST.max_failed_polls + 1  # missed polls first, then it gave up
    assert isinstance(gave_up.__cause__, ServerError)
    assert gave_up.run is None  # never read


async def test_many_runs_timeout_names_each_late_run(
    live: CopyAIClient, server: FakeCopyAI
) -> None:
    quick = [server.add_run(schedule=Schedule.polls(("PROCESSING", 1))).id for _ in range(3)]
    stuck = [server.add_run(schedule=Schedule.polls(("PROCESSING", 10**9))).id for _ in range(2)]
    got: list[str] = []
    with pytest.raises(ExceptionGroup) as info:
        await _collect(
            live.wait_for_runs(server.workflow_id, quick + stuck, policy=FAST, timeout=0.1), got
        )
    assert sorted(got) == sorted(quick)
    errors = info.value.exceptions
    assert [type(e) for e in errors] == [PollTimeoutError, PollTimeoutError]
    assert [e.run_id for e in errors] == stuck  # type: ignore[attr-defined]
    assert all(e.run.status is RunStatus.PROCESSING for e in errors)  # type: ignore[attr-defined]
    await _quiet(server)


async def test_many_runs_send_polls_due_close_together_at_once(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    # Second polls are drawn from 0.75..1.25 s after the first (jitter 0.5). The wait
    # sends the earliest 50 ms late, with every poll due up to 50 ms after that.
    server.clock = clock.monotonic
    fakes = [server.add_run(schedule=Schedule.polls(("PROCESSING", 1))) for _ in range(60)]
    policy = PollPolicy(initial=1.0, multiplier=1.0, max_interval=1.0, jitter=0.5, sweep=False)
    async with CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        start = clock.monotonic()
        done = [
            r
            async for r in client.wait_for_runs(
                server.workflow_id, [f.id for f in fakes], policy=policy, concurrency=60
            )
        ]
    assert len(done) == 60
    polls = [r.received_at - start for r in server.requests if r.method == "GET"]
    assert len(polls) == 120
    assert polls.count(0.0) == 60  # the first polls, all at once
    later = sorted(set(polls) - {0.0})
    assert later[0] >= 0.75 - 0.05
    assert later[-1] <= 1.25 + 0.05 + 1e-9
    # Each wake takes every poll due within 100 ms of the earliest: the next is later.
    assert all(b - a > 0.1 - 1e-9 for a, b in itertools.pairwise(later))
    assert len(later) <= 7 < 60


async def test_concurrency_cap_per_wait(live: CopyAIClient, server: FakeCopyAI) -> None:
    server.latency = 0.003
    ids = [server.add_run(schedule=Schedule.polls(("PROCESSING", 2))).id for _ in range(60)]
    got = [r async for r in live.wait_for_runs(server.workflow_id, ids, concurrency=4, policy=FAST)]
    assert len(got) == 60
    assert server.stats.max_in_flight == 4


async def test_client_cap_across_operations(server: FakeCopyAI) -> None:
    server.latency = 0.003
    ids = [server.add_run(schedule=Schedule.polls(("PROCESSING", 1))).id for _ in range(40)]
    async with CopyAIClient(server.api_key, base_url=server.url, max_connections=3) as capped:

        async def drain(chunk: list[str]) -> int:
            return len(
                [
                    r
                    async for r in capped.wait_for_runs(
                        server.workflow_id, chunk, concurrency=8, policy=FAST
                    )
                ]
            )

        counts = await asyncio.gather(drain(ids[:20]), drain(ids[20:]))
    assert counts == [20, 20]
    assert server.stats.max_in_flight == 3


async def test_many_runs_break_and_cancel_leave_nothing(
    live: CopyAIClient, server: FakeCopyAI
) -> None:
    ids = [server.add_run(schedule=Schedule.polls(("PROCESSING", 10**6))).id for _ in range(30)]
    done = server.add_run(schedule=Schedule.immediate()).id
    server.hold(lambda request: done not in request.path)  # the others stay in flight
    async for run in live.wait_for_runs(server.workflow_id, [done, *ids], policy=FAST):
        assert run.id == done
        break
    await _quiet(server)

    task = asyncio.create_task(_drain(live.wait_for_runs(server.workflow_id, ids, policy=FAST)))
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _quiet(server)


async def test_many_runs_let_go_of_each_run_once_yielded(
    live: CopyAIClient, server: FakeCopyAI
) -> None:
    # Memory follows the runs still pending: a run seen terminal is not kept until the end.
    quick = [server.add_run(schedule=Schedule.immediate()).id for _ in range(3)]
    slow = server.add_run(schedule=Schedule.polls(("PROCESSING", 10**6))).id
    seen: list[weakref.ref[WorkflowRun]] = []
    stream = live.wait_for_runs(server.workflow_id, [*quick, slow], concurrency=1, policy=FAST)
    async with aclosing(stream):
        async for run in stream:
            seen.append(weakref.ref(run))
            if len(seen) == 3:
                break
        del run
        gc.collect()
        # The last one yielded is still the generator's local; the two before are gone.
        assert [ref() is None for ref in seen] == [True, True, False]


async def _drain(iterator: Any) -> None:
    async for _ in iterator:
        pass


async def _collect(iterator: Any, into: list[str]) -> None:
    async for run in iterator:
        into.append(run.id)


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"run_ids": "WRUN-1"}, TypeError, "single string"),
        ({"run_ids": 5}, TypeError, "iterable"),
        ({"run_ids": ["ok", ""]}, ValueError, "run_id"),
        ({"run_ids": ["ok"], "concurrency": 0}, ValueError, "concurrency"),
        ({"run_ids": ["ok"], "concurrency": 2.0}, TypeError, "concurrency"),
        ({"run_ids": ["ok"], "timeout": 0}, ValueError, "timeout"),
        ({"run_ids": ["ok"], "timeout": "5"}, TypeError, "timeout"),
        ({"run_ids": ["ok"], "policy": {"initial": 1}}, TypeError, "policy"),
    ],
)
def test_wait_for_runs_arguments(
    client: CopyAIClient, kwargs: dict[str, Any], exc: type, words: str
) -> None:
    with pytest.raises(exc, match=words):
        client.wait_for_runs("WCFG-1", **kwargs)


async def test_wait_for_run_arguments(client: CopyAIClient, server: FakeCopyAI) -> None:
    with pytest.raises(TypeError, match="on_status"):
        await client.wait_for_run("w", "r", on_status="print")
    with pytest.raises(ValueError, match="timeout"):
        await client.wait_for_run("w", "r", timeout=-1)
    with pytest.raises(ValueError, match="run_id"):
        await client.wait_for_run("w", "")
    with pytest.raises(TypeError, match="policy"):
        client.watch_run("w", "r", policy=1.0)  # type: ignore[arg-type]
    assert server.stats.requests == 0


async def test_many_runs_report_each_status_change(live: CopyAIClient, server: FakeCopyAI) -> None:
    fakes = [server.add_run(schedule=LIFECYCLE) for _ in range(5)]
    seen: dict[str, list[RunStatus]] = {f.id: [] for f in fakes}

    async def record(run: WorkflowRun) -> None:
        seen[run.id].append(run.status)

    ids = [f.id for f in fakes]
    got = [
        r async for r in live.wait_for_runs(server.workflow_id, ids, policy=FAST, on_status=record)
    ]
    assert len(got) == 5
    expected = [
        RunStatus.NEW,
        RunStatus.WAITING,
        RunStatus.PROCESSING,
        RunStatus.RETRYING,
        RunStatus.COMPLETE,
    ]
    assert all(statuses == expected for statuses in seen.values())
    with pytest.raises(TypeError, match="on_status"):
        live.wait_for_runs(server.workflow_id, ids, on_status=3)  # type: ignore[arg-type]


async def test_empty_run_ids(live: CopyAIClient, server: FakeCopyAI) -> None:
    assert [r async for r in live.wait_for_runs(server.workflow_id, [])] == []
    assert server.stats.requests == 0


# -- start_and_wait, cancellation -------------------------------------------------------


async def test_start_and_wait(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.default_schedule = Schedule.polls(("PROCESSING", 2), final="FAILED")
    with pytest.raises(RunFailedError):
        await client.start_and_wait(server.workflow_id, {"a": 1}, metadata={"m": 2})
    run = await client.start_and_wait(server.workflow_id, {"a": 1}, raise_on_failure=False)
    assert run.status is RunStatus.FAILED
    assert run.start_key is not None
    assert run.metadata == {START_KEY: run.start_key}
    first = server.runs()[1]
    assert first.metadata is not None
    assert first.metadata["m"] == 2
    mine = await client.start_and_wait(
        server.workflow_id, {}, start_key="job-42", raise_on_failure=False
    )
    assert mine.start_key == "job-42"


async def test_start_and_wait_timeout_covers_the_start(
    live: CopyAIClient, server: FakeCopyAI
) -> None:
    server.hold(lambda request: request.method == "POST")
    with pytest.raises(PollTimeoutError, match="may or may not have started"):
        await live.start_and_wait(server.workflow_id, {}, timeout=0.1)
    await _quiet(server)


async def test_cancelling_a_wait_leaves_nothing(live: CopyAIClient, server: FakeCopyAI) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 10**6)))
    task = asyncio.create_task(live.wait_for_run(server.workflow_id, fake.id, policy=FAST))
    for _ in range(30):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _quiet(server)


# -- the client's rate budget and shared pause ------------------------------------------


async def test_budget_spaces_requests_evenly() -> None:
    clock = FakeClock()
    budget = Budget(clock=clock, max_concurrency=100, rate_limit=10)
    starts = []

    async def one() -> None:
        await budget.wait_turn()
        starts.append(clock.now)

    await asyncio.gather(*(one() for _ in range(25)))
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 - 1e-9
    windows = [sum(1 for s in starts if t <= s < t + 1 - 1e-9) for t in starts]  # float sums
    assert max(windows) <= 10


async def test_budget_pause_holds_every_request() -> None:
    clock = FakeClock()
    budget = Budget(clock=clock, max_concurrency=10, rate_limit=None)
    budget.pause(5)
    await budget.wait_turn()
    assert clock.now == pytest.approx(5.0)


async def test_rate_limit_over_real_requests(server: FakeCopyAI) -> None:
    ids = [server.add_run(schedule=Schedule.immediate()).id for _ in range(40)]
    async with CopyAIClient(server.api_key, base_url=server.url, rate_limit=200) as paced:
        got = [
            r
            async for r in paced.wait_for_runs(
                server.workflow_id, ids, concurrency=16, policy=PollPolicy(sweep=False)
            )
        ]
    assert len(got) == 40
    arrivals = sorted(r.received_at for r in server.requests)
    assert arrivals[-1] - arrivals[0] >= 39 / 200 * 0.95
    # The server shares the client's event loop, so arrivals are stamped when the loop
    # gets to them and can bunch by a few; over 100 ms that evens out. 200/s is 20 per
    # 100 ms; two for that slack. (The rate scenario of benchmarks/run.py measures the
    # limit exactly, against a server in its own process.)
    per_window = [sum(1 for a in arrivals if t <= a < t + 0.1) for t in arrivals]
    assert max(per_window) <= 20 + 2


async def test_retry_after_pauses_other_requests_too(
    live: CopyAIClient, server: FakeCopyAI
) -> None:
    first = server.add_run(schedule=Schedule.immediate()).id
    second = server.add_run(schedule=Schedule.immediate()).id
    server.inject(Fault.rate_limit("0.2"), path=first)
    task = asyncio.create_task(live.get_run(server.workflow_id, first))
    budget = live._transport.budget
    for _ in range(2000):  # until the client has read the 429 and paused itself
        if budget.paused_until > time.monotonic():
            break
        await asyncio.sleep(0.001)
    assert budget.paused_until > time.monotonic()
    await live.get_run(server.workflow_id, second)  # waits out the other request's pause
    await task
    times = {r.path.rsplit("/", 1)[1]: r.received_at for r in server.requests if r.status == 200}
    limited = next(r.received_at for r in server.requests if r.status == 429)
    assert times[second] - limited >= 0.19
    assert times[first] - limited >= 0.19


# -- failures: a poll is a read -----------------------------------------------------------

PASSING_FAULTS = [
    Fault.server_error(500),
    Fault.server_error(503, html=True),
    Fault.server_error(502, html=True),
    Fault.rate_limit(None),
    Fault.status_code(408),
    Fault.disconnect(),
    Fault.truncate(),
    Fault.garbled("truncated"),
    Fault.garbled("html"),
    Fault.garbled("shape"),
]


def _no_retries(server: FakeCopyAI, clock: FakeClock, **kw: Any) -> CopyAIClient:
    """A client whose every failed request is at once a failed poll."""
    return CopyAIClient(server.api_key, base_url=server.url, clock=clock, max_retries=0, **kw)


@pytest.mark.parametrize("fault", PASSING_FAULTS, ids=repr)
async def test_a_passing_failure_is_a_missed_poll(
    server: FakeCopyAI, clock: FakeClock, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 2)))
    policy = PollPolicy(initial=2.0, multiplier=1.0, max_interval=2.0, jitter=0.0)
    async with _no_retries(server, clock) as client:
        server.inject(fault, fault, path=fake.id)  # the first two polls fail
        with caplog.at_level(logging.WARNING, logger="copyai_async"):
            run = await client.wait_for_run(server.workflow_id, fake.id, policy=policy)
    assert run.status is RunStatus.COMPLETE
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # aiohttp itself sends a GET again once after a dropped reused connection, so one
    # poll may meet both disconnects.
    missed = len(warnings)
    assert missed == (1 if fault.kind == "disconnect" else 2)
    assert all(f"run {fake.id} of workflow" in w and "a poll failed" in w for w in warnings)
    assert [w.split("(")[-1] for w in warnings][:1] == ["1 in a row; the wait gives up after 6)"]
    # A fault that lets the request count (after=True) moves the run on, as a real poll.
    readings = 1 if fault.after else 3
    assert clock.sleeps == [2.0] * (missed + readings - 1)  # missed polls keep the schedule


async def test_too_many_failed_polls_give_up_with_the_last_good_reading(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 10**6)))
    policy = PollPolicy(initial=1.0, max_interval=1.0, jitter=0.0, max_failed_polls=3)

    def then_fail(_run: WorkflowRun) -> None:  # after the first reading, every poll fails
        server.inject(*[Fault.server_error(502, html=True)] * 10, path=fake.id)

    async with _no_retries(server, clock) as client:
        with pytest.raises(PollFailedError) as info:
            await client.wait_for_run(
                server.workflow_id, fake.id, policy=policy, on_status=then_fail
            )
    error = info.value
    assert error.failures == 4  # 3 allowed in a row, the 4th ends it
    assert server.stats.requests == 5
    assert error.run_id == fake.id
    assert error.run is not None
    assert error.run.status is RunStatus.PROCESSING  # the last good reading
    assert isinstance(error.__cause__, ServerError)
    assert "4 polls in a row failed (last status PROCESSING)" in str(error)
    assert "502" in str(error)


class _FailingEveryOtherPoll(FakeClock):
    """Injects a fault for the poll after every other sleep: read, fail, read, fail..."""

    def __init__(self, server: FakeCopyAI, run_id: str) -> None:
        super().__init__()
        self.server, self.run_id, self.count = server, run_id, 0

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        self.count += 1
        if self.count % 2:
            self.server.inject(Fault.server_error(503), path=self.run_id)


@pytest.mark.parametrize(("allowed", "ends"), [(1, "COMPLETE"), (0, "gave up")])
async def test_a_good_reading_ends_a_streak_of_failures(
    server: FakeCopyAI, allowed: int, ends: str
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 6)))
    policy = PollPolicy(initial=1.0, max_interval=1.0, jitter=0.0, max_failed_polls=allowed)
    clock = _FailingEveryOtherPoll(server, fake.id)
    async with _no_retries(server, clock) as client:
        if ends == "COMPLETE":  # six failures in all, never two in a row
            run = await client.wait_for_run(server.workflow_id, fake.id, policy=policy)
            assert run.status is RunStatus.COMPLETE
            assert server.stats.faults == 6
        else:
            with pytest.raises(PollFailedError):
                await client.wait_for_run(server.workflow_id, fake.id, policy=policy)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.status_code(400, error_code="BAD_REQUEST"), BadRequestError),
        (Fault.status_code(401, error_code="UNAUTHORIZED"), AuthenticationError),
        (Fault.status_code(403), AuthenticationError),
        (Fault.status_code(404, error_code="NOT_FOUND"), NotFoundError),
        (Fault.status_code(422, error_code="REQUEST_INVALID"), UnprocessableEntityError),
        (Fault.raw({"status": "error", "errorCode": "NOT_FOUND"}), NotFoundError),
    ],
    ids=["400", "401", "403", "404", "422", "200-error-envelope"],
)
async def test_a_lasting_failure_ends_the_wait_at_once(
    server: FakeCopyAI, clock: FakeClock, fault: Fault, error: type
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 5)))
    async with CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        server.inject(fault, path=fake.id)
        with pytest.raises(error):
            await client.wait_for_run(server.workflow_id, fake.id)
    assert server.stats.requests == 1


async def test_zero_failed_polls_allowed_gives_up_at_the_first(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 5)))
    async with _no_retries(server, clock) as client:
        server.inject(Fault.server_error(500), path=fake.id)
        with pytest.raises(PollFailedError) as info:
            await client.wait_for_run(
                server.workflow_id, fake.id, policy=PollPolicy(max_failed_polls=0)
            )
    assert info.value.failures == 1
    assert info.value.run is None


async def test_a_429_asking_for_longer_delays_the_next_poll(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 1)))
    async with CopyAIClient(
        server.api_key, base_url=server.url, clock=clock, max_retry_after=5
    ) as client:
        server.inject(Fault.rate_limit("30"), path=fake.id)  # too long to wait inside a request
        run = await client.wait_for_run(server.workflow_id, fake.id)
    assert run.status is RunStatus.COMPLETE
    assert clock.sleeps[0] == 30.0  # the next poll waited as the server asked


async def test_the_deadline_during_failures_carries_the_last_reading(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    fake = server.add_run(schedule=Schedule.polls(("PROCESSING", 10**6)))

    def then_fail(_run: WorkflowRun) -> None:
        server.inject(*[Fault.server_error(503)] * 100, path=fake.id)

    async with _no_retries(server, clock) as client:
        with pytest.raises(PollTimeoutError) as info:
            await client.wait_for_run(
                server.workflow_id,
                fake.id,
                timeout=20,
                policy=PollPolicy(max_failed_polls=100),
                on_status=then_fail,
            )
    assert info.value.run is not None
    assert info.value.run.status is RunStatus.PROCESSING
    assert isinstance(info.value.__cause__, ServerError)  # why the last polls failed
    server.clear_faults()
    # Many runs: on the real clock (a fake one would jump to the deadline while the
    # requests are still on the wire).
    async with CopyAIClient(server.api_key, base_url=server.url, max_retries=0) as client:
        with pytest.raises(ExceptionGroup) as group:
            await _collect(
                client.wait_for_runs(
                    server.workflow_id,
                    [fake.id],
                    timeout=0.3,
                    policy=attrs.evolve(FAST, max_failed_polls=10_000),
                    on_status=then_fail,
                ),
                [],
            )
    (late,) = group.value.exceptions
    assert isinstance(late, PollTimeoutError)
    assert late.run is not None
    assert isinstance(late.__cause__, ServerError)


async def test_watch_and_many_runs_miss_polls_too(server: FakeCopyAI, clock: FakeClock) -> None:
    fakes = [server.add_run(schedule=Schedule.polls(("PROCESSING", 2))) for _ in range(5)]
    policy = PollPolicy(initial=1.0, max_interval=1.0, jitter=0.0, sweep=False)
    async with _no_retries(server, clock) as client:
        for fake in fakes:
            server.inject(Fault.garbled("truncated"), Fault.server_error(503), path=fake.id)
        done = [
            r
            async for r in client.wait_for_runs(
                server.workflow_id, [f.id for f in fakes], policy=policy
            )
        ]
        watched = fakes[0]
        watched.polls = 0
        server.inject(Fault.disconnect(), path=watched.id)
        statuses = [
            r.status async for r in client.watch_run(server.workflow_id, watched.id, policy=policy)
        ]
    assert sorted(r.id for r in done) == sorted(f.id for f in fakes)
    assert statuses == [RunStatus.PROCESSING, RunStatus.COMPLETE]


async def test_many_runs_give_up_on_one_run_only(server: FakeCopyAI, clock: FakeClock) -> None:
    good = [server.add_run(schedule=Schedule.polls(("PROCESSING", 2))).id for _ in range(4)]
    bad = server.add_run(schedule=Schedule.polls(("PROCESSING", 2))).id
    policy = PollPolicy(initial=1.0, max_interval=1.0, jitter=0.0, max_failed_polls=2, sweep=False)
    async with _no_retries(server, clock) as client:
        server.inject(*[Fault.server_error(500)] * 3, path=bad)
        got: list[str] = []
        with pytest.raises(ExceptionGroup) as info:
            await _collect(
                client.wait_for_runs(server.workflow_id, [*good, bad], policy=policy), got
            )
    assert sorted(got) == sorted(good)
    (error,) = info.value.exceptions
    assert isinstance(error, PollFailedError)
    assert error.run_id == bad
    assert error.failures == 3


async def test_aitasker_waits_miss_polls_too(server: FakeCopyAI, clock: FakeClock) -> None:
    from copyai_async.aitasker import AITaskerClient

    fake = server.add_aitasker_run()
    base = server.url.rsplit("/api", 1)[0]
    async with AITaskerClient(server.api_key, base_url=base, clock=clock, max_retries=0) as at:
        server.inject(Fault.server_error(502, html=True), Fault.garbled("html"), path=fake.id)
        run = await at.wait_for_run(fake.workflow_id, fake.id, policy=FAST)
    assert run.status == "completed"
