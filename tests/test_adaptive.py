"""Waits that learn how long runs take (``PollPolicy(adaptive=True)``, the default).

The estimate and the plan are checked without I/O; the waits that use them run against
the fake server on a FakeClock (virtual seconds, real loopback HTTP).
"""

from __future__ import annotations

import collections
import itertools
import math
import random
import statistics
import time
from typing import Any

import pytest

from copyai_async import CopyAIClient, Durations, PollPolicy, RunStatus, WorkflowRun
from copyai_async._client import COPYAI_RUNS
from copyai_async._durations import (
    EXPLORE,
    MAX_WORKFLOWS,
    READY,
    WINDOW,
    DurationBook,
    DurationModel,
    Plan,
    plain_next,
)
from copyai_async._poll import RunHints, RunPoll, Target
from copyai_async.testing import FakeClock, FakeCopyAI, Schedule

POLICY = PollPolicy()


def plain_points(policy: PollPolicy, until: float) -> list[float]:
    """The plain backoff's poll ages (no jitter), from 0 up to ``until``."""
    points, age, attempt = [0.0], 0.0, 0
    while age < until:
        age += policy.interval(attempt)
        attempt += 1
        points.append(age)
    return points


def observed(duration: float, points: list[float]) -> tuple[float, float]:
    """The interval polls at ``points`` make of a run lasting ``duration``."""
    low = max(p for p in points if p < duration)
    high = min(p for p in points if p >= duration)
    return low, high


def learned(durations: list[float], points: list[float]) -> DurationModel:
    model = DurationModel()
    for duration in durations:
        model.observe(*observed(duration, points))
    return model


def uniform(low: float, high: float, count: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(count)]


# -- the estimate ----------------------------------------------------------------------


def test_nothing_is_planned_before_enough_runs_were_seen() -> None:
    points = plain_points(POLICY, 60)
    model = learned(uniform(2.0, 2.6, READY - 1), points)
    assert model.plan(POLICY) is None
    model.observe(*observed(2.3, points))
    assert model.plan(POLICY) is not None


def test_the_estimate_finds_where_runs_end_from_intervals_alone() -> None:
    # Intervals as a fine schedule makes them: the estimate recovers the spread.
    points = [i * 0.05 for i in range(200)]
    model = learned(uniform(2.0, 2.6, 200), points)
    estimate = model.estimate()
    assert estimate is not None
    assert 2.25 <= estimate.quantile(0.5) <= 2.4
    assert 2.45 <= estimate.quantile(0.9) <= 2.65
    assert estimate.quantile(0.05) >= 1.8


def test_plain_intervals_say_where_runs_cluster() -> None:
    # The plain backoff sees runs of 2.0-2.6 s only as "between 1 and 2.5 s" or "between
    # 2.5 and 4.75 s"; how they split across 2.5 s says they cluster just below it.
    model = learned(uniform(2.0, 2.6, 40), plain_points(POLICY, 60))
    plan = model.plan(POLICY)
    assert plan is not None
    assert 1.5 <= plan.ages[0] <= 2.6  # not at 0 and 1 s, where the backoff looks
    assert sum(1 for age in plan.ages if age <= 2.6) <= 4


def test_a_two_humped_workflow_is_polled_at_both_humps() -> None:
    durations = uniform(2.0, 2.4, 100, seed=1) + uniform(20.0, 24.0, 100, seed=2)
    random.Random(3).shuffle(durations)
    model = learned(durations, [i * 0.1 for i in range(400)])
    plan = model.plan(POLICY)
    assert plan is not None
    assert any(2.0 <= a <= 2.6 for a in plan.ages)
    assert any(20.0 <= a <= 24.6 for a in plan.ages)
    # Between the humps, the backoff's own looks (4.75, 8.125, 13.19 s) and no more.
    between = [a for a in plan.ages if 3.0 <= a <= 19.0]
    assert between == pytest.approx([4.75, 8.125, 13.1875])


def test_the_window_keeps_the_latest_runs() -> None:
    points = [i * 0.05 for i in range(400)]
    model = learned(uniform(2.0, 2.6, WINDOW), points)
    for duration in uniform(6.0, 7.8, WINDOW, seed=2):
        model.observe(*observed(duration, points))
    estimate = model.estimate()
    assert estimate is not None
    assert estimate.quantile(0.1) >= 5.5  # the old durations are forgotten
    assert model.observed == 2 * WINDOW


