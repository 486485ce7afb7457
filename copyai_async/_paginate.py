"""The run paginator: every run of a workflow, once each, in bounded memory, with prefetch.

How it reads the listing (newest first, ``page``/``size``):

- The first page is fetched alone. Once a full page is in hand, up to ``prefetch``
  later pages are requested concurrently while the caller consumes it; pages are still
  handed over strictly in order, and a page's error surfaces where that page would have.
- The iteration ends at the first empty page or page shorter than ``size``. ``total`` only
  plans how far to prefetch: it never ends the iteration, and once a full page shows up
  past where ``total`` said the runs end, it is ignored.
- New runs go to the head of the listing and push older runs onto later pages, so a page
  can repeat runs already yielded: those are dropped. A page that was requested before the
  page ahead of it had answered, and whose ``total`` differs from that page's, may have
  missed runs that moved in between: it is fetched again.
- A server that answers the same page again and again (the same ids) ends the iteration
  with :class:`PaginationError` once ``MAX_STALE_PAGES`` full pages in a row repeat the
  page before them.

Remembering which runs were yielded uses bounded memory: exact ids for the most recent
runs, and for older ones the ``createdAt`` horizon (in a newest-first listing, a run older
than every forgotten run cannot be one of them). If a page is not sorted newest first, the
paginator stops forgetting ids instead: still exact, at the cost of memory.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from datetime import datetime
from types import TracebackType
from typing import Any

from ._errors import PaginationError
from ._models import RunPage, WorkflowRun
from ._tasks import cancel_and_wait

__all__ = ["DEFAULT_PREFETCH", "MAX_STALE_PAGES", "RunPaginator"]

DEFAULT_PREFETCH = 6
"""Pages requested ahead by default: as many connections as a browser opens to one host."""

MAX_STALE_PAGES = 3
"""Full pages in a row identical to the page before them that end in :class:`PaginationError`."""

NEW, SEEN, NEWER = 0, 1, 2

FetchPage = Callable[[int, int], Coroutine[Any, Any, RunPage]]


class _SeenRuns:
    """Which runs were yielded, in memory bounded by about ``window`` ids (see module
    docstring). Runs are remembered and forgotten a page at a time (a page more at
    most): the page's ids, and its oldest ``createdAt`` with the ids created then."""

    def __init__(self, window: int) -> None:
        self._window = window
        # Each remembered page: its ids, their createdAt values, and whether those are
        # sorted newest first (checked by check_order; then no comparison is repeated).
        self._order: deque[tuple[list[str], list[datetime], bool]] = deque()
        self._remembered = 0
        self._recent: set[str] = set()
        self._undated: set[str] = set()  # no createdAt: never forgotten
        self._horizon: datetime | None = None
        self._horizon_ids: set[str] = set()
        self.exact = False

    def __len__(self) -> int:
        return len(self._recent) + len(self._undated) + len(self._horizon_ids)

    def check_order(
        self, runs: Sequence[WorkflowRun], created: list[datetime] | None = None
    ) -> None:
        """Switch to exact mode if a page is not sorted newest first.

        ``created``: the page's ``createdAt`` values that are not ``None``, in order
        (computed here if not given)."""
        if self.exact:
            return
        if created is None:
            created = _dated(runs)
        # Sorting a sorted list only compares neighbours, in C; a stable sort keeps
        # ties in place, so the list equals its sorted self exactly when it is sorted.
        if created != sorted(created, reverse=True):
            self.exact = True

    def classify(self, run: WorkflowRun) -> int:
        """``NEW`` (never yielded), ``SEEN`` (yielded: its id is known) or ``NEWER``
        (newer than a forgotten run: yielded already, or created since; skipped)."""
        run_id = run.id
        if run_id in self._recent or run_id in self._undated:
            return SEEN
        horizon = self._horizon
        created = run.created_at
        if horizon is None or created is None or created < horizon:
            return NEW
        if created == horizon:
            return SEEN if run_id in self._horizon_ids else NEW
        return NEWER

    def take(
        self,
        runs: Sequence[WorkflowRun],
        ids: list[str] | None = None,
        created: list[datetime] | None = None,
        *,
        newest_first: bool = False,
    ) -> list[WorkflowRun]:
        """The runs of a page not yielded before (each classified, then all added):
        :meth:`classify` and :meth:`add` run by run, in bulk when no run can be a
        repeat (the usual page), which is the same outcome for a fraction of the cost.
        ``ids`` and ``created``: the page's ids, and its ``createdAt`` values that are
        not ``None`` (computed here if not given); ``newest_first``: those are known
        to be sorted newest first."""
        if ids is None:
            ids = [run.id for run in runs]
        if created is None:
            created = _dated(runs)
        horizon = self._horizon
        if (
            self._recent.isdisjoint(ids)
            and (not self._undated or self._undated.isdisjoint(ids))
            and (
                horizon is None
                or not created
                or (created[0] if newest_first else max(created)) < horizon
            )
        ):
            self.add_all(runs, ids, created, newest_first=newest_first)
            return list(runs)
        fresh = [run for run in runs if self.classify(run) == NEW]
        self.add_all(fresh, newest_first=newest_first)
        return fresh

    def add(self, run: WorkflowRun) -> None:
        self.add_all((run,))

    def add_all(
        self,
        runs: Sequence[WorkflowRun],
        ids: list[str] | None = None,
        created: list[datetime] | None = None,
        *,
        newest_first: bool = False,
    ) -> None:
        """Remember ``runs`` as yielded; forget the oldest pages past the window.
        ``ids``, ``created`` and ``newest_first``: as for :meth:`take`."""
        if ids is None:
            ids = [run.id for run in runs]
        if created is None:
            created = _dated(runs)
        if len(created) < len(ids):  # some have no createdAt: never forgotten
            self._undated.update(run.id for run in runs if run.created_at is None)
            ids = [run.id for run in runs if run.created_at is not None]
        if not ids:
            return
        self._recent.update(ids)
        self._order.append((ids, created, newest_first or len(created) == 1))
        self._remembered += len(ids)
        if self.exact:
            return
        order = self._order
        while order and self._remembered - len(order[0][0]) >= self._window:
            self._forget(*order.popleft())

    def _forget(self, ids: list[str], created: list[datetime], newest_first: bool) -> None:
        """Forget a page's ids; its oldest runs may move the horizon back."""
        self._remembered -= len(ids)
        self._recent.difference_update(ids)
        oldest = created[-1] if newest_first else min(created)
        horizon = self._horizon
        if horizon is None or oldest <= horizon:
            if newest_first:  # the runs created then are the last ones
                first = len(created) - 1
                while first and created[first - 1] == oldest:
                    first -= 1
                at_oldest = set(ids[first:])
            else:
                at_oldest = {run_id for run_id, c in zip(ids, created, strict=True) if c == oldest}
            if horizon is not None and oldest == horizon:
                self._horizon_ids |= at_oldest
            else:
                self._horizon, self._horizon_ids = oldest, at_oldest


