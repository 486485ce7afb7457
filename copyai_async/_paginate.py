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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterable
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
    """Which runs were yielded, in memory bounded by ``window`` ids (see module docstring)."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._order: deque[tuple[str, datetime]] = deque()
        self._recent: set[str] = set()
        self._undated: set[str] = set()  # no createdAt: never forgotten
        self._horizon: datetime | None = None
        self._horizon_ids: set[str] = set()
        self.exact = False

    def __len__(self) -> int:
        return len(self._recent) + len(self._undated) + len(self._horizon_ids)

    def check_order(self, runs: tuple[WorkflowRun, ...]) -> None:
        """Switch to exact mode if a page is not sorted newest first."""
        if self.exact:
            return
        previous: datetime | None = None
        for run in runs:
            created = run.created_at
            if created is None:
                continue
            if previous is not None and created > previous:
                self.exact = True
                return
            previous = created

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

    def take(self, runs: tuple[WorkflowRun, ...]) -> list[WorkflowRun]:
        """The runs of a page not yielded before (each classified, then all added):
        :meth:`classify` and :meth:`add` run by run, in bulk when no run can be a
        repeat (the usual page), which is the same outcome for a fraction of the cost."""
        ids = [run.id for run in runs]
        horizon = self._horizon
        if (
            self._recent.isdisjoint(ids)
            and (not self._undated or self._undated.isdisjoint(ids))
            and (
                horizon is None
                or all(run.created_at is None or run.created_at < horizon for run in runs)
            )
        ):
            fresh = list(runs)
        else:
            fresh = [run for run in runs if self.classify(run) == NEW]
        self.add_all(fresh)
        return fresh

    def add(self, run: WorkflowRun) -> None:
        self.add_all((run,))

    def add_all(self, runs: Iterable[WorkflowRun]) -> None:
        """Remember ``runs`` as yielded; forget the oldest past the window."""
        order, recent = self._order, self._recent
        for run in runs:
            created = run.created_at
            if created is None:
                self._undated.add(run.id)
            else:
                recent.add(run.id)
                order.append((run.id, created))
        if self.exact:
            return
        horizon = self._horizon
        for _ in range(len(order) - self._window):
            old_id, old_created = order.popleft()
            recent.discard(old_id)
            if horizon is None or old_created < horizon:
                horizon = old_created
                self._horizon_ids = {old_id}
            elif old_created == horizon:
                self._horizon_ids.add(old_id)
        self._horizon = horizon


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


async def _pages(
    fetch: FetchPage,
    *,
    label: str,
    page_size: int,
    start_page: int,
    max_items: int | None,
    prefetch: int,
) -> AsyncGenerator[RunPage, None]:
    if max_items == 0:
        return
    seen = _SeenRuns(window=max(prefetch + 2, 4) * page_size)
    # Tasks, not a task group: a task group cannot stay open across the yields of an
    # async generator. These tasks belong to this generator alone; its finally cancels
    # and awaits every one, whichever way the iteration ends.
    tasks: dict[int, asyncio.Task[RunPage]] = {}
    clock = itertools.count()
    launched: dict[int, int] = {}
    answered: dict[int, int] = {}

    def launch(page_no: int) -> None:
        if page_no in tasks:
            return
        task = asyncio.create_task(fetch(page_no, page_size), name=f"copyai_async.page[{page_no}]")
        launched[page_no] = next(clock)
        task.add_done_callback(lambda _t: answered.__setitem__(page_no, next(clock)))
        tasks[page_no] = task

    def drop_from(page_no: int) -> None:
        for number in [n for n in tasks if n >= page_no]:
            tasks.pop(number).cancel()

    yielded = 0
    stale = 0
    page_no = start_page
    believe_total = True  # until a full page arrives past where ``total`` says runs end
    previous: RunPage | None = None
    previous_ids: tuple[str, ...] = ()
    # The first page alone would cost a round trip before any other is asked for: the
    # next ones go with it, within ``prefetch`` requests in flight (and ``max_items``).
    # For a listing of one page, that is prefetch - 1 requests answered with empty pages,
    # at no cost in time; they are cancelled once the first page shows it is the last.
    speculative = prefetch - 1
    if max_items is not None:
        speculative = min(speculative, _ceil_div(max_items, page_size) - 1)
    for number in range(start_page, start_page + max(speculative, 0) + 1):
        launch(number)
    try:
        while True:
            launch(page_no)  # already in flight when prefetched
            task = tasks[page_no]
            # Wait *on* the task rather than awaiting it: a cancellation of the caller
            # then stays the caller's own (anyio recognises its CancelledError), and the
            # finally below cancels the request.
            await asyncio.wait((task,))
            del tasks[page_no]
            page = task.result()
            if (
                previous is not None
                and page.total is not None
                and previous.total is not None
                and page.total != previous.total
                and launched[page_no] < answered[page_no - 1]
            ):
                # The listing changed while this page was in flight ahead of the previous
                # one, so runs may have moved past it unseen: read it again, after.
                drop_from(page_no)
                continue
            seen.check_order(page.runs)
            fresh = seen.take(page.runs)
            duplicates = len(page.runs) - len(fresh)
            full = len(page.runs) >= page_size
            ids = tuple(run.id for run in page.runs)
            if full and ids == previous_ids:
                # The very page before, again. Inserts can push known runs back into
                # view for a few pages, but never the same ids page after page.
                stale += 1
                if stale >= MAX_STALE_PAGES:
                    first = page_no - stale + 1
                    raise PaginationError(
                        f"{label}: pages {first} to {page_no} repeated page {first - 1} "
                        "run for run; the server seems to ignore 'page', so the iteration "
                        "stops instead of looping forever",
                        pages=tuple(range(first, page_no + 1)),
                    )
            else:
                stale = 0
            previous_ids = ids
            if max_items is not None and yielded + len(fresh) >= max_items:
                fresh = fresh[: max_items - yielded]
                full = False  # nothing more is wanted
            yielded += len(fresh)
            if full:
                ahead = prefetch
                if believe_total and page.total is not None:
                    last = _ceil_div(page.total, page_size)  # exact for any int
                    if page.total % page_size == 0:
                        last += 1  # the last page is full: the empty one after it ends it
                    if page_no >= last:
                        believe_total = False  # proven wrong: plan without it
                    else:
                        # Up to where ``total`` says runs end; past it, one page at a time.
                        ahead = min(ahead, last - page_no)
                if max_items is not None:
                    ahead = min(ahead, _ceil_div(max_items - yielded, page_size))
                for number in range(page_no + 1, page_no + ahead + 1):
                    launch(number)
            else:
                drop_from(page_no + 1)
            previous = page
            launched.pop(page_no - 1, None)  # keep the bookkeeping as flat as the memory
            answered.pop(page_no - 1, None)
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
        pending = list(tasks.values())
        tasks.clear()
        await cancel_and_wait(pending)
