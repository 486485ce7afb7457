"""The run paginator, against the fake server over loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

from copyai_async import (
    ClientClosedError,
    CopyAIClient,
    NotFoundError,
    PaginationError,
    RunPage,
    ServerError,
    WorkflowRun,
)
from copyai_async._paginate import DEFAULT_PREFETCH, NEW, NEWER, SEEN, _SeenRuns
from copyai_async.testing import FakeCopyAI, Fault, Schedule


def _pages_requested(server: FakeCopyAI) -> list[int]:
    return [int(r.query["page"]) for r in server.requests if r.query.get("page")]


def _newest_first(server: FakeCopyAI) -> list[str]:
    return [run.id for run in server.runs()]


def _page_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("copyai_async.")]


async def _settle() -> None:
    """Let the loop run until the paginator's tasks are gone (no real sleeping)."""
    for _ in range(200):
        if not _page_tasks():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"tasks still running: {_page_tasks()}")


async def _server_quiet(server: FakeCopyAI) -> None:
    """Wait until every request the server got has ended: bytes a cancelled client wrote
    just before hanging up arrive a few loop turns later, and then end at once."""
    for _ in range(100):
        await asyncio.sleep(0)
    await asyncio.wait_for(server.idle(), 5)
    assert server.stats.in_flight == 0


async def _collect(paginator: Any, into: list[str]) -> None:
    async for run in paginator:
        into.append(run.id)


def _holds_later_pages(request: Any) -> bool:
    return request.query.get("page") not in (None, "1")


# -- every run, once, and the stopping rule ---------------------------------------------


@pytest.mark.parametrize(
    ("count", "page_size", "requests"),
    [
        (0, 100, 1),
        (1, 100, 1),
        (99, 100, 1),
        (100, 100, 2),
        (101, 100, 2),
        (250, 100, 3),
        (200, 100, 3),
        (95, 7, 14),
        (98, 7, 15),
    ],
)
async def test_every_run_once_in_order(
    client: CopyAIClient, server: FakeCopyAI, count: int, page_size: int, requests: int
) -> None:
    server.add_runs(count, schedule=Schedule.immediate())
    runs = [run async for run in client.iter_runs(server.workflow_id, page_size=page_size)]
    assert [r.id for r in runs] == _newest_first(server)
    assert all(isinstance(r, WorkflowRun) for r in runs)
    # The first pages go out together (prefetch 6): the pages needed, and at most the
    # first six whatever the listing holds.
    asked = sorted(_pages_requested(server))
    assert asked[:requests] == list(range(1, requests + 1))
    assert len(asked) == len(set(asked)) <= max(requests, DEFAULT_PREFETCH)


@pytest.mark.parametrize(("count", "requests"), [(0, 1), (99, 1), (100, 2), (250, 3)])
async def test_without_speculation_only_the_pages_needed_are_asked_for(
    client: CopyAIClient, server: FakeCopyAI, count: int, requests: int
) -> None:
    server.add_runs(count, schedule=Schedule.immediate())
    runs = [run async for run in client.iter_runs(server.workflow_id, prefetch=1)]
    assert len(runs) == count
    # Full pages lead to one more page; a short or empty page ends it, with no extra asks.
    assert server.stats.requests == requests
    assert sorted(_pages_requested(server)) == list(range(1, requests + 1))