@pytest.mark.parametrize(
    "interval",
    [(-1.0, 2.0), (2.0, 2.0), (3.0, 2.0), (0.0, math.inf), (math.nan, 1.0), (0.0, 1e9)],
)
def test_nonsense_intervals_are_ignored(interval: tuple[float, float]) -> None:
    book = DurationBook()
    book.observe("WCFG-1", *interval)
    assert book.model("WCFG-1") is None
    assert book.summary("WCFG-1", POLICY).observed == 0


def test_a_book_forgets_the_least_recent_workflow_first() -> None:
    book = DurationBook()
    for i in range(MAX_WORKFLOWS + 1):
        book.observe(f"WCFG-{i}", 0.0, 1.0)
    assert book.model("WCFG-0") is None
    assert book.model(f"WCFG-{MAX_WORKFLOWS}") is not None


def test_observations_are_relayed_unless_relayed_here() -> None:
    sent: list[tuple[str, float, float]] = []
    book = DurationBook(relay=lambda *args: sent.append(args))
    book.observe("WCFG-1", 1.0, 2.0)
    book.observe("WCFG-1", 1.5, 2.5, relayed=True)
    assert sent == [("WCFG-1", 1.0, 2.0, None)]
    assert book.summary("WCFG-1", POLICY).observed == 2


# -- the plan --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "policy"),
    [
        (2.0, 2.6, POLICY),
        (20.0, 40.0, POLICY),
        (0.5, 300.0, POLICY),
        (100.0, 900.0, PollPolicy(max_interval=30.0)),
    ],
)
def test_no_gap_exceeds_max_interval_nor_past_the_bulk_the_backoffs_next_poll(
    low: float, high: float, policy: PollPolicy
) -> None:
    points = [i * (high / 400) for i in range(800)]
    model = learned(uniform(low, high, 200), points)
    plan = model.plan(policy)
    assert plan is not None
    estimate = model.estimate()
    assert estimate is not None
    bulk = estimate.quantile(0.9)
    ages = [0.0, *plan.ages]
    for before, after in itertools.pairwise(ages):
        assert after - before <= policy.max_interval * (1 + 1e-9)
        if before > bulk:
            assert after <= plain_next(policy, before) * (1 + 1e-9)
    assert plan.ages[-1] >= max(h for _, h in model.observations) * (1 - 1e-6)


def test_past_the_guard_and_the_plan_the_backoff_goes_on() -> None:
    plan = Plan((2.0, 2.3, 2.6), PollPolicy(jitter=0.0), spacing=0.05, guard=2.0)
    rng = random.Random(1)
    assert plan.gap(2.0, rng) == pytest.approx(0.3)
    # Past the guard, never after the backoff's next look (at 2.5 s).
    assert plan.gap(2.3, rng) == pytest.approx(0.2)
    assert plan.gap(2.28, rng) == pytest.approx(0.22)
    # Past the plan, the backoff's own polls: 4.75, 8.125, 13.19, 20.78, 30.78, ...
    assert plan.gap(2.6, rng) == pytest.approx(4.75 - 2.6)
    assert plan.gap(4.75, rng) == pytest.approx(8.125 - 4.75)
    assert plan.gap(100.0, rng) == pytest.approx(100.78125 - 100.0)
    # A wait begun 0.5 s after the run: the backoff's looks count from the wait's begin
    # (0, 1, 2.5, 4.75 s into it: the run's ages 0.5, 1.5, 3.0, 5.25).
    assert plan.gap(2.6, rng, elapsed=2.1) == pytest.approx(3.0 - 2.6)
    assert plan.gap(3.0, rng, elapsed=2.5) == pytest.approx(5.25 - 3.0)
    # Before the guard, a planned age closer than the spacing is skipped.
    early = Plan((2.0, 2.03, 2.6), PollPolicy(jitter=0.0), spacing=0.05, guard=20.0)
    assert early.gap(2.0, rng) == pytest.approx(0.6)


def test_plain_next_follows_the_backoff() -> None:
    points = plain_points(POLICY, 100)
    for before, after in itertools.pairwise(points):
        assert plain_next(POLICY, before) == pytest.approx(after)
        assert plain_next(POLICY, (before + after) / 2) == pytest.approx(after)