def _dated(runs: Iterable[WorkflowRun]) -> list[datetime]:
    """The runs' ``createdAt`` values that are not ``None``, in order."""
    return [c for run in runs if (c := run.created_at) is not None]


class RunPaginator:
    """Every run of a workflow, newest first, as an async iterator (from ``iter_runs``).

    ``async for run in paginator`` yields :class:`WorkflowRun` objects;
    :meth:`pages` yields :class:`RunPage` objects instead. A paginator is iterated once.
    Close it to stop early (``async with``, ``contextlib.aclosing``, or :meth:`aclose`):
    that cancels the requests it has in flight. Breaking out of ``async for
    run in client.iter_runs(...)`` also closes it, as soon as the event loop runs again.

    Runs created while iterating sit at the head of the listing: they may be yielded or
    not, never twice. A run deleted while iterating pulls every older run one place
    forward, so one of them may move onto a page already read and be missed.
    """

    def __init__(
        self,
        fetch: FetchPage,
        *,
        label: str,
        page_size: int,
        start_page: int,
        max_items: int | None,
        prefetch: int,
    ) -> None:
        self._fetch = fetch
        self._label = label
        self.page_size = page_size
        self.start_page = start_page
        self.max_items = max_items
        self.prefetch = prefetch
        self._stream: AsyncGenerator[Any, None] | None = None
        self._runs_stream: AsyncGenerator[WorkflowRun, None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<RunPaginator {self._label} page_size={self.page_size} "
            f"start_page={self.start_page} max_items={self.max_items} prefetch={self.prefetch}>"
        )

    def _start(self, make: Callable[[], AsyncGenerator[Any, None]]) -> AsyncGenerator[Any, None]:
        if self._closed:
            raise RuntimeError("this paginator is closed; call iter_runs() again")
        if self._stream is not None:
            raise RuntimeError("a paginator is iterated once; call iter_runs() again")
        self._stream = make()
        return self._stream

    def _page_stream(self) -> AsyncGenerator[RunPage, None]:
        # A module-level generator that does not refer back to the paginator: when a
        # caller breaks out of ``async for``, it is collected and closed at once.
        return _pages(
            self._fetch,
            label=self._label,
            page_size=self.page_size,
            start_page=self.start_page,
            max_items=self.max_items,
            prefetch=self.prefetch,
        )

    def _begin_runs(self) -> AsyncGenerator[WorkflowRun, None]:
        stream: AsyncGenerator[WorkflowRun, None] = self._start(lambda: _runs(self._page_stream()))
        self._runs_stream = stream
        return stream

    def __aiter__(self) -> AsyncIterator[WorkflowRun]:
        return self._begin_runs()

    async def __anext__(self) -> WorkflowRun:
        if self._runs_stream is None and self._stream is not None:
            raise RuntimeError("this paginator is iterating pages(); use that iterator")
        stream = self._runs_stream or self._begin_runs()
        return await stream.__anext__()

    def pages(self) -> AsyncIterator[RunPage]:
        """Iterate page by page instead of run by run.

        Each page holds only runs not on an earlier page (``duplicates`` counts those
        dropped); the last page is cut to ``max_items``.
        """
        return self._start(self._page_stream)

    async def aclose(self) -> None:
        """Stop: cancel the requests in flight and end the iteration. Idempotent."""
        self._closed = True
        stream, self._stream, self._runs_stream = self._stream, None, None
        if stream is not None:
            await stream.aclose()

    async def __aenter__(self) -> RunPaginator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` in integers: a float division overflows past about 1.8e308."""
    return -(-a // b)


async def _runs(pages: AsyncGenerator[RunPage, None]) -> AsyncGenerator[WorkflowRun, None]:
    try:
        async for page in pages:
            for run in page.runs:
                yield run
    finally:
        await pages.aclose()


def _pages(
    fetch: FetchPage,
    *,
    label: str,
    page_size: int,
    start_page: int,
    max_items: int | None,
    prefetch: int,
) -> AsyncGenerator[RunPage, None]:
    reader = _PageReader(
        fetch, label=label, page_size=page_size, max_items=max_items, prefetch=prefetch
    )
    return reader.pages(start_page)


class _Flights:
    """The page requests in flight, with the order in which each was sent and answered.

    Tasks, not a task group: a task group cannot stay open across the yields of an async
    generator. These tasks belong to one iteration alone; :meth:`aclose` cancels and
    awaits every one, whichever way the iteration ends.
    """

    def __init__(self, fetch: FetchPage, page_size: int) -> None:
        self._fetch = fetch
        self._page_size = page_size
        self._tasks: dict[int, asyncio.Task[RunPage]] = {}
        self._clock = itertools.count()
        self._launched: dict[int, int] = {}
        self._answered: dict[int, int] = {}

    def launch(self, page_no: int) -> None:
        """Ask for a page, unless it is asked for already."""
        if page_no in self._tasks:
            return
        task = asyncio.create_task(
            self._fetch(page_no, self._page_size), name=f"copyai_async.page[{page_no}]"
        )
        self._launched[page_no] = next(self._clock)
        task.add_done_callback(lambda _t: self._answered.__setitem__(page_no, next(self._clock)))
        self._tasks[page_no] = task

    async def take(self, page_no: int) -> RunPage:
        """The page's answer (asked for now if it is not in flight)."""
        self.launch(page_no)
        task = self._tasks[page_no]
        # Wait *on* the task rather than awaiting it: a cancellation of the caller then
        # stays the caller's own (anyio recognises its CancelledError), and aclose()
        # cancels the request. A page prefetched while the caller worked is done already.
        if not task.done():
            await asyncio.wait((task,))
        del self._tasks[page_no]
        return task.result()

    def sent_before_previous_answered(self, page_no: int) -> bool:
        """Whether this page was asked for before the page before it was answered."""
        return self._launched[page_no] < self._answered[page_no - 1]

    def forget_before(self, page_no: int) -> None:
        """Keep the bookkeeping as flat as the memory."""
        self._launched.pop(page_no - 1, None)
        self._answered.pop(page_no - 1, None)

    def drop_from(self, page_no: int) -> None:
        """Cancel the requests for this page and the ones after it."""
        for number in [n for n in self._tasks if n >= page_no]:
            self._tasks.pop(number).cancel()

    async def aclose(self) -> None:
        pending = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(pending)


class _PageReader:
    """One iteration over a listing's pages: each run once, pages asked for ahead."""

    def __init__(
        self,
        fetch: FetchPage,
        *,
        label: str,
        page_size: int,
        max_items: int | None,
        prefetch: int,
    ) -> None:
        self._label = label
        self._page_size = page_size
        self._max_items = max_items
        self._prefetch = prefetch
        self._flights = _Flights(fetch, page_size)
        self._seen = _SeenRuns(window=max(prefetch + 2, 4) * page_size)
        self._yielded = 0
        self._stale = 0
        self._believe_total = True  # until a full page arrives past where total says runs end
        self._previous: RunPage | None = None
        self._previous_ids: list[str] = []

    async def pages(self, start_page: int) -> AsyncGenerator[RunPage, None]:
        """The pages from ``start_page`` on, each holding only runs not yielded before."""
        if self._max_items == 0:
            return
        self._launch_first(start_page)
        page_no = start_page
        try:
            while True:
                page = await self._flights.take(page_no)
                if self._moved_under(page, page_no):
                    # The listing changed while this page was in flight ahead of the
                    # previous one, so runs may have moved past it unseen: read it again.
                    self._flights.drop_from(page_no)
                    continue
                fresh, duplicates, full = self._take(page, page_no)
                if full:
                    self._launch_ahead(page, page_no)
                else:
                    self._flights.drop_from(page_no + 1)
                self._previous = page
                self._flights.forget_before(page_no)
                yield RunPage(
                    runs=tuple(fresh),
                    total=page.total,
                    page=page.page,
                    size=page.size,
                    duplicates=duplicates,
                )
                if not full:
                    return
                page_no += 1
        finally:
            await self._flights.aclose()

    def _launch_first(self, start_page: int) -> None:
        # The first page alone would cost a round trip before any other is asked for:
        # the next ones go with it, within ``prefetch`` requests in flight (and
        # ``max_items``). For a listing of one page, that is prefetch - 1 requests
        # answered with empty pages, at no cost in time; they are cancelled once the
        # first page shows it is the last.
        speculative = self._prefetch - 1
        if self._max_items is not None:
            speculative = min(speculative, _ceil_div(self._max_items, self._page_size) - 1)
        for number in range(start_page, start_page + max(speculative, 0) + 1):
            self._flights.launch(number)

    def _moved_under(self, page: RunPage, page_no: int) -> bool:
        previous = self._previous
        return (
            previous is not None
            and page.total is not None
            and previous.total is not None
            and page.total != previous.total
            and self._flights.sent_before_previous_answered(page_no)
        )

    def _take(self, page: RunPage, page_no: int) -> tuple[list[WorkflowRun], int, bool]:
        """The page's runs not yielded before (within ``max_items``), how many it held
        that were, and whether more pages are wanted after it."""
        runs = page.runs
        ids = [run.id for run in runs]
        created = _dated(runs)
        seen = self._seen
        seen.check_order(runs, created)
        fresh = seen.take(runs, ids, created, newest_first=not seen.exact)
        duplicates = len(runs) - len(fresh)
        full = len(runs) >= self._page_size
        self._check_stale(ids, page_no, full)
        if self._max_items is not None and self._yielded + len(fresh) >= self._max_items:
            fresh = fresh[: self._max_items - self._yielded]
            full = False  # nothing more is wanted
        self._yielded += len(fresh)
        return fresh, duplicates, full

    def _check_stale(self, ids: list[str], page_no: int, full: bool) -> None:
        """Count full pages that repeat the page before run for run; raise at
        :data:`MAX_STALE_PAGES` of them (a server that ignores ``page``). Inserts can
        push known runs back into view for a few pages, but never the same ids page
        after page."""
        if full and ids == self._previous_ids:
            self._stale += 1
            if self._stale >= MAX_STALE_PAGES:
                first = page_no - self._stale + 1
                raise PaginationError(
                    f"{self._label}: pages {first} to {page_no} repeated page {first - 1} "
                    "run for run; the server seems to ignore 'page', so the iteration "
                    "stops instead of looping forever",
                    pages=tuple(range(first, page_no + 1)),
                )
        else:
            self._stale = 0
        self._previous_ids = ids

    def _launch_ahead(self, page: RunPage, page_no: int) -> None:
        """Ask for the next pages, up to ``prefetch`` ahead, no further than where
        ``total`` says runs end (while it is believed) or ``max_items`` needs."""
        ahead = self._prefetch
        if self._believe_total and page.total is not None:
            last = _ceil_div(page.total, self._page_size)  # exact for any int
            if page.total % self._page_size == 0:
                last += 1  # the last page is full: the empty one after it ends it
            if page_no >= last:
                self._believe_total = False  # proven wrong: plan without it
            else:
                # Up to where ``total`` says runs end; past it, one page at a time.
                ahead = min(ahead, last - page_no)
        if self._max_items is not None:
            ahead = min(ahead, _ceil_div(self._max_items - self._yielded, self._page_size))
        for number in range(page_no + 1, page_no + ahead + 1):
            self._flights.launch(number)
