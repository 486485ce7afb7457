"""Sweeps: waits on many runs read the listing, a page for up to 100 runs.

The decisions (:class:`Sweep`) are checked without I/O, on runs that are plain dicts;
the waits that use them run against the fake server over loopback HTTP.
"""

from __future__ import annotations

import collections
import logging
import random
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import attrs
import pytest

from copyai_async import (
    APIStatusError,
    CopyAIClient,
    PollPolicy,
    PollTimeoutError,
    RunStatus,
    ServerError,
    WorkflowRun,
)
from copyai_async._poll import RunHints, RunKind, RunPoll, Scheduler, Target, WaitOptions
from copyai_async._sweep import (
    CARRY,
    DENSITY,
    FAILURES,
    MAX_DEPTH,
    MISSES,
    PAGE_SIZE,
    Listing,
    Sweep,
    Usable,
    depth,
    newest_first,
)
from copyai_async.testing import FakeClock, FakeCopyAI, Quirks, Schedule

if sys.version_info < (3, 11):  # pragma: no cover - version-dependent
    from exceptiongroup import ExceptionGroup

Run = dict[str, Any]
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


async def _never(_wf: str, _page: int, _size: int) -> tuple[Sequence[Run], int | None]:
    raise AssertionError("a Sweep does no I/O")


def listing(**kw: Any) -> Listing[Run]:
    def usable(run: Run) -> Usable:
        if run.get("status") is None:
            return Usable.NO_STATUS
        if run["status"] == "COMPLETE" and run.get("output") is None:
            return Usable.VERIFY
        return Usable.YES

    return Listing(
        read_page=_never,
        run_id=lambda run: run["id"],
        usable=usable,
        created_at=lambda run: run.get("created"),
        **kw,
    )


class Listed:
    """A listing, newest first: ``runs[0]`` is the newest."""

    def __init__(self, count: int, *, status: str | None = "PROCESSING") -> None:
        self.runs: list[Run] = []
        self.status = status
        for _ in range(count):
            self.insert()

    def insert(self, run_id: str | None = None) -> Run:
        number = len(self.runs)
        run: Run = {
            "id": run_id or f"R{number}",
            "created": EPOCH + timedelta(seconds=number),
            "status": self.status,
        }
        self.runs.insert(0, run)
        return run

    def page(self, page: int) -> tuple[list[Run], int]:
        start = (page - 1) * PAGE_SIZE
        return self.runs[start : start + PAGE_SIZE], len(self.runs)

    def ids(self, count: int | None = None) -> list[str]:
        return [run["id"] for run in self.runs[:count]]


def sweep_of(ids: list[str], **kw: Any) -> Sweep[Run]:
    sweep: Sweep[Run] = Sweep("WF", listing=kw.pop("listing", None) or listing(), floor=1.0, **kw)
    for run_id in ids:
        sweep.add(run_id)
    return sweep


def read_all(sweep: Sweep[Run], listed: Listed, now: float, due: list[str]) -> dict[str, Run]:
    """One whole sweep: its pages read in order, the follow-ups too; what it found."""
    queue = sweep.begin(now, due)
    if not sweep.probed:
        queue = queue[:1]
    found: dict[str, Run] = {}
    while queue:
        page = queue.pop(0)
        answer = sweep.answer(page, *listed.page(page))
        queue.extend(answer.more)
        found.update((run_id, run) for run_id, run, _ in answer.found)
    return found


# -- the decisions, without I/O -------------------------------------------------------------


