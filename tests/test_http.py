"""The request path: retry rules, backoff, Retry-After, timeouts and error mapping.

All over real loopback HTTP against the fake server; sleeps go to a FakeClock.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from copyai_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CopyAIClient,
    CopyAIError,
    InvalidResponseError,
    NotFoundError,
    RateLimitError,
    RunStatus,
    ServerError,
    StartUncertainError,
    UnprocessableEntityError,
)
from copyai_async._http import Fate, Redactor, RetryConfig, _classify_failure, parse_retry_after
from copyai_async.testing import FakeClock, FakeCopyAI, Fault, Schedule

from .conftest import load_payload

REAL_KEY = "cpk-3f9c2b7e4a1d8c6f0b5e2a9d"  # a real-looking API key


@pytest.fixture
async def run_id(server: FakeCopyAI) -> str:
    return server.add_run(schedule=Schedule.immediate()).id


def _make(server: FakeCopyAI, clock: FakeClock, **kw: Any) -> CopyAIClient:
    return CopyAIClient(server.api_key, base_url=server.url, clock=clock, **kw)


@pytest.fixture
async def quick(server: FakeCopyAI, clock: FakeClock) -> AsyncIterator[CopyAIClient]:
    async with _make(server, clock, max_retries=2) as c:
        yield c


# -- GET retries ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_get_retried_on_retryable_status(
    quick: CopyAIClient, server: FakeCopyAI, clock: FakeClock, run_id: str, status: int
) -> None:
    server.inject(Fault.status_code(status))
    run = await quick.get_run(server.workflow_id, run_id)
    assert run.status is RunStatus.COMPLETE
    assert [r.status for r in server.requests] == [status, 200]
    assert len(clock.sleeps) == 1


@pytest.mark.parametrize(
    "fault", [Fault.disconnect(), Fault.truncate(), Fault.server_error(502, html=True)]
)
async def test_get_retried_on_dropped_or_broken_answers(
    quick: CopyAIClient, server: FakeCopyAI, clock: FakeClock, run_id: str, fault: Fault
) -> None:
    server.inject(fault, fault)
    run = await quick.get_run(server.workflow_id, run_id)
    assert run.id == run_id
    assert server.stats.requests == 3
    # aiohttp itself re-sends an idempotent request once when a pooled connection drops,
    # so a disconnect may cost one sleep of ours instead of two.
    assert 1 <= len(clock.sleeps) <= 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 501])
async def test_get_not_retried_on_other_statuses(
    quick: CopyAIClient, server: FakeCopyAI, clock: FakeClock, run_id: str, status: int
) -> None:
    server.inject(Fault.status_code(status, error_code="X"))
    with pytest.raises(APIStatusError) as info:
        await quick.get_run(server.workflow_id, run_id)
    assert info.value.status == status
    assert server.stats.requests == 1
    assert clock.sleeps == []


async def test_retries_exhausted(
    quick: CopyAIClient, server: FakeCopyAI, clock: FakeClock, run_id: str
) -> None:
    server.inject(*[Fault.server_error(503)] * 3)
    with pytest.raises(ServerError) as info:
        await quick.get_run(server.workflow_id, run_id)
    assert server.stats.requests == 3
    assert len(clock.sleeps) == 2
    assert info.value.status == 503
    assert "after 3 attempts" in str(info.value)


async def test_connection_drop_exhausted(
    quick: CopyAIClient, server: FakeCopyAI, run_id: str
) -> None:
    server.inject(*[Fault.disconnect()] * 10)
    with pytest.raises(APIConnectionError) as info:
        await quick.get_run(server.workflow_id, run_id)
    assert 3 <= server.stats.requests <= 6  # ours: 3 attempts; aiohttp may add one each
    assert not isinstance(info.value, APITimeoutError)
    assert info.value.method == "GET"
    assert info.value.path.endswith(run_id)
    assert "after 3 attempts" in str(info.value)
    assert isinstance(info.value.__cause__, aiohttp.ClientError)


async def test_zero_retries(server: FakeCopyAI, clock: FakeClock, run_id: str) -> None:
    async with _make(server, clock, max_retries=0) as client:
        server.inject(Fault.server_error(500))
        with pytest.raises(ServerError):
            await client.get_run(server.workflow_id, run_id)
    assert server.stats.requests == 1
    assert clock.sleeps == []


async def test_backoff_is_full_jitter_under_a_growing_capped_ceiling(
    server: FakeCopyAI, clock: FakeClock, run_id: str
) -> None:
    async with _make(server, clock, max_retries=6, backoff_base=0.5, backoff_max=3.0) as client:
        server.inject(*[Fault.server_error(500)] * 6)
        await client.get_run(server.workflow_id, run_id)
    ceilings = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert len(clock.sleeps) == 6
    for sleep, ceiling in zip(clock.sleeps, ceilings, strict=False):
        assert 0.0 <= sleep <= ceiling


def test_full_jitter_spreads_over_the_whole_range() -> None:
    cfg = RetryConfig(max_retries=3, backoff_base=1.0, backoff_max=10.0, max_retry_after=60)
    rng = random.Random(7)
    waits = [cfg.backoff(2, rng) for _ in range(2000)]
    assert min(waits) < 0.2
    assert max(waits) > 3.8
    assert all(0 <= w <= 4.0 for w in waits)
    assert max(cfg.backoff(500, rng) for _ in range(100)) <= 10.0  # no overflow past cap


# -- Retry-After ------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [("2", 2.0), ("0.25", 0.25), ("0", 0.0)])
async def test_retry_after_seconds_honoured(
    quick: CopyAIClient,
    server: FakeCopyAI,
    clock: FakeClock,
    run_id: str,
    header: str,
    expected: float,
) -> None:
    server.inject(Fault.rate_limit(header))
    await quick.get_run(server.workflow_id, run_id)
    assert clock.sleeps == [expected]


async def test_retry_after_http_date_honoured(
    quick: CopyAIClient, server: FakeCopyAI, clock: FakeClock, run_id: str
) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    server.inject(Fault.rate_limit(format_datetime(when, usegmt=True)))
    await quick.get_run(server.workflow_id, run_id)
    (slept,) = clock.sleeps
    assert 27.0 <= slept <= 31.0  # HTTP dates have whole seconds


async def test_retry_after_on_503_honoured(
    quick: CopyAIClient, server: FakeCopyAI, clock: FakeClock, run_id: str
) -> None:
    server.inject(Fault.status_code(503, retry_after="1.5"))
    await quick.get_run(server.workflow_id, run_id)
    assert clock.sleeps == [1.5]


async def test_429_without_retry_after_backs_off(
    quick: CopyAIClient, server: FakeCopyAI, clock: FakeClock, run_id: str
) -> None:
    server.inject(Fault.rate_limit(None), Fault.rate_limit("soon"))
    await quick.get_run(server.workflow_id, run_id)
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.5
    assert 0 <= clock.sleeps[1] <= 1.0


async def test_retry_after_longer_than_max_raises_at_once(
    server: FakeCopyAI, clock: FakeClock, run_id: str
) -> None:
    async with _make(server, clock, max_retry_after=10.0) as client:
        server.inject(Fault.rate_limit("120"))
        with pytest.raises(RateLimitError) as info:
            await client.get_run(server.workflow_id, run_id)
    assert info.value.retry_after == 120.0
    assert info.value.status == 429
    assert info.value.error_code == "RATE_LIMITED"
    assert "120.0 s" in str(info.value)
    assert "max_retry_after=10" in str(info.value)
    assert clock.sleeps == []
    assert server.stats.requests == 1


async def test_rate_limit_exhausted_carries_retry_after(
    quick: CopyAIClient, server: FakeCopyAI, run_id: str
) -> None:
    server.inject(*[Fault.rate_limit("1")] * 3)
    with pytest.raises(RateLimitError) as info:
        await quick.get_run(server.workflow_id, run_id)
    assert info.value.retry_after == 1.0


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_retry_after(None) is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("inf") is None
    assert parse_retry_after("tomorrow") is None
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:09 GMT", now=now) == 9.0
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now=now) == 0.0


# -- POST retries -----------------------------------------------------------------------


async def test_post_retried_on_429_and_creates_one_run(
    quick: CopyAIClient, server: FakeCopyAI, clock: FakeClock
) -> None:
    server.inject(Fault.rate_limit("0.5"), Fault.rate_limit(None), method="POST")
    run = await quick.start_run(server.workflow_id, {"a": 1})
    assert [f.id for f in server.runs()] == [run.id]
    assert server.stats.requests == 3
    assert clock.sleeps[0] == 0.5


UNKNOWN_OUTCOMES = [
    Fault.server_error(500),
    Fault.server_error(503),
    Fault.server_error(504),
    Fault.disconnect(),
    Fault.truncate(),
    Fault.garbled("html", after=False),
    Fault.server_error(502, after=True),
    Fault.disconnect(after=True),
    Fault.truncate(after=True),
    Fault.garbled("truncated"),
    Fault.garbled("shape"),
]


@pytest.mark.parametrize("fault", UNKNOWN_OUTCOMES, ids=repr)
async def test_post_not_sent_blindly_where_the_run_may_exist(
    server: FakeCopyAI, clock: FakeClock, fault: Fault
) -> None:
    # Without a start key the client cannot look for the run: it says so, and does not
    # send the start again.
    server.inject(fault, method="POST")
    async with _make(server, clock, start_keys=False) as client:
        with pytest.raises(StartUncertainError) as info:
            await client.start_run(server.workflow_id, {"a": 1})
    assert server.stats.requests == 1
    assert clock.sleeps == []
    assert len(server.runs()) == (1 if fault.after else 0)
    error = info.value
    assert error.start_key is None
    assert error.workflow_id == server.workflow_id
    assert error.method == "POST"
    assert isinstance(error.__cause__, CopyAIError)
    assert "may or may not have started" in str(error)


@pytest.mark.parametrize("fault", [Fault.status_code(408), Fault.rate_limit("0")], ids=repr)
async def test_post_refused_unread_is_sent_again(
    quick: CopyAIClient, server: FakeCopyAI, fault: Fault
) -> None:
    server.inject(fault, method="POST")
    run = await quick.start_run(server.workflow_id, {"a": 1})
    assert [f.id for f in server.runs()] == [run.id]
    assert [r.method for r in server.requests] == ["POST", "POST"]  # no lookup needed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_connect_failure_retried_for_get_and_post(clock: FakeClock, method: str) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/api"
    async with CopyAIClient("k", base_url=url, clock=clock, max_retries=2) as client:
        call = client.get_run("w", "r") if method == "GET" else client.start_run("w", {})
        with pytest.raises(APIConnectionError) as info:
            await call
    assert len(clock.sleeps) == 2
    assert "could not connect" in str(info.value)
    assert "after 3 attempts" in str(info.value)
    assert info.value.method == method


def test_what_a_failure_means_for_a_request_that_is_not_idempotent() -> None:
    unsent = [
        aiohttp.ConnectionTimeoutError(),
        aiohttp.ClientConnectorError(
            aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
            OSError(111, "refused"),
        ),
        # The keep-alive edge, as aiohttp reports it: 3.10 as ClientOSError, later
        # releases as ClientConnectionResetError (both OSErrors, with these words).
        getattr(aiohttp, "ClientConnectionResetError", aiohttp.ClientOSError)(
            "Cannot write to closing transport"
        ),
        aiohttp.ClientOSError("Cannot write to closing transport"),
        aiohttp.ClientOSError(None, "Can not write request body for http://h/api/x"),
    ]
    for exc in unsent:
        assert _classify_failure(exc)[2] is Fate.UNSENT, exc
    assert _classify_failure(aiohttp.SocketTimeoutError())[2] is Fate.RUNNING
    assert _classify_failure(asyncio.TimeoutError())[2] is Fate.RUNNING
    for exc in (
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ClientPayloadError("Response payload is not completed"),
    ):
        assert _classify_failure(exc)[2] is Fate.UNKNOWN, exc


# -- timeouts ---------------------------------------------------------------------------


async def test_read_timeout_get_retried_then_raised(
    server: FakeCopyAI, clock: FakeClock, run_id: str
) -> None:
    server.latency = 0.5
    async with _make(server, clock, timeout=0.05, max_retries=1) as client:
        with pytest.raises(APITimeoutError) as info:
            await client.get_run(server.workflow_id, run_id)
    assert isinstance(info.value, TimeoutError)
    assert server.stats.requests == 2
    assert len(clock.sleeps) == 1


async def test_read_timeout_post_not_sent_again(server: FakeCopyAI, clock: FakeClock) -> None:
    # The server may still be creating the run when the client gives up waiting: a
    # lookup that finds nothing cannot rule it out, so the start is not sent again.
    release = server.hold(lambda request: request.method == "POST")
    async with _make(server, clock, timeout=0.05, max_retries=3) as client:
        with pytest.raises(StartUncertainError) as info:
            await client.start_run(server.workflow_id, {})
    release.set()
    assert [r.method for r in server.requests if r.method == "POST"] == ["POST"]
    assert "may still be creating it" in str(info.value)
    assert info.value.start_key is not None
    assert isinstance(info.value.__cause__, APITimeoutError)


async def test_client_timeout_object_accepted(
    server: FakeCopyAI, clock: FakeClock, run_id: str
) -> None:
    async with _make(server, clock, timeout=aiohttp.ClientTimeout(total=5)) as client:
        assert (await client.get_run(server.workflow_id, run_id)).id == run_id


# -- error mapping ----------------------------------------------------------------------


async def test_404_not_found(quick: CopyAIClient, server: FakeCopyAI) -> None:
    with pytest.raises(NotFoundError) as info:
        await quick.get_run(server.workflow_id, "WRUN-missing")
    err = info.value
    assert (err.status, err.error_code, err.method) == (404, "NOT_FOUND", "GET")
    assert err.path == f"/api/workflow/{server.workflow_id}/run/WRUN-missing"
    for part in ("GET", err.path, "404", "NOT_FOUND"):
        assert part in str(err)
    with pytest.raises(NotFoundError):
        await quick.list_runs("WCFG-nope")


async def test_404_says_what_was_not_found(quick: CopyAIClient, server: FakeCopyAI) -> None:
    wf = server.workflow_id
    calls: list[tuple[Callable[[], Awaitable[Any]], str]] = [
        (lambda: quick.get_run(wf, "WRUN-missing"), "no such workflow or run"),
        (lambda: quick.list_runs("WCFG-nope"), "no such workflow"),
        (lambda: quick.start_run("WCFG-nope", {}), "no such workflow"),
        (lambda: quick.get_webhook("WHK-nope"), "no such webhook"),
        (lambda: quick.delete_webhook("WHK-nope"), "no such webhook"),
    ]
    for call, words in calls:
        with pytest.raises(NotFoundError) as info:
            await call()
        err = info.value
        assert (err.status, err.error_code) == (404, "NOT_FOUND")
        assert str(err).endswith(f"-> 404 NOT_FOUND; {words}, or not visible to this API key")
    server.inject(Fault.raw({"status": "error", "errorCode": "NOT_FOUND"}))  # on a 200
    with pytest.raises(NotFoundError, match="no such webhook, or not visible"):
        await quick.get_webhook("WHK-1")


async def test_404_from_outside_the_api_says_the_base_url_may_be_wrong(
    server: FakeCopyAI, clock: FakeClock
) -> None:
    root = server.url.removesuffix("/api")  # forgot the /api
    async with CopyAIClient(REAL_KEY, base_url=root, clock=clock) as client:
        server.api_key = REAL_KEY
        for call in (lambda: client.get_run("W", "R"), lambda: client.get_webhook("WHK-1")):
            with pytest.raises(NotFoundError) as info:
                await call()
            err = info.value
            assert (err.status, err.error_code) == (404, None)
            assert err.body == "404: Not Found"
            message = str(err)
            assert f"{err.method} {err.path} -> 404 (non-JSON body); " in message
            assert f"the base URL {root} may be wrong" in message
            assert "Copy.ai's API root is https://api.copy.ai/api" in message
            assert "no such" not in message
            assert REAL_KEY not in message + repr(err)
    assert server.stats.requests == 2  # a 404 is not retried


@pytest.mark.parametrize(
    ("body", "content_type", "label"),
    [
        ("<html><center><h1>404 Not Found</h1></center><hr>nginx</html>", "text/html", "non-JSON"),
        ("404: Not Found", "text/plain", "non-JSON"),
        ("", "text/plain", "no error code"),
        ('{"message": "Not Found"}', "application/json", "no error code"),
    ],
)
async def test_404_that_is_not_the_apis_error(
    quick: CopyAIClient, server: FakeCopyAI, body: str, content_type: str, label: str
) -> None:
    server.inject(Fault.raw(body, status=404, content_type=content_type))
    with pytest.raises(NotFoundError) as info:
        await quick.get_run(server.workflow_id, "WRUN-1")
    message = str(info.value)
    assert f"-> 404 ({label}" in message
    assert f"the base URL {server.url} may be wrong" in message
    assert "no such" not in message


async def test_401_wrong_key(server: FakeCopyAI, clock: FakeClock) -> None:
    async with CopyAIClient("wrong", base_url=server.url, clock=clock) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.list_runs(server.workflow_id)
    assert info.value.status == 401
    assert "API key" in str(info.value)
    assert server.stats.requests == 1


async def test_403_is_authentication_error(quick: CopyAIClient, server: FakeCopyAI) -> None:
    server.inject(Fault.status_code(403, error_code="FORBIDDEN"))
    with pytest.raises(AuthenticationError, match="403 FORBIDDEN"):
        await quick.list_runs(server.workflow_id)


async def test_400_credit_limit(server: FakeCopyAI, clock: FakeClock) -> None:
    server.credit_limit = 3
    async with _make(server, clock) as client:
        await client.start_run(server.workflow_id, {})
        with pytest.raises(BadRequestError) as info:
            await client.start_run(server.workflow_id, {})
    assert info.value.error_code == "WORKFLOW_CREDIT_LIMIT_REACHED"
    assert "POST" in str(info.value)
    assert "400 WORKFLOW_CREDIT_LIMIT_REACHED" in str(info.value)


async def test_422_details(quick: CopyAIClient, server: FakeCopyAI) -> None:
    server.inject(Fault.raw(load_payload("error_request_invalid.json"), status=422))
    with pytest.raises(UnprocessableEntityError) as info:
        await quick.start_run(server.workflow_id, {})
    assert info.value.details == {"startVariables": ["is required"]}
    assert "422 REQUEST_INVALID: startVariables: is required" in str(info.value)


async def test_5xx_html_page(quick: CopyAIClient, server: FakeCopyAI, run_id: str) -> None:
    server.inject(*[Fault.server_error(502, html=True)] * 3)
    with pytest.raises(ServerError) as info:
        await quick.get_run(server.workflow_id, run_id)
    assert info.value.error_code is None
    assert "<h1>502</h1>" in info.value.body
    assert "502 (non-JSON body)" in str(info.value)
    assert info.value.headers["Content-Type"].startswith("text/html")


async def test_unlisted_status_is_base_status_error(
    quick: CopyAIClient, server: FakeCopyAI
) -> None:
    server.inject(Fault.status_code(418))
    with pytest.raises(APIStatusError) as info:
        await quick.list_runs(server.workflow_id)
    assert type(info.value) is APIStatusError
    assert info.value.status == 418


@pytest.mark.parametrize(
    ("body", "json_path", "words"),
    [
        ("<html>maintenance</html>", "$", "not JSON"),
        ("", "$", "not JSON"),
        ('{"status": "success", "data": {"id": "x"', "$", "not JSON"),
        ({"id": "WRUN-1"}, "$.data", "envelope"),
        ([1], "$", "envelope"),
        (
            {"status": "success", "data": {"id": "r", "credits": "lots"}},
            "$.data.credits",
            "integer",
        ),
    ],
)
async def test_invalid_response(
    quick: CopyAIClient, server: FakeCopyAI, clock: FakeClock, body: Any, json_path: str, words: str
) -> None:
    server.inject(*[Fault.raw(body)] * 3)
    with pytest.raises(InvalidResponseError) as info:
        await quick.get_run(server.workflow_id, "r")
    err = info.value
    assert err.json_path == json_path
    assert words in str(err)
    assert "after 3 attempts" in str(err)
    assert err.status == 200
    assert err.method == "GET"
    assert err.path in str(err)
    assert len(clock.sleeps) == 2  # an unreadable 200 is retried like a 5xx


@pytest.mark.parametrize(
    "fault", [Fault.garbled("truncated"), Fault.garbled("html"), Fault.garbled("shape")], ids=repr
)
async def test_unreadable_answer_to_a_get_is_retried(
    quick: CopyAIClient, server: FakeCopyAI, run_id: str, fault: Fault
) -> None:
    server.inject(fault, fault)
    run = await quick.get_run(server.workflow_id, run_id)
    assert run.id == run_id
    assert server.stats.requests == 3


@pytest.mark.parametrize("word", ["error", "ERROR", "Error"])
@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("NOT_FOUND", NotFoundError),
        ("WORKFLOW_CREDIT_LIMIT_REACHED", BadRequestError),
        ("REQUEST_INVALID", UnprocessableEntityError),
        ("UNAUTHORIZED", AuthenticationError),
        ("SOMETHING_NEW", APIStatusError),
        (None, APIStatusError),
    ],
)
async def test_error_envelope_on_a_200_is_an_api_error(
    quick: CopyAIClient, server: FakeCopyAI, word: str, code: str | None, cls: type
) -> None:
    body: dict[str, Any] = {"status": word, "details": {"field": ["bad"]}}
    if code is not None:
        body["errorCode"] = code
    server.inject(Fault.raw(body))
    with pytest.raises(APIStatusError) as info:
        await quick.get_run(server.workflow_id, "r")
    assert type(info.value) is cls
    assert info.value.status == 200
    assert info.value.error_code == code
    assert info.value.details == {"field": ["bad"]}
    assert f"-> 200 {code or '(no error code)'}" in str(info.value)
    assert server.stats.requests == 1  # the API's own answer: not retried


async def test_invalid_page_names_index(quick: CopyAIClient, server: FakeCopyAI) -> None:
    body = {
        "status": "success",
        "data": {"total": "2", "data": [{"id": "a"}, {"id": "b", "credits": "lots"}]},
    }
    server.inject(*[Fault.raw(body)] * 3)
    with pytest.raises(InvalidResponseError) as info:
        await quick.list_runs(server.workflow_id)
    assert info.value.json_path == "$.data.data[1].credits"
    assert "?page=1&size=10" not in info.value.path


async def test_requests_and_retries_are_logged(
    quick: CopyAIClient, server: FakeCopyAI, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="copyai_async")
    server.inject(Fault.server_error(503))
    await quick.get_run(server.workflow_id, run_id)
    messages = [r.getMessage() for r in caplog.records if r.name == "copyai_async"]
    assert any("-> 503" in m for m in messages)
    assert any(m.startswith("retrying GET") and "attempt 2 of 3" in m for m in messages)
    assert any("-> 200" in m for m in messages)


async def test_errors_survive_pickling(server: FakeCopyAI) -> None:
    server.inject(Fault.rate_limit("99"), Fault.raw("<html>"))
    async with _make(server, FakeClock(), max_retry_after=1, max_retries=0) as client:
        with pytest.raises(RateLimitError) as rate:
            await client.get_run(server.workflow_id, "r")
        with pytest.raises(InvalidResponseError) as invalid:
            await client.get_run(server.workflow_id, "r")
    for original in (rate.value, invalid.value):
        copy = pickle.loads(pickle.dumps(original))
        assert type(copy) is type(original)
        assert str(copy) == str(original)
        assert vars(copy) == vars(original)
    assert pickle.loads(pickle.dumps(rate.value)).retry_after == 99.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a": [1, 2.5, "x", null, true]}', {"a": [1, 2.5, "x", None, True]}),
        (b'{"edge": 9223372036854775807}', {"edge": 2**63 - 1}),
        (b'{"neg": -9223372036854775808}', {"neg": -(2**63)}),
        (b'{"n": NaN}', "nan"),
    ],
)
def test_json_decoding_matches_the_standard_library(raw: bytes, expected: Any) -> None:
    from copyai_async._http import loads

    value = loads(raw)
    if expected == "nan":
        assert value["n"] != value["n"]
    else:
        assert value == expected


def test_undecodable_json_raises_value_error() -> None:
    from copyai_async._http import loads

    with pytest.raises(ValueError, match=r"\w"):
        loads(b"{oops")


# -- redaction --------------------------------------------------------------------------

# What aiohttp says when a name does not resolve: a short key must leave it whole.
_DNS_TEXT = "Cannot connect to host api.copy.ai:443 ssl:default [Name or service not known]"


@pytest.mark.parametrize("key", ["k", "o", "n", "e", "ss", "nown", "api", "copy", "servic"])
def test_a_short_key_is_never_masked_inside_a_word(key: str) -> None:
    assert Redactor(key).redact(_DNS_TEXT) == _DNS_TEXT
    assert Redactor(key).redact("x-copy-ai-api-key-and-more known_keys") == (
        "x-copy-ai-api-key-and-more known_keys"
    )


@pytest.mark.parametrize("key", ["k", "o", "ss", "abc", "not", "k+y/z", "12345"])
@pytest.mark.parametrize(
    "template",
    [
        "{}",
        "x-copy-ai-api-key: {}",
        "https://h.example/api?key={}&page=1",
        "https://h.example/api/{}/run",
        "'{}'",
        '"{}"',
        "bad key {}.",
        "(key={})",
        "[{}]",
        "a%20{}%20b",
        "{} and {} again",
    ],
)
def test_a_short_key_is_masked_wherever_it_stands_as_a_token(key: str, template: str) -> None:
    shown = Redactor(key).redact(template.format(key, key))
    assert shown == template.format("***", "***")


def test_a_key_is_masked_percent_encoded_too() -> None:
    for key in ("k+y/z", "a real/key+with=marks"):
        encoded = quote(key, safe="")
        assert Redactor(key).redact(f"GET /api?key={encoded}&page=1") == "GET /api?key=***&page=1"


@pytest.mark.parametrize(
    "template",
    [
        "{}",
        "Bearer{}",
        "key:{}",
        "x{}y",
        "{}{}",
        "https://h.example/api?key={}&page=1",
        "host {}.example.invalid:443",
        "ApiKey_{}_suffix",
    ],
)
def test_a_real_looking_key_is_masked_even_inside_a_word(template: str) -> None:
    shown = Redactor(REAL_KEY).redact(template.format(REAL_KEY, REAL_KEY))
    assert shown == template.format("***", "***")
    assert REAL_KEY[4:] not in shown


def test_a_secret_that_holds_another_is_masked_whole() -> None:
    redactor = Redactor("pw", f"user:{REAL_KEY}", REAL_KEY)
    assert redactor.redact(f"user:{REAL_KEY} and pw") == "*** and ***"
    assert Redactor().redact(_DNS_TEXT) == _DNS_TEXT  # no secret: nothing to mask
