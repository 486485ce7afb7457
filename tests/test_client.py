"""CopyAIClient: construction, lifecycle, headers, id encoding, redaction, endpoints."""

from __future__ import annotations

import logging
import re
from typing import Any

import aiohttp
import pytest

import copyai_async
from copyai_async import (
    START_KEY,
    ClientClosedError,
    ConfigurationError,
    CopyAIClient,
    CopyAIError,
    NotFoundError,
    RunStatus,
)
from copyai_async.testing import FakeClock, FakeCopyAI, Fault, Quirks, Schedule

SECRET = "sk-very-secret-key-123"


# -- construction -----------------------------------------------------------------------


def test_key_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CopyAIClient("k1").closed is False
    monkeypatch.setenv("COPYAI_API_KEY", "from-env")
    assert isinstance(CopyAIClient(), CopyAIClient)


@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_key_says_how_to_provide_it(key: str | None) -> None:
    with pytest.raises(ConfigurationError) as info:
        CopyAIClient(key)
    assert "COPYAI_API_KEY" in str(info.value)
    assert "api_key=" in str(info.value)


def test_empty_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPYAI_API_KEY", "")
    with pytest.raises(ConfigurationError):
        CopyAIClient()


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"api_key": 123}, TypeError, "api_key"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"max_retries": True}, TypeError, "max_retries"),
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"backoff_base": -1}, ValueError, "backoff_base"),
        ({"backoff_max": float("inf")}, ValueError, "backoff_max"),
        ({"backoff_base": 2.0, "backoff_max": 1.0}, ValueError, "backoff_max"),
        ({"max_retry_after": -0.1}, ValueError, "max_retry_after"),
        ({"base_url": "ftp://example.com"}, ConfigurationError, "base_url"),
        ({"base_url": "/api"}, ConfigurationError, "base_url"),
        ({"base_url": "https://x/api?k=1"}, ConfigurationError, "base_url"),
        ({"base_url": 5}, TypeError, "base_url"),
        ({"session": object()}, TypeError, "session"),
        ({"clock": object()}, TypeError, "clock"),
        ({"coordination": 6379}, TypeError, "coordination"),
        ({"coordination": "http://localhost:6379"}, ValueError, "url must start with redis://"),
    ],
)
def test_bad_options_name_the_argument(kwargs: dict[str, Any], exc: type, words: str) -> None:
    kwargs.setdefault("api_key", "k")
    with pytest.raises(exc, match=words):
        CopyAIClient(**kwargs)