def test_the_first_sweep_reads_the_first_page_alone_then_the_rest() -> None:
    listed = Listed(250)
    ids = listed.ids()
    sweep = sweep_of(ids)
    assert sweep.active()
    pages = sweep.begin(0.0, ids)
    assert pages == [1, 2, 3]
    assert not sweep.probed
    assert sweep.in_flight
    first = sweep.answer(1, *listed.page(1))
    assert first.more == [2, 3]
    assert [run_id for run_id, _, _ in first.found] == ids[:100]
    assert sweep.probed
    for page in (2, 3):
        assert sweep.answer(page, *listed.page(page)).more == []
    sweep.end([], saved=250, spent=3)
    assert not sweep.in_flight
    assert [sweep.page_of(run_id) for run_id in (ids[0], ids[99], ids[100], ids[249])] == [
        1,
        1,
        2,
        3,
    ]


def test_a_run_keeps_its_place_from_the_oldest_as_runs_are_created() -> None:
    listed = Listed(150)
    ids = listed.ids()
    sweep = sweep_of(ids)
    read_all(sweep, listed, 0.0, ids)
    sweep.end([], saved=150, spent=2)
    assert sweep.page_of(ids[50]) == 1
    for _ in range(60):  # 60 runs of others: position 50 becomes 110
        listed.insert()
    read_all(sweep, listed, 1.0, [])  # (the savings read every page holding runs)
    assert sweep.page_of(ids[50]) == 2
    assert listed.runs[110]["id"] == ids[50]


def test_runs_added_to_the_wait_push_the_others_down_before_any_page_shows_it() -> None:
    listed = Listed(100)
    ids = listed.ids()
    sweep = sweep_of(ids)
    read_all(sweep, listed, 0.0, ids)
    sweep.end([], saved=100, spent=1)
    assert sweep.page_of(ids[99]) == 1
    sweep.add("NEW")  # a run this wait started since: newer than every run seen
    assert sweep.page_of(ids[99]) == 2
    assert sweep.unsought("NEW")
    assert sweep.page_of("NEW") == 1


def test_a_listing_without_status_ends_sweeps_and_is_remembered() -> None:
    listed = Listed(120, status=None)
    shared = listing()
    sweep = sweep_of(listed.ids(), listing=shared)
    assert sweep.begin(0.0, listed.ids())[0] == 1
    answer = sweep.answer(1, *listed.page(1))
    assert answer.refused is not None
    assert "carries no status" in answer.refused
    assert answer.found == []
    assert answer.more == []
    assert not sweep.active()
    assert not sweep.wants(listed.ids()[0])
    # Another wait on the same client does not look again.
    again = sweep_of(listed.ids(), listing=shared)
    assert not again.active()
    assert again.refused == answer.refused
    # Another client does.
    assert sweep_of(listed.ids()).active()


def test_a_listing_not_newest_first_ends_sweeps() -> None:
    listed = Listed(50)
    listed.runs.reverse()
    sweep = sweep_of(listed.ids())
    sweep.begin(0.0, listed.ids())
    answer = sweep.answer(1, *listed.page(1))
    assert answer.refused is not None
    assert "newest first" in answer.refused
    assert not sweep.active()


def test_runs_not_among_the_newest_are_read_on_their_own_at_the_cost_of_one_page() -> None:
    listed = Listed(300)
    old = listed.ids()[200:]  # on page 3: the first page holds none of them
    sweep = sweep_of(old)
    assert sweep.begin(0.0, old) == [1]
    answer = sweep.answer(1, *listed.page(1))
    assert answer.found == []
    assert answer.more == []
    assert answer.refused is None
    sweep.end(old, saved=0, spent=1)
    assert not any(sweep.wants(run_id) for run_id in old)
    assert not sweep.active()


def test_a_busy_listing_ends_the_search_at_the_first_page() -> None:
    listed = Listed(0)
    mine = [listed.insert(f"MINE{i}")["id"] for i in range(50)]
    for _ in range(99):  # others created 99 runs since: page 1 holds one of mine
        listed.insert()
    sweep = sweep_of(mine)
    sweep.begin(0.0, mine)
    answer = sweep.answer(1, *listed.page(1))
    assert len(answer.found) == 1 < DENSITY
    assert answer.more == []
    sweep.end([r for r in mine if r != answer.found[0][0]], saved=1, spent=1)
    assert sum(sweep.wants(run_id) for run_id in mine) == 1