async def test_the_first_pages_go_out_together(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(1_000, schedule=Schedule.immediate())
    release = server.hold(lambda request: request.query.get("page") == "1")
    paginator = client.iter_runs(server.workflow_id, prefetch=4)
    first = asyncio.ensure_future(paginator.__anext__())
    for _ in range(200):
        if len(server.requests) >= 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    # While page 1 is held, pages 2 to 4 are asked for (and answered) too: prefetch in
    # flight, no more.
    assert sorted(_pages_requested(server)) == [2, 3, 4]
    assert server.stats.in_flight == 1
    release.set()
    assert isinstance(await first, WorkflowRun)
    await paginator.aclose()
    assert server.stats.max_in_flight <= 4


async def test_prefetch_keeps_at_most_prefetch_pages_in_flight(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.add_runs(2000, schedule=Schedule.immediate())
    release = server.hold(_holds_later_pages)
    paginator = client.iter_runs(server.workflow_id, prefetch=3)
    got: list[WorkflowRun] = []
    async with paginator:
        iterator = paginator.__aiter__()
        got.append(await iterator.__anext__())
        for _ in range(50):  # let the prefetch requests reach the server
            await asyncio.sleep(0)
        assert server.stats.in_flight == 3
        assert sorted(_pages_requested(server)) == [1]  # held ones are not logged yet
        release.set()
        got += [run async for run in iterator]
    assert [r.id for r in got] == _newest_first(server)
    assert server.stats.max_in_flight == 3
    assert DEFAULT_PREFETCH == 6


async def test_prefetch_zero_is_one_request_at_a_time(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.add_runs(450, schedule=Schedule.immediate())
    server.latency = 0.001
    ids = [r.id async for r in client.iter_runs(server.workflow_id, prefetch=0)]
    assert len(ids) == 450
    assert server.stats.max_in_flight == 1


# -- total is a hint --------------------------------------------------------------------


@pytest.mark.parametrize(
    "report",
    [
        lambda n: 0,
        lambda n: 5,
        lambda n: n // 3,
        lambda n: n - 1,
        lambda n: None,
        lambda n: n + 1,
        lambda n: n * 10,
        lambda n: 10**9,
    ],
    ids=["zero", "five", "third", "one-less", "missing", "one-more", "ten-times", "huge"],
)
@pytest.mark.parametrize("count", [0, 250, 1000])
async def test_wrong_total_still_yields_every_run_once(
    client: CopyAIClient, server: FakeCopyAI, report: Any, count: int
) -> None:
    server.add_runs(count, schedule=Schedule.immediate())
    server.report_total = report
    ids = [r.id async for r in client.iter_runs(server.workflow_id)]
    assert ids == _newest_first(server)
    requested = _pages_requested(server)
    last_real = count // 100 + 1  # the first short (or empty) page
    # Nothing is asked for after the pages said where they end; what was already in
    # flight then is at most ``prefetch`` pages further.
    assert max(requested) <= last_real + DEFAULT_PREFETCH
    assert Counter(requested)[1] == 1


async def test_total_as_numeric_string(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(230, schedule=Schedule.immediate())
    server.report_total = lambda n: str(n)  # type: ignore[assignment,return-value]
    assert len([r async for r in client.iter_runs(server.workflow_id, prefetch=1)]) == 230
    assert server.stats.requests == 3


async def test_exact_total_plans_prefetch_without_overshoot(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.add_runs(1000, schedule=Schedule.immediate())
    ids = [r.id async for r in client.iter_runs(server.workflow_id)]
    assert len(ids) == 1000
    # 10 full pages, then one probe (total is never a reason to stop): 11 requests, not
    # 10 + prefetch speculative ones.
    assert sorted(_pages_requested(server)) == list(range(1, 12))


# -- runs created or deleted while iterating --------------------------------------------


async def test_inserts_between_pages_yield_no_duplicates(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.add_runs(500, schedule=Schedule.immediate())
    original = _newest_first(server)
    seen: list[str] = []
    async for page in client.iter_runs(server.workflow_id, prefetch=0).pages():
        seen += [r.id for r in page.runs]
        for _ in range(13):  # new runs at the head push old ones onto later pages
            server.add_run(schedule=Schedule.immediate())
    assert len(seen) == len(set(seen))
    assert set(original) <= set(seen)
    assert [i for i in seen if i in set(original)] == original


async def test_prefetched_page_overtaken_by_inserts_is_read_again(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.add_runs(500, schedule=Schedule.immediate())
    original = _newest_first(server)
    page2 = server.hold(lambda request: request.query.get("page") == "2")
    seen: list[str] = []
    async with client.iter_runs(server.workflow_id, prefetch=2) as paginator:
        pages = paginator.pages()
        seen += [r.id for r in (await pages.__anext__()).runs]
        for _ in range(500):  # page 3 answers while page 2 is held
            if 3 in _pages_requested(server):
                break
            await asyncio.sleep(0)
        assert 3 in _pages_requested(server)
        for _ in range(30):  # then 30 new runs arrive, and page 2 is answered after them
            server.add_run(schedule=Schedule.immediate())
        page2.set()
        async for page in pages:
            seen += [r.id for r in page.runs]
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in set(original)] == original  # none lost to the shift
    assert Counter(_pages_requested(server))[3] >= 2  # page 3 was read again


async def test_heavy_inserts_beyond_the_memory_window(server: FakeCopyAI) -> None:
    # page_size 10, prefetch 0: exact ids are kept for 40 runs; older ones rely on the
    # createdAt horizon.
    server.add_runs(300, schedule=Schedule.immediate())
    original = _newest_first(server)
    async with CopyAIClient(server.api_key, base_url=server.url) as client:
        seen: list[str] = []
        async for page in client.iter_runs(server.workflow_id, page_size=10, prefetch=0).pages():
            seen += [r.id for r in page.runs]
            if page.page in (5, 9):
                for _ in range(120):
                    server.add_run(schedule=Schedule.immediate())
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in set(original)] == original


async def test_whole_second_ties_across_the_window(server: FakeCopyAI) -> None:
    # Every run created in the same second: only ids can tell them apart.
    same = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for _ in range(200):
        server.add_run(created_at=same, schedule=Schedule.immediate())
    original = _newest_first(server)
    async with CopyAIClient(server.api_key, base_url=server.url) as client:
        seen: list[str] = []
        async for page in client.iter_runs(server.workflow_id, page_size=10, prefetch=0).pages():
            seen += [r.id for r in page.runs]
            if page.page == 8:
                for _ in range(60):
                    server.add_run(created_at=same, schedule=Schedule.immediate())
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in set(original)] == original


async def test_unsorted_listing_falls_back_to_exact_memory(server: FakeCopyAI) -> None:
    rng = random.Random(3)
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for _ in range(200):
        server.add_run(
            created_at=base + timedelta(seconds=rng.randint(0, 10**6)),
            schedule=Schedule.immediate(),
        )
    original = _newest_first(server)
    async with CopyAIClient(server.api_key, base_url=server.url) as client:
        seen: list[str] = []
        async for page in client.iter_runs(server.workflow_id, page_size=10, prefetch=0).pages():
            seen += [r.id for r in page.runs]
            if page.page == 8:
                for _ in range(60):
                    server.add_run(schedule=Schedule.immediate())
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in set(original)] == original


async def test_deletes_between_pages_never_duplicate(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.add_runs(300, schedule=Schedule.immediate())
    seen: list[str] = []
    async for page in client.iter_runs(server.workflow_id, prefetch=0).pages():
        seen += [r.id for r in page.runs]
        if page.page == 1:
            for run in server.runs()[:5]:  # five already-yielded runs disappear
                server.delete_run(run.id)
    assert len(seen) == len(set(seen))
    # As documented: each deletion pulls older runs forward; five may be missed.
    assert 295 <= len(seen) <= 300


def test_seen_runs_memory_is_bounded() -> None:
    seen = _SeenRuns(window=40)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    runs = [
        WorkflowRun(id=f"r{i}", workflow_id="w", created_at=start - timedelta(seconds=i))
        for i in range(10_000)
    ]
    for run in runs:
        assert seen.classify(run) == NEW
        seen.add(run)
    assert len(seen) <= 41
    assert all(seen.classify(run) != NEW for run in runs)  # none would be yielded again
    assert seen.classify(runs[-1]) == SEEN  # the last 40 by id
    older = WorkflowRun(id="older", workflow_id="w", created_at=start - timedelta(days=1))
    assert seen.classify(older) == NEW
    newer = WorkflowRun(id="newer", workflow_id="w", created_at=start + timedelta(days=1))
    assert seen.classify(newer) == NEWER


# -- runaway guard ----------------------------------------------------------------------


@pytest.mark.parametrize("total", [True, False])
async def test_server_repeating_a_page_ends_with_clear_error(
    client: CopyAIClient, server: FakeCopyAI, total: bool
) -> None:
    server.add_runs(300, schedule=Schedule.immediate())
    server.page_for = lambda page: 1
    if not total:
        server.report_total = lambda n: None
    got: list[str] = []
    with pytest.raises(PaginationError) as info:
        await _collect(client.iter_runs(server.workflow_id), got)
    assert got == _newest_first(server)[:100]  # page 1's runs, once
    assert info.value.pages == (2, 3, 4)
    assert "pages 2 to 4 repeated page 1" in str(info.value)
    assert f"GET /workflow/{server.workflow_id}/run" in str(info.value)
    await _settle()


# -- max_items, start_page, page_size ---------------------------------------------------


@pytest.mark.parametrize(
    ("max_items", "requests"), [(0, 0), (1, 1), (100, 1), (130, 2), (250, 3), (10_000, 3)]
)
async def test_max_items(
    client: CopyAIClient, server: FakeCopyAI, max_items: int, requests: int
) -> None:
    server.add_runs(250, schedule=Schedule.immediate())
    ids = [r.id async for r in client.iter_runs(server.workflow_id, max_items=max_items)]
    assert ids == _newest_first(server)[:max_items]
    # Never a page beyond what max_items can use; past the listing's end (10,000 of 250),
    # the first six pages went out together.
    bound = max(requests, min(DEFAULT_PREFETCH, -(-max_items // 100)))
    assert requests <= server.stats.requests <= bound


async def test_start_page(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(250, schedule=Schedule.immediate())
    ids = [r.id async for r in client.iter_runs(server.workflow_id, start_page=2)]
    assert ids == _newest_first(server)[100:]
    assert min(_pages_requested(server)) == 2


async def test_page_size_capped_at_100(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(150, schedule=Schedule.immediate())
    paginator = client.iter_runs(server.workflow_id, page_size=500)
    assert paginator.page_size == 100
    assert len([r async for r in paginator]) == 150
    assert {r.query["size"] for r in server.requests} == {"100"}


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"page_size": 0}, ValueError, "page_size"),
        ({"page_size": -5}, ValueError, "page_size"),
        ({"start_page": 0}, ValueError, "start_page"),
        ({"max_items": -1}, ValueError, "max_items"),
        ({"prefetch": -1}, ValueError, "prefetch"),
        ({"page_size": 10.0}, TypeError, "page_size"),
        ({"max_items": "5"}, TypeError, "max_items"),
        ({"prefetch": True}, TypeError, "prefetch"),
    ],
)
async def test_bad_arguments_fail_before_any_request(
    client: CopyAIClient, server: FakeCopyAI, kwargs: dict[str, Any], exc: type, words: str
) -> None:
    with pytest.raises(exc, match=words):
        client.iter_runs(server.workflow_id, **kwargs)
    with pytest.raises(ValueError, match="workflow_id"):
        client.iter_runs("")
    assert server.stats.requests == 0


# -- pages() ----------------------------------------------------------------------------


async def test_pages(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(230, schedule=Schedule.immediate())
    pages = [p async for p in client.iter_runs(server.workflow_id).pages()]
    assert all(isinstance(p, RunPage) for p in pages)
    assert [p.page for p in pages] == [1, 2, 3]
    assert [len(p.runs) for p in pages] == [100, 100, 30]
    assert [p.has_next for p in pages] == [True, True, False]
    assert all(p.total == 230 and p.duplicates == 0 for p in pages)


async def test_pages_report_dropped_duplicates(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(250, schedule=Schedule.immediate())
    paginator = client.iter_runs(server.workflow_id, prefetch=0)
    pages = []
    async for page in paginator.pages():
        pages.append(page)
        if page.page == 1:
            for _ in range(10):
                server.add_run(schedule=Schedule.immediate())
    assert pages[1].duplicates == 10
    assert len(pages[1].runs) == 90
    assert pages[1].has_next  # the server's page was full


async def test_a_paginator_is_iterated_once(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(5, schedule=Schedule.immediate())
    paginator = client.iter_runs(server.workflow_id)
    assert len([r async for r in paginator]) == 5
    with pytest.raises(RuntimeError, match="once"):
        paginator.__aiter__()
    with pytest.raises(RuntimeError, match="once"):
        paginator.pages()
    await paginator.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        paginator.pages()
    closed_first = client.iter_runs(server.workflow_id)
    await closed_first.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        closed_first.__aiter__()


async def test_anext_on_the_paginator(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(3, schedule=Schedule.immediate())
    async with client.iter_runs(server.workflow_id) as paginator:
        first = await paginator.__anext__()
        second = await paginator.__anext__()
    assert [first.id, second.id] == _newest_first(server)[:2]
    async with client.iter_runs(server.workflow_id) as by_page:
        assert len((await by_page.pages().__anext__()).runs) == 3
        with pytest.raises(RuntimeError, match="pages"):
            await by_page.__anext__()


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["not-found", "server-error"])
async def test_failing_page_raises_after_earlier_pages(server: FakeCopyAI, fault: str) -> None:
    server.add_runs(500, schedule=Schedule.immediate())
    if fault == "not-found":
        server.inject(Fault.status_code(404, error_code="NOT_FOUND"), path="page=3&")
        expected: type[Exception] = NotFoundError
    else:
        server.inject(*[Fault.server_error(503)] * 2, path="page=3&")
        expected = ServerError
    got: list[str] = []
    async with CopyAIClient(
        server.api_key, base_url=server.url, max_retries=1, backoff_base=0.001
    ) as client:
        with pytest.raises(expected) as info:
            await _collect(client.iter_runs(server.workflow_id), got)
    assert got == _newest_first(server)[:200]  # pages 1 and 2, all of them, first
    assert "page=3" in str(info.value)
    await _settle()


async def test_closed_client(server: FakeCopyAI) -> None:
    client = CopyAIClient(server.api_key, base_url=server.url)
    await client.aclose()
    with pytest.raises(ClientClosedError):
        async for _ in client.iter_runs(server.workflow_id):
            pass


# -- stopping early and cancellation ----------------------------------------------------


async def test_break_leaves_nothing_running(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(1000, schedule=Schedule.immediate())
    server.hold(_holds_later_pages)  # never released: prefetches stay in flight
    async for _ in client.iter_runs(server.workflow_id):
        break
    await _settle()
    await _server_quiet(server)


@pytest.mark.parametrize("how", ["async with", "aclosing", "aclose"])
async def test_closing_cancels_requests_at_once(
    client: CopyAIClient, server: FakeCopyAI, how: str
) -> None:
    server.add_runs(1000, schedule=Schedule.immediate())
    server.hold(_holds_later_pages)
    paginator = client.iter_runs(server.workflow_id)
    if how == "async with":
        async with paginator:
            async for _ in paginator:
                break
    elif how == "aclosing":
        async with contextlib.aclosing(paginator):
            async for _ in paginator:
                break
    else:
        async for _ in paginator:
            break
        await paginator.aclose()
    assert _page_tasks() == []  # closing waited for them
    await _server_quiet(server)
    await paginator.aclose()  # idempotent


async def test_cancelling_the_consumer(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(1000, schedule=Schedule.immediate())
    server.hold(_holds_later_pages)
    first_page_done = asyncio.Event()

    async def consume() -> None:
        count = 0
        async for _ in client.iter_runs(server.workflow_id):
            count += 1
            if count == 100:
                first_page_done.set()  # the next __anext__ waits on a held page

    task = asyncio.create_task(consume())
    await first_page_done.wait()
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _page_tasks() == []
    await _server_quiet(server)


async def test_cancel_scope_around_iteration(client: CopyAIClient, server: FakeCopyAI) -> None:
    server.add_runs(1000, schedule=Schedule.immediate())
    server.hold(_holds_later_pages)
    count = 0
    with anyio.CancelScope() as scope:
        async for _ in client.iter_runs(server.workflow_id):
            count += 1
            if count == 100:
                scope.cancel()  # lands in the next __anext__, waiting on a held page
    assert scope.cancelled_caught
    assert count == 100
    await _settle()
    await _server_quiet(server)
