"""Bulk runs: one workflow over every row of an input, each row run exactly once.

A :class:`Batch` reads its rows lazily, starts a run for each (at most ``max_running``
rows started and not yet delivered), waits on them all with one open-ended
:class:`~copyai_async._poll.Scheduler`, and yields each row's result as its run ends.
Starts and waits overlap; the client's budget bounds the requests of both.

With a journal (:mod:`copyai_async._journal`), every row's start key is on disk before
its start is sent, so a batch run again after a crash settles what it cannot know by
looking the keys up, and never starts a row twice.

The work runs in one background task (a task group: the feeder and its starts, and the
scheduler's loop); results reach the iterator through a zero-buffer stream, so the
batch advances only as fast as its results are taken.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Container,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import aclosing
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from ._check import int_in, json_object
from ._errors import (
    BadRequestError,
    BatchJournalError,
    CopyAIError,
    NotFoundError,
    StartUncertainError,
    UnprocessableEntityError,
)
from ._http import encode_segment, response_date
from ._journal import Journal, RowRecord
from ._models import START_KEY, RunStatus, WorkflowRun
from ._poll import _COALESCE, PollPolicy, Scheduler, _check_policy
from ._tasks import cancel_and_wait

if sys.version_info < (3, 11):  # pragma: no cover - the backport on Python 3.10
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

if TYPE_CHECKING:
    from ._client import CopyAIClient

__all__ = ["REFUSED", "Batch", "BatchProgress", "BatchResult"]

logger = logging.getLogger("copyai_async")

REFUSED = "REFUSED"
"""The status of a row whose start the API refused (a 400 or 422): no run was made."""

_CREDIT_LIMIT = "WORKFLOW_CREDIT_LIMIT_REACHED"
_INTENT_CHUNK = 64  # rows whose intents share one durable commit
_SWEEP_MARGIN = 60.0  # seconds: clock skew allowed between this host and the server
_SWEEP_PAGES = 1000  # pages of 100 runs, at most, to settle unsettled starts
_PAGE = 100
_COMMIT_EVERY = 0.5  # seconds between commits of the journal's hints when idle


@attrs.frozen(kw_only=True)
class BatchResult:
    """How one row of a batch ended.

    Attributes:
        row: the row's position in ``rows`` (the first row is 0).
        input: the row: the start variables its run was started with.
        run: the run, ``COMPLETE`` or ``FAILED``; ``None`` when the start was refused.
        error: why the API refused the start (its message), else ``None``.
        attempt: 0 for the row's first run; one more for each ``retry_failed`` pass.
    """

    row: int
    input: Mapping[str, Any]
    run: WorkflowRun | None
    error: str | None = None
    attempt: int = 0

    @property
    def status(self) -> str:
        """``"COMPLETE"``, ``"FAILED"`` or ``"REFUSED"``."""
        return REFUSED if self.run is None else self.run.status.value

    @property
    def ok(self) -> bool:
        """True when the row's run ended ``COMPLETE``."""
        return self.run is not None and self.run.status is RunStatus.COMPLETE


@attrs.frozen(kw_only=True)
class BatchProgress:
    """A snapshot of a batch's counters.

    Attributes:
        read: rows read from the input so far.
        skipped: rows not run again: delivered by an earlier pass (as the journal, or
            ``skip_rows``, says).
        running: rows started (or being started) whose result is not yet delivered.
        completed: rows delivered ``COMPLETE`` by this pass.
        failed: rows delivered ``FAILED`` by this pass.
        refused: rows delivered ``REFUSED`` by this pass.
        credits: credits used by the runs delivered by this pass (as the API reports).
        settling: rows an earlier pass may or may not have started, being looked up
            before anything starts (a start sent just before a crash is given
            ``policy.not_found_grace`` to appear first); 0 once settled.
    """

    read: int = 0
    skipped: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    refused: int = 0
    credits: int = 0
    settling: int = 0

    @property
    def delivered(self) -> int:
        """Rows delivered by this pass."""
        return self.completed + self.failed + self.refused


@attrs.define
class _Counters:
    read: int = 0
    skipped: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    refused: int = 0
    credits: int = 0
    settling: int = 0


@attrs.frozen
class _Row:
    """A row in flight: where it is in the input, what it is, and which attempt."""

    row: int
    input: dict[str, Any]
    attempt: int


@attrs.frozen
class _Start:
    """A row to start: its start key goes in the journal first."""

    row: _Row
    digest: str