def test_one_wait_in_ten_looks_early() -> None:
    plan = Plan((2.0, 2.3, 2.6), PollPolicy(), spacing=0.05)
    rng = random.Random(7)
    firsts = [plan.first(0.0, rng) for _ in range(4000)]
    early = [f for f in firsts if f is not None and f < 2.0 * 0.95]
    assert abs(len(early) / len(firsts) - EXPLORE) < 0.02
    assert all(f is not None and 0 <= f <= 2.1 for f in firsts)
    assert plan.first(2.0, rng) is None  # it may have ended: look at once
    assert plan.first(5.0, rng) is None


# -- one run's wait ---------------------------------------------------------------------


def ready_book(workflow_id: str = "WCFG-1") -> DurationBook:
    book = DurationBook()
    points = [i * 0.05 for i in range(200)]
    for duration in uniform(2.0, 2.6, 100):
        book.observe(workflow_id, *observed(duration, points))
    return book


def run_state(
    book: DurationBook | None,
    *,
    started_at: float | None = 0.0,
    policy: PollPolicy = POLICY,
    now: float = 0.0,
    hints: RunHints | None = None,
    wall: Any = None,
) -> RunPoll[WorkflowRun]:
    async def read(_wf: str, _run: str) -> WorkflowRun:  # pragma: no cover - not called
        raise AssertionError

    target = Target(workflow_id="WCFG-1", run_id="WRUN-1", read=read, started_at=started_at)
    return RunPoll(
        target,
        kind=COPYAI_RUNS,
        policy=policy,
        rng=random.Random(2),
        hints=hints,
        now=now,
        deadline=None,
        time_limit=None,
        durations=book,
        wall=wall,
    )


def a_run(status: str, created_at: str | None = None) -> WorkflowRun:
    from copyai_async._convert import WIRE

    raw: dict[str, Any] = {"id": "WRUN-1", "status": status}
    if created_at is not None:
        raw["createdAt"] = created_at
    return WIRE.run({"status": "success", "data": raw}, workflow_id="WCFG-1")


def test_a_run_this_client_started_is_first_polled_where_runs_end() -> None:
    book = ready_book()
    plan = book.model("WCFG-1").plan(POLICY)  # type: ignore[union-attr]
    assert plan is not None
    firsts = [run_state(book, started_at=0.0).due() for _ in range(50)]
    # (one in ten looks earlier, at random)
    assert statistics.median(firsts) == pytest.approx(plan.ages[0], rel=0.06)
    assert all(f > 0 for f in firsts)


def test_unready_off_or_unknown_start_polls_at_once() -> None:
    assert run_state(ready_book(), started_at=None).due() == 0.0  # not started here
    assert run_state(ready_book(), policy=PollPolicy(adaptive=False)).due() == 0.0
    assert run_state(DurationBook()).due() == 0.0
    assert run_state(ready_book(), started_at=0.0, now=5.0).due() == 5.0  # may have ended


def test_a_wait_follows_the_plan_and_teaches_the_book() -> None:
    book = ready_book()
    model = book.model("WCFG-1")
    assert model is not None
    before = model.observed
    state = run_state(book, started_at=0.0, policy=PollPolicy(jitter=0.0))
    plan = model.plan(PollPolicy(jitter=0.0))
    assert plan is not None
    at = state.due()
    state.sent(at)
    assert not state.read(a_run("PROCESSING"), at + 0.01)
    # The plan's next age (or past it, the backoff's next poll), not the backoff's 1 s.
    assert state.due() == pytest.approx(at + 0.01 + plan.gap(at + 0.01, random.Random()))
    assert state.due() != pytest.approx(at + 0.01 + 1.0)
    later = state.due()
    state.sent(later)
    assert state.read(a_run("COMPLETE"), later + 0.01)
    assert model.observed == before + 1
    assert model.observations[-1] == pytest.approx((at, later + 0.01))


def test_adaptive_off_teaches_nothing() -> None:
    book = ready_book()
    model = book.model("WCFG-1")
    assert model is not None
    before = model.observed
    state = run_state(book, policy=PollPolicy(adaptive=False))
    state.sent(0.0)
    state.read(a_run("PROCESSING"), 0.01)
    assert state.due() == pytest.approx(1.0, rel=0.06)  # the plain backoff
    state.sent(state.due())
    state.read(a_run("COMPLETE"), 1.1)
    assert model.observed == before