def test_the_search_goes_on_past_the_planned_pages_while_they_hold_runs_sought() -> None:
    listed = Listed(0)
    mine = [listed.insert(f"MINE{i}")["id"] for i in range(150)]
    for _ in range(30):  # runs of others on top: mine spill onto page 3
        listed.insert()
    sweep = sweep_of(mine)
    found = read_all(sweep, listed, 0.0, mine)
    assert set(found) == set(mine)
    sweep.end([], saved=150, spent=3)
    assert sweep.page_of(mine[0]) == 2
    assert sweep.page_of(mine[-1]) == 1


def test_a_run_missed_twice_is_read_on_its_own() -> None:
    listed = Listed(120)
    ids = listed.ids()
    sweep = sweep_of(ids)
    read_all(sweep, listed, 0.0, ids)
    sweep.end([], saved=120, spent=2)
    gone = ids[5]
    listed.runs = [run for run in listed.runs if run["id"] != gone]  # deleted
    for attempt in range(1, MISSES + 1):
        assert sweep.wants(gone)
        found = read_all(sweep, listed, float(attempt), [gone])
        assert gone not in found
        sweep.end([gone], saved=1, spent=2)
    assert not sweep.wants(gone)
    assert sweep.wants(ids[6])
    assert sweep.active()


def test_a_finished_run_without_its_output_is_flagged_for_a_read_on_its_own() -> None:
    listed = Listed(3)
    listed.runs[1]["status"] = "COMPLETE"
    listed.runs[2].update(status="COMPLETE", output={"text": "hi"})
    sweep = sweep_of(listed.ids())
    sweep.begin(0.0, listed.ids())
    verify = {run_id: flag for run_id, _, flag in sweep.answer(1, *listed.page(1)).found}
    assert verify == {listed.ids()[0]: False, listed.ids()[1]: True, listed.ids()[2]: False}


def test_page_failures_end_sweeps_after_a_few_or_at_once_if_another_try_would_not_help() -> None:
    sweep = sweep_of(Listed(10).ids())
    for _ in range(FAILURES - 1):
        sweep.begin(0.0, [])
        assert sweep.failed(passing=True, why="503") is None
        sweep.end([], saved=0, spent=1)
    sweep.begin(0.0, [])
    why = sweep.failed(passing=True, why="503")
    assert why is not None
    assert "503" in why
    assert not sweep.active()
    blunt = sweep_of(Listed(10).ids())
    blunt.begin(0.0, [])
    assert blunt.failed(passing=False, why="403 FORBIDDEN") is not None
    assert not blunt.active()
    # A failure is not remembered by the client: the next wait tries again.
    assert blunt.listing.refusals.get("WF") is None


def test_a_page_that_answers_resets_the_failures() -> None:
    listed = Listed(10)
    sweep = sweep_of(listed.ids())
    for round_ in range(2 * FAILURES):
        sweep.begin(float(round_), listed.ids())
        if round_ % 2:
            sweep.answer(1, *listed.page(1))
        else:
            assert sweep.failed(passing=True, why="503") is None
        sweep.end([], saved=0, spent=1)
    assert sweep.active()


def test_sweeps_begin_only_with_enough_runs() -> None:
    assert not sweep_of(["A"]).active()
    assert sweep_of(["A", "B"][:DENSITY]).active()


def test_next_sweep_waits_for_due_polls_unless_the_savings_pay() -> None:
    listed = Listed(300)
    ids = listed.ids()
    sweep = sweep_of(ids)
    assert sweep.next_at(5.0) == 5.0  # the first: when the first poll is due
    read_all(sweep, listed, 0.0, ids)
    sweep.end([], saved=0, spent=3)  # nothing saved: no pages on savings
    assert sweep.next_at(7.0) == 7.0
    assert sweep.next_at(0.2) == 1.0  # never sooner than the floor
    sweep.end([], saved=300, spent=0)
    assert sweep.savings == CARRY * 3  # held to CARRY sweeps of the pages with runs
    assert sweep.next_at(7.0) == 1.0


