"""client.run_batch: every row run exactly once, resumable with a journal."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from copyai_async import (
    REFUSED,
    START_KEY,
    BadRequestError,
    BatchJournalError,
    BatchResult,
    CopyAIClient,
    RunStatus,
)
from copyai_async._journal import Journal
from copyai_async.testing import FakeCopyAI, Fault, Schedule

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

WF = "WCFG-fake-workflow"


def rows(n: int) -> list[dict[str, Any]]:
    return [{"topic": f"topic {i}", "n": str(i)} for i in range(n)]


async def collect(
    client: CopyAIClient,
    source: Any,
    *,
    into: list[BatchResult] | None = None,
    each: Callable[[BatchResult], object] = lambda _result: None,
    **kw: Any,
) -> list[BatchResult]:
    got = [] if into is None else into
    async with client.run_batch(WF, source, **kw) as batch:
        async for result in batch:
            got.append(result)
            each(result)
    return got


def runs_per_row(server: FakeCopyAI) -> Counter[str]:
    """How many runs the server made for each row (by the row's input)."""
    return Counter(str((run.input or {}).get("n")) for run in server.runs())


async def test_every_row_runs_once_and_is_yielded_once(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    results = await collect(client, rows(40), max_running=7)
    assert sorted(r.row for r in results) == list(range(40))
    assert all(r.status == "COMPLETE" and r.ok for r in results)
    for result in results:
        assert result.input == {"topic": f"topic {result.row}", "n": str(result.row)}
        assert result.run is not None
        assert result.run.input == result.input
        assert result.run.status is RunStatus.COMPLETE
    assert runs_per_row(server) == Counter({str(i): 1 for i in range(40)})


async def test_progress_counts_rows_and_credits(client: CopyAIClient) -> None:
    batch = client.run_batch(WF, rows(12), max_running=4)
    seen = 0
    async with batch:
        async for _ in batch:
            seen += 1
            progress = batch.progress
            assert progress.delivered == progress.completed == seen  # counted as handed out
            assert progress.running <= 4
    final = batch.progress
    assert (final.read, final.completed, final.failed, final.running) == (12, 12, 0, 0)
    assert final.delivered == 12
    assert final.credits == 12 * 2  # the fake's runs report 2 credits each


async def test_rows_are_read_lazily(client: CopyAIClient) -> None:
    read: list[int] = []

    def source() -> Iterator[dict[str, Any]]:
        for i in range(1_000_000):
            read.append(i)
            yield {"n": str(i)}

    async with client.run_batch(WF, source(), max_running=5) as batch:
        async for _ in batch:
            break
    assert 5 <= len(read) <= 5 + 2  # the window, and the row waiting for a place


async def test_async_iterable_rows(client: CopyAIClient, server: FakeCopyAI) -> None:
    async def source() -> AsyncIterator[dict[str, Any]]:
        for row in rows(9):
            yield row

    results = await collect(client, source(), max_running=3)
    assert sorted(r.row for r in results) == list(range(9))
    assert len(server.runs()) == 9


async def test_bad_arguments_are_named(client: CopyAIClient) -> None:
    with pytest.raises(ValueError, match="max_running"):
        client.run_batch(WF, rows(1), max_running=0)
    with pytest.raises(TypeError, match="rows"):
        client.run_batch(WF, "a,b\n1,2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rows"):
        client.run_batch(WF, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="journal"):
        client.run_batch(WF, rows(1), journal=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="skip_rows"):
        client.run_batch(WF, rows(1), skip_rows=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metadata"):
        client.run_batch(WF, rows(1), metadata={START_KEY: "mine"})
    with pytest.raises(ValueError, match="workflow_id"):
        client.run_batch("", rows(1))


async def test_a_row_that_is_not_a_mapping_is_named(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    source: list[Any] = [{"n": "0"}, ["not", "a", "mapping"]]
    with pytest.raises(TypeError, match="row 1 must be a mapping"):
        await collect(client, source)
    bad: list[Any] = [{"n": "0"}, {"n": object()}]
    with pytest.raises(TypeError, match="row 1 must hold only JSON"):
        await collect(client, bad)


async def test_a_refused_start_ends_its_row_and_the_batch_goes_on(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.inject(Fault.status_code(422, error_code="REQUEST_INVALID"), method="POST", path="/run")
    results = await collect(client, rows(5), max_running=1)
    refused = [r for r in results if r.status == REFUSED]
    assert len(refused) == 1
    assert refused[0].row == 0
    assert refused[0].run is None
    assert not refused[0].ok
    assert refused[0].error is not None
    assert "422" in refused[0].error
    assert sorted(r.row for r in results) == list(range(5))
    assert len(server.runs()) == 4


async def test_the_credit_limit_stops_new_starts_after_delivering_the_started(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.credit_limit = 6  # three runs of 2 credits
    delivered: list[BatchResult] = []
    with pytest.raises(BadRequestError) as caught:
        await collect(client, rows(10), max_running=2, into=delivered)
    assert caught.value.error_code == "WORKFLOW_CREDIT_LIMIT_REACHED"
    started = len(server.runs())
    assert started >= 1
    assert len(delivered) == started  # every run started was delivered before the raise
    assert all(r.ok for r in delivered)


# -- the journal -------------------------------------------------------------------------


async def test_a_rerun_with_the_journal_starts_nothing_again(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.journal"
    first = await collect(client, rows(20), journal=journal)
    assert len(first) == 20
    batch = client.run_batch(WF, rows(20), journal=journal)
    again = [r async for r in batch]
    assert again == []
    assert batch.progress.skipped == 20
    assert len(server.runs()) == 20


async def test_stopping_early_and_rerunning_runs_each_row_once(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    journal = tmp_path / "batch.journal"
    seen: list[int] = []
    async with client.run_batch(WF, rows(30), journal=journal, max_running=6) as batch:
        async for result in batch:
            seen.append(result.row)
            if len(seen) == 8:
                break
    rest = [r.row for r in await collect(client, rows(30), journal=journal, max_running=6)]
    # The result in hand when the batch was closed is handed out again (at least once:
    # the caller may not have finished with it); every other row exactly once.
    assert sorted(set(seen) | set(rest)) == list(range(30))
    assert set(seen) & set(rest) == {seen[-1]}
    assert runs_per_row(server) == Counter({str(i): 1 for i in range(30)})


async def test_unsettled_starts_are_looked_up_not_started_again(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    """A crash between recording a start key and learning the run id: the run is found
    by its key; a start that never reached the API is started."""
    path = tmp_path / "batch.journal"
    source = rows(6)
    journal = Journal(path, workflow_id=WF)
    from copyai_async._batch import _checked_row

    journal.intend((i, _checked_row(i, row)[1], 0) for i, row in enumerate(source))
    for i in (0, 2, 4):  # these starts reached the API before the crash
        await client.start_run(WF, source[i], start_key=journal.start_key(i, 0))
    journal.close()
    server.reset_stats()

    results = await collect(client, source, journal=path)
    assert sorted(r.row for r in results) == list(range(6))
    assert runs_per_row(server) == Counter({str(i): 1 for i in range(6)})
    assert server.stats.by_path[f"POST /api/workflow/{WF}/run"] == 3
    keys = {run.metadata[START_KEY] for run in server.runs() if run.metadata}
    assert len(keys) == 6


async def test_runs_started_before_a_crash_are_waited_on_again(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    path = tmp_path / "batch.journal"
    source = rows(4)
    journal = Journal(path, workflow_id=WF)
    from copyai_async._batch import _checked_row

    journal.intend((i, _checked_row(i, row)[1], 0) for i, row in enumerate(source))
    for i, row in enumerate(source):
        run = await client.start_run(WF, row, start_key=journal.start_key(i, 0))
        journal.started(i, run.id)
    journal.close()
    results = await collect(client, source, journal=path)
    assert sorted(r.row for r in results) == [0, 1, 2, 3]
    assert len(server.runs()) == 4  # none started again


async def test_a_journal_of_another_workflow_or_input_is_refused(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    path = tmp_path / "batch.journal"
    await collect(client, rows(3), journal=path)
    server.add_workflow("WCFG-other")
    with pytest.raises(BatchJournalError, match="WCFG-other"):
        async for _ in client.run_batch("WCFG-other", rows(3), journal=path):
            pass
    changed = rows(3)
    changed[1] = {"topic": "something else", "n": "1"}
    with pytest.raises(BatchJournalError, match="row 1 differs"):
        await collect(client, changed, journal=path)
    not_a_journal = tmp_path / "text.txt"
    not_a_journal.write_text("hello, this is not SQLite\n" * 100)
    with pytest.raises(BatchJournalError, match="not a batch journal"):
        await collect(client, rows(3), journal=not_a_journal)
    assert isinstance(BatchJournalError("x"), ValueError)


async def test_a_longer_input_runs_only_its_new_rows(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    path = tmp_path / "batch.journal"
    await collect(client, rows(5), journal=path)
    more = await collect(client, rows(8), journal=path)
    assert sorted(r.row for r in more) == [5, 6, 7]
    assert len(server.runs()) == 8


async def test_retry_failed_runs_only_the_failed_rows_with_new_keys(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    failing = {"1", "3"}
    server.schedule_for = lambda _wf, variables: (
        Schedule.polls(("PROCESSING", 1), final="FAILED")
        if variables.get("n") in failing
        else Schedule.polls(("PROCESSING", 1))
    )
    path = tmp_path / "batch.journal"
    first = await collect(client, rows(5), journal=path)
    assert sorted(r.row for r in first if r.status == "FAILED") == [1, 3]
    # A plain rerun delivers nothing more: the failures were delivered.
    assert await collect(client, rows(5), journal=path) == []
    failing.clear()
    retried = await collect(client, rows(5), journal=path, retry_failed=True)
    assert sorted(r.row for r in retried) == [1, 3]
    assert all(r.ok and r.attempt == 1 for r in retried)
    assert runs_per_row(server) == Counter({"0": 1, "1": 2, "2": 1, "3": 2, "4": 1})
    keys = [run.metadata[START_KEY] for run in server.runs() if run.metadata]
    assert len(set(keys)) == 7


async def test_skip_rows_is_the_truth_of_what_was_delivered(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    path = tmp_path / "batch.journal"
    await collect(client, rows(6), journal=path)
    # The caller's store lost rows 2 and 5 (say, a file not yet synced at a crash).
    again = await collect(client, rows(6), journal=path, skip_rows={0, 1, 3, 4})
    assert sorted(r.row for r in again) == [2, 5]
    assert all(r.ok for r in again)
    assert len(server.runs()) == 6  # delivered again from their runs, not run again


async def test_the_journal_records_each_row(client: CopyAIClient, tmp_path: Path) -> None:
    path = tmp_path / "batch.journal"
    await collect(client, rows(3), journal=path)
    with closing(sqlite3.connect(path)) as db:
        found = db.execute("SELECT row, attempt, run_id, status, delivered FROM rows").fetchall()
    assert [(row, attempt, status, delivered) for row, attempt, _, status, delivered in found] == [
        (0, 0, "COMPLETE", 1),
        (1, 0, "COMPLETE", 1),
        (2, 0, "COMPLETE", 1),
    ]
    assert all(run_id.startswith("WRUN-") for _, _, run_id, _, _ in found)


async def test_lost_start_answers_do_not_double_a_row(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.inject(
        Fault.server_error(502, after=True),
        Fault.disconnect(after=True),
        Fault.server_error(503),
        method="POST",
        path="/run",
    )
    results = await collect(client, rows(10), max_running=3)
    assert sorted(r.row for r in results) == list(range(10))
    assert runs_per_row(server) == Counter({str(i): 1 for i in range(10)})


async def test_rows_whose_runs_cannot_be_read_are_raised_together_at_the_end(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    path = tmp_path / "batch.journal"
    source = rows(4)
    delivered: list[int] = []
    lost: list[str] = []

    server.schedule_for = lambda _wf, variables: (
        Schedule.polls(("PROCESSING", 50))
        if variables.get("n") == "2"
        else Schedule.polls(("PROCESSING", 1))
    )

    def lose_row_2(result: BatchResult) -> None:
        delivered.append(result.row)
        if not lost:  # row 2's run disappears from the API
            other = next(r for r in server.runs() if (r.input or {}).get("n") == "2")
            lost.append(other.id)
            server.delete_run(other.id)

    with pytest.raises(ExceptionGroup) as caught:
        await collect(client, source, journal=path, each=lose_row_2)
    errors = caught.value.exceptions
    assert [type(e).__name__ for e in errors] == ["NotFoundError"]
    assert lost[0] in str(errors[0])
    assert len(delivered) == 3


async def test_cancelled_with_starts_in_flight_then_resumed(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    """Cancelled while starts are in flight (their answers never read): a rerun with the
    journal settles them by their keys and runs every row exactly once."""
    path = tmp_path / "batch.journal"
    release = server.hold(lambda request: request.method == "POST")

    async def consume() -> None:
        async for _ in client.run_batch(WF, rows(12), journal=path, max_running=12):
            pass

    task = asyncio.get_running_loop().create_task(consume())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if server.stats.in_flight >= 12:
            break
    assert server.stats.in_flight >= 12  # twelve starts held by the server
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()  # the server now acts on the starts it held: some runs exist
    for _ in range(100):
        await asyncio.sleep(0.01)
        if server.stats.in_flight == 0:
            break
    made = len(server.runs())
    results = await collect(client, rows(12), journal=path)
    assert sorted(r.row for r in results) == list(range(12))
    assert runs_per_row(server) == Counter({str(i): 1 for i in range(12)})
    assert server.stats.by_path[f"POST /api/workflow/{WF}/run"] == 12 + (12 - made)


async def test_retry_failed_retries_a_failure_whose_record_a_crash_lost(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    server.schedule_for = lambda _wf, variables: (
        Schedule.immediate(final="FAILED") if variables.get("n") == "0" else Schedule.immediate()
    )
    path = tmp_path / "batch.journal"
    first = await collect(client, rows(2), journal=path)
    assert sorted((r.row, r.status) for r in first) == [(0, "FAILED"), (1, "COMPLETE")]
    with closing(sqlite3.connect(path)) as db:  # the crash lost row 0's end and delivery
        db.execute("UPDATE rows SET status = NULL, delivered = 0 WHERE row = 0")
        db.commit()
    server.schedule_for = None
    retried = await collect(client, rows(2), journal=path, retry_failed=True)
    assert [(r.row, r.status, r.attempt) for r in retried] == [(0, "COMPLETE", 1)]
    assert runs_per_row(server) == Counter({"0": 2, "1": 1})


async def test_rows_that_cannot_be_waited_for_give_their_places_to_the_next(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    """With every place held by a run that cannot be read, the batch must go on."""
    server.schedule_for = lambda _wf, variables: (
        Schedule.polls(("PROCESSING", 50))
        if int(variables["n"]) < 2
        else Schedule.polls(("PROCESSING", 1))
    )
    delivered: list[int] = []

    def lose_the_slow(result: BatchResult) -> None:
        delivered.append(result.row)

    async def _vanish_slow() -> None:
        for _ in range(1000):  # rows 0 and 1 are being started
            if len(server.runs()) >= 2:
                break
            await asyncio.sleep(0.005)
        for run in list(server.runs()):
            if int((run.input or {})["n"]) < 2:
                server.delete_run(run.id)

    source = rows(6)

    async def feed() -> AsyncIterator[dict[str, Any]]:
        for row in source:
            if row["n"] == "2":  # rows 0 and 1 hold both places: their runs vanish
                await _vanish_slow()
            yield row

    with pytest.raises(ExceptionGroup) as caught:
        await collect(client, feed(), max_running=2, each=lose_the_slow)
    assert sorted(delivered) == [2, 3, 4, 5]
    assert [type(e).__name__ for e in caught.value.exceptions] == ["NotFoundError"] * 2
    assert "could not be waited for" in str(caught.value)


async def test_many_starts_meeting_the_credit_limit_raise_one_error(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.credit_limit = 10
    with pytest.raises(BadRequestError) as caught:
        await collect(client, rows(40), max_running=20)
    assert caught.value.error_code == "WORKFLOW_CREDIT_LIMIT_REACHED"


async def test_retry_failed_starts_again_a_row_whose_run_is_gone(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    path = tmp_path / "batch.journal"
    journal = Journal(path, workflow_id=WF)
    from copyai_async._batch import _checked_row

    source = rows(2)
    journal.intend((i, _checked_row(i, row)[1], 0) for i, row in enumerate(source))
    run = await client.start_run(WF, source[0], start_key=journal.start_key(0, 0))
    journal.started(0, run.id)
    journal.close()
    server.delete_run(run.id)  # the API no longer has row 0's run
    # Just started, a 404 may only mean "not readable yet": the row is not restarted.
    with pytest.raises(ExceptionGroup) as caught:
        await collect(client, source, journal=path, retry_failed=True)
    assert [type(e).__name__ for e in caught.value.exceptions] == ["NotFoundError"]
    assert len(server.runs()) == 1  # row 1 ran; row 0 was not started again
    with closing(sqlite3.connect(path)) as db:  # an hour later, the run is gone for good
        db.execute("UPDATE rows SET key_at = key_at - 3600 WHERE row = 0")
        db.commit()
    results = await collect(client, source, journal=path, retry_failed=True)
    assert [(r.row, r.status, r.attempt) for r in results] == [(0, "COMPLETE", 1)]
    assert runs_per_row(server) == Counter({"0": 1, "1": 1})


async def test_two_passes_cannot_use_one_journal_at_once(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    path = tmp_path / "batch.journal"
    async with client.run_batch(WF, rows(30), journal=path, max_running=2) as first:
        async for _ in first:
            with pytest.raises(BatchJournalError, match="in use by another pass"):
                await collect(client, rows(30), journal=path)
            break
    rest = await collect(client, rows(30), journal=path)
    assert len(rest) == 30  # (the result in hand at the close comes again)
    assert runs_per_row(server) == Counter({str(i): 1 for i in range(30)})


async def test_a_changed_row_is_refused_even_when_skipped(
    client: CopyAIClient, server: FakeCopyAI, tmp_path: Path
) -> None:
    """Rows shifted by an insert: the caller's store holds row 1, but row 1 is now
    another row, which must not be taken as done."""
    path = tmp_path / "batch.journal"
    await collect(client, rows(3), journal=path)
    shifted = [rows(3)[0], {"topic": "inserted", "n": "9"}, *rows(3)[1:]]
    with pytest.raises(BatchJournalError, match="row 1 differs"):
        await collect(client, shifted, journal=path, skip_rows={0, 1, 2})
    assert len(server.runs()) == 3


async def test_a_failed_start_lets_the_starts_in_flight_finish(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    """The credit limit met by one start must not cancel the starts already sent:
    their runs are delivered, then the error is raised."""
    server.inject(  # the first start meets the limit at once...
        Fault.status_code(400, error_code="WORKFLOW_CREDIT_LIMIT_REACHED"),
        method="POST",
        path="/run",
    )
    arrived: list[object] = []

    def after_the_first(request: Any) -> bool:  # ...while the others are held
        if request.method != "POST":
            return False
        arrived.append(request)
        return len(arrived) > 1

    release = server.hold(after_the_first)

    async def release_soon() -> None:
        await asyncio.sleep(0.3)
        release.set()

    delivered: list[BatchResult] = []
    async with anyio.create_task_group() as group:
        group.start_soon(release_soon)
        with pytest.raises(BadRequestError):
            await collect(client, rows(4), max_running=4, into=delivered)
    assert len(server.runs()) == 3
    assert sorted(r.row for r in delivered) == sorted(
        int((run.input or {})["n"]) for run in server.runs()
    )


async def test_a_row_error_and_failed_waits_are_raised_together(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.schedule_for = lambda _wf, variables: (
        Schedule.polls(("PROCESSING", 50))
        if variables.get("n") == "0"
        else Schedule.polls(("PROCESSING", 1))
    )

    async def source() -> AsyncIterator[Any]:
        yield rows(1)[0]
        for _ in range(1000):
            if server.runs():
                break
            await asyncio.sleep(0.005)
        server.delete_run(server.runs()[0].id)  # row 0's run is gone: its wait fails
        yield "not a row"

    with pytest.raises(ExceptionGroup) as caught:
        await collect(client, source())
    kinds = sorted(type(e).__name__ for e in caught.value.exceptions)
    assert kinds == ["NotFoundError", "TypeError"]
