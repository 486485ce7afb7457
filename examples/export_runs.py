"""Stream every run of a workflow into a CSV or JSON Lines file, with progress.

Against the fake server (no edits; ``--runs`` seeds the workflow with runs to export)::

    copyai-async fake-server --runs 1000
    export COPYAI_API_KEY=test-key COPYAI_BASE_URL=http://127.0.0.1:<port>/api
    python examples/export_runs.py WCFG-fake-workflow runs.csv     # or runs.jsonl

Runs are written newest first, as they arrive; pages are fetched ahead of the writing.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from pathlib import Path
from typing import Any

from copyai_async import CopyAIClient, CopyAIError, WorkflowRun

COLUMNS = ["id", "status", "created_at", "credits", "input", "output", "metadata"]


def row(run: WorkflowRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.raw_status or run.status.value,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "credits": run.credits,
        "input": run.input,
        "output": run.output,
        "metadata": run.metadata,
    }


async def export(workflow_id: str, path: Path) -> int:
    as_csv = path.suffix.lower() == ".csv"
    written = 0
    # On a terminal, one progress line rewritten in place; to a pipe or a log file, one
    # whole line per page.
    live = sys.stderr.isatty()
    try:
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, COLUMNS) if as_csv else None
            if writer:
                writer.writeheader()
            async with CopyAIClient() as client:
                async for page in client.iter_runs(workflow_id).pages():
                    for run in page.runs:
                        fields = row(run)
                        if writer:  # nested values as JSON text in their cells
                            writer.writerow(
                                {
                                    k: json.dumps(v) if isinstance(v, dict) else v
                                    for k, v in fields.items()
                                }
                            )
                        else:
                            out.write(json.dumps(fields, ensure_ascii=False) + "\n")
                    written += len(page.runs)
                    # The total is the server's hint; the pages, not the hint, decide the end.
                    of = f"/{page.total}" if page.total is not None else ""
                    progress = f"page {page.page}: {written}{of} runs"
                    if live:
                        print(f"\r{progress}", end="", file=sys.stderr, flush=True)
                    else:
                        print(progress, file=sys.stderr)
    finally:
        if live and written:
            print(file=sys.stderr)  # end the progress line, before whatever comes next
    print(f"wrote {written} runs to {path}", file=sys.stderr)
    return written


def main() -> int:
    if len(sys.argv) != 3 or Path(sys.argv[2]).suffix.lower() not in (".csv", ".jsonl"):
        sys.exit(f"usage: {sys.argv[0]} WORKFLOW_ID OUT.csv|OUT.jsonl")
    try:
        asyncio.run(export(sys.argv[1], Path(sys.argv[2])))
    except CopyAIError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
