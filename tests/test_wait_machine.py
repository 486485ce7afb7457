"""The wait machine's contract: RunPoll alone (no I/O), then the Scheduler on a FakeClock.

Readings come from an in-memory script (no sockets); time is virtual, so a wait of
minutes takes milliseconds.
"""

from __future__ import annotations

import asyncio
import collections
import random
import sys
from contextlib import aclosing
from typing import Any

import anyio
import attrs
import pytest

from copyai_async import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    CopyAIError,
    InvalidResponseError,
    NotFoundError,
    PollFailedError,
    PollPolicy,
    PollTimeoutError,
    RateLimitError,
    ServerError,
    UnprocessableEntityError,
)
from copyai_async._budget import DeadlineExceeded
from copyai_async._errors import APIStatusError
from copyai_async._poll import (
    FINAL_LOOK,
    RunHints,
    RunKind,
    RunPoll,
    Scheduler,
    Target,
    WaitOptions,
)
from copyai_async.testing import FakeClock

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


@attrs.frozen
class Run:
    run_id: str
    status: str


KIND: RunKind[Run] = RunKind(
    status=lambda run: run.status,
    is_terminal=lambda run: run.status in ("COMPLETE", "FAILED"),
    is_failed=lambda run: run.status == "FAILED",
    is_unknown=lambda _run: False,
)
RUNNING, DONE = Run("R1", "PROCESSING"), Run("R1", "COMPLETE")
# Sleeps of 1, 2, 4, 4... s, no jitter: every due time is exact.
DOUBLING = PollPolicy(initial=1, multiplier=2, max_interval=4, jitter=0)
STEADY = PollPolicy(initial=10, multiplier=1, max_interval=10, jitter=0)
P: dict[str, Any] = {"method": "GET", "path": "/p"}


def _status(cls: type[APIStatusError], status: int, **kw: Any) -> APIStatusError:
    return cls(f"{status}", status=status, **P, **kw)


def _poll(
    policy: PollPolicy = DOUBLING,
    *,
    deadline: float | None = None,
    hints: RunHints | None = None,
    grace_until: float | None = None,
) -> RunPoll[Run]:
    async def never(_workflow_id: str, _run_id: str) -> Run:  # pragma: no cover
        raise AssertionError("RunPoll sends nothing")

    target = Target(workflow_id="W1", run_id="R1", read=never, grace_until=grace_until)
    return RunPoll(
        target,
        kind=KIND,
        policy=policy,
        rng=random.Random(0),
        hints=hints,
        now=0.0,
        deadline=deadline,
        time_limit=deadline,
    )


def _read(state: RunPoll[Run], at: float, run: Run = RUNNING) -> bool:
    state.sent(at)
    return state.read(run, at)


# -- RunPoll alone --------------------------------------------------------------------


def test_run_poll_backs_off_per_policy_and_a_final_reading_ends_it() -> None:
    state = _poll()
    dues = [state.due()]
    for _ in range(5):
        assert _read(state, dues[-1]) is False
        dues.append(state.due())
    assert dues == [0, 1, 3, 7, 11, 15]  # first at once, then 1, 2, 4, capped at 4
    assert state.attempt == 5
    assert _read(state, dues[-1], DONE) is True
    # Jittered (here by up to 25 % either way): within the spread, not on the interval.
    jittered = _poll(attrs.evolve(DOUBLING, jitter=0.5))
    _read(jittered, 0.0)
    assert 0.75 <= jittered.due() <= 1.25
    assert jittered.due() != 1.0


