"""Your code: summarise topics with a Copy.ai workflow (tested in ``test_summaries.py``).

The function takes the client and the poll policy as arguments, so that a test can hand
it a client bound to the fake server and a policy that polls without long sleeps.
"""

from __future__ import annotations

from collections.abc import Sequence

from copyai_async import CopyAIClient, PollPolicy, RunStatus


async def summarise(
    client: CopyAIClient,
    workflow_id: str,
    topics: Sequence[str],
    *,
    policy: PollPolicy | None = None,
) -> dict[str, str | None]:
    """Start one run per topic; return each topic's summary (``None`` if its run failed)."""
    topic_of = {}
    for topic in topics:
        run = await client.start_run(workflow_id, {"topic": topic})
        topic_of[run.id] = topic
    summaries: dict[str, str | None] = {}
    async for run in client.wait_for_runs(workflow_id, list(topic_of), policy=policy):
        output = run.output if run.status is RunStatus.COMPLETE else None
        summary = output.get("summary") if output else None
        summaries[topic_of[run.id]] = None if summary is None else str(summary)
    return summaries
