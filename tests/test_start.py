"""Starting runs exactly once: start keys, settling a lost answer, and what is raised.

Over real loopback HTTP; the fake server's faults decide whether the start reached it
(``after=False``: no run) or took effect before the answer was spoiled (``after=True``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from copyai_async import (
    START_KEY,
    APIConnectionError,
    APITimeoutError,
    CopyAIClient,
    PollTimeoutError,
    RunStatus,
    ServerError,
    StartUncertainError,
)
from copyai_async.aitasker import AITaskerClient
from copyai_async.testing import FakeClock, FakeCopyAI, Fault, Quirks, Schedule

# Answers lost after the start was sent; whether the run exists differs.
LOST_BEFORE = [  # the server never acted on it
    Fault.disconnect(),
    Fault.truncate(),
    Fault.server_error(500),
    Fault.server_error(502, html=True),
    Fault.server_error(503),
    Fault.garbled("html", after=False),
]
LOST_AFTER = [  # the run was created, then the answer was lost
    Fault.disconnect(after=True),
    Fault.truncate(after=True),
    Fault.server_error(500, after=True),
    Fault.server_error(502, after=True),
    Fault.server_error(504, after=True),
    Fault.garbled("truncated"),
    Fault.garbled("html"),
    Fault.garbled("shape"),
    Fault.stall(),  # the answer never finishes: the client's timeout ends it
]


def _posts(server: FakeCopyAI) -> list[str]:
    return [f"{r.method} {r.path}" for r in server.requests]


@pytest.fixture
async def client(server: FakeCopyAI, clock: FakeClock) -> AsyncIterator[CopyAIClient]:
    async with CopyAIClient(server.api_key, base_url=server.url, clock=clock, timeout=0.5) as c:
        yield c


@pytest.mark.parametrize("fault", LOST_BEFORE, ids=repr)
async def test_a_lost_start_that_never_took_effect_is_sent_again_once(
    client: CopyAIClient, server: FakeCopyAI, fault: Fault
) -> None:
    server.inject(fault, method="POST")
    run = await client.start_run(server.workflow_id, {"topic": "otters"}, metadata={"job": 1})
    (fake,) = server.runs()
    assert run.id == fake.id
    assert run.start_key is not None
    assert fake.metadata == {"job": 1, START_KEY: run.start_key}
    wf = server.workflow_id
    # Sent, lost, looked for (not there), sent again.
    assert _posts(server) == [
        f"POST /api/workflow/{wf}/run",
        f"GET /api/workflow/{wf}/run",
        f"POST /api/workflow/{wf}/run",
    ]
    assert server.requests[1].query == {"page": "1", "size": "100"}


@pytest.mark.parametrize("fault", LOST_AFTER, ids=repr)
async def test_a_lost_start_that_took_effect_is_found_not_repeated(
    client: CopyAIClient, server: FakeCopyAI, fault: Fault
) -> None:
    server.add_runs(30, schedule=Schedule.immediate())  # older runs of others
    server.inject(fault, method="POST")
    run = await client.start_run(server.workflow_id, {"topic": "otters"})
    assert len(server.runs()) == 31
    newest = server.runs()[0]
    assert run.id == newest.id
    assert run.start_key == (newest.metadata or {})[START_KEY]
    assert run.input == {"topic": "otters"}
    assert run.status is RunStatus.NEW  # as read from the listing
    assert [r.method for r in server.requests] == ["POST", "GET"]  # no second start


async def test_a_found_run_is_known_as_started_for_the_404_grace(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.inject(Fault.disconnect(after=True), method="POST")
    run = await client.start_run(server.workflow_id, {})
    server.inject(Fault.status_code(404, error_code="NOT_FOUND"))  # "not readable yet"
    done = await client.wait_for_run(server.workflow_id, run.id)
    assert done.status is RunStatus.COMPLETE


async def test_the_lookup_reads_back_to_when_the_start_was_sent(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    now = datetime.now(timezone.utc)
    old = now - timedelta(minutes=10)
    for i in range(60):  # older runs
        server.add_run(created_at=old + timedelta(seconds=i), schedule=Schedule.immediate())
    for _ in range(230):  # runs created since (by other clients): newer than the start
        server.add_run(created_at=now + timedelta(seconds=30), schedule=Schedule.immediate())
    server.inject(Fault.disconnect(), method="POST")
    await client.start_run(server.workflow_id, {})
    pages = [r.query["page"] for r in server.requests if r.method == "GET"]
    assert pages == ["1", "2", "3"]  # until a page reaches back past the send
    assert len(server.runs()) == 291


async def test_a_lookup_that_cannot_see_far_enough_back_is_uncertain(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    server.quirks = Quirks(omit_created_at=True)  # no timestamps: nothing proves coverage
    server.add_runs(1_050, schedule=Schedule.immediate())
    server.inject(Fault.disconnect(), method="POST")
    async with CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        with pytest.raises(StartUncertainError) as info:
            await client.start_run(server.workflow_id, {})
    assert len([r for r in server.requests if r.method == "GET"]) == 10  # 1,000 runs read
    assert [r.method for r in server.requests].count("POST") == 1
    assert "do not reach back" in str(info.value)
    assert info.value.start_key is not None
    assert f"find_started_run({server.workflow_id!r}" in str(info.value)


async def test_a_lookup_that_fails_leaves_the_start_uncertain(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    async with CopyAIClient(
        server.api_key, base_url=server.url, clock=clock, max_retries=1
    ) as client:
        server.inject(Fault.disconnect(after=True), method="POST")
        server.inject(*[Fault.server_error(503)] * 2, method="GET")
        with pytest.raises(StartUncertainError) as info:
            await client.start_run(server.workflow_id, {"x": 1}, start_key="job-7")
    error = info.value
    assert len(server.runs()) == 1  # it did start: the caller must look before retrying
    assert error.start_key == "job-7"
    assert error.workflow_id == server.workflow_id
    assert error.status is None  # no answer arrived
    assert isinstance(error.__cause__, APIConnectionError)
    assert "did not settle it" in str(error)
    assert abs((datetime.now(timezone.utc) - error.sent_at).total_seconds()) < 60
    async with CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        found = await client.find_started_run(error.workflow_id, "job-7")
    assert found is not None
    assert found.id == server.runs()[0].id


@pytest.mark.parametrize("how", ["504", "read-timeout"])
async def test_a_start_the_server_may_still_be_creating_is_not_sent_again(
    server: FakeCopyAI, clock: FakeClock, how: str
) -> None:
    if how == "504":  # a gateway gave up waiting on the server
        server.inject(Fault.server_error(504), method="POST")
        cause: type = ServerError
    else:  # the client gave up waiting: the server holds the start
        server.hold(lambda request: request.method == "POST")
        cause = APITimeoutError
    async with CopyAIClient(
        server.api_key, base_url=server.url, clock=clock, timeout=0.3
    ) as client:
        with pytest.raises(StartUncertainError) as info:
            await client.start_run(server.workflow_id, {})
    assert [r.method for r in server.requests].count("POST") == 1
    assert "may still be creating it" in str(info.value)
    assert isinstance(info.value.__cause__, cause)


async def test_when_every_attempt_is_lost_the_error_says_no_run_exists(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    server.inject(*[Fault.disconnect()] * 3, method="POST")
    async with CopyAIClient(
        server.api_key, base_url=server.url, clock=clock, max_retries=2
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.start_run(server.workflow_id, {})
    assert not isinstance(info.value, StartUncertainError)  # known: nothing started
    assert server.runs() == []
    assert [r.method for r in server.requests] == ["POST", "GET"] * 3
    assert "after 3 attempts" in str(info.value)


async def test_a_503_retry_after_is_waited_before_the_lookup(
    client: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    server.inject(Fault.status_code(503, retry_after="2.5"), method="POST")
    await client.start_run(server.workflow_id, {})
    assert clock.sleeps == [2.5]
    assert [r.method for r in server.requests] == ["POST", "GET", "POST"]


async def test_a_503_asking_too_long_is_looked_up_then_raised(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    server.inject(Fault.status_code(503, retry_after="300"), method="POST")
    async with CopyAIClient(
        server.api_key, base_url=server.url, clock=clock, max_retry_after=10
    ) as client:
        with pytest.raises(ServerError, match="longer than max_retry_after"):
            await client.start_run(server.workflow_id, {})
    assert len(clock.sleeps) == 1  # a short backoff, not the 300 s asked for
    assert clock.sleeps[0] <= 0.5
    assert [r.method for r in server.requests] == ["POST", "GET"]
    assert server.runs() == []


async def test_many_starts_under_faults_each_start_exactly_one_run(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    faults = (*LOST_BEFORE, *LOST_AFTER, Fault.rate_limit("0"), Fault.status_code(408))
    server.fault_rate = 0.3
    server.random_faults = faults
    server.fault_methods = frozenset({"POST"})
    async with CopyAIClient(
        server.api_key, base_url=server.url, clock=clock, max_retries=10, timeout=1
    ) as client:
        runs = await asyncio.gather(
            *(client.start_run(server.workflow_id, {"n": n}) for n in range(200))
        )
    assert server.stats.faults > 40  # the faults happened
    assert len({run.id for run in runs}) == 200
    assert len(server.runs()) == 200  # none lost, none twice
    by_id = {fake.id: fake for fake in server.runs()}
    for n, run in enumerate(runs):
        assert by_id[run.id].input == {"n": n}  # each caller got its own run
        assert run.start_key == (by_id[run.id].metadata or {})[START_KEY]


async def test_start_and_wait_settles_a_lost_start(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.default_schedule = Schedule.polls(("PROCESSING", 2))
    server.inject(Fault.disconnect(after=True), method="POST")
    run = await client.start_and_wait(server.workflow_id, {"a": 1})
    assert run.status is RunStatus.COMPLETE
    assert len(server.runs()) == 1


async def test_start_and_wait_timeout_names_the_start_key(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    server.hold(lambda request: request.method == "POST")
    async with CopyAIClient(server.api_key, base_url=server.url) as client:
        with pytest.raises(PollTimeoutError, match="may or may not have started") as info:
            await client.start_and_wait(server.workflow_id, {}, start_key="job-9", timeout=0.1)
    assert "'job-9'" in str(info.value)


# -- start keys -------------------------------------------------------------------------


async def test_a_key_given_in_metadata_is_the_start_key(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    run = await client.start_run(server.workflow_id, {}, metadata={START_KEY: "mine", "a": 1})
    assert run.start_key == "mine"
    assert server.requests[-1].json()["metadata"] == {START_KEY: "mine", "a": 1}


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"start_key": 7}, TypeError, "start_key must be a str or None"),
        ({"start_key": ""}, ValueError, "start_key must be a non-blank string"),
        ({"start_key": "   "}, ValueError, "start_key must be a non-blank string"),
        ({"start_key": "k" * 201}, ValueError, "at most 200 characters"),
        (
            {"start_key": "a", "metadata": {START_KEY: "b"}},
            ValueError,
            "start_key differs from metadata",
        ),
        ({"metadata": {"deep": "x"}, "start_key": None}, None, None),
    ],
)
async def test_start_key_arguments_are_checked_before_any_request(
    client: CopyAIClient, server: FakeCopyAI, kwargs: dict[str, Any], error: Any, words: Any
) -> None:
    if error is None:
        await client.start_run(server.workflow_id, {}, **kwargs)
        assert "metadata" in server.requests[-1].json()
        return
    with pytest.raises(error, match=words):
        await client.start_run(server.workflow_id, {}, **kwargs)
    assert server.stats.requests == 0


async def test_metadata_nested_too_deeply_is_a_value_error(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    deep: dict[str, Any] = {}
    for _ in range(100_000):  # past every Python's encoder (3.13's follows 5,000 levels)
        deep = {"d": deep}
    with pytest.raises(ValueError, match="metadata is nested too deeply"):
        await client.start_run(server.workflow_id, {}, metadata=deep)
    with pytest.raises(ValueError, match="start_variables must hold only JSON"):
        await client.start_run(server.workflow_id, {"x": float("nan")})
    assert server.stats.requests == 0


def test_start_keys_option_is_checked() -> None:
    with pytest.raises(TypeError, match="start_keys must be a bool"):
        CopyAIClient("k", start_keys="yes")  # type: ignore[arg-type]


async def test_find_started_run(client: CopyAIClient, server: FakeCopyAI) -> None:
    mine = await client.start_run(server.workflow_id, {}, start_key="job-1")
    server.add_runs(250, schedule=Schedule.immediate())  # it is on page 3 now
    found = await client.find_started_run(server.workflow_id, "job-1")
    assert found is not None
    assert found.id == mine.id
    server.reset_stats()
    assert await client.find_started_run(server.workflow_id, "job-1", max_runs=200) is None
    assert server.stats.requests == 2  # stops at max_runs
    server.reset_stats()
    assert await client.find_started_run(server.workflow_id, "nobody") is None
    assert server.stats.requests == 3  # stops at the short last page
    with pytest.raises(ValueError, match="max_runs"):
        await client.find_started_run(server.workflow_id, "k", max_runs=0)
    with pytest.raises(TypeError, match="start_key"):
        await client.find_started_run(server.workflow_id, "")


# -- aitasker: no metadata to tag a run with ----------------------------------------------


@pytest.mark.parametrize("fault", [Fault.disconnect(), Fault.server_error(502, after=True)])
async def test_aitasker_trigger_lost_is_uncertain_never_repeated(
    server: FakeCopyAI, clock: FakeClock, fault: Fault
) -> None:
    base = server.url.rsplit("/api", 1)[0]
    server.inject(fault, method="POST")
    async with AITaskerClient(server.api_key, base_url=base, clock=clock) as at:
        with pytest.raises(StartUncertainError) as info:
            await at.trigger("6f1c2a0e-0000-4000-8000-00000000a17a", "wf", {"a": 1})
        assert info.value.start_key is None
        assert "no start key" in str(info.value)
        server.inject(Fault.status_code(408), method="POST")  # refused unread: sent again
        run = await at.trigger("6f1c2a0e-0000-4000-8000-00000000a17a", "wf", {"a": 2})
    assert run.trigger_payload == {"a": 2}
    assert [r.method for r in server.requests] == ["POST", "POST", "POST"]


async def test_random_post_faults_never_duplicate_aitasker_runs(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    rng = random.Random(3)
    base = server.url.rsplit("/api", 1)[0]
    ws = "6f1c2a0e-0000-4000-8000-00000000a17a"
    outcomes = {"ok": 0, "uncertain": 0}
    async with AITaskerClient(server.api_key, base_url=base, clock=clock, timeout=0.5) as at:
        for n in range(40):
            server.inject(rng.choice([*LOST_BEFORE, *LOST_AFTER]), method="POST")
            try:
                await at.trigger(ws, "wf", {"n": n})
                outcomes["ok"] += 1
            except StartUncertainError:
                outcomes["uncertain"] += 1
    assert outcomes == {"ok": 0, "uncertain": 40}
    created = [fake.input["n"] for fake in server.aitasker_runs("wf")]
    assert len(created) == len(set(created))  # never twice