@attrs.frozen
class _Wait:
    """A row whose run an earlier pass started: wait on it again."""

    row: _Row
    run_id: str
    started_at: float  # its start key's time, on the server's clock


@attrs.frozen
class _Refused:
    """A row whose start the API refused, not yet delivered: deliver the refusal."""

    row: _Row
    error: str


def _checked_row(index: int, row: Any) -> tuple[dict[str, Any], str]:
    """The row as start variables, and a short fingerprint of them (to tell if the input
    changed between passes)."""
    if not isinstance(row, Mapping):
        raise TypeError(
            f"row {index} must be a mapping of start variables, got {type(row).__name__}"
        )
    variables = dict(row)
    try:
        text = json.dumps(variables, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except TypeError as exc:
        raise TypeError(f"row {index} must hold only JSON-encodable values: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"row {index} must hold only JSON-encodable values: {exc}") from exc
    except RecursionError:
        raise ValueError(f"row {index} is nested too deeply to encode as JSON") from None
    return variables, hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class Batch(AsyncIterator[BatchResult]):
    """The results of :meth:`CopyAIClient.run_batch`, as its rows' runs end.

    Iterate it (``async for result in batch``); use it as an async context manager, or
    call :meth:`aclose`, to stop early: runs already started go on on the server, and a
    batch with a journal picks them up when run again. :attr:`progress` counts rows.
    """

    def __init__(
        self,
        client: CopyAIClient,
        workflow_id: str,
        rows: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]],
        *,
        journal: str | os.PathLike[str] | None,
        max_running: int,
        retry_failed: bool,
        policy: PollPolicy | None,
        metadata: Mapping[str, Any] | None,
        skip_rows: Container[int] | None = None,
    ) -> None:
        if skip_rows is not None and not isinstance(skip_rows, Container):
            raise TypeError(
                f"skip_rows must be a container of row numbers or None, got "
                f"{type(skip_rows).__name__}"
            )
        if isinstance(rows, (str, bytes, Mapping)):
            raise TypeError(
                f"rows must be an iterable of mappings (one per row), not a {type(rows).__name__}"
            )
        if not isinstance(rows, (Iterable, AsyncIterable)):
            raise TypeError(
                f"rows must be an iterable or async iterable of mappings, got {type(rows).__name__}"
            )
        if journal is not None and not isinstance(journal, (str, os.PathLike)):
            raise TypeError(f"journal must be a file path or None, got {type(journal).__name__}")
        if not isinstance(retry_failed, bool):
            raise TypeError(f"retry_failed must be a bool, got {type(retry_failed).__name__}")
        self._client = client
        self._workflow_id = workflow_id
        self._rows = rows
        self._journal_path = journal
        self._max_running = int_in("max_running", max_running, 1, 10_000)
        self._retry_failed = retry_failed
        self._skip_rows = skip_rows
        self._policy = _check_policy(policy)
        encode_segment("workflow_id", workflow_id)
        self._metadata = {} if metadata is None else json_object("metadata", metadata)
        if START_KEY in self._metadata:
            raise ValueError(f"metadata must not hold {START_KEY!r}: the batch sets each row's")
        self._counters = _Counters()
        self._iterator: AsyncIterator[BatchResult] | None = None
        self._closed = False

    @property
    def progress(self) -> BatchProgress:
        """The batch's counters now."""
        return BatchProgress(**attrs.asdict(self._counters))

    def __aiter__(self) -> Batch:
        return self

    async def __anext__(self) -> BatchResult:
        if self._iterator is None:
            if self._closed:
                raise StopAsyncIteration
            self._iterator = self._results()
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        """Stop: cancel the requests in flight and close the journal."""
        self._closed = True
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            await iterator.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> Batch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the iterator ----------------------------------------------------------------------

    async def _results(self) -> Any:
        journal = Journal(self._journal_path, workflow_id=self._workflow_id)
        try:
            send, receive = anyio.create_memory_object_stream[BatchResult](0)
            run = _Run(self, journal, send)
            worker = asyncio.get_running_loop().create_task(run.main(), name="copyai_async.batch")
            try:
                async with receive:
                    async for result in receive:
                        run.count(result)
                        yield result
                        # The caller asks for more: it is done with this row (a crash
                        # before this line hands the row out again).
                        journal.delivered(result.row)
                        run.window.release()
                await worker  # raises what ended the batch, if anything did
            finally:
                await cancel_and_wait([worker])
        finally:
            journal.close()


