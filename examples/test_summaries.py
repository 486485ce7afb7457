"""Testing your own code with copyai_async's pytest plugin (installed with the package).

    pip install -e . pytest pytest-asyncio    # in a checkout of copyai_async
    pytest examples/test_summaries.py

``copyai_server`` is a fake Copy.ai API on 127.0.0.1 for one test, ``copyai_client`` a
client bound to it. Runs move through their statuses on the fake's schedule; faults are
injected where the test says. No network but loopback, no real key.
"""

from __future__ import annotations

import pytest
from summaries import summarise

from copyai_async import CopyAIClient, NotFoundError, PollPolicy
from copyai_async.testing import FakeCopyAI, Fault, Schedule

FAST = PollPolicy(initial=0.01, max_interval=0.05)  # real sleeps, but short ones


def finishes(status: str, summary: str) -> Schedule:
    # Two polls PROCESSING, then the final status with this output.
    return Schedule.polls(("PROCESSING", 2), final=status, output={"summary": summary})


@pytest.mark.asyncio
async def test_each_topic_gets_its_summary(
    copyai_server: FakeCopyAI, copyai_client: CopyAIClient
) -> None:
    copyai_server.schedule_for = lambda _wf, variables: finishes(
        "COMPLETE", f"all about {variables['topic']}"
    )
    result = await summarise(
        copyai_client, copyai_server.workflow_id, ["otters", "seals"], policy=FAST
    )
    assert result == {"otters": "all about otters", "seals": "all about seals"}


@pytest.mark.asyncio
async def test_a_failed_run_gives_none_and_the_others_still_finish(
    copyai_server: FakeCopyAI, copyai_client: CopyAIClient
) -> None:
    copyai_server.schedule_for = lambda _wf, variables: finishes(
        "FAILED" if variables["topic"] == "kraken" else "COMPLETE", "fine"
    )
    result = await summarise(
        copyai_client, copyai_server.workflow_id, ["otters", "kraken"], policy=FAST
    )
    assert result == {"otters": "fine", "kraken": None}


@pytest.mark.asyncio
async def test_a_passing_outage_is_retried(
    copyai_server: FakeCopyAI, copyai_client: CopyAIClient
) -> None:
    copyai_server.default_schedule = finishes("COMPLETE", "done")
    # The next two reads of a run answer 503; the client retries them with backoff.
    copyai_server.inject(Fault.server_error(503), Fault.server_error(503), method="GET")
    result = await summarise(copyai_client, copyai_server.workflow_id, ["otters"], policy=FAST)
    assert result == {"otters": "done"}
    assert copyai_server.stats.faults == 2


@pytest.mark.asyncio
async def test_a_start_whose_answer_is_lost_runs_once(
    copyai_server: FakeCopyAI, copyai_client: CopyAIClient
) -> None:
    copyai_server.default_schedule = finishes("COMPLETE", "done")
    # The run is created, then the answer fails: the client finds the run by its start
    # key instead of starting a second one.
    copyai_server.inject(Fault.server_error(500, after=True), method="POST")
    result = await summarise(copyai_client, copyai_server.workflow_id, ["otters"], policy=FAST)
    assert result == {"otters": "done"}
    assert copyai_server.stats.runs_started == 1


@pytest.mark.asyncio
async def test_an_unknown_workflow_is_an_error(copyai_client: CopyAIClient) -> None:
    with pytest.raises(NotFoundError):
        await summarise(copyai_client, "WCFG-no-such-workflow", ["otters"], policy=FAST)