def test_a_sweep_reads_pages_with_due_runs_and_others_only_on_savings() -> None:
    listed = Listed(500)
    ids = listed.ids()
    sweep = sweep_of(ids)
    read_all(sweep, listed, 0.0, ids)
    sweep.end([], saved=0, spent=5)
    assert sweep.savings == -5
    assert sweep.begin(1.0, [ids[250]]) == [3]
    sweep.answer(3, *listed.page(3))
    sweep.end([], saved=1, spent=1)
    sweep.savings = 2.0
    # The due run's page, then the others by savings (fullest first).
    pages = sweep.begin(2.0, [ids[0]])
    assert pages[0] == 1
    assert len(pages) == 2


def test_runs_deeper_than_the_bound_are_read_on_their_own() -> None:
    assert depth(1) == 6
    assert depth(250) == 14
    assert depth(100_000) > MAX_DEPTH
    listed = Listed(10)
    ids = listed.ids()
    sweep = sweep_of(ids)
    read_all(sweep, listed, 0.0, ids)
    sweep.end([], saved=10, spent=1)
    for _ in range(depth(10) * PAGE_SIZE):  # others push every run waited on deep
        listed.insert()
    read_all(sweep, listed, 1.0, [])
    sweep.begin(2.0, ids)
    assert not any(sweep.wants(run_id) for run_id in ids)


def test_newest_first_skips_missing_dates() -> None:
    assert newest_first([3, None, 2, 2, 1])
    assert not newest_first([1, None, 2])
    assert newest_first([])


# -- waits that sweep, against the fake server -------------------------------------------


async def wait_on(
    runs: int,
    *,
    policy: PollPolicy | None = None,
    quirks: Quirks | None = None,
    final: str = "COMPLETE",
    seed: int = 7,
) -> tuple[FakeCopyAI, list[WorkflowRun], list[float]]:
    """``runs`` runs created together and finishing 1 to 10 s later (virtual seconds,
    shared by server and client), waited on at once: the server, the runs yielded, and
    how long after its finish each was seen."""
    clock = FakeClock()
    rng = random.Random(seed)
    server = FakeCopyAI(clock=clock.monotonic, quirks=quirks or Quirks())
    async with server, CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        client._waiter.rng.seed(seed)
        for _ in range(runs):
            schedule = Schedule.seconds(("PROCESSING", rng.uniform(1, 10)), final=final)
            server.add_run(schedule=schedule)
        ids = [run.id for run in server.runs()]
        yielded, delays = [], []
        async for run in client.wait_for_runs(server.workflow_id, ids, policy=policy):
            yielded.append(run)
            finish = server.get(run.id).finishes_at
            assert finish is not None
            delays.append(clock.monotonic() - finish)
        again = [await client.get_run(server.workflow_id, run.id) for run in yielded[:20]]
        assert again == yielded[:20]  # the same runs a GET gives
    return server, yielded, sorted(delays)


def per_run(server: FakeCopyAI, kind: str, runs: int) -> float:
    return (server.stats.by_kind[kind] - (20 if kind == "get" else 0)) / runs


async def test_a_wait_on_many_runs_reads_pages_and_sees_each_run_end_within_a_second() -> None:
    server, yielded, delays = await wait_on(300)
    assert sorted(run.id for run in yielded) == sorted(run.id for run in server.runs())
    assert all(run.status is RunStatus.COMPLETE and run.output for run in yielded)
    assert per_run(server, "list", 300) <= 0.15
    assert per_run(server, "get", 300) == 0
    assert delays[-1] <= 1.1  # read every `initial` (1 s, jittered by 5%)


