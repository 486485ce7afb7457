"""Attacks: a misbehaving server, hostile input, cancellation anywhere, and the API key.

Over real loopback HTTP against the fake server's fault injection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import aiohttp
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copyai_async import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    CopyAIClient,
    CopyAIError,
    PollPolicy,
    RunStatus,
    ServerError,
    WorkflowRun,
)
from copyai_async._convert import WIRE, ErrorEnvelope, WireError
from copyai_async.testing import FakeClock, FakeCopyAI, Fault, Schedule

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

FAST = PollPolicy(initial=0.001, multiplier=2.0, max_interval=0.004, jitter=0.0)
SECRET = "sk-reliability-secret-0123456789"

# The mix: 10% 5xx (some HTML), 5% 429 (with and without Retry-After),
# 2% dropped connections, 1% truncated JSON: 18 faults in 100 requests.
MIX = (
    *[Fault.server_error(500)] * 4,
    *[Fault.server_error(503, html=True)] * 3,
    *[Fault.server_error(502, html=True)] * 3,
    *[Fault.rate_limit("0")] * 3,
    *[Fault.rate_limit(None)] * 2,
    *[Fault.disconnect()] * 2,
    Fault.truncate(),
)


# The "real servers" chaos: 18% faults, among them 200 answers whose JSON is cut short
# with a Content-Length that matches (a proxy's doing: the framing is fine, the JSON not).
CHAOS = (
    *[Fault.server_error(500)] * 4,
    *[Fault.server_error(503, html=True)] * 3,
    *[Fault.server_error(502, html=True)] * 3,
    *[Fault.rate_limit("0")] * 2,
    *[Fault.rate_limit(None)] * 2,
    *[Fault.disconnect()] * 2,
    *[Fault.garbled("truncated")] * 2,
)


def _tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("copyai_async.")]


# -- faults -----------------------------------------------------------------------------


async def test_streaming_10000_runs_through_faults() -> None:
    clock = FakeClock()
    server = FakeCopyAI(fault_rate=0.18, faults=MIX, seed=2024)
    server.add_runs(10_000, schedule=Schedule.immediate())
    async with (
        server,
        CopyAIClient(server.api_key, base_url=server.url, clock=clock, max_retries=10) as client,
    ):
        ids = [run.id async for run in client.iter_runs(server.workflow_id)]
    assert ids == [run.id for run in server.runs()]  # all, once each, in order
    assert server.stats.faults > 10  # the faults really happened
    assert clock.sleeps  # and were retried


@pytest.mark.parametrize("sweep", [True, False])
async def test_waiting_on_1000_runs_through_faults(sweep: bool) -> None:
    server = FakeCopyAI(fault_rate=0.18, faults=MIX, seed=7)
    fakes = [
        server.add_run(
            schedule=Schedule.polls(
                ("PROCESSING", i % 4), final="FAILED" if i % 9 == 0 else "COMPLETE"
            )
        )
        for i in range(1_000)
    ]
    truth = {f.id: f.schedule.final for f in fakes}
    async with (
        server,
        CopyAIClient(
            server.api_key,
            base_url=server.url,
            max_retries=10,
            backoff_base=0.001,
            backoff_max=0.002,
        ) as client,
    ):
        got = [
            run
            async for run in client.wait_for_runs(
                server.workflow_id, list(truth), policy=attrs.evolve(FAST, sweep=sweep)
            )
        ]
    assert sorted(r.id for r in got) == sorted(truth)
    assert all(r.status.value == truth[r.id] for r in got)
    # Sweeps read pages of 100 runs (and a FAILED run on its own): far fewer requests.
    assert server.stats.faults > (10 if sweep else 50)
    assert (server.stats.by_kind["list"] > 0) is sweep


async def test_chaos_no_wait_is_ended_by_one_bad_answer() -> None:
    # Before the fix, about 8% of such waits ended with InvalidResponseError although
    # every run went on to finish.
    server = FakeCopyAI(fault_rate=0.18, faults=CHAOS, seed=14)
    fakes = [
        server.add_run(
            schedule=Schedule.polls(
                ("PROCESSING", 1 + i % 5), final="FAILED" if i % 7 == 0 else "COMPLETE"
            )
        )
        for i in range(300)
    ]
    truth = {fake.id: fake.schedule.final for fake in fakes}
    async with (
        server,
        CopyAIClient(
            server.api_key, base_url=server.url, backoff_base=0.001, backoff_max=0.002
        ) as client,
    ):
        wf = server.workflow_id
        one_by_one = await asyncio.gather(
            *(
                client.wait_for_run(wf, run_id, policy=FAST, raise_on_failure=False)
                for run_id in truth
            ),
            return_exceptions=True,
        )
        for fake in fakes:
            fake.polls = 0
        together = [run async for run in client.wait_for_runs(wf, list(truth), policy=FAST)]
    assert [r for r in one_by_one if isinstance(r, BaseException)] == []
    for results in (one_by_one, together):
        assert sorted(r.id for r in results) == sorted(truth)  # type: ignore[union-attr]
        assert all(r.status.value == truth[r.id] for r in results)  # type: ignore[union-attr]
    garbled = [r for r in server.requests if r.fault is not None and r.fault.kind == "garbled"]
    assert len(garbled) > 20  # cut-short 200 answers really were sent
    assert server.stats.faults > 0.15 * server.stats.requests


async def test_faults_beyond_the_retry_budget_name_request_and_cause() -> None:
    clock = FakeClock()
    server = FakeCopyAI()
    run = server.add_run(schedule=Schedule.immediate())
    async with (
        server,
        CopyAIClient(server.api_key, base_url=server.url, clock=clock, max_retries=2) as client,
    ):
        server.inject(*[Fault.server_error(503, html=True)] * 3)
        with pytest.raises(ServerError) as status_error:
            await client.get_run(server.workflow_id, run.id)
        server.inject(*[Fault.disconnect()] * 20)
        with pytest.raises(APIConnectionError) as dropped:
            await client.get_run(server.workflow_id, run.id)
    for error in (status_error.value, dropped.value):
        assert f"GET /api/workflow/{server.workflow_id}/run/{run.id}" in str(error)
        assert "after 3 attempts" in str(error)
    assert "503" in str(status_error.value)
    assert isinstance(dropped.value.__cause__, aiohttp.ClientError)
    assert "ServerDisconnectedError" in str(dropped.value)


async def test_a_body_that_stalls_hits_the_timeout() -> None:
    server = FakeCopyAI()
    run = server.add_run(schedule=Schedule.immediate())
    async with (
        server,
        CopyAIClient(
            server.api_key, base_url=server.url, timeout=0.2, max_retries=1, backoff_base=0.001
        ) as client,
    ):
        server.inject(Fault.stall(), Fault.stall())
        started = asyncio.get_running_loop().time()
        with pytest.raises(APITimeoutError) as info:
            await client.get_run(server.workflow_id, run.id)
        elapsed = asyncio.get_running_loop().time() - started
    assert 0.4 <= elapsed < 1.5  # two attempts of 0.2 s, not a hang
    assert "after 2 attempts" in str(info.value)


# -- bad input --------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
RUN_KEYS = [
    "id",
    "workflowRunId",
    "workflowId",
    "status",
    "input",
    "output",
    "metadata",
    "createdAt",
    "credits",
]
NEAR_RUN = st.dictionaries(st.sampled_from(RUN_KEYS), JSON, max_size=9) | st.fixed_dictionaries(
    {"id": st.text(max_size=10), "status": st.sampled_from([*RunStatus.__members__, "x", ""])},
    optional=dict.fromkeys([k for k in RUN_KEYS if k not in ("id", "status")], JSON),
)
BODY = (
    JSON
    | st.fixed_dictionaries({"status": st.just("success"), "data": NEAR_RUN})
    | (
        st.fixed_dictionaries(
            {
                "status": st.just("success"),
                "data": st.fixed_dictionaries(
                    {"total": JSON, "data": st.lists(NEAR_RUN, max_size=3)}
                ),
            }
        )
    )
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODY)
def test_converter_gives_a_model_or_a_wire_error(body: Any) -> None:
    # The transport turns WireError into InvalidResponseError and ErrorEnvelope into
    # APIStatusError (tests/test_http.py); nothing else may come out of the converter.
    for convert in (
        lambda: WIRE.run(body, workflow_id="w"),
        lambda: WIRE.started_run(body, workflow_id="w"),
        lambda: WIRE.page(body, workflow_id="w", page=1, size=10),
    ):
        try:
            outcome = convert()
        except WireError as exc:
            assert exc.json_path.startswith("$")  # noqa: PT017 - each of three calls may raise
            continue
        except ErrorEnvelope:
            assert isinstance(body, dict)
            assert str(body.get("status")).lower() == "error"
            continue
        runs = getattr(outcome, "runs", (outcome,))
        assert all(isinstance(run, WorkflowRun) for run in runs)
        assert all(isinstance(run.id, str) for run in runs)
        assert all(isinstance(run.workflow_id, str) for run in runs)


BAD_VALUES = ["", -1, 0, float("nan"), float("inf"), 10**30, None, [], "x" * 100_000, True]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
async def test_every_public_call_checks_its_arguments(value: Any) -> None:
    server = FakeCopyAI()
    async with server, CopyAIClient(server.api_key, base_url=server.url) as client:
        calls = {
            "workflow_id": lambda: client.get_run(value, "r"),
            "run_id": lambda: client.get_run("w", value),
            "page": lambda: client.list_runs("w", page=value),
            "size": lambda: client.list_runs("w", size=value),
            "start_variables": lambda: client.start_run("w", value),
            "metadata": lambda: client.start_run("w", {}, metadata=value or 5),
            "timeout": lambda: client.wait_for_run("w", "r", timeout=value),
            "policy": lambda: client.wait_for_run("w", "r", policy=value),
        }
        sync_calls = {
            "page_size": lambda: client.iter_runs("w", page_size=value),
            "start_page": lambda: client.iter_runs("w", start_page=value),
            "max_items": lambda: client.iter_runs(
                "w", max_items=value if value is not None else -1
            ),
            "prefetch": lambda: client.iter_runs("w", prefetch=value if value is not None else -1),
            "concurrency": lambda: client.wait_for_runs("w", ["r"], concurrency=value),
        }
        for name, call in calls.items():
            if _acceptable(name, value):
                continue
            with pytest.raises((TypeError, ValueError), match=name):
                await call()
        for name, make in sync_calls.items():
            if _acceptable(name, value):
                continue
            with pytest.raises((TypeError, ValueError), match=name):
                make()
    assert server.stats.requests == 0  # nothing was sent


def _acceptable(name: str, value: Any) -> bool:
    """Values that are legitimately allowed for an argument."""
    if value is None and name in ("timeout", "policy", "max_items", "metadata"):
        return True
    if isinstance(value, str) and value and name in ("workflow_id", "run_id"):
        return True  # any non-empty id is opaque
    if value == 10**30 and not isinstance(value, bool) and name in ("page", "timeout"):
        return True  # big, but within the allowed range
    if (
        name in ("page_size", "start_page")
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        return value >= 1  # page_size above 100 is capped (documented); a far page is empty
    if name in ("max_items", "prefetch") and value == 0:
        return True
    return (
        name == "max_items"
        and isinstance(value, int)
        and not isinstance(value, bool)
        and value >= 0
    )


@pytest.mark.parametrize(
    ("base_url", "words"),
    [
        ("https://user:pw@api.copy.ai/api", "credentials"),
        ("ftp://api.copy.ai/api", "http"),
        ("http://api.copy.ai/api", "allow_http"),
        ("file:///etc/passwd", "http"),
        ("https:///api", "host"),
    ],
)
def test_base_url_rules(base_url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words) as info:
        CopyAIClient("k", base_url=base_url)
    assert "pw" not in str(info.value)


def test_plain_http_for_loopback_or_when_asked() -> None:
    for url in ("http://127.0.0.1:8080/api", "http://localhost/api", "http://[::1]:9/api"):
        CopyAIClient("k", base_url=url)
    CopyAIClient("k", base_url="http://api.internal/api", allow_http=True)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_not_followed(status: int) -> None:
    elsewhere = FakeCopyAI(api_key=SECRET)
    server = FakeCopyAI(api_key=SECRET)
    async with elsewhere, server, CopyAIClient(SECRET, base_url=server.url) as client:
        target = f"{elsewhere.url}/workflow/{elsewhere.workflow_id}/run"
        server.inject(Fault.raw("", status=status, headers={"Location": target}))
        with pytest.raises(CopyAIError) as info:
            await client.list_runs(server.workflow_id)
    assert elsewhere.stats.requests == 0  # the key went nowhere else
    assert str(status) in str(info.value)


@pytest.mark.parametrize(
    "run_id", ["a/b", "..", "x?y", "x#y", "100%", "s p", "ünï/ç", "%2F", "a/../../b"]
)
async def test_ids_reach_the_server_as_one_segment(run_id: str) -> None:
    server = FakeCopyAI()
    server.add_run(run_id=run_id, schedule=Schedule.immediate())
    async with server, CopyAIClient(server.api_key, base_url=server.url) as client:
        assert (await client.get_run(server.workflow_id, run_id)).id == run_id
    path = server.requests[-1].path
    assert path.count("/") == 5  # /api/workflow/W/run/<one segment>


# -- cancellation and resources ---------------------------------------------------------


@pytest.mark.parametrize("steps", [0, 1, 3, 10, 30, 100])
@pytest.mark.parametrize("operation", ["get", "iter", "wait", "watch", "wait_many"])
async def test_cancel_anywhere_leaves_nothing(operation: str, steps: int) -> None:
    server = FakeCopyAI(fault_rate=0.3, faults=MIX, seed=steps)
    ids = [server.add_run(schedule=Schedule.polls(("PROCESSING", 50))).id for _ in range(5)]
    server.add_runs(500, schedule=Schedule.immediate())
    async with (
        server,
        CopyAIClient(
            server.api_key, base_url=server.url, max_retries=10, backoff_base=0.001
        ) as client,
    ):

        async def work() -> None:
            wf = server.workflow_id
            if operation == "get":
                while True:
                    await client.get_run(wf, ids[0])
            elif operation == "iter":
                while True:
                    async for _ in client.iter_runs(wf, page_size=10):
                        pass
            elif operation == "wait":
                await client.wait_for_run(wf, ids[0], policy=FAST)
            elif operation == "watch":
                async for _ in client.watch_run(wf, ids[0], policy=FAST):
                    pass
            else:
                async for _ in client.wait_for_runs(wf, ids, policy=FAST):
                    pass

        task = asyncio.create_task(work())
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _tasks() == []
        connector = client._transport.open().connector
        assert connector is not None
        assert not connector._acquired  # no connection left checked out


async def test_closing_the_client_fails_running_operations_promptly() -> None:
    server = FakeCopyAI()
    slow = server.add_run(schedule=Schedule.polls(("PROCESSING", 10**6))).id
    server.add_runs(3000, schedule=Schedule.immediate())
    async with server:
        client = CopyAIClient(server.api_key, base_url=server.url)
        policy = PollPolicy(initial=30, max_interval=30)  # long sleeps between polls
        waiting = asyncio.create_task(client.wait_for_run(server.workflow_id, slow, policy=policy))
        server.latency = 0.05
        streaming = asyncio.create_task(_drain(client.iter_runs(server.workflow_id, page_size=10)))
        for _ in range(50):
            await asyncio.sleep(0.001)
        loop = asyncio.get_running_loop()
        closed_at = loop.time()
        await client.aclose()
        results = await asyncio.gather(waiting, streaming, return_exceptions=True)
        took = loop.time() - closed_at
    assert took < 1.0  # not after the 30 s sleep
    for result in results:
        assert isinstance(result, CopyAIError), result
        assert "closed" in str(result)
    assert _tasks() == []


async def _drain(iterator: Any) -> None:
    async for _ in iterator:
        pass


# -- secrets ----------------------------------------------------------------------------


async def test_the_key_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = FakeCopyAI(api_key=SECRET)
    run = server.add_run(schedule=Schedule.immediate())
    seen: list[str] = []
    async with server:
        client = CopyAIClient(SECRET, base_url=server.url, max_retries=1, backoff_base=0.001)
        seen += [repr(client), str(client), repr(vars(client)), repr(client._transport.__dict__)]
        async with client:
            paginator = client.iter_runs(server.workflow_id)
            seen += [repr(paginator)]
            async for _ in paginator:
                pass
            await client.get_run(server.workflow_id, run.id)
            for fault in (
                Fault.raw(f"<html>{SECRET}</html>", status=502),
                Fault.raw(f"oops {SECRET}"),
                Fault.disconnect(),
                Fault.raw({"status": "error", "errorCode": SECRET}, status=400),
                Fault.raw({"status": "success", "data": {"id": "r", "credits": SECRET}}),
            ):
                server.inject(*[fault] * 5)  # more than every attempt of one call
                with pytest.raises(CopyAIError) as info:
                    await client.get_run(server.workflow_id, run.id)
                server.clear_faults()
                error: BaseException | None = info.value
                while error is not None:  # the whole chain
                    seen += [str(error), repr(error), repr(getattr(error, "__dict__", ""))]
                    error = error.__cause__ or error.__context__
    seen += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    blob = "\n".join(seen)
    assert "GET /api/workflow" in blob  # the search did see real text
    assert SECRET not in blob


def test_the_cli_never_prints_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    from copyai_async.cli import main

    argv = ["--api-key", SECRET, "--base-url", "http://127.0.0.1:9/api", "-v"]
    for command in (["runs", "get", "w", "r"], ["runs", "list", "w", "--json"]):
        assert main([*argv, *command]) == 1  # nothing listens on port 9
    captured = capsys.readouterr()
    assert "error:" in captured.err
    assert "GET /api/workflow" in captured.err
    assert SECRET not in captured.out + captured.err
    assert "Traceback" not in captured.err


def test_json_output_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    from copyai_async.cli import run_json

    run = WorkflowRun(id="r", workflow_id="w", status=RunStatus.COMPLETE)
    assert json.loads(json.dumps(run_json(run)))["status"] == "COMPLETE"


async def test_exception_group_members_are_copyai_errors() -> None:
    server = FakeCopyAI()
    async with server, CopyAIClient(server.api_key, base_url=server.url) as client:
        with pytest.raises(ExceptionGroup) as info:
            await _drain(client.wait_for_runs(server.workflow_id, ["a", "b"], policy=FAST))
    assert all(isinstance(e, CopyAIError) for e in info.value.exceptions)
