"""Creating a webhook at most once, by the same rules as starting a run.

Both go through ``copyai_async._once.AtMostOnce``; tests/test_start.py holds the starts'
cases, tests/test_transport_decisions.py the decisions behind both. Over real loopback
HTTP; the fake's faults decide whether the create reached it (``after=True``: the
webhook exists) or not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from copyai_async import (
    APIConnectionError,
    CopyAIClient,
    ServerError,
    StartUncertainError,
)
from copyai_async.testing import FakeClock, FakeCopyAI, Fault

URL = "https://example.com/hook"
KIND = "workflowRun.completed"


@pytest.fixture
async def client(server: FakeCopyAI, clock: FakeClock) -> AsyncIterator[CopyAIClient]:
    async with CopyAIClient(
        server.api_key, base_url=server.url, clock=clock, max_retry_after=10
    ) as c:
        yield c


def _calls(server: FakeCopyAI) -> list[str]:
    return [f"{r.method} {r.path.rsplit('/api', 1)[-1]}" for r in server.requests]


async def test_a_lost_create_waits_as_the_server_asked_then_finds_it(
    server: FakeCopyAI, client: CopyAIClient, clock: FakeClock
) -> None:
    lost = Fault(kind="status", status=503, retry_after="7", after=True)
    server.inject(lost, method="POST", path="/webhook")
    hook = await client.create_webhook(URL, KIND)
    assert [h.id for h in server.webhooks] == [hook.id]
    assert _calls(server) == ["POST /webhook", "GET /webhook"]
    assert clock.sleeps == [7.0]  # the 503's Retry-After, as for a start


async def test_a_lost_create_ruled_out_is_sent_again_after_retry_after(
    server: FakeCopyAI, client: CopyAIClient, clock: FakeClock
) -> None:
    server.inject(Fault.status_code(503, retry_after="3"), method="POST", path="/webhook")
    hook = await client.create_webhook(URL, KIND)
    assert [h.id for h in server.webhooks] == [hook.id]
    assert _calls(server) == ["POST /webhook", "GET /webhook", "POST /webhook"]
    assert clock.sleeps == [3.0]


async def test_a_create_asked_to_wait_too_long_is_not_sent_again(
    server: FakeCopyAI, client: CopyAIClient, clock: FakeClock
) -> None:
    server.inject(Fault.status_code(503, retry_after="30"), method="POST", path="/webhook")
    with pytest.raises(ServerError) as info:
        await client.create_webhook(URL, KIND)
    # Looked for and ruled out: known not to exist, so the error says nothing more.
    assert "may or may not" not in str(info.value)
    assert _calls(server) == ["POST /webhook", "GET /webhook"]
    assert server.webhooks == []
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] < 30  # a backoff: the 30 s asked for are more than allowed


async def test_a_create_that_may_still_be_in_progress_is_uncertain(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    server.inject(Fault.server_error(504), method="POST", path="/webhook")
    with pytest.raises(ServerError) as info:
        await client.create_webhook(URL, KIND)
    error = info.value
    assert not isinstance(error, StartUncertainError)
    assert "the webhook may or may not have been created" in str(error)
    assert "server may still be creating it" in str(error)
    assert "list_webhooks()" in str(error)
    assert error.status == 504
    assert error.method == "POST"
    assert isinstance(error.__cause__, ServerError)
    assert error.__cause__ is not error
    assert [c for c in _calls(server) if c.startswith("POST")] == ["POST /webhook"]


async def test_a_create_whose_lookup_fails_is_uncertain(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    server.inject(Fault.disconnect(after=True), method="POST", path="/webhook")
    server.inject(*[Fault.server_error(500)] * 4, method="GET", path="/webhook")
    with pytest.raises(APIConnectionError) as info:
        await client.create_webhook(URL, KIND)
    assert "may or may not have been created" in str(info.value)
    assert "listing webhooks to look for it failed" in str(info.value)
    assert len(server.webhooks) == 1  # it was: the caller is told to look
    assert [c for c in _calls(server) if c.startswith("POST")] == ["POST /webhook"]