def test_a_run_started_elsewhere_is_aged_by_its_created_at() -> None:
    book = ready_book()
    wall = lambda: 1_700_000_001.0  # noqa: E731 - one second after createdAt
    state = run_state(book, started_at=None, wall=wall, policy=PollPolicy(jitter=0.0))
    assert state.due() == 0.0
    state.sent(0.0)
    state.read(a_run("PROCESSING", "2023-11-14T22:13:20Z"), 0.0)  # 1_700_000_000
    plan = book.model("WCFG-1").plan(PollPolicy(jitter=0.0))  # type: ignore[union-attr]
    assert plan is not None
    # Aged 1 s at the reading: the next poll is at the plan's first age.
    assert state.due() == pytest.approx(plan.ages[0] - 1.0, abs=0.01)


@pytest.mark.parametrize(
    "created_at",
    [None, "2023-11-14T22:13:30Z", "2023-11-12T22:13:20Z"],  # missing, ahead, days old
)
def test_a_run_that_cannot_be_aged_is_polled_plainly_and_teaches_nothing(
    created_at: str | None,
) -> None:
    book = ready_book()
    model = book.model("WCFG-1")
    assert model is not None
    before = model.observed
    state = run_state(book, started_at=None, wall=lambda: 1_700_000_001.0)
    state.sent(0.0)
    state.read(a_run("PROCESSING", created_at), 0.01)
    assert state.due() == pytest.approx(1.0, rel=0.06)
    state.sent(state.due())
    state.read(a_run("COMPLETE", created_at), 1.1)
    assert model.observed == before


def test_a_live_listener_still_sets_the_pace() -> None:
    clock = FakeClock()
    hints = RunHints(clock)
    hints.attach()
    hints.cover(None)
    state = run_state(ready_book(), started_at=0.0, hints=hints)
    assert state.due() == POLICY.safety_interval


# -- waits against the fake server -------------------------------------------------------


async def waits(
    adaptive: bool, *, learn: tuple[float, float], then: tuple[float, float], seed: int = 5
) -> tuple[float, list[float], Durations]:
    """40 waits to learn from, then 60 more: their GETs per run and detection delays."""
    clock = FakeClock()
    middle = (learn[0] + learn[1]) / 2
    server = FakeCopyAI(
        clock=clock.monotonic,
        default_schedule=Schedule.seconds(
            ("PROCESSING", middle), spread=(learn[1] - middle) / middle
        ),
    )
    policy = PollPolicy(adaptive=adaptive)
    delays: list[float] = []
    async with server, CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        client._waiter.rng.seed(seed)  # the jitter, and which waits look early
        for n in range(40):
            await client.start_and_wait(server.workflow_id, {"n": n}, policy=policy)
        middle = (then[0] + then[1]) / 2
        server.default_schedule = Schedule.seconds(
            ("PROCESSING", middle), spread=(then[1] - middle) / middle
        )
        server.reset_stats()
        for n in range(60):
            run = await client.start_and_wait(server.workflow_id, {"n": n}, policy=policy)
            assert run.status is RunStatus.COMPLETE
            finish = server.get(run.id).finishes_at
            assert finish is not None
            delays.append(clock.monotonic() - finish)
        gets = sum(
            n for path, n in server.stats.by_path.items() if path.startswith("GET /api/workflow/")
        )
        return gets / 60, sorted(delays), client.durations(server.workflow_id)


def p99(delays: list[float]) -> float:
    return delays[min(len(delays) - 1, int(len(delays) * 0.99))]


async def test_learning_waits_poll_less_and_see_ends_sooner() -> None:
    gets, delays, durations = await waits(True, learn=(2.0, 2.6), then=(2.0, 2.6))
    plain_gets, plain_delays, plain = await waits(False, learn=(2.0, 2.6), then=(2.0, 2.6))
    assert gets <= 0.75 * plain_gets
    assert p99(delays) <= 0.5 * p99(plain_delays)
    assert durations.ready
    assert durations.observed == 100
    assert durations.p50 is not None
    assert 2.1 <= durations.p50 <= 2.5
    assert durations.schedule
    assert 1.8 <= durations.schedule[0] <= 2.6
    assert not plain.ready
    assert plain.observed == 0
    assert plain.schedule == ()


