"""Start one run and await its result from async code.

Against the fake server (no edits; the server prints the two variables to export)::

    copyai-async fake-server
    export COPYAI_API_KEY=test-key COPYAI_BASE_URL=http://127.0.0.1:<port>/api
    python examples/start_and_wait.py WCFG-fake-workflow "sea otters"

Against Copy.ai, export only ``COPYAI_API_KEY`` and pass your workflow's id.
"""

from __future__ import annotations

import asyncio
import json
import sys

from copyai_async import CopyAIClient, CopyAIError, RunFailedError, WorkflowRun


def show(run: WorkflowRun) -> None:
    # Called with each new status the wait sees (NEW, WAITING, PROCESSING, ...).
    print(f"  {run.id}: {run.status.value}", file=sys.stderr)


async def main(workflow_id: str, topic: str) -> int:
    async with CopyAIClient() as client:  # COPYAI_API_KEY, and COPYAI_BASE_URL if set
        try:
            run = await client.start_run(workflow_id, {"topic": topic}, metadata={"from": "ex"})
            print(f"started {run.id}", file=sys.stderr)
            # While this waits, the event loop is free: other tasks keep running.
            done = await client.wait_for_run(workflow_id, run.id, timeout=600, on_status=show)
        except RunFailedError as error:
            print(f"run {error.run_id} failed", file=sys.stderr)
            return 1
        except CopyAIError as error:  # a bad key, timeouts, HTTP and network errors, ...
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(json.dumps({"id": done.id, "credits": done.credits, "output": done.output}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} WORKFLOW_ID TOPIC")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
