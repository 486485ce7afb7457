"""aitasker: list (bare array), get, trigger and the shared waits, against the fake server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest

from copyai_async import (
    AuthenticationError,
    ConfigurationError,
    InvalidResponseError,
    NotFoundError,
    PollPolicy,
    PollTimeoutError,
    RunFailedError,
    UnprocessableEntityError,
)
from copyai_async.aitasker import AITaskerClient, AITaskerRun, NodeRun
from copyai_async.aitasker._convert import AITASKER_WIRE, AITaskerWire
from copyai_async.testing import (
    AITASKER_WORKFLOW_ID,
    AITASKER_WORKSPACE_ID,
    FakeClock,
    FakeCopyAI,
    Fault,
    Schedule,
)

from .conftest import load_payload

WS, WF = AITASKER_WORKSPACE_ID, AITASKER_WORKFLOW_ID
STRICT = AITaskerWire(strict=True)
FAST = PollPolicy(initial=0.001, multiplier=2.0, max_interval=0.004, jitter=0.0)


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AITASKER_API_TOKEN", raising=False)


@pytest.fixture
async def at(server: FakeCopyAI, clock: FakeClock) -> AsyncIterator[AITaskerClient]:
    base = server.url.rsplit("/api", 1)[0]
    async with AITaskerClient(server.api_key, base_url=base, clock=clock) as client:
        yield client


# -- the documented payload, tolerant and strict ----------------------------------------


@pytest.mark.parametrize("wire", [AITASKER_WIRE, STRICT], ids=["tolerant", "strict"])
def test_documented_payload(wire: AITaskerWire) -> None:
    (run,) = wire.runs(load_payload("aitasker_runs.json"))
    assert run.id == "3c90c3cc-0d44-4b50-8888-8dd25736052a"
    assert run.created_at == datetime(2023, 11, 7, 5, 31, 56, tzinfo=timezone.utc)
    assert run.total_cost_cents == 0
    assert run.trigger_payload == {}
    (node,) = run.node_runs
    assert isinstance(node, NodeRun)
    assert node.workflow_run_id == run.id
    assert node.input_data == {}
    assert node.task_id


def test_nullable_fields_and_defaults() -> None:
    body = {
        "id": "r",
        "workflow_id": "w",
        "status": "queued",
        "created_at": "2024-01-01T00:00:00",
        "triggered_by": None,
        "trigger_payload": None,
        "started_at": None,
        "completed_at": None,
        "error_message": None,
        "total_cost_cents": None,
    }
    run = STRICT.run(body)
    assert run.node_runs == ()
    assert run.total_cost_cents == 0
    assert run.created_at.tzinfo is not None
    assert (run.started_at, run.completed_at, run.error_message) == (None, None, None)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"id": "r"}, "$.workflow_id"),
        ({"id": "r", "workflow_id": "w", "status": "x", "created_at": "noon"}, "$.created_at"),
        (
            {"id": 5, "workflow_id": "w", "status": "x", "created_at": "2024-01-01T00:00:00Z"},
            "$.id",
        ),
    ],
)
def test_bad_run_names_the_path(body: dict[str, Any], path: str) -> None:
    from copyai_async._convert import WireError

    with pytest.raises(WireError) as info:
        AITASKER_WIRE.run(body)
    assert info.value.json_path == path


# -- endpoints --------------------------------------------------------------------------


async def test_list_runs_bare_array(at: AITaskerClient, server: FakeCopyAI) -> None:
    fakes = [server.add_aitasker_run(payload={"n": i}) for i in range(3)]
    runs = await at.list_runs(WS, WF)
    assert [r.id for r in runs] == [f.id for f in reversed(fakes)]
    assert all(isinstance(r, AITaskerRun) for r in runs)
    assert runs[0].trigger_payload == {"n": 2}
    assert runs[0].started_at is None
    sent = server.requests[-1]
    assert sent.path == f"/api/v1/workspaces/{WS}/workflows/{WF}/runs"
    assert sent.headers["Authorization"] == f"Bearer {server.api_key}"


async def test_get_run_and_node_runs(at: AITaskerClient, server: FakeCopyAI) -> None:
    fake = server.add_aitasker_run(schedule=Schedule.immediate("completed"))
    run = await at.get_run(WF, fake.id)
    assert run.status == "completed"
    assert run.completed_at is not None
    assert run.total_cost_cents == 2
    assert run.node_runs[0].output_data == {"summary": "done"}
    assert server.requests[-1].path == f"/api/v1/workflows/{WF}/runs/{fake.id}"


async def test_trigger_then_wait(at: AITaskerClient, server: FakeCopyAI) -> None:
    run = await at.trigger(WS, WF, {"topic": "otters"})
    assert run.status == "queued"
    assert run.trigger_payload == {"topic": "otters"}
    assert server.requests[-1].json() == {"trigger_payload": {"topic": "otters"}}
    seen: list[str] = []
    done = await at.wait_for_run(WF, run.id, on_status=lambda r: seen.append(r.status))
    assert seen == ["queued", "running", "completed"]
    assert done.completed_at is not None
    await at.trigger(WS, WF)
    assert server.requests[-1].json() == {"trigger_payload": {}}


async def test_failed_run_raises_with_error_message(at: AITaskerClient, server: FakeCopyAI) -> None:
    fake = server.add_aitasker_run(schedule=Schedule.polls(("running", 1), final="failed"))
    with pytest.raises(RunFailedError) as info:
        await at.wait_for_run(WF, fake.id)
    assert info.value.run.error_message == "node 'summarise' failed: model timeout"
    assert "model timeout" in str(info.value)
    assert fake.id in str(info.value)


@pytest.mark.parametrize("final", ["Completed", "SUCCEEDED", "cancelled", "Error"])
async def test_default_terminal_statuses_case_insensitive(
    at: AITaskerClient, server: FakeCopyAI, final: str
) -> None:
    fake = server.add_aitasker_run(schedule=Schedule.polls(("running", 1), final=final))
    run = await at.wait_for_run(WF, fake.id, raise_on_failure=False)
    assert run.status == final


async def test_unknown_status_keeps_polling(
    at: AITaskerClient, server: FakeCopyAI, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    fake = server.add_aitasker_run(schedule=Schedule.polls(("running", 1), final="DONE"))
    with pytest.raises(PollTimeoutError) as info:
        await at.wait_for_run(WF, fake.id, timeout=30)
    assert info.value.run.status == "DONE"  # never terminal by default
    assert clock.now == pytest.approx(30)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'DONE'" in warnings[0].getMessage()


async def test_configurable_terminal_statuses(server: FakeCopyAI, clock: FakeClock) -> None:
    fake = server.add_aitasker_run(schedule=Schedule.polls(("running", 1), final="DONE"))
    failing = server.add_aitasker_run(schedule=Schedule.polls(("running", 1), final="Broken"))
    base = server.url.rsplit("/api", 1)[0]
    async with AITaskerClient(
        server.api_key,
        base_url=base,
        clock=clock,
        terminal_statuses={"done", "broken"},
        failed_statuses={"broken"},
    ) as client:
        assert (await client.wait_for_run(WF, fake.id)).status == "DONE"
        with pytest.raises(RunFailedError):
            await client.wait_for_run(WF, failing.id)


async def test_watch_and_wait_many(server: FakeCopyAI) -> None:
    # The real clock, with millisecond intervals: many waits overlap real requests.
    at = AITaskerClient(server.api_key, base_url=server.url.rsplit("/api", 1)[0])
    fakes = [
        server.add_aitasker_run(
            schedule=Schedule.polls(("queued", 1), ("running", i), final="completed")
        )
        for i in range(4)
    ]
    seen = [r.status async for r in at.watch_run(WF, fakes[3].id, policy=FAST, timeout=60)]
    assert seen == ["queued", "running", "completed"]
    done = [r async for r in at.wait_for_runs(WF, [f.id for f in fakes], policy=FAST, timeout=60)]
    await at.aclose()
    assert sorted(r.id for r in done) == sorted(f.id for f in fakes)
    assert {r.status for r in done} == {"completed"}


# -- errors, auth and options -----------------------------------------------------------


async def test_errors(at: AITaskerClient, server: FakeCopyAI) -> None:
    with pytest.raises(NotFoundError) as info:
        await at.get_run(WF, "nope")
    assert info.value.details == "Not Found"
    assert str(info.value).endswith("no such workflow or run, or not visible to this token")
    with pytest.raises(NotFoundError, match="no such workspace or workflow, or not visible"):
        await at.list_runs("other-workspace", WF)
    server.inject(Fault.raw("<h1>Not Found</h1>", status=404, content_type="text/html"))
    with pytest.raises(NotFoundError) as elsewhere:
        await at.get_run(WF, "nope")
    assert str(elsewhere.value).endswith(
        f"-> 404 (non-JSON body); not the API's own error: the base URL {at.base_url} may be "
        "wrong (its root is the server's address, without /api/v1)"
    )
    server.inject(Fault.raw({"detail": [{"loc": ["body"], "msg": "bad"}]}, status=422))
    with pytest.raises(UnprocessableEntityError) as bad:
        await at.trigger(WS, WF)
    assert bad.value.details == [{"loc": ["body"], "msg": "bad"}]
    server.inject(*[Fault.raw({"runs": []})] * 4)  # an unreadable GET is retried (3 times)
    with pytest.raises(InvalidResponseError, match=r"JSON array.*after 4 attempts"):
        await at.list_runs(WS, WF)


async def test_wrong_token(server: FakeCopyAI) -> None:
    base = server.url.rsplit("/api", 1)[0]
    async with AITaskerClient("wrong", base_url=base) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.list_runs(WS, WF)
    assert info.value.status == 401
    assert "wrong" not in str(info.value)
    # The hint names aitasker's own variable, not Copy.ai's.
    assert "AITASKER_API_TOKEN" in str(info.value)
    assert "COPYAI_API_KEY" not in str(info.value)


async def test_base_url_from_the_environment_and_the_fake_s_aitasker_url(
    server: FakeCopyAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AITASKER_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="AITASKER_BASE_URL"):
        AITaskerClient("t")
    monkeypatch.setenv("AITASKER_BASE_URL", server.aitasker_url)
    run = server.add_aitasker_run(WS, WF)
    async with AITaskerClient(server.api_key) as client:
        got = await client.get_run(WF, run.id)
    assert got.id == run.id


def test_token_from_environment_and_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="AITASKER_API_TOKEN"):
        AITaskerClient(base_url="https://aitasker.example.com")
    monkeypatch.setenv("AITASKER_API_TOKEN", "tok-secret")
    client = AITaskerClient(base_url="https://aitasker.example.com")
    assert "tok-secret" not in repr(client)
    assert "AITaskerClient" in repr(client)


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"terminal_statuses": "completed"}, TypeError, "terminal_statuses"),
        ({"terminal_statuses": []}, ValueError, "terminal_statuses"),
        ({"failed_statuses": ["nope"]}, ValueError, "failed_statuses"),
        ({"failed_statuses": [3]}, TypeError, "failed_statuses"),
    ],
)
def test_status_options(kwargs: dict[str, Any], exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        AITaskerClient("t", base_url="https://aitasker.example.com", **kwargs)


def test_base_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AITASKER_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match=r"AITaskerClient\(base_url=\.\.\.\)"):
        AITaskerClient("t")