async def test_a_workflow_that_got_slower_is_seen_end_no_later() -> None:
    _, delays, _ = await waits(True, learn=(2.0, 2.6), then=(6.0, 7.8))
    _, plain_delays, _ = await waits(False, learn=(2.0, 2.6), then=(6.0, 7.8))
    # Past what it learned, a wait polls where the backoff would: no later (a jitter's
    # worth of noise aside).
    assert p99(delays) <= p99(plain_delays) + 0.3
    assert statistics.median(delays) <= statistics.median(plain_delays) * 1.1


async def test_durations_names_its_arguments(client: CopyAIClient) -> None:
    with pytest.raises(TypeError, match="workflow_id"):
        client.durations(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policy"):
        client.durations("WCFG-1", policy="fast")  # type: ignore[arg-type]
    assert client.durations("WCFG-1") == Durations(
        workflow_id="WCFG-1",
        observed=0,
        window=0,
        ready=False,
        p50=None,
        p90=None,
        p99=None,
        schedule=(),
    )


def test_adaptive_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="adaptive"):
        PollPolicy(adaptive=1)  # type: ignore[arg-type]


def test_the_window_is_bounded() -> None:
    model = DurationModel()
    for _ in range(WINDOW * 3):
        model.observe(1.0, 2.0)
    assert len(model.observations) == WINDOW
    assert isinstance(model.observations, collections.deque)


# -- the edges of learning ------------------------------------------------------------------


def simulate(plan: Plan | None, policy: PollPolicy, duration: float) -> float:
    """When a wait started with the run sees it end (jitter 0, never looking early)."""
    rng = random.Random(0)
    if plan is None:
        age = 0.0
        while age < duration:
            age = plain_next(policy, age)
        return age
    age = plan.ages[0]
    while age < duration:
        age += plan.gap(age, rng)
    return age


@pytest.mark.parametrize(
    "learned_from",
    [
        [(2.0, 2.6, 200)],
        [(20.0, 40.0, 200)],
        [(54.0, 66.0, 200)],
        [(135.0, 165.0, 200)],
        [(270.0, 330.0, 200)],
        [(1.8, 2.2, 170), (36.0, 44.0, 30)],  # fast failures and slow successes
    ],
)
@pytest.mark.parametrize("slower", [1.0, 3.0])
def test_no_run_past_the_guard_is_seen_later_than_by_the_backoff(
    learned_from: list[tuple[float, float, int]], slower: float
) -> None:
    policy = PollPolicy(jitter=0.0)
    model = DurationModel()
    durations = [d for low, high, n in learned_from for d in uniform(low, high, n)]
    random.Random(2).shuffle(durations)
    top = max(durations) * 1.2
    points = [i * top / 2000 for i in range(2001)]
    for duration in durations:
        model.observe(*observed(duration, points))
    plan = model.plan(policy)
    estimate = model.estimate()
    assert plan is not None
    assert estimate is not None
    guard = plan.guard
    ages = [0.0, *plan.ages]
    assert all(b - a <= policy.max_interval + 1e-9 for a, b in itertools.pairwise(ages))
    for duration in (d * slower for d in durations[:100]):
        seen = simulate(plan, policy, duration)
        seen_plainly = simulate(None, policy, duration)
        if duration > guard:
            assert seen <= seen_plainly + 1e-6, (duration, seen, seen_plainly)
        assert seen - duration <= policy.max_interval + 1e-6


@pytest.mark.parametrize(
    "policy",
    [
        PollPolicy(initial=0.3, max_interval=0.3),
        PollPolicy(initial=1.3, max_interval=1.3),
        PollPolicy(initial=0.1, max_interval=3.0),
        PollPolicy(initial=0.7, multiplier=1.1),
        PollPolicy(initial=1.0, multiplier=1.0),
    ],
)
@pytest.mark.parametrize("middle", [10.0, 64.5, 1034.0])
def test_plans_of_any_policy_are_made_quickly(policy: PollPolicy, middle: float) -> None:
    model = DurationModel()
    points = [i * middle / 400 for i in range(800)]
    for duration in uniform(middle * 0.9, middle * 1.1, 25):
        model.observe(*observed(duration, points))
    began = time.perf_counter()
    plan = model.plan(policy)
    assert time.perf_counter() - began < 2.0
    assert plan is None or len(plan.ages) <= 2_000
    for age in (0.0, middle * 0.95, middle * 3, 9.3, 9.1, 64.5, 1034.0):
        following = plain_next(policy, age)
        assert age < following <= age + policy.max_interval + 1e-9