async def test_without_sweeps_every_run_is_read_on_its_own() -> None:
    server, yielded, delays = await wait_on(300, policy=PollPolicy(sweep=False))
    assert len(yielded) == 300
    assert server.stats.by_kind["list"] == 0
    assert per_run(server, "get", 300) > 3
    assert delays[-1] > 2  # the backoff's gaps


async def test_a_listing_without_status_costs_one_page_and_every_run_ends() -> None:
    bare = Quirks(bare_listing=True)
    server, yielded, _ = await wait_on(300, quirks=bare)
    alone, _, _ = await wait_on(300, quirks=bare, policy=PollPolicy(sweep=False))
    assert len(yielded) == 300
    assert server.stats.by_kind["list"] == 1
    assert per_run(server, "get", 300) <= 1.1 * per_run(alone, "get", 300)


async def test_the_client_remembers_a_listing_without_status() -> None:
    clock = FakeClock()
    server = FakeCopyAI(clock=clock.monotonic, quirks=Quirks(bare_listing=True))
    server.default_schedule = Schedule.seconds(("PROCESSING", 2.0))
    async with server, CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        for _ in range(2):
            ids = [server.add_run().id for _ in range(5)]
            assert len([r async for r in client.wait_for_runs(server.workflow_id, ids)]) == 5
    assert server.stats.by_kind["list"] == 1


async def test_a_finished_run_the_listing_shows_without_output_is_read_on_its_own() -> None:
    # The fake sends no output for a FAILED run: the wait reads it before it ends.
    server, yielded, delays = await wait_on(120, final="FAILED")
    assert all(run.status is RunStatus.FAILED for run in yielded)
    assert per_run(server, "get", 120) == 1
    # (A FakeClock moves on to the next sweep while a GET is out: a second at most.)
    assert delays[-1] <= 2.2


async def test_single_waits_do_not_sweep(client: CopyAIClient, server: FakeCopyAI) -> None:
    run = server.add_run()
    await client.wait_for_run(server.workflow_id, run.id)
    assert server.stats.by_kind["list"] == 0


async def busy_wait(
    *, steady: bool, policy: PollPolicy | None = None, monkeypatch: pytest.MonkeyPatch
) -> FakeCopyAI:
    """250 runs finishing 1 to 20 s after they start, while another producer creates runs
    of the workflow: as each sweep is sent (``steady``), or at each status change the wait
    sees (while its pages are out). Each run is yielded once."""
    clock = FakeClock()
    server = FakeCopyAI(clock=clock.monotonic)
    rng = random.Random(3)

    def create(most: int) -> None:
        for _ in range(rng.randrange(most + 1)):
            server.add_run(schedule=Schedule.seconds(("PROCESSING", 3600)))

    async with server, CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        client._waiter.rng.seed(3)
        for _ in range(250):
            server.add_run(schedule=Schedule.seconds(("PROCESSING", rng.uniform(1, 20))))
        ids = [run.id for run in server.runs()]
        listing = client._waiter.listing
        assert listing is not None
        read_page = listing.read_page

        def page_after_others(wf: str, page: int, size: int) -> Any:
            if steady:  # (before the server answers any page of this sweep)
                create(10)
            return read_page(wf, page, size)

        monkeypatch.setattr(
            client._waiter, "listing", attrs.evolve(listing, read_page=page_after_others)
        )
        waited = client.wait_for_runs(
            server.workflow_id, ids, policy=policy, on_status=lambda _: create(0 if steady else 8)
        )
        seen = collections.Counter([run.id async for run in waited])
    assert seen == collections.Counter(ids)
    return server


async def test_runs_created_meanwhile_push_the_waited_ones_down_and_sweeps_follow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = await busy_wait(steady=True, monkeypatch=monkeypatch)
    assert len(server.runs()) > 500
    assert server.stats.by_kind["list"] < 250
    assert server.stats.by_kind["get"] < 0.2 * 250