def test_version_and_public_surface() -> None:
    assert copyai_async.__version__
    assert copyai_async.__version__ != "0+unknown"
    assert sorted(copyai_async.__all__) == sorted(
        [
            "DEFAULT_BASE_URL",
            "MAX_PAGE_SIZE",
            "REFUSED",
            "START_KEY",
            "APIConnectionError",
            "APIError",
            "APIStatusError",
            "APITimeoutError",
            "AuthenticationError",
            "BadRequestError",
            "Batch",
            "BatchJournalError",
            "BatchProgress",
            "BatchResult",
            "ClientClosedError",
            "Clock",
            "ConfigurationError",
            "CopyAIClient",
            "CopyAIError",
            "Durations",
            "EventLoopError",
            "InvalidResponseError",
            "NotFoundError",
            "PaginationError",
            "PollFailedError",
            "PollPolicy",
            "PollTimeoutError",
            "ProxyError",
            "RateLimitError",
            "RedisCoordination",
            "RunFailedError",
            "RunPage",
            "RunPaginator",
            "RunStatus",
            "ServerError",
            "StartUncertainError",
            "SystemClock",
            "UnprocessableEntityError",
            "WebhookEventError",
            "WorkflowRun",
            "__version__",
        ]
    )
    for name in copyai_async.__all__:
        assert hasattr(copyai_async, name), name
        # Tracebacks and reprs name the public home: copyai_async.NotFoundError.
        value = getattr(copyai_async, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert value.__module__ == "copyai_async", name
    assert repr(copyai_async.NotFoundError).startswith("<class 'copyai_async.NotFoundError'")


# -- lifecycle --------------------------------------------------------------------------


async def test_closed_client_raises_clearly(server: FakeCopyAI) -> None:
    client = CopyAIClient(server.api_key, base_url=server.url)
    async with client:
        run = server.add_run(schedule=Schedule.immediate())
        assert (await client.get_run(server.workflow_id, run.id)).id == run.id
    assert client.closed
    with pytest.raises(ClientClosedError, match="closed"):
        await client.get_run(server.workflow_id, run.id)
    with pytest.raises(ClientClosedError):
        await client.__aenter__()
    await client.aclose()  # idempotent
    assert isinstance(ClientClosedError("x"), RuntimeError)


async def test_works_without_context_manager_then_aclose(server: FakeCopyAI) -> None:
    client = CopyAIClient(server.api_key, base_url=server.url)
    page = await client.list_runs(server.workflow_id)
    assert page.runs == ()
    await client.aclose()
    assert client.closed


async def test_user_session_is_used_and_left_open(server: FakeCopyAI) -> None:
    async with aiohttp.ClientSession(headers={"X-Trace": "abc"}) as session:
        async with CopyAIClient(server.api_key, base_url=server.url, session=session) as client:
            await client.list_runs(server.workflow_id)
        assert not session.closed
        assert server.requests[-1].headers["X-Trace"] == "abc"
        assert server.requests[-1].headers["x-copy-ai-api-key"] == server.api_key
        # And still usable by its owner.
        async with session.get(f"{server.url}/workflow/{server.workflow_id}/run") as resp:
            assert resp.status == 401


async def test_closed_user_session_is_a_clear_error(server: FakeCopyAI) -> None:
    session = aiohttp.ClientSession()
    await session.close()
    client = CopyAIClient(server.api_key, base_url=server.url, session=session)
    with pytest.raises(ClientClosedError, match="session= is closed"):
        await client.list_runs(server.workflow_id)


def test_no_del_cleanup() -> None:
    assert "__del__" not in vars(CopyAIClient)


# -- headers and encoding ---------------------------------------------------------------


async def test_headers_sent(client: CopyAIClient, server: FakeCopyAI) -> None:
    await client.list_runs(server.workflow_id)
    headers = server.requests[-1].headers
    assert headers["x-copy-ai-api-key"] == server.api_key
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == f"copyai-async/{copyai_async.__version__}"


@pytest.mark.parametrize(
    "run_id", ["a/../b", "x?y#z", "..", ".", "%2F", "sp ace", "ünï", "WRUN-1;p=1", "a\\b"]
)
async def test_ids_are_one_opaque_segment(
    client: CopyAIClient, server: FakeCopyAI, run_id: str
) -> None:
    server.add_run(run_id=run_id, schedule=Schedule.immediate())
    run = await client.get_run(server.workflow_id, run_id)
    assert run.id == run_id
    seen = server.requests[-1].path
    prefix = f"/api/workflow/{server.workflow_id}/run/"
    assert seen.startswith(prefix)
    assert "/" not in seen[len(prefix) :]
    assert "?" not in seen
    assert "#" not in seen


async def test_odd_workflow_id_cannot_reach_another_path(
    client: CopyAIClient, server: FakeCopyAI
) -> None:
    server.add_run("../x", run_id="r", schedule=Schedule.immediate())
    assert (await client.get_run("../x", "r")).workflow_id == "../x"
    with pytest.raises(NotFoundError):
        await client.get_run("WCFG-fake-workflow/run/r", "r")


@pytest.mark.parametrize(
    ("ids", "exc"),
    [
        (("", "r"), ValueError),
        (("w", ""), ValueError),
        ((None, "r"), TypeError),
        (("w", 5), TypeError),
    ],
)
async def test_bad_ids(client: CopyAIClient, ids: tuple[Any, Any], exc: type) -> None:
    name = "workflow_id" if ids[0] in ("", None) else "run_id"
    with pytest.raises(exc, match=name):
        await client.get_run(*ids)


# -- redaction --------------------------------------------------------------------------


async def test_key_never_in_repr_logs_or_errors(
    server: FakeCopyAI, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    server.api_key = SECRET
    client = CopyAIClient(SECRET, base_url=server.url, clock=clock, max_retries=1)
    assert SECRET not in repr(client)
    assert "***" in repr(client)
    assert SECRET not in str(vars(client))
    caplog.set_level(logging.DEBUG, logger="copyai_async")
    texts: list[str] = []
    async with client:
        run = await client.start_run(server.workflow_id, {"x": 1})
        await client.get_run(server.workflow_id, run.id)
        # An error page that echoes the key back must not carry it into our messages.
        server.inject(Fault.server_error(), Fault.raw(f"<html>bad key {SECRET}</html>", status=500))
        with pytest.raises(CopyAIError) as info:
            await client.get_run(server.workflow_id, run.id)
        body = info.value.body  # type: ignore[attr-defined]
        assert "bad key ***" in body  # the echoed page is kept, with the key masked
        texts += [str(info.value), repr(info.value), body]
        server.inject(Fault.raw(f"not json {SECRET}"), Fault.raw(f"not json {SECRET}"))
        with pytest.raises(CopyAIError) as info2:
            await client.get_run(server.workflow_id, run.id)
        texts += [str(info2.value)]
        server.api_key = "other"
        with pytest.raises(CopyAIError) as info3:
            await client.get_run(server.workflow_id, run.id)
        texts += [str(info3.value)]
    assert any("GET /api/workflow/" in r.getMessage() for r in caplog.records)
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.args) for r in caplog.records]
    assert texts
    for text in texts:
        assert SECRET not in text