def test_a_run_of_a_month_costs_no_more_than_a_plan_of_bounded_size() -> None:
    model = DurationModel()
    points = [i * 0.05 for i in range(200)]
    for duration in uniform(2.0, 2.6, 199):
        model.observe(*observed(duration, points))
    model.observe(29 * 86_400.0 - 10, 29 * 86_400.0)
    began = time.perf_counter()
    plan = model.plan(POLICY)
    assert time.perf_counter() - began < 1.0
    assert plan is not None
    assert len(plan.ages) <= 2_000


def test_a_run_is_learned_once_however_many_waits_saw_it() -> None:
    sent: list[object] = []
    book = DurationBook(relay=lambda *args: sent.append(args))
    book.observe("WCFG-1", 1.0, 2.0, run_id="WRUN-1")
    book.observe("WCFG-1", 1.1, 2.1, run_id="WRUN-1")
    book.observe("WCFG-1", 1.1, 2.1, run_id="WRUN-1", relayed=True)
    assert book.summary("WCFG-1", POLICY).observed == 1
    assert sent == [("WCFG-1", 1.0, 2.0, "WRUN-1")]


def test_a_wait_begun_on_an_old_run_teaches_nothing() -> None:
    book = ready_book()
    model = book.model("WCFG-1")
    assert model is not None
    before = model.observed
    state = run_state(book, started_at=0.0, now=30.0)  # started 30 s before the wait
    state.sent(30.0)
    state.read(a_run("PROCESSING"), 30.01)
    later = state.due()
    state.sent(later)
    assert state.read(a_run("COMPLETE"), later + 0.01)
    assert model.observed == before


def test_runs_started_elsewhere_are_aged_on_the_servers_clock() -> None:
    from copyai_async._budget import Budget
    from copyai_async._poll import Waiter

    waiter = Waiter(
        kind=COPYAI_RUNS, budget=Budget(clock=FakeClock(), max_concurrency=1, rate_limit=None)
    )
    now = time.time()
    # The server's clock is 30 s behind this machine's; starts answer in 10 to 50 ms.
    for lag in (0.05, 0.01, 0.03):
        waiter.note_started(f"WCFG-1\0WRUN-{lag}", created_at=now - 30.0 - lag)
    assert waiter._skew == pytest.approx(30.01, abs=0.01)


@pytest.mark.parametrize(
    ("policy", "low", "high"),
    [
        (POLICY, 2.0, 2.6),
        (POLICY, 20.0, 40.0),
        (PollPolicy(initial=0.01, max_interval=0.04), 0.2, 0.3),
    ],
)
def test_every_gap_moves_the_next_poll_past_what_the_scheduler_may_send_early(
    policy: PollPolicy, low: float, high: float
) -> None:
    # The scheduler sends a poll up to 50 ms early (and a quarter of its jitter's
    # spread); were a gap shorter, a poll sent early would make the next one due at
    # once, again and again, without time passing (seen on looptime's virtual clock).
    model = DurationModel()
    points = [i * high / 1000 for i in range(3000)]
    for duration in uniform(low, high, 200):
        model.observe(*observed(duration, points))
    plan = model.plan(policy)
    assert plan is not None
    rng = random.Random(3)
    least = min(0.1, policy.max_interval / 2) * (1 - policy.jitter / 2)
    ages = [*plan.ages, *(a - 0.03 for a in plan.ages), *(a * 3 for a in plan.ages)]
    for age in [*ages, *(plain_next(policy, a) - 0.01 for a in ages), 1e4]:
        assert plan.gap(age, rng) >= least - 1e-12


def test_a_wait_begun_before_runs_were_learned_keeps_the_backoff() -> None:
    book = DurationBook()
    points = [i * 0.05 for i in range(200)]
    durations = uniform(2.0, 2.6, READY)
    for duration in durations[:-1]:
        book.observe("WCFG-1", *observed(duration, points))
    state = run_state(book, started_at=0.0, policy=PollPolicy(jitter=0.0))
    assert state.due() == 0.0  # nothing learned yet: at once
    book.observe("WCFG-1", *observed(durations[-1], points))  # now it is
    model = book.model("WCFG-1")
    assert model is not None
    assert model.plan(PollPolicy(jitter=0.0)) is not None
    state.sent(0.0)
    state.read(a_run("PROCESSING"), 0.01)
    assert state.due() == pytest.approx(1.01)  # the backoff's second look, not the plan's