async def test_a_listing_too_busy_to_follow_costs_no_more_than_reading_each_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    swept = await busy_wait(steady=False, monkeypatch=monkeypatch)
    alone = await busy_wait(steady=False, policy=PollPolicy(sweep=False), monkeypatch=monkeypatch)
    assert len(swept.runs()) > 1000
    assert swept.stats.by_kind["list"] > 0
    assert alone.stats.by_kind["list"] == 0
    spent = swept.stats.by_kind["list"] + swept.stats.by_kind["get"]
    assert spent <= 1.1 * alone.stats.by_kind["get"]


@pytest.mark.parametrize(
    ("error", "pages"),
    [
        # A passing failure: tried again by the next sweeps, up to FAILURES in a row.
        (ServerError("503", method="GET", path="/workflow/x/run", status=503), FAILURES),
        # One that another try would only repeat: once.
        (APIStatusError("403", method="GET", path="/workflow/x/run", status=403), 1),
    ],
)
async def test_a_listing_that_fails_falls_back_to_reading_runs(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    pages: int,
) -> None:
    clock = FakeClock()
    server = FakeCopyAI(clock=clock.monotonic)
    server.default_schedule = Schedule.seconds(("PROCESSING", 3.0))
    async with server, CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        calls = 0

        async def broken(_wf: str, _page: int, _size: int) -> Any:
            nonlocal calls
            calls += 1
            raise error

        listing = client._waiter.listing
        assert listing is not None
        monkeypatch.setattr(client._waiter, "listing", attrs.evolve(listing, read_page=broken))
        ids = [server.add_run().id for _ in range(50)]
        policy = PollPolicy(max_failed_polls=0)  # a page is no poll of a run: none fails
        with caplog.at_level(logging.INFO, logger="copyai_async"):
            done = [r async for r in client.wait_for_runs(server.workflow_id, ids, policy=policy)]
    assert len(done) == 50
    assert calls == pages
    assert "read one by one" in caplog.text


async def test_a_deadline_ends_a_sweeping_wait_with_timeouts() -> None:
    clock = FakeClock()
    server = FakeCopyAI(clock=clock.monotonic)
    async with server, CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        quick = [
            server.add_run(schedule=Schedule.seconds(("PROCESSING", 2.0))).id for _ in range(30)
        ]
        slow = [
            server.add_run(schedule=Schedule.seconds(("PROCESSING", 60.0))).id for _ in range(30)
        ]
        done: list[str] = []

        async def wait() -> None:
            async for run in client.wait_for_runs(server.workflow_id, quick + slow, timeout=10):
                done.append(run.id)

        with pytest.raises(ExceptionGroup) as caught:
            await wait()
    assert sorted(done) == sorted(quick)
    errors = caught.value.exceptions
    assert sorted(e.run_id for e in errors) == sorted(slow)  # type: ignore[attr-defined]
    assert all(isinstance(e, PollTimeoutError) for e in errors)
    assert all(e.run is not None for e in errors)  # type: ignore[attr-defined]


async def test_a_batch_sweeps_too(tmp_path: Any) -> None:
    clock = FakeClock()
    server = FakeCopyAI(clock=clock.monotonic)
    server.default_schedule = Schedule.seconds(("PROCESSING", 8.0), spread=0.5)
    async with server, CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        rows = [{"n": n} for n in range(150)]
        results = [r async for r in client.run_batch(server.workflow_id, rows)]
    assert sorted(r.row for r in results) == list(range(150))
    assert all(r.ok for r in results)
    assert server.stats.by_kind["list"] > 0
    assert server.stats.by_kind["get"] < 150  # fewer than one GET a run


# -- the scheduler's glue, on a listing in memory ---------------------------------------------


