"""Start many runs, wait on all of them at once, and report.

Against the fake server (no edits)::

    copyai-async fake-server
    export COPYAI_API_KEY=test-key COPYAI_BASE_URL=http://127.0.0.1:<port>/api
    python examples/wait_many.py WCFG-fake-workflow otters seals walruses puffins

One run per topic. ``wait_for_runs`` yields each run as soon as it is seen finished, so
the report grows in the order runs finish; failed runs are reported, not raised.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

from copyai_async import CopyAIClient, RunStatus

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # installed with copyai_async on 3.10


async def main(workflow_id: str, topics: list[str]) -> int:
    started_at = time.monotonic()
    async with CopyAIClient() as client:
        # Start the runs concurrently; the client caps requests in flight (max_connections).
        # return_exceptions: one failed start must not hide the runs the others started.
        starts = await asyncio.gather(
            *(client.start_run(workflow_id, {"topic": t}, metadata={"topic": t}) for t in topics),
            return_exceptions=True,
        )
        topic_of = {}
        for topic, started in zip(topics, starts, strict=True):
            if isinstance(started, BaseException):
                print(f"error: could not start {topic!r}: {started}", file=sys.stderr)
            else:
                topic_of[started.id] = topic
        print(f"started {len(topic_of)} of {len(topics)} runs", file=sys.stderr)
        if not topic_of:
            return 2

        statuses: Counter[str] = Counter()
        credits = 0
        failed = []
        errors: list[Exception] = []
        try:
            async for run in client.wait_for_runs(workflow_id, list(topic_of), timeout=900):
                statuses[run.status.value] += 1
                credits += run.credits or 0
                if run.status is RunStatus.FAILED:
                    failed.append(run.id)
                elapsed = time.monotonic() - started_at
                print(f"{elapsed:6.1f} s  {run.status.value:<8}  {run.id}  {topic_of[run.id]}")
        except ExceptionGroup as group:
            # Runs that could not be waited for (timeout, 404, network) come last, together.
            errors = list(group.exceptions)

    summary = ", ".join(f"{n} {status.lower()}" for status, n in sorted(statuses.items()))
    print(f"{summary}; {credits} credits; {time.monotonic() - started_at:.1f} s")
    for run_id in failed:
        print(f"failed: {run_id} ({topic_of[run_id]})", file=sys.stderr)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if failed or errors or len(topic_of) < len(topics) else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} WORKFLOW_ID TOPIC [TOPIC ...]")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2:])))