class _NoSuchName(aiohttp.abc.AbstractResolver):
    """A resolver that knows no name: a DNS failure, with no network."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> Any:
        raise OSError(-2, "Name or service not known")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("key", ["k", "o", "n", "e", "ss", SECRET])
async def test_a_key_is_masked_as_a_token_not_inside_words(key: str) -> None:
    # An API key "k" once turned this DNS error into "Name or service not ***nown".
    host = f"{SECRET}.example.invalid"  # a real-looking key is masked wherever it is
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_NoSuchName()))
    base_url = f"https://{host}/api"
    async with session, CopyAIClient(key, base_url=base_url, session=session, max_retries=0) as c:
        with pytest.raises(copyai_async.APIConnectionError) as info:
            await c.get_run("W", "R")
    cause = info.value.__cause__
    said = f"{type(cause).__name__}: {cause}"  # aiohttp's words, whole
    assert "Name or service not known" in said
    for text in (str(info.value), repr(info.value)):
        assert "GET /api/workflow/W/run/R: could not connect" in text
        if key == SECRET:
            assert SECRET not in text
            assert said.replace(SECRET, "***") in text
        else:
            assert said in text


# -- endpoints --------------------------------------------------------------------------


async def test_start_run_sends_documented_body(client: CopyAIClient, server: FakeCopyAI) -> None:
    run = await client.start_run(server.workflow_id, {"topic": "otters"}, metadata={"job": 7})
    assert run.status is RunStatus.NEW
    assert run.workflow_id == server.workflow_id
    key = run.start_key
    assert key is not None
    assert re.fullmatch("[0-9a-f]{32}", key)
    assert run.input == {"topic": "otters"}  # what was sent: the answer holds only the id
    assert run.metadata == {"job": 7, START_KEY: key}
    sent = server.requests[-1]
    assert (sent.method, sent.path) == ("POST", f"/api/workflow/{server.workflow_id}/run")
    assert sent.json() == {"startVariables": {"topic": "otters"}, "metadata": run.metadata}
    assert sent.headers["Content-Type"] == "application/json"
    other = await client.start_run(server.workflow_id, {})
    assert server.requests[-1].json() == {
        "startVariables": {},
        "metadata": {START_KEY: other.start_key},
    }
    assert other.start_key not in (None, key)  # a fresh key per start
    fake = server.get(run.id)
    assert fake.input == {"topic": "otters"}
    assert fake.metadata == {"job": 7, START_KEY: key}


async def test_start_keys_off_sends_the_documented_body_exactly(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    async with CopyAIClient(
        server.api_key, base_url=server.url, clock=clock, start_keys=False
    ) as client:
        run = await client.start_run(server.workflow_id, {"topic": "otters"}, metadata={"job": 7})
        await client.start_run(server.workflow_id, {})
        mine = await client.start_run(server.workflow_id, {}, start_key="job-7")
    assert run.start_key is None
    assert [r.json() for r in server.requests] == [
        {"startVariables": {"topic": "otters"}, "metadata": {"job": 7}},
        {"startVariables": {}},
        {"startVariables": {}, "metadata": {START_KEY: "job-7"}},  # asked for in the call
    ]
    assert mine.start_key == "job-7"


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        (([1, 2],), {}, "start_variables"),
        (("text",), {}, "start_variables"),
        (({"x": object()},), {}, "start_variables"),
        (({},), {"metadata": [1]}, "metadata"),
        (({},), {"metadata": {"when": {1, 2}}}, "metadata"),
    ],
)
async def test_start_run_bad_arguments(
    client: CopyAIClient,
    server: FakeCopyAI,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    words: str,
) -> None:
    with pytest.raises(TypeError, match=words):
        await client.start_run(server.workflow_id, *args, **kwargs)
    assert server.stats.requests == 0


async def test_start_answer_with_extra_keys(server: FakeCopyAI, clock: FakeClock) -> None:
    server.quirks = Quirks(full_start_answer=True)
    async with CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client:
        run = await client.start_run(server.workflow_id, {"a": "b"})
    assert run.id == server.runs()[0].id
    assert run.status is RunStatus.NEW


async def test_get_run_follows_schedule(client: CopyAIClient, server: FakeCopyAI) -> None:
    fake = server.add_run(
        schedule=Schedule.polls(("NEW", 1), ("PROCESSING", 1), ("RETRYING", 1), final="FAILED"),
        input={"q": 1},
    )
    seen = [(await client.get_run(server.workflow_id, fake.id)).status for _ in range(4)]
    assert seen == [RunStatus.NEW, RunStatus.PROCESSING, RunStatus.RETRYING, RunStatus.FAILED]


async def test_list_runs_pages_newest_first(client: CopyAIClient, server: FakeCopyAI) -> None:
    fakes = server.add_runs(25, schedule=Schedule.immediate())
    newest_first = [f.id for f in reversed(fakes)]
    page1 = await client.list_runs(server.workflow_id)
    assert [r.id for r in page1.runs] == newest_first[:10]
    assert (page1.total, page1.page, page1.size, page1.has_next) == (25, 1, 10, True)
    assert server.requests[-1].query == {"page": "1", "size": "10"}
    page3 = await client.list_runs(server.workflow_id, page=3, size=10)
    assert [r.id for r in page3.runs] == newest_first[20:]
    assert not page3.has_next
    big = await client.list_runs(server.workflow_id, size=100)
    assert len(big.runs) == 25
    empty = await client.list_runs(server.workflow_id, page=9, size=100)
    assert empty.runs == ()
    assert empty.total == 25


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"page": 0}, ValueError, "page must be >= 1"),
        ({"size": 0}, ValueError, "between 1 and 100"),
        ({"size": 101}, ValueError, "between 1 and 100"),
        ({"page": "2"}, TypeError, "page"),
        ({"size": 10.0}, TypeError, "size"),
    ],
)
async def test_list_runs_bounds(
    client: CopyAIClient, server: FakeCopyAI, kwargs: dict[str, Any], exc: type, words: str
) -> None:
    with pytest.raises(exc, match=words):
        await client.list_runs(server.workflow_id, **kwargs)
    assert server.stats.requests == 0