@pytest.mark.parametrize(
    ("error", "passing"),
    [
        (_status(ServerError, 503), True),
        (_status(RateLimitError, 429), True),
        (_status(APIStatusError, 408), True),
        (APIConnectionError("reset", **P), True),
        (InvalidResponseError("not JSON", status=200, **P), True),
        (_status(BadRequestError, 400), False),
        (_status(AuthenticationError, 401), False),
        (_status(AuthenticationError, 403), False),
        (_status(NotFoundError, 404), False),  # outside the grace window
        (_status(UnprocessableEntityError, 422), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_run_poll_a_passing_failure_is_a_missed_poll_any_other_ends_it(
    error: CopyAIError, passing: bool
) -> None:
    state = _poll()
    _read(state, 0)  # the next is due at 1
    state.sent(1)
    if not passing:
        assert state.failed(error, 1.25) is error
        return
    assert state.failed(error, 1.25) is None
    assert state.due() == 1.25 + 2  # on schedule, counted from the failure
    assert (state.failures, state.last_failure) == (1, error)
    _read(state, state.due())
    assert (state.failures, state.last_failure) == (0, None)  # a reading ends the streak


def test_run_poll_a_404_in_the_grace_window_is_polled_again() -> None:
    state, missing = _poll(grace_until=5.0), _status(NotFoundError, 404)
    state.sent(0)
    assert state.failed(missing, 1.0) is None
    assert (state.due(), state.failures) == (2.0, 0)
    state.sent(2.0)
    assert state.failed(missing, 6.0) is missing


def test_run_poll_waits_out_retry_after_and_gives_up_after_max_failed_polls() -> None:
    state = _poll(attrs.evolve(DOUBLING, max_failed_polls=2))
    _read(state, 0)
    slow_down = _status(RateLimitError, 429, retry_after=7.0)
    state.sent(1)
    assert state.failed(slow_down, 1) is None
    assert state.due() == 1 + 7  # Retry-After beats the 2 s interval
    outage = _status(ServerError, 502)
    state.sent(8)
    assert state.failed(outage, 8) is None
    assert state.due() == 8 + 4  # back on the schedule once Retry-After is honoured
    state.sent(12)
    gave_up = state.failed(outage, 12)
    assert isinstance(gave_up, PollFailedError)
    assert (gave_up.failures, gave_up.run, gave_up.run_id) == (3, RUNNING, "R1")
    assert gave_up.__cause__ is outage


def test_run_poll_expired_is_chained_to_the_last_failure_with_the_reading_age() -> None:
    never_read = _poll(deadline=30).expired(30)
    assert (never_read.run, never_read.age, never_read.__cause__) == (None, None, None)
    assert "never read" in str(never_read)
    state = _poll(deadline=30)
    _read(state, 0)
    _read(state, 1)
    outage = APIConnectionError("reset", **P)
    state.sent(3)
    assert state.failed(outage, 3.5) is None
    timeout = state.expired(30)
    assert isinstance(timeout, PollTimeoutError)
    assert timeout.__cause__ is outage
    assert (timeout.run, timeout.run_id, timeout.timeout, timeout.age) == (RUNNING, "R1", 30, 29)
    assert "last status PROCESSING, read 29.0 s before" in str(timeout)
    # A poll cut off by the deadline: chained to what cut it off, else to the streak.
    cut = DeadlineExceeded()
    cut.__cause__ = _status(ServerError, 500)
    state.sent(7.5)  # due 4 s after the failure
    ended = state.failed(cut, 30)
    assert isinstance(ended, PollTimeoutError)
    assert ended.__cause__ is cut.__cause__
    state.sent(30)
    assert state.failed(DeadlineExceeded(), 30).__cause__ is outage  # type: ignore[union-attr]


def test_run_poll_final_look_before_the_deadline_unless_a_reading_is_fresh() -> None:
    stale = _poll(STEADY, deadline=25)
    for at in (0, 10, 20):
        _read(stale, at)
    assert stale.due() == 25 - FINAL_LOOK  # the schedule's 30 s is past the deadline
    _read(stale, 24)
    assert stale.due() == 34  # one final look only
    fresh = _poll(STEADY, deadline=21.5)
    for at in (0, 10, 20):
        _read(fresh, at)
    assert fresh.due() == 30  # read at most FINAL_LOOK before the final look: none
    short = _poll(STEADY, deadline=2)
    _read(short, 0)
    assert short.due() == 2 - 2 / 4  # a quarter of a timeout shorter than 4 * FINAL_LOOK


def test_run_poll_hint_makes_it_due_at_once_and_a_stale_reading_is_rechecked() -> None:
    hints = RunHints(FakeClock())
    hints.attach()
    state = _poll(
        PollPolicy(initial=100, max_interval=100, jitter=0, rechecks=(0.5, 1, 2)), hints=hints
    )
    _read(state, 0)
    assert state.due() == 100
    hints.hint("R1", "W1", final=True)
    assert state.hint(3) is True
    assert state.due() == 3  # at once
    checks = []
    while state.due() < 100:
        checks.append(state.due())
        _read(state, checks[-1])  # each reads the run unfinished: the reads lag
    assert checks == [3, 3.5, 4.5, 6.5]  # the check, then policy.rechecks, then no more
    assert not hints.claims_final("R1")  # contradicted
    assert state.attempt == 1  # the schedule did not move
    state.sent(100)
    assert state.hint(101) is False  # in flight: checked once that poll is back
    assert state.read(RUNNING, 102) is False
    assert state.due() == 102
    assert _read(state, 102, DONE) is True


def test_run_poll_no_poll_before_retry_after_even_after_an_event_poll() -> None:
    state = _poll(STEADY)
    _read(state, 0)  # the schedule's next poll: 10
    state.hint(9)
    state.sent(9)
    assert state.failed(_status(RateLimitError, 429, retry_after=120.0), 9) is None
    assert state.due() >= 9 + 120


def test_run_poll_an_event_poll_waits_out_the_schedules_retry_after() -> None:
    state = _poll(STEADY)
    _read(state, 0)  # the schedule's next poll: 10
    state.sent(10)
    state.hint(10.5)  # an event while the schedule's poll is out...
    assert state.failed(_status(RateLimitError, 429, retry_after=60.0), 11) is None
    assert state.due() >= 11 + 60  # ...is checked, but not before the API allows


# -- Scheduler, with scripted reads ---------------------------------------------------


class Script:
    """Each run's outcomes, in order (the last repeats): a status, or an error to raise.
    Counts reads, records their times and the most in flight at once."""

    def __init__(self, clock: FakeClock, outcomes: dict[str, list[Any]], latency: float = 0):
        self.clock, self.outcomes, self.latency = clock, outcomes, latency
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.in_flight = self.peak = self.cancelled = 0

    async def read(self, _workflow_id: str, run_id: str) -> Run:
        self.times[run_id].append(self.clock.monotonic())
        outcomes = self.outcomes[run_id]
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if outcome == "HANG":
                await asyncio.Event().wait()
            if self.latency:
                await self.clock.sleep(self.latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        if isinstance(outcome, Exception):
            raise outcome
        return Run(run_id, outcome)


def _scheduler(
    script: Script,
    ids: list[str],
    *,
    timeout: float | None = None,
    concurrency: int = 1,
    hints: RunHints | None = None,
    closing: asyncio.Future[None] | None = None,
    **kw: Any,
) -> Scheduler[Run]:
    clock = script.clock
    options = WaitOptions(
        policy=DOUBLING,
        clock=clock,
        rng=random.Random(0),
        deadline=None if timeout is None else clock.monotonic() + timeout,
        time_limit=timeout,
        concurrency=concurrency,
        coalesce=0.05 if concurrency > 1 else 0.0,
        hints=hints,
        closing=closing,
    )
    targets = [Target(workflow_id="W1", run_id=run_id, read=script.read) for run_id in ids]
    return Scheduler(targets, kind=KIND, options=options, **kw)


async def _collect(scheduler: Scheduler[Run], into: list[Run] | None = None) -> list[Run]:
    got = [] if into is None else into
    async with aclosing(scheduler.runs()) as runs:
        async for run in runs:
            got.append(run)
    return got


class StillClock(FakeClock):
    """Time moves only when the test moves it: a sleep never ends by itself."""

    def __init__(self) -> None:
        super().__init__()
        self.asleep = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.asleep.set()
        await asyncio.Event().wait()


def _leftover() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("copyai_async.")]


async def test_scheduler_one_run_polls_on_schedule_and_yields_it_once() -> None:
    clock = FakeClock()
    script = Script(
        clock,
        {"R1": ["NEW", "PROCESSING", "PROCESSING", ServerError("x", status=503, **P), "COMPLETE"]},
    )
    assert await _collect(_scheduler(script, ["R1"], grouped=False)) == [Run("R1", "COMPLETE")]
    assert script.times["R1"] == [0, 1, 3, 7, 11]  # the failed poll kept the schedule
    assert _leftover() == []


async def test_scheduler_many_runs_each_once_never_over_the_cap() -> None:
    clock = FakeClock()
    ids = [f"R{n}" for n in range(200)]
    outcomes = {run_id: ["PROCESSING"] * (n % 5) + ["COMPLETE"] for n, run_id in enumerate(ids)}
    script = Script(clock, outcomes, latency=0.25)
    got = await _collect(_scheduler(script, ids, concurrency=16))
    assert sorted(run.run_id for run in got) == sorted(ids)  # each once
    assert {run.status for run in got} == {"COMPLETE"}
    assert script.peak == 16  # the cap was reached, never passed
    assert all(len(script.times[r]) == n % 5 + 1 for n, r in enumerate(ids))  # no extra polls
    assert _leftover() == []


async def test_scheduler_watch_yields_each_status_change_once() -> None:
    clock = FakeClock()
    flaky = APIConnectionError("reset", **P)
    statuses = ["NEW", "NEW", "WAITING", flaky, "WAITING", "PROCESSING", "COMPLETE"]
    script = Script(clock, {"R1": statuses})
    seen: list[str] = []
    scheduler = _scheduler(
        script, ["R1"], changes=True, grouped=False, on_status=lambda r: seen.append(r.status)
    )
    got = [run.status for run in await _collect(scheduler)]
    assert got == seen == ["NEW", "WAITING", "PROCESSING", "COMPLETE"]
    assert len(script.times["R1"]) == 7


async def test_a_close_while_the_consumer_holds_a_reading_ends_the_wait_at_once() -> None:
    clock = StillClock()  # the next poll's sleep would never end by itself
    script = Script(clock, {"R1": ["NEW", "PROCESSING"]})
    closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    scheduler = _scheduler(script, ["R1"], closing=closing, changes=True, grouped=False)
    got: list[Run] = []

    async def consume() -> None:
        async with aclosing(scheduler.runs()) as runs:
            async for run in runs:
                got.append(run)
                closing.set_result(None)  # closed while this reading is held

    with anyio.fail_after(5), pytest.raises(ClientClosedError):
        await consume()
    assert got == [Run("R1", "NEW")]
    assert clock.sleeps == []  # ended at once, not at the next poll
    assert _leftover() == []


async def test_readings_back_at_the_deadline_are_taken_before_it_ends_the_wait() -> None:
    clock = FakeClock()
    # Polls at 0, 2, 5, ... 25, and the final look at 29, each answered a second later:
    # R1's final look reads it COMPLETE at 30, the deadline itself.
    outcomes = {"R1": ["PROCESSING"] * 7 + ["COMPLETE"], "R2": ["PROCESSING"]}
    script = Script(clock, outcomes, latency=1.0)
    scheduler = _scheduler(script, ["R1", "R2"], timeout=30, concurrency=2)
    got: list[Run] = []
    with pytest.raises(ExceptionGroup) as caught:
        await _collect(scheduler, got)
    # R1's last reading came back as the deadline passed: it counts, R2 times out.
    assert script.times["R1"][-1] == 29
    assert [run.run_id for run in got] == ["R1"]
    assert [e.run_id for e in caught.value.exceptions] == ["R2"]


async def test_scheduler_collects_failures_in_the_order_given_after_the_others() -> None:
    clock = FakeClock()
    denied, refused = _status(AuthenticationError, 401), _status(BadRequestError, 400)
    outage = _status(ServerError, 503)
    outcomes: dict[str, list[Any]] = {f"R{n}": ["NEW", "NEW", "COMPLETE"] for n in range(10)}
    outcomes["R3"] = ["PROCESSING", "PROCESSING", denied]  # fails last...
    outcomes["R5"] = [outage]  # ...this one after max_failed_polls + 1 misses...
    outcomes["R7"] = [refused]  # ...this one first
    script = Script(clock, outcomes)
    got: list[Run] = []
    with pytest.raises(ExceptionGroup) as caught:
        await _collect(_scheduler(script, list(outcomes), concurrency=4), got)
    assert sorted(run.run_id for run in got) == [f"R{n}" for n in (0, 1, 2, 4, 6, 8, 9)]
    r3, r5, r7 = caught.value.exceptions
    assert (r3, r7) == (denied, refused)
    assert isinstance(r5, PollFailedError)
    assert r5.__cause__ is outage
    assert len(script.times["R5"]) == DOUBLING.max_failed_polls + 1
    assert "3 of 10 runs" in str(caught.value)
    # Ungrouped (one run's wait): the first failure is raised as itself, at once.
    script = Script(clock, {"A": [refused], "B": ["PROCESSING"]})
    with pytest.raises(BadRequestError) as single:
        await _collect(_scheduler(script, ["A", "B"], concurrency=2, grouped=False))
    assert single.value is refused
    assert _leftover() == []


async def test_scheduler_deadline_ends_outstanding_runs_with_poll_timeout() -> None:
    clock = FakeClock(start=100.0)
    ids = [f"R{n}" for n in range(20)]
    outcomes: dict[str, list[Any]] = {r: ["PROCESSING"] * 3 + ["COMPLETE"] for r in ids[::2]}
    outcomes |= {r: ["PROCESSING"] for r in ids[1::2]}
    script = Script(clock, outcomes, latency=0.01)
    got: list[Run] = []
    with pytest.raises(ExceptionGroup) as caught:
        await _collect(_scheduler(script, ids, timeout=30, concurrency=4), got)
    assert sorted(run.run_id for run in got) == sorted(ids[::2])
    timeouts = [e for e in caught.value.exceptions if isinstance(e, PollTimeoutError)]
    assert len(timeouts) == len(caught.value.exceptions)
    assert [e.run_id for e in timeouts] == ids[1::2]
    assert {e.timeout for e in timeouts} == {30}
    # The final look: each reported reading is at most about two FINAL_LOOKs old.
    assert all(e.age is not None and e.age <= 2 * FINAL_LOOK for e in timeouts)
    assert 130 <= clock.now < 130.5  # ended at the deadline, not a poll later
    assert _leftover() == []


async def test_scheduler_hint_polls_a_sleeping_watched_run_at_once() -> None:
    clock = StillClock()
    hints = RunHints(clock)
    hints.attach()
    hints.cover(None)  # a live listener receives every workflow's events
    script = Script(clock, {"R1": ["PROCESSING", "COMPLETE"]})
    scheduler = _scheduler(script, ["R1"], grouped=False, hints=hints)

    async def finished_event() -> None:
        await clock.asleep.wait()  # the scheduler read the run, and sleeps
        clock.now = 5.0
        hints.hint("R1", "W1", final=True)

    with anyio.fail_after(2):  # real seconds, only if the hint is ignored
        async with anyio.create_task_group() as group:
            group.start_soon(finished_event)
            got = await _collect(scheduler)
    assert got == [Run("R1", "COMPLETE")]
    assert clock.sleeps == [30.0]
    assert script.times["R1"] == [0, 5]  # at once, not at the safety interval's 30 s
    assert _leftover() == []


@pytest.mark.xfail(
    strict=True,
    reason="bounded() cuts a poll off at the deadline with anyio.move_on_after, i.e. on "
    "the loop's clock, while the deadline is on the wait's Clock, and the scheduler does "
    "not wake for the deadline while polls are out: on a FakeClock a hung poll is cut "
    "after `timeout` real seconds",
)
async def test_scheduler_deadline_cuts_a_hung_poll_on_the_wait_clock() -> None:
    clock = FakeClock()
    script = Script(clock, {"R1": ["HANG"]})
    with anyio.move_on_after(0.3):  # real seconds: a 60 s virtual timeout takes none
        with pytest.raises(PollTimeoutError):
            await _collect(_scheduler(script, ["R1"], timeout=60, grouped=False))
        return
    pytest.fail("the deadline on the FakeClock did not cut the hung poll off")


async def test_cancelling_the_consumer_leaves_no_task_running() -> None:
    clock = StillClock()
    outcomes: dict[str, list[Any]] = {f"H{n}": ["HANG"] for n in range(3)}
    outcomes["busy"] = ["PROCESSING"]  # read at once: then the scheduler sleeps on a timer
    script = Script(clock, outcomes)
    consumer = asyncio.ensure_future(_collect(_scheduler(script, list(outcomes), concurrency=4)))
    await clock.asleep.wait()
    assert script.in_flight == 3
    assert any(t.get_name() == "copyai_async.poll-timer" for t in _leftover())
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert (script.cancelled, script.in_flight) == (3, 0)
    assert _leftover() == []


async def test_an_open_ended_scheduler_takes_runs_while_it_runs_and_ends_on_end_input() -> None:
    clock = FakeClock()
    script = Script(clock, {"R1": ["PROCESSING", "COMPLETE"], "R2": ["COMPLETE"]})
    scheduler = _scheduler(script, ["R1"], open_ended=True)
    got: list[Run] = []
    async with aclosing(scheduler.runs()) as runs:
        async for run in runs:
            got.append(run)
            if run.run_id == "R1":  # nothing pending now: the scheduler must not end
                scheduler.add([Target(workflow_id="W1", run_id="R2", read=script.read)])
            else:
                scheduler.end_input()
    assert got == [Run("R1", "COMPLETE"), Run("R2", "COMPLETE")]
    assert script.times["R2"] == [1.0]  # its first poll at once, when added
    assert _leftover() == []
    with pytest.raises(RuntimeError, match="open-ended"):
        scheduler.add([Target(workflow_id="W1", run_id="R3", read=script.read)])


async def test_an_open_ended_scheduler_with_nothing_ends_when_told() -> None:
    clock = FakeClock()
    scheduler = _scheduler(Script(clock, {}), [], open_ended=True)

    async def end_soon() -> None:
        await asyncio.sleep(0.01)
        scheduler.end_input()

    async with anyio.create_task_group() as group:
        group.start_soon(end_soon)
        assert await _collect(scheduler) == []
