"""Run a workflow once for each row of a CSV file, each row's result a line of a JSON Lines
file: every row exactly once, even when the program is killed and run again.

Anywhere, with no account: without ``COPYAI_API_KEY`` set, it serves a fake Copy.ai in
this process (``FakeCopyAI``) and runs the rows there::

    python examples/bulk_runs.py WCFG-fake-workflow topics.csv results.jsonl

The CSV's header names the start variables (e.g. ``topic``); each line after it is a run.
Against the fake server in a process of its own, which outlives this one, so that a
program killed half-way resumes (or against Copy.ai: export only ``COPYAI_API_KEY``)::

    copyai-async fake-server
    export COPYAI_API_KEY=test-key COPYAI_BASE_URL=http://127.0.0.1:<port>/api
    python examples/bulk_runs.py WCFG-fake-workflow topics.csv results.jsonl

Run it again to resume: the rows RESULTS holds are not run again, and the journal beside
it (``results.jsonl.journal``) makes sure that no row is started twice. With
``--retry-failed``, the FAILED and REFUSED lines are removed from RESULTS and their rows
run again. Exit status: 0 every row COMPLETE, 1 some FAILED or REFUSED, 2 an error (run
again to go on), 130 Ctrl-C (the same).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

from copyai_async import BatchResult, CopyAIClient, CopyAIError
from copyai_async.testing import FakeCopyAI

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # installed with copyai_async on 3.10


def read_rows(file: IO[str]) -> Iterator[dict[str, str]]:
    """The CSV's rows, one at a time (the batch reads the next as a place frees up)."""
    reader = csv.DictReader(file)
    for row in reader:
        if None in row or None in row.values():  # more fields than the header, or fewer
            raise ValueError(f"line {reader.line_num}: not as many fields as the header")
        yield row


def read_results(path: Path, *, drop_failed: bool) -> dict[int, bool]:
    """The rows RESULTS holds (each, and whether it ended COMPLETE), RESULTS rewritten
    without the rows that are to run again: a last line a crash cut short, and with
    ``drop_failed`` the FAILED and REFUSED ones."""
    done: dict[int, bool] = {}
    if not path.exists():
        return done
    kept = path.with_name(path.name + ".tmp")
    with path.open("rb") as old, kept.open("wb") as new:
        for line in old:
            if not line.endswith(b"\n"):
                break  # torn: its row runs again
            result = json.loads(line)
            complete = result["status"] == "COMPLETE"
            if drop_failed and not complete:
                continue
            new.write(line)
            done[result["row"]] = complete
        new.flush()
        os.fsync(new.fileno())
    os.replace(kept, path)
    return done


def result_line(result: BatchResult) -> dict[str, Any]:
    run = result.run
    line = {
        "row": result.row,
        "input": dict(result.input),
        "run_id": None if run is None else run.id,
        "status": result.status,  # COMPLETE, FAILED, or REFUSED: no run was made
        "output": None if run is None else run.output,
        "credits": None if run is None else run.credits,
        "attempt": result.attempt,
    }
    if run is None:
        line["error"] = result.error
    return line


@asynccontextmanager
async def open_client(workflow_id: str) -> AsyncIterator[tuple[CopyAIClient, bool]]:
    """A client of the API the environment names; without COPYAI_API_KEY, of a fake
    Copy.ai served in this process. Also: whether its runs outlive this process."""
    if os.environ.get("COPYAI_API_KEY"):
        async with CopyAIClient() as client:
            yield client, True
        return
    print("COPYAI_API_KEY is not set: running on a fake Copy.ai in this process", file=sys.stderr)
    async with (
        FakeCopyAI(workflows=[workflow_id]) as server,
        CopyAIClient(server.api_key, base_url=server.url) as client,
    ):
        yield client, False


async def run_rows(workflow_id: str, source: Path, results: Path, *, retry_failed: bool) -> int:
    done = read_results(results, drop_failed=retry_failed)
    ok = sum(done.values())
    not_ok = len(done) - ok
    shown = 0.0
    async with open_client(workflow_id) as (client, lasting):
        # A fake in this process forgets its runs when the program ends: no journal
        # could resume them (rows in RESULTS are still skipped).
        journal = results.with_name(results.name + ".journal") if lasting else None
        with (
            source.open(newline="", encoding="utf-8") as rows,
            results.open("a", encoding="utf-8") as out,
        ):
            batch = client.run_batch(
                workflow_id,
                read_rows(rows),
                journal=journal,
                skip_rows=done,  # RESULTS, not the journal, says which rows are done
                retry_failed=retry_failed,
            )
            async with batch:  # leaving early (an error, Ctrl-C) stops the batch
                async for result in batch:
                    # RESULTS says what was delivered: a row whose line a crash kept from
                    # it is handed out again on the next pass, one it holds is skipped.
                    out.write(json.dumps(result_line(result), ensure_ascii=False) + "\n")
                    out.flush()
                    if result.ok:
                        ok += 1
                    else:
                        not_ok += 1
                        why = result.error if result.run is None else f"run {result.run.id}"
                        print(f"{result.status}: row {result.row}: {why}", file=sys.stderr)
                    if time.monotonic() - shown >= 1.0:  # progress, at most once a second
                        shown = time.monotonic()
                        p = batch.progress
                        print(f"{p.delivered} rows done, {p.running} running", file=sys.stderr)
    p = batch.progress
    print(
        f"{ok + not_ok} rows in {results}: {ok} complete, {not_ok} failed or refused; "
        f"this run: {p.delivered} rows, {p.credits} credits"
    )
    return 0 if not_ok == 0 else 1


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--retry-failed"]
    if len(args) != 3 or Path(args[1]).suffix.lower() != ".csv":
        sys.exit(f"usage: {sys.argv[0]} WORKFLOW_ID INPUT.csv RESULTS.jsonl [--retry-failed]")
    workflow_id, source, results = args[0], Path(args[1]), Path(args[2])
    try:
        return asyncio.run(
            run_rows(workflow_id, source, results, retry_failed="--retry-failed" in sys.argv)
        )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except ExceptionGroup as group:  # rows whose runs could not be waited for
        for error in group.exceptions:
            print(f"error: {error}", file=sys.stderr)
    except (CopyAIError, ValueError) as error:  # the API, the network, or a bad row
        print(f"error: {error}", file=sys.stderr)
    print("run the same command again to resume", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
