"""Request shape and error mapping, checked with aioresponses (mocked aiohttp).

The main suite talks to the fake server over real HTTP. These tests add a second,
independent view: what exactly goes out on aiohttp's API (method, URL, headers, query,
body) and how mocked answers map to errors. aioresponses 0.7.9 cannot build responses on
aiohttp >= 3.14 (``ClientResponse`` needs ``stream_writer``, aioresponses#289), so here
they skip, and ``.ci/run`` runs them in a second environment on the oldest supported
aiohttp, with ``COPYAI_REQUIRE_AIORESPONSES=1`` turning that skip into a failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import aiohttp
import pytest
from yarl import URL

import copyai_async
from copyai_async import (
    START_KEY,
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    CopyAIClient,
    InvalidResponseError,
    NotFoundError,
    RateLimitError,
    RunStatus,
    ServerError,
    StartUncertainError,
    UnprocessableEntityError,
)
from copyai_async.testing import FakeClock

from .conftest import load_payload


def _release(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version(name).split(".")[:3] if part.isdigit())


BROKEN = _release("aiohttp") >= (3, 14) and _release("aioresponses") <= (0, 7, 9)
REASON = (
    f"aioresponses {version('aioresponses')} cannot run on aiohttp {aiohttp.__version__} "
    "(ClientResponse needs stream_writer, aioresponses#289); .ci/run runs these tests in "
    "its oldest-aiohttp environment"
)
if BROKEN and os.environ.get("COPYAI_REQUIRE_AIORESPONSES"):
    raise RuntimeError(f"COPYAI_REQUIRE_AIORESPONSES is set, but {REASON}")

pytestmark = [pytest.mark.aioresponses, pytest.mark.skipif(BROKEN, reason=REASON)]

BASE = "https://api.copy.ai/api"
KEY = "sk-shape-key"


@pytest.fixture
def mocked() -> Iterator[Any]:
    from aioresponses import aioresponses

    with aioresponses() as m:
        yield m


@pytest.fixture
async def api(clock: FakeClock) -> Any:
    async with CopyAIClient(KEY, clock=clock, max_retries=2) as c:
        yield c


def _calls(mocked: Any, method: str, url: str) -> list[Any]:
    return list(mocked.requests.get((method, URL(url)), []))


def _assert_headers(call: Any) -> None:
    headers = call.kwargs["headers"]
    assert headers["x-copy-ai-api-key"] == KEY
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == f"copyai-async/{copyai_async.__version__}"


async def test_get_run_shape(mocked: Any, api: CopyAIClient) -> None:
    url = f"{BASE}/workflow/WCFG-1/run/WRUN-2"
    mocked.get(url, payload=load_payload("get_run_example.json"))
    run = await api.get_run("WCFG-1", "WRUN-2")
    assert run.status is RunStatus.COMPLETE
    assert run.workflow_id == "WCFG-1"
    (call,) = _calls(mocked, "GET", url)
    _assert_headers(call)
    assert call.kwargs.get("data") is None


async def test_list_runs_shape(mocked: Any, api: CopyAIClient) -> None:
    url = f"{BASE}/workflow/PKGW-9/run?page=3&size=100"
    mocked.get(url, payload=load_payload("list_runs_success.json"))
    page = await api.list_runs("PKGW-9", page=3, size=100)
    assert page.total == 3
    assert len(page.runs) == 2
    assert page.page == 3
    (call,) = _calls(mocked, "GET", url)
    _assert_headers(call)


async def test_start_run_shape(mocked: Any, api: CopyAIClient) -> None:
    url = f"{BASE}/workflow/WCFG-1/run"
    mocked.post(url, payload=load_payload("start_run_id_only.json"))
    run = await api.start_run("WCFG-1", {"topic": "x", "n": 2}, metadata={"job": "a"})
    assert run.status is RunStatus.NEW
    assert run.workflow_id == "WCFG-1"
    (call,) = _calls(mocked, "POST", url)
    _assert_headers(call)
    assert call.kwargs["headers"]["Content-Type"] == "application/json"
    assert json.loads(call.kwargs["data"]) == {
        "startVariables": {"topic": "x", "n": 2},
        "metadata": {"job": "a", START_KEY: run.start_key},
    }


async def test_odd_ids_encoded_as_one_segment(mocked: Any, api: CopyAIClient) -> None:
    url = f"{BASE}/workflow/a%2F..%2Fb/run/x%3Fy%23z"
    mocked.get(URL(url, encoded=True), payload={"status": "success", "data": {"id": "x?y#z"}})
    run = await api.get_run("a/../b", "x?y#z")
    assert run.id == "x?y#z"
    (key,) = mocked.requests
    assert key[1].raw_path == "/api/workflow/a%2F..%2Fb/run/x%3Fy%23z"


@pytest.mark.parametrize(
    ("status", "payload", "exc", "code"),
    [
        (
            400,
            load_payload("error_credit_limit.json"),
            BadRequestError,
            "WORKFLOW_CREDIT_LIMIT_REACHED",
        ),
        (
            401,
            {"status": "error", "errorCode": "UNAUTHORIZED"},
            AuthenticationError,
            "UNAUTHORIZED",
        ),
        (404, load_payload("error_not_found.json"), NotFoundError, "NOT_FOUND"),
        (
            422,
            load_payload("error_request_invalid.json"),
            UnprocessableEntityError,
            "REQUEST_INVALID",
        ),
    ],
)
async def test_error_mapping(
    mocked: Any, api: CopyAIClient, status: int, payload: Any, exc: type, code: str
) -> None:
    url = f"{BASE}/workflow/W/run"
    mocked.post(url, status=status, payload=payload)
    with pytest.raises(exc) as info:
        await api.start_run("W", {})
    assert info.value.status == status
    assert info.value.error_code == code
    assert f"POST /api/workflow/W/run -> {status} {code}" in str(info.value)
    assert len(_calls(mocked, "POST", url)) == 1


async def test_retries_then_success(mocked: Any, api: CopyAIClient, clock: FakeClock) -> None:
    url = f"{BASE}/workflow/W/run/R"
    mocked.get(url, status=503, body="<html>down</html>", content_type="text/html")
    mocked.get(url, status=429, headers={"Retry-After": "1.5"}, payload={"status": "error"})
    mocked.get(url, payload=load_payload("get_run_success.json"))
    run = await api.get_run("W", "R")
    assert run.credits == 9001
    assert len(_calls(mocked, "GET", url)) == 3
    assert clock.sleeps[1] == 1.5


async def test_server_error_exhausted(mocked: Any, api: CopyAIClient) -> None:
    url = f"{BASE}/workflow/W/run/R"
    for _ in range(3):
        mocked.get(url, status=500, body="<html>oops</html>", content_type="text/html")
    with pytest.raises(ServerError, match="after 3 attempts"):
        await api.get_run("W", "R")


async def test_rate_limit_too_long(mocked: Any, api: CopyAIClient) -> None:
    url = f"{BASE}/workflow/W/run/R"
    mocked.get(url, status=429, headers={"Retry-After": "3600"}, payload={"status": "error"})
    with pytest.raises(RateLimitError) as info:
        await api.get_run("W", "R")
    assert info.value.retry_after == 3600.0


async def test_connection_error_mapping(mocked: Any, api: CopyAIClient) -> None:
    url = f"{BASE}/workflow/W/run"
    listing = f"{BASE}/workflow/W/run?page=1&size=100"
    mocked.post(url, exception=aiohttp.ServerDisconnectedError())
    mocked.get(listing, payload={"status": "success", "data": {"total": 0, "data": []}})
    mocked.post(url, payload=load_payload("start_run_id_only.json"))
    run = await api.start_run("W", {})
    assert run.status is RunStatus.NEW
    # Lost, looked for by its start key (no run has it), then sent again: once.
    assert len(_calls(mocked, "POST", url)) == 2
    assert len(_calls(mocked, "GET", listing)) == 1


async def test_connection_error_without_start_key(mocked: Any, clock: FakeClock) -> None:
    url = f"{BASE}/workflow/W/run"
    mocked.post(url, exception=aiohttp.ServerDisconnectedError())
    async with CopyAIClient(KEY, clock=clock, start_keys=False) as api:
        with pytest.raises(StartUncertainError) as info:
            await api.start_run("W", {})
    assert isinstance(info.value.__cause__, APIConnectionError)
    assert len(_calls(mocked, "POST", url)) == 1  # a POST that may have landed is not re-sent


async def test_invalid_json_mapping(mocked: Any, api: CopyAIClient) -> None:
    url = f"{BASE}/workflow/W/run/R"
    for _ in range(3):  # an unreadable answer to a GET is retried like a 5xx
        mocked.get(url, status=200, body="<html>ok?</html>", content_type="text/html")
    with pytest.raises(InvalidResponseError) as info:
        await api.get_run("W", "R")
    assert info.value.json_path == "$"
    assert "not JSON" in str(info.value)
    assert len(_calls(mocked, "GET", url)) == 3