class _Run:
    """One pass of a batch: the background work that feeds the results stream."""

    def __init__(
        self, batch: Batch, journal: Journal, send: MemoryObjectSendStream[BatchResult]
    ) -> None:
        client = batch._client
        self.batch = batch
        self.client = client
        self.workflow_id = batch._workflow_id
        self.journal = journal
        self.send = send
        self.counters = batch._counters
        self.window = anyio.Semaphore(batch._max_running)
        self.in_flight: dict[str, _Row] = {}  # run id -> its row
        waiter = client._waiter
        self.make_target = client._target
        self.scheduler = Scheduler[WorkflowRun](
            [],
            kind=waiter.kind,
            options=waiter.options(
                batch._policy,
                None,
                concurrency=min(batch._max_running, 1000),
                coalesce=_COALESCE,
                sweep=True,
            ),
            open_ended=True,
            on_failure=self._given_up,
        )
        self.metadata = batch._metadata
        self.last_recorded = journal.last_row()  # rows past it have no record: no lookup
        self.feed_error: Exception | None = None
        self.alike = 0  # more starts that failed after the first
        self._grace = batch._policy.not_found_grace

    def _given_up(self, run_id: str, _error: CopyAIError) -> None:
        """A run could not be waited for (raised with the others at the end): its row
        gives its place to the next row, and a later pass waits on it again."""
        if self.in_flight.pop(run_id, None) is not None:
            self.counters.running -= 1
            self.window.release()

    def count(self, result: BatchResult) -> None:
        """A result is handed out: count it."""
        counters = self.counters
        counters.running -= 1
        if result.run is None:
            counters.refused += 1
        elif result.ok:
            counters.completed += 1
        else:
            counters.failed += 1
        if result.run is not None and result.run.credits is not None:
            counters.credits += result.run.credits

    async def main(self) -> None:
        async with self.send:
            await self._read_server_clock()
            unsettled = self.journal.unsettled()
            self.counters.settling = len(unsettled)
            settled = await self._settle(unsettled)
            self.counters.settling = 0
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._feed, settled)
                    group.start_soon(self._commit_hints)
                    await self._drive()
                    group.cancel_scope.cancel()  # (the feeder is done: only hints are left)
            except BaseExceptionGroup as wrapped:
                if len(wrapped.exceptions) != 1:
                    raise
                error = wrapped.exceptions[0]  # (the task group's own wrapping)
                if self.feed_error is not None and isinstance(error, ExceptionGroup):
                    both = [self.feed_error, *error.exceptions]
                    raise ExceptionGroup(error.message, both) from None
                raise error from None
        if self.feed_error is not None:
            raise self.feed_error

    async def _read_server_clock(self) -> None:
        """Learn how far the server's clock is from this host's (one small page, which
        also shows at once that the workflow exists): the journal records its start keys'
        times on the server's clock, which a later pass compares with runs' ``createdAt``."""
        _, headers = await self.client._page(self.workflow_id, 1, 1)
        date = response_date(headers)
        if date is not None:
            self.journal.skew = date.timestamp() - time.time()

    async def _commit_hints(self) -> None:
        """Commit the journal's hints every so often, also while nothing else happens."""
        while True:
            await anyio.sleep(_COMMIT_EVERY)
            self.journal.flush()

    async def _drive(self) -> None:
        """Hand each run seen ended to the caller, as its row's result; raise the runs
        that could not be waited for together, once every other row is delivered."""
        try:
            await self._deliver_runs()
        except ExceptionGroup as group:
            raise ExceptionGroup(
                f"{len(group.exceptions)} rows of the batch could not be waited for; run it "
                "again with the same journal to wait on them again (with retry_failed, "
                "a row whose run the API no longer has is started again)",
                list(group.exceptions),
            ) from None

    async def _deliver_runs(self) -> None:
        async with aclosing(self.scheduler.runs()) as runs:
            async for run in runs:
                row = self.in_flight.pop(run.id)
                self.journal.ended(row.row, run.status.value)
                await self.send.send(
                    BatchResult(row=row.row, input=row.input, run=run, attempt=row.attempt)
                )

    # -- the feeder ----------------------------------------------------------------------

    async def _feed(self, settled: dict[int, str]) -> None:
        """Read the rows; start, wait on, or skip each as the journal says. A start that
        fails for good (the credit limit...) stops the reading; the starts in flight end
        as they will, and the runs started are delivered before the error is raised."""
        rows = self.batch._rows
        one_by_one = isinstance(rows, AsyncIterable)  # (reading on may wait: send now)
        try:
            async with anyio.create_task_group() as starts, aclosing(_enumerate(rows)) as read:
                chunk: list[_Start] = []
                async for index, row in read:
                    self.counters.read += 1
                    plan = self._plan(index, row, settled)
                    if isinstance(plan, _Wait) and self.batch._retry_failed:
                        plan = await self._failed_again(plan)
                    if plan is None:
                        continue
                    if self.window.value == 0 and chunk:
                        self._send_chunk(chunk, starts)  # its rows hold places already
                        chunk = []
                    await self.window.acquire()
                    if self.feed_error is not None:  # a start failed for good meanwhile
                        self.window.release()
                        break
                    self.counters.running += 1
                    if isinstance(plan, _Start):
                        chunk.append(plan)
                        if len(chunk) >= _INTENT_CHUNK or one_by_one:
                            self._send_chunk(chunk, starts)
                            chunk = []
                    elif isinstance(plan, _Wait):
                        self._wait(plan.run_id, plan.row)
                    else:
                        await self._refused(plan.row, plan.error)
                if chunk and self.feed_error is None:
                    self._send_chunk(chunk, starts)
        except Exception as exc:
            self._stop(_one_error(exc))
        finally:
            self.scheduler.end_input()

    def _stop(self, error: Exception) -> None:
        """Start no more rows; ``error`` is raised once the runs started are delivered
        (the first error, when starts in flight fail alike)."""
        if self.feed_error is None:
            self.feed_error = error
            self.alike = 0
        else:
            self.alike += 1

    def _plan(
        self, index: int, row: Any, settled: dict[int, str]
    ) -> _Start | _Wait | _Refused | None:
        """What to do with a row: start it, wait on its run, or nothing (``None``: an
        earlier pass delivered it)."""
        variables, dig = _checked_row(index, row)
        skip = self.batch._skip_rows
        record = self.journal.get(index) if index <= self.last_recorded else None
        if record is not None and record.digest != dig:
            raise BatchJournalError(
                f"row {index} differs from the row the journal {self.journal.path} recorded "
                "for it: the input changed since the batch began; give another journal "
                "path to run another input"
            )
        if skip is not None and index in skip:
            self.counters.skipped += 1
            return None
        if record is None:
            return _Start(_Row(index, variables, 0), dig)
        ended = record.status is not None
        if self.batch._retry_failed and ended and record.status != RunStatus.COMPLETE.value:
            return _Start(_Row(index, variables, record.attempt + 1), dig)
        if skip is None and record.delivered and ended:
            self.counters.skipped += 1
            return None
        if record.status == REFUSED:  # no run was made: deliver the refusal again
            return _Refused(_Row(index, variables, record.attempt), record.error or "")
        run_id = settled.get(index, record.run_id)
        if run_id is not None:
            return _Wait(_Row(index, variables, record.attempt), run_id, record.key_at)
        return _Start(_Row(index, variables, record.attempt), dig)  # proved never started

    async def _failed_again(self, plan: _Wait) -> _Wait | _Start:
        """With ``retry_failed``, a run of an earlier pass that the journal does not
        know ended (a crash lost its record, or it could not be waited for) is read
        first: if it failed, or the API no longer has it, the row is started again."""
        try:
            run = await self.client.get_run(self.workflow_id, plan.run_id)
        except NotFoundError:
            if self.journal.now() - plan.started_at < self._grace:
                return plan  # a run this new may not be readable yet
        except CopyAIError:
            return plan  # the wait reads it again, and raises what it must
        else:
            if run.status is not RunStatus.FAILED:
                return plan
        row = plan.row
        self.journal.ended(row.row, RunStatus.FAILED.value)
        _, dig = _checked_row(row.row, row.input)
        return _Start(_Row(row.row, row.input, row.attempt + 1), dig)

    def _send_chunk(self, chunk: list[_Start], starts: anyio.abc.TaskGroup) -> None:
        """Record the chunk's start keys durably, then start its rows."""
        self.journal.intend((p.row.row, p.digest, p.row.attempt) for p in chunk)
        for plan in chunk:
            starts.start_soon(self._start, plan.row)

    async def _start(self, row: _Row) -> None:
        key = self.journal.start_key(row.row, row.attempt)
        metadata = {**self.metadata, START_KEY: key}
        body = {"startVariables": row.input, "metadata": metadata}
        try:
            run = await self.client._send_start(self.workflow_id, body, key)
        except (BadRequestError, UnprocessableEntityError) as exc:
            if exc.error_code == _CREDIT_LIMIT:
                self._give_up_start(exc)
                return
            self.journal.ended(row.row, REFUSED, str(exc))
            await self._refused(row, str(exc))
            return
        except CopyAIError as exc:  # (the row's start key stays: a later pass settles it)
            self._give_up_start(exc)
            return
        self.journal.started(row.row, run.id)
        self._wait(run.id, row)

    def _give_up_start(self, error: CopyAIError) -> None:
        """A start failed for good: its row gives up its place, and no more rows start."""
        self._stop(error)
        self.counters.running -= 1
        self.window.release()

    async def _refused(self, row: _Row, error: str) -> None:
        await self.send.send(
            BatchResult(row=row.row, input=row.input, run=None, error=error, attempt=row.attempt)
        )

    def _wait(self, run_id: str, row: _Row) -> None:
        self.in_flight[run_id] = row
        self.scheduler.add([self.make_target(self.workflow_id, run_id)(self.batch._policy)])

    # -- settling after a crash ----------------------------------------------------------

    async def _settle(self, unsettled: list[RowRecord]) -> dict[int, str]:
        """Look up the rows whose start may or may not have reached the API, all in one
        pass over the newest runs; returns the run id of each found. The others are
        proved never started (the pages read reach back past their intents)."""
        if not unsettled:
            return {}
        journal = self.journal
        wanted = {journal.start_key(r.row, r.attempt): r.row for r in unsettled}
        # A start sent just before the crash may still be on its way, or being acted on:
        # give it the time a new run is given to appear before concluding it is not.
        youngest = max(r.key_at for r in unsettled)
        wait = youngest + self._grace - journal.now()
        if wait > 0:
            logger.info("waiting %.1f s for the starts of the last pass to settle", wait)
            await self.client.clock.sleep(wait)
        since = min(r.key_at for r in unsettled) - _SWEEP_MARGIN
        horizon = datetime.fromtimestamp(since, timezone.utc)
        found: dict[int, str] = {}
        for page_no in range(1, _SWEEP_PAGES + 1):
            page, _ = await self.client._page(self.workflow_id, page_no, _PAGE)
            for run in page.runs:
                row = wanted.pop(run.start_key or "", None)
                if row is not None:
                    found[row] = run.id
                    journal.started(row, run.id)
            if not wanted or len(page.runs) < _PAGE:
                break
            if any(r.created_at is not None and r.created_at < horizon for r in page.runs):
                break
        else:
            raise StartUncertainError(
                f"{len(wanted)} rows of the batch may or may not have started: their start "
                f"keys are not among the {_SWEEP_PAGES * _PAGE} newest runs of workflow "
                f"{self.workflow_id}, and those do not reach back to when they were sent",
                method="GET",
                path=f"/workflow/{self.workflow_id}/run",
                workflow_id=self.workflow_id,
                start_key=next(iter(wanted)),
                sent_at=datetime.fromtimestamp(since + _SWEEP_MARGIN, timezone.utc),
            )
        for row in wanted.values():
            journal.not_started(row)
        journal.flush()  # (the feeder reads these rows' records next)
        return found


def _one_error(exc: Exception) -> Exception:
    """What stopped the feeder, as one error: starts in flight together often fail alike
    (every one of them meets the credit limit), and the task groups wrap them. Errors of
    one kind (one type and error code) are the first of them; others stay a group."""
    leaves = _leaves(exc)
    first = leaves[0]
    kinds = {(type(e), getattr(e, "error_code", None)) for e in leaves}
    if len(kinds) == 1 and isinstance(first, Exception):
        add_note = getattr(first, "add_note", None)  # (Python 3.11+)
        if add_note is not None and len(leaves) > 1:
            add_note(f"({len(leaves) - 1} more starts in flight failed alike)")
        return first
    return exc


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def _enumerate(
    rows: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]],
) -> AsyncGenerator[tuple[int, Any], None]:
    """The rows, numbered from 0, read one at a time (an async iterable is awaited)."""
    if isinstance(rows, AsyncIterable):
        index = 0
        async for row in rows:
            yield index, row
            index += 1
        return
    iterator: Iterator[Any] = iter(rows)
    for index, row in enumerate(iterator):
        yield index, row
        if index % 64 == 63:
            await anyio.lowlevel.checkpoint()