class World:
    """A workflow in memory, newest first: runs finish at a time on the clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.runs: list[Run] = []
        self.by_id: dict[str, Run] = {}  # (a GET still finds a run the listing dropped)
        self.gets: collections.Counter[str] = collections.Counter()
        self.pages = 0

    def create(self, run_id: str | None = None, finish: float = float("inf")) -> None:
        number = len(self.runs)
        run = {"id": run_id or f"O{number}", "created": number, "finish": finish}
        self.runs.insert(0, run)
        self.by_id[run["id"]] = run

    def view(self, run: Run) -> Run:
        done = self.clock.monotonic() >= run["finish"]
        status = "COMPLETE" if done else "PROCESSING"
        return {
            "id": run["id"],
            "created": run["created"],
            "status": status,
            "output": done or None,
        }

    async def get(self, _wf: str, run_id: str) -> Run:
        self.gets[run_id] += 1
        return self.view(self.by_id[run_id])

    async def page(self, _wf: str, page: int, size: int) -> tuple[list[Run], int]:
        self.pages += 1
        start = (page - 1) * size
        return [self.view(run) for run in self.runs[start : start + size]], len(self.runs)


KIND: RunKind[Run] = RunKind(
    status=lambda run: run["status"],
    is_terminal=lambda run: run["status"] == "COMPLETE",
    is_failed=lambda _run: False,
    is_unknown=lambda _run: False,
)


def scheduler(world: World, ids: list[str], hints: RunHints | None = None) -> Scheduler[Run]:
    options = WaitOptions(
        policy=PollPolicy(adaptive=False),
        clock=world.clock,
        rng=random.Random(1),
        concurrency=16,
        coalesce=0.05,
        hints=hints,
        listing=attrs.evolve(listing(), read_page=world.page),
    )
    targets = [Target(workflow_id="WF", run_id=run_id, read=world.get) for run_id in ids]
    return Scheduler(targets, kind=KIND, options=options, open_ended=True)


@pytest.mark.parametrize("hinted", [False, True])
async def test_runs_pushed_too_deep_while_parked_are_read_on_their_own(hinted: bool) -> None:
    clock = FakeClock()
    world = World(clock)
    world.create("A", finish=5)
    world.create("B", finish=5)
    world.create("X", finish=5)  # (not waited on)
    hints = RunHints(clock) if hinted else None
    if hints is not None:
        hints.attach()
    waits = scheduler(world, ["A", "B"], hints)
    seen: dict[str, float] = {}

    async def consume() -> None:
        async for run in waits.runs():
            seen[run["id"]] = clock.monotonic()

    async def produce() -> None:
        while clock.monotonic() < 1.5:
            await clock.sleep(0.1)
        for _ in range(700):  # others push A and B past the pages a wait on 4 runs reads
            world.create()
        world.create("C", finish=20)
        world.create("D", finish=20)
        waits.add([Target(workflow_id="WF", run_id=r, read=world.get) for r in ("C", "D")])
        waits.end_input()
        if hints is not None:
            while clock.monotonic() < 2.0:
                await clock.sleep(0.05)
            hints.hint("A", "WF", final=True)  # an event, as A's page crosses the bound

    with anyio.fail_after(10):  # (real seconds: a scheduler that spins never yields)
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            group.start_soon(produce)
    assert set(seen) == {"A", "B", "C", "D"}
    assert seen["A"] < 12
    assert seen["B"] < 12
    assert world.gets["A"] >= 1
    assert world.gets["B"] >= 1
    assert world.gets["C"] == world.gets["D"] == 0
    assert waits.parked == waits.pending == 0


async def test_a_run_the_listing_stops_showing_is_read_on_its_own() -> None:
    clock = FakeClock()
    world = World(clock)
    for number in range(5):
        world.create(f"R{number}", finish=8 if number == 0 else 9)
    waits = scheduler(world, [f"R{number}" for number in range(5)])
    waits.end_input()
    seen: dict[str, float] = {}

    async def hide() -> None:
        while clock.monotonic() < 3:
            await clock.sleep(0.1)
        world.runs = [run for run in world.runs if run["id"] != "R0"]  # deleted, say

    async def consume() -> None:
        async for run in waits.runs():
            seen[run["id"]] = clock.monotonic()

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        group.start_soon(hide)
    assert set(seen) == {f"R{number}" for number in range(5)}
    assert seen["R0"] < 8 + 10 + 1  # at most the backoff's gap late
    assert world.gets["R0"] >= 1
    assert sum(world.gets.values()) == world.gets["R0"]


def test_a_page_read_long_before_the_deadline_is_not_the_final_look() -> None:
    clock = FakeClock()
    policy = PollPolicy(initial=30, max_interval=30, jitter=0, adaptive=False)
    target = Target(workflow_id="WF", run_id="R", read=World(clock).get)
    poll = RunPoll(
        target,
        kind=KIND,
        policy=policy,
        rng=random.Random(1),
        hints=None,
        now=0.0,
        deadline=20.0,
        time_limit=20.0,
    )
    poll.sent(0.0)
    poll.read({"id": "R", "status": "PROCESSING"}, 0.0)
    assert poll.due() == 19.0  # the final look: the schedule's next poll is past the deadline
    assert not poll.sent(14.0, early=False)  # a sweep's page, seconds before it
    poll.read({"id": "R", "status": "PROCESSING"}, 14.0)
    assert poll.due() == 19.0  # the final look still goes
    assert poll.sent(19.0, early=False)
    poll.read({"id": "R", "status": "PROCESSING"}, 19.0)
    assert poll.due() > 20.0


def test_an_event_while_a_page_is_out_is_kept_if_the_page_does_not_show_the_run() -> None:
    clock = FakeClock()
    policy = PollPolicy(initial=30, max_interval=30, jitter=0, adaptive=False)
    target = Target(workflow_id="WF", run_id="R", read=World(clock).get)
    poll = RunPoll(
        target,
        kind=KIND,
        policy=policy,
        rng=random.Random(1),
        hints=None,
        now=0.0,
        deadline=None,
        time_limit=None,
    )
    poll.sent(0.0)
    poll.read({"id": "R", "status": "PROCESSING"}, 0.0)
    poll.sent(30.0, early=False)
    assert not poll.hint(31.0)  # the page is out: nothing goes now
    poll.unsent(32.0)  # the page did not show it
    assert poll.urgent()
    assert poll.due() == 30.0  # its scheduled poll, still owed (and the event asks too)


async def test_a_sweep_due_within_a_millisecond_is_taken_not_begun_again_and_again() -> None:
    # A sweep timed by a run due a hair after now (an event's look) used to find nothing
    # due, read nothing, and time itself again at that hair: _launch took it again in
    # the same turn, forever (seen as a frozen batch).
    clock = FakeClock()
    world = World(clock)
    world.create("A")
    world.create("B")
    waits = scheduler(world, ["A", "B"])
    swept = waits._sweeps["WF"]
    tracks = {entry[2].poll.target.run_id: entry[2] for entry in waits.heap}
    waits.heap.clear()
    waits.pending = 0
    sweep = swept.sweep
    sweep.begin(0.0, ["A", "B"])
    sweep.answer(1, *await world.page("WF", 1, PAGE_SIZE))
    sweep.end([], saved=2, spent=1)
    for track in tracks.values():
        track.poll.sent(0.0)
        track.poll.read(world.view(world.by_id[track.poll.target.run_id]), 0.0)
    tracks["A"].poll.verify(0.5004)  # due 0.4 ms from now, for an event
    for run_id, track in tracks.items():
        swept.parked[run_id] = track
    waits.parked = 2
    waits._begin_sweep(swept, 0.5)
    assert "A" in swept.held  # taken now, with its page
    assert swept.sweep.in_flight
    await waits._aclose()
