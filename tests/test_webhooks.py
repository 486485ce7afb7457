"""Webhooks: management, parsing, the listener's security rules, and waits sped up by
events, against the fake server over loopback HTTP (deliveries are real POSTs)."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from copyai_async import (
    APIConnectionError,
    CopyAIClient,
    NotFoundError,
    PollPolicy,
    PollTimeoutError,
    RunStatus,
    UnprocessableEntityError,
    WebhookEventError,
)
from copyai_async.testing import Deliveries, FakeClock, FakeCopyAI, Fault, Schedule
from copyai_async.webhooks import (
    RUN_EVENTS,
    CreditLimitEvent,
    RunEvent,
    Webhook,
    WebhookEvent,
    WebhookEventType,
    parse_event,
)
from copyai_async.webhooks._convert import WebhookWire

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

STRICT = WebhookWire(strict=True)
RESULT_SHAPE = {
    "type": "workflowRun.completed",
    "workflowRunId": "WRUN-1",
    "workflowId": "WCFG-1",
    "result": {"text": "done"},
    "metadata": {"job": 7},
    "credits": "22",
}
RUN_SHAPE = {
    "type": "workflowRun.failed",
    "id": "WRUN-2",
    "workflowRunId": "WRUN-2",
    "workflowId": "PKGW-2",
    "status": "COMPLETE",  # the body's own status is not what the type says: ignored
    "input": {"topic": "otters"},
    "output": {"error": "boom"},
    "metadata": None,
    "createdAt": "2023-09-27T18:24:47Z",
    "credits": 3,
}
FAST = PollPolicy(initial=0.05, max_interval=0.2, safety_interval=0.5, jitter=0)


# -- parsing -------------------------------------------------------------------------------


def test_parse_event_reads_the_result_shape() -> None:
    event = parse_event(json.dumps(RESULT_SHAPE).encode())
    assert isinstance(event, RunEvent)
    assert event.type is WebhookEventType.RUN_COMPLETED
    assert (event.run_id, event.workflow_id) == ("WRUN-1", "WCFG-1")
    assert event.status is RunStatus.COMPLETE
    assert event.output == {"text": "done"}
    assert event.metadata == {"job": 7}
    assert event.credits == 22
    assert event.verified is False
    assert event.run is None
    assert event.body == RESULT_SHAPE


def test_parse_event_reads_the_whole_run_shape() -> None:
    event = parse_event(json.dumps(RUN_SHAPE))
    assert isinstance(event, RunEvent)
    assert event.type is WebhookEventType.RUN_FAILED
    assert event.status is RunStatus.FAILED  # implied by the type, not the body's field
    assert event.output == {"error": "boom"}
    assert event.input == {"topic": "otters"}
    assert event.created_at is not None
    assert event.created_at.year == 2023
    assert event.credits == 3


def test_both_shapes_agree_with_the_strict_twin() -> None:
    for body in (RESULT_SHAPE, RUN_SHAPE):
        assert STRICT.event(body) == parse_event(body)


def test_a_body_cannot_claim_to_be_verified() -> None:
    event = parse_event({**RESULT_SHAPE, "verified": True, "run": {"id": "x"}})
    assert isinstance(event, RunEvent)
    assert event.verified is False
    assert event.run is None


def test_credit_limit_and_unknown_types_are_kept() -> None:
    credit = parse_event({"type": "workflowCreditLimit.reached", "workflowId": "W"})
    assert isinstance(credit, CreditLimitEvent)
    assert credit.type is WebhookEventType.CREDIT_LIMIT_REACHED
    assert credit.workflow_id == "W"
    unknown = parse_event({"type": "workspace.renamed", "name": "x"})
    assert type(unknown) is WebhookEvent
    assert (unknown.type, unknown.raw_type) == (WebhookEventType.UNKNOWN, "workspace.renamed")
    about_run = parse_event({"type": "workflowRun.retrying", "workflowRunId": "WRUN-9"})
    assert isinstance(about_run, RunEvent)
    assert about_run.status is None
    assert about_run.raw_type == "workflowRun.retrying"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b"not json", "$"),
        (b"\xff\xfe", "$"),
        (b"[1, 2]", "$"),
        (b'"text"', "$"),
        (b"{}", "$.type"),
        (b'{"type": 5}', "$.type"),
        (b'{"type": "workflowRun.completed"}', "$.workflowRunId"),
        (
            b'{"type": "workflowRun.completed", "workflowRunId": "W", "credits": "lots"}',
            "$.credits",
        ),
        (b'{"type": "workflowRun.completed", "workflowRunId": "W", "result": "x"}', "$.result"),
        (b'{"type": "workflowRun.completed", "workflowRunId": 7}', "$.workflowRunId"),
        (b'{"type": "workflowRun.started", "id": "W", "metadata": [1]}', "$.metadata"),
        (b"[" * 100_000 + b"]" * 100_000, "$"),
    ],
)
def test_a_malformed_body_raises_one_documented_error(body: bytes, path: str) -> None:
    with pytest.raises(WebhookEventError) as caught:
        parse_event(body)
    assert caught.value.json_path == path
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("not a webhook event")


def test_parse_event_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="bytes, str or a mapping"):
        parse_event(42)  # type: ignore[arg-type]


def test_webhook_pages_in_every_seen_form() -> None:
    hook = {"id": "WHK-1", "url": "https://h/x", "eventType": "workflowRun.completed"}
    wire = WebhookWire()
    for body in ([hook], {"data": [hook], "total": 1}, {"status": "success", "data": [hook]}):
        hooks, _total = wire.webhook_page(body)
        assert hooks == [
            Webhook(
                id="WHK-1",
                url="https://h/x",
                event_type=WebhookEventType.RUN_COMPLETED,
                raw_event_type="workflowRun.completed",
            )
        ]
    odd = wire.webhook(
        {"status": "success", "data": {**hook, "eventType": "x.y", "workflowId": "W"}}
    )
    assert (odd.event_type, odd.raw_event_type, odd.workflow_id) == (
        WebhookEventType.UNKNOWN,
        "x.y",
        "W",
    )


# -- managing webhooks ---------------------------------------------------------------------


@pytest.fixture
async def live() -> AsyncIterator[tuple[FakeCopyAI, CopyAIClient]]:
    """A server whose runs finish 0.2 s after they start, and a client on the real clock
    (deliveries are real POSTs; the waits must sleep for real to be woken by them)."""
    schedule = Schedule.seconds(("PROCESSING", 0.2))
    async with (
        FakeCopyAI(default_schedule=schedule) as server,
        CopyAIClient(server.api_key, base_url=server.url, max_retries=2) as client,
    ):
        yield server, client


async def test_create_get_list_delete(server: FakeCopyAI, client: CopyAIClient) -> None:
    made = [
        await client.create_webhook(f"https://example.com/hook/{i}", "workflowRun.completed")
        for i in range(23)  # three pages of ten, from page 0
    ]
    scoped = await client.create_webhook(
        "https://example.com/one", WebhookEventType.RUN_FAILED, workflow_id=server.workflow_id
    )
    assert scoped.workflow_id == server.workflow_id
    assert scoped.event_type is WebhookEventType.RUN_FAILED
    assert made[0].workflow_id is None
    assert await client.get_webhook(scoped.id) == scoped
    listed = [hook async for hook in client.list_webhooks()]
    assert [h.id for h in listed] == [h.id for h in [*made, scoped]]
    pages = [r.query.get("page") for r in server.requests if r.path.endswith("/webhook")]
    assert [p for p in pages if p is not None] == ["0", "1", "2", "3"]
    await client.delete_webhook(scoped.id)
    with pytest.raises(NotFoundError):
        await client.get_webhook(scoped.id)
    with pytest.raises(NotFoundError):
        await client.delete_webhook(scoped.id)
    await client.delete_webhook(scoped.id, missing_ok=True)
    assert len(server.webhooks) == 23


async def test_a_server_that_ignores_page_does_not_loop(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    for i in range(3):
        await client.create_webhook(f"https://example.com/{i}", "workflowRun.started")
    same_page = [{"id": "X", "url": "https://a/b", "eventType": "workflowRun.started"}]
    server.inject(*[Fault.raw(same_page)] * 2, method="GET", path="/webhook")
    listed = [hook.id async for hook in client.list_webhooks()]
    assert listed == ["X"]


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://example.com/x", "http"),
        ("https://user:pw@example.com/x", "credentials"),
        ("https://example.com/x#frag", "fragment"),
        ("/relative/path", "http"),
        ("", "http"),
    ],
)
async def test_bad_urls_fail_before_any_request(
    server: FakeCopyAI, client: CopyAIClient, url: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        await client.create_webhook(url, "workflowRun.completed")
    assert "pw" not in str(caught.value)
    assert server.stats.requests == 0


async def test_bad_event_types_and_ids(server: FakeCopyAI, client: CopyAIClient) -> None:
    with pytest.raises(ValueError, match=r"workflowRun\.completed"):
        await client.create_webhook("https://h/x", "workflowRun.done")
    with pytest.raises(ValueError, match="must be one of"):
        await client.create_webhook("https://h/x", WebhookEventType.UNKNOWN)
    with pytest.raises(TypeError, match="event_type"):
        await client.create_webhook("https://h/x", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workflow_id"):
        await client.create_webhook("https://h/x", "workflowRun.started", workflow_id=" ")
    with pytest.raises(ValueError, match="webhook_id"):
        await client.get_webhook("")
    assert server.stats.requests == 0


async def test_the_api_refusing_a_webhook(server: FakeCopyAI, client: CopyAIClient) -> None:
    with pytest.raises(NotFoundError):
        await client.create_webhook("https://h/x", "workflowRun.started", workflow_id="WCFG-none")
    refusal = {"status": "error", "errorCode": "REQUEST_INVALID", "details": {"url": ["bad"]}}
    server.inject(Fault.raw(refusal, status=422))
    with pytest.raises(UnprocessableEntityError) as caught:
        await client.create_webhook("https://h/x", "workflowRun.started")
    assert caught.value.details == {"url": ["bad"]}


async def test_a_create_whose_answer_was_lost_is_found_not_repeated(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    server.inject(Fault.disconnect(after=True), method="POST", path="/webhook")
    hook = await client.create_webhook("https://example.com/lost", "workflowRun.completed")
    assert [h.id for h in server.webhooks] == [hook.id]  # created once, found by listing


async def test_a_create_lost_before_sending_is_sent_again(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    server.inject(Fault.disconnect(), method="POST", path="/webhook")
    hook = await client.create_webhook("https://example.com/again", "workflowRun.completed")
    assert [h.id for h in server.webhooks] == [hook.id]


# -- the listener: security -------------------------------------------------------------------


async def _post(url: Any, body: bytes, **headers: str) -> int:
    headers.setdefault("Content-Type", "application/json")
    async with (
        aiohttp.ClientSession() as session,
        session.post(str(url), data=body, headers=headers) as resp,
    ):
        return resp.status


async def test_a_delivery_without_the_secret_is_404_and_not_read(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    async with client.listen() as listener:
        url = listener.url
        assert "token" in url.query
        assert len(url.query["token"]) >= 40
        assert str(url.query["token"]) not in repr(listener)
        bare = url.with_query(None)
        assert await _post(bare, json.dumps(RESULT_SHAPE).encode()) == 404
        assert await _post(url.with_query({"token": "guess"}), b"not json") == 404
        assert await _post(url.update_query({"token": url.query["token"][:-1]}), b"{}") == 404
        assert listener.stats.not_found == 3
        assert listener.stats.bad_body == 0  # never parsed
        assert await listener.feed(json.dumps(RESULT_SHAPE)) == 404
        assert await listener.feed(b"{}", query="token=nope") == 404
        assert listener.stats.accepted == 0


async def test_oversized_wrong_type_and_bad_bodies_get_4xx_and_are_counted(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    async with client.listen(max_body=1000) as listener:
        url = listener.url
        big = json.dumps({**RESULT_SHAPE, "result": {"text": "x" * 2000}}).encode()
        assert await _post(url, big, **{"Content-Type": "application/json"}) == 413
        # No Content-Length: chunked, refused as it streams past the limit.
        async with aiohttp.ClientSession() as session:

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b" " * 200

            json_type = {"Content-Type": "application/json"}
            async with session.post(str(url), data=chunks(), headers=json_type) as resp:
                assert resp.status == 413
        assert await _post(url, b"{}", **{"Content-Type": "text/plain"}) == 415
        assert await _post(url, b"{nope", **{"Content-Type": "application/json"}) == 400
        assert await _post(url, b'{"type": 1}', **{"Content-Type": "application/json"}) == 400
        token = {"token": url.query["token"]}
        assert await listener.feed(big, query=token) == 413
        assert await listener.feed(b"{}", query=token, headers={"content-type": "image/png"}) == 415
        assert await listener.feed(b"[]", query=token) == 400
        ok = json.dumps(RESULT_SHAPE).encode()
        assert (
            await listener.feed(
                ok, query=token, headers={"Content-Type": "application/vnd.x+json; charset=utf-8"}
            )
            == 200
        )
        stats = listener.stats
        assert (stats.too_large, stats.bad_content_type, stats.bad_body) == (3, 2, 3)
        assert stats.accepted == 1
        assert stats.rejected == 8
        assert (await anext(aiter(listener))).run_id == "WRUN-1"


async def test_duplicates_and_reordered_deliveries_are_harmless(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    async with client.listen(serve=False, public_url="https://hooks.example/in") as listener:
        query = listener.url.query_string
        started = {**RESULT_SHAPE, "type": "workflowRun.started", "result": None}
        for body in (RESULT_SHAPE, RESULT_SHAPE, started, RESULT_SHAPE):
            assert await listener.feed(json.dumps(body), query=query) == 200
        assert (listener.stats.accepted, listener.stats.duplicates, listener.stats.stale) == (
            1,
            2,
            1,
        )
    # After the listener stops, iterating yields what was buffered, then ends.
    events = [event async for event in listener]
    assert [e.raw_type for e in events] == ["workflowRun.completed"]


async def test_the_listener_url_and_options(client: CopyAIClient) -> None:
    listener = client.listen(public_url="https://tunnel.example/hooks?x=1")
    assert listener.url.host == "tunnel.example"
    assert listener.url.query["x"] == "1"
    assert listener.url.query["token"]
    with pytest.raises(ValueError, match="public_url"):
        client.listen(public_url="https://u:p@tunnel.example/")
    with pytest.raises(ValueError, match="public_url"):
        client.listen(public_url="ftp://tunnel.example/")
    with pytest.raises(ValueError, match="serve=False"):
        client.listen(serve=False)
    with pytest.raises(ValueError, match="port"):
        client.listen(port=70000)
    with pytest.raises(TypeError, match="port"):
        client.listen(port="80")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path"):
        client.listen(path="hooks")
    with pytest.raises(ValueError, match="max_body"):
        client.listen(max_body=0)
    with pytest.raises(ValueError, match="max_connections"):
        client.listen(max_connections=0)
    with pytest.raises(TypeError, match="max_connections"):
        client.listen(max_connections=2.5)  # type: ignore[arg-type]
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="request_timeout"):
            client.listen(request_timeout=bad)
    with pytest.raises(TypeError, match="request_timeout"):
        client.listen(request_timeout="10")  # type: ignore[arg-type]
    unstarted = client.listen()
    with pytest.raises(RuntimeError, match="not started"):
        _ = unstarted.url
    with pytest.raises(RuntimeError, match="register while it runs"):
        await unstarted.register()


async def test_mounted_in_your_own_aiohttp_app(server: FakeCopyAI, client: CopyAIClient) -> None:
    async with client.listen(serve=False, public_url="http://127.0.0.1:1/placeholder") as listener:
        app = web.Application()
        app.router.add_post("/my/hooks", listener.handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            url = f"http://127.0.0.1:{port}/my/hooks?{listener.url.query_string}"
            assert await _post(url, json.dumps(RESULT_SHAPE).encode()) == 200
            assert await _post(f"http://127.0.0.1:{port}/my/hooks", b"{}") == 404
        finally:
            await runner.cleanup()
        assert listener.stats.accepted == 1
        assert listener.stats.not_found == 1


# -- the listener: registering and cleaning up ---------------------------------------------


async def test_register_and_delete_on_exit(server: FakeCopyAI, client: CopyAIClient) -> None:
    async with client.listen() as listener:
        hooks = await listener.register(server.workflow_id)
        assert [h.event_type for h in hooks] == list(RUN_EVENTS)
        assert {h.url for h in server.webhooks} == {str(listener.url)}
        other = await client.create_webhook("https://keep.example/x", "workflowRun.started")
    assert [h.id for h in server.webhooks] == [other.id]  # only the listener's went


async def test_webhooks_are_deleted_on_error_and_cancellation(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    async def fails() -> None:
        async with client.listen() as listener:
            await listener.register(events=["workflowRun.completed"])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fails()
    assert server.webhooks == []

    registered = asyncio.Event()

    async def serve_forever() -> None:
        async with client.listen() as listener:
            await listener.register(server.workflow_id)
            registered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(serve_forever())
    await registered.wait()
    assert len(server.webhooks) == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server.webhooks == []


async def test_a_webhook_whose_creation_answer_was_lost_is_still_deleted(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    # Created, answer lost, and then the lookup fails too: register raises, but the
    # webhook exists. The listener finds it by its secret URL on the way out.
    server.inject(Fault.disconnect(after=True), method="POST", path="/webhook")
    server.inject(*[Fault.server_error()] * 4, method="GET", path="/webhook")

    async def register() -> None:
        async with client.listen() as listener:
            await listener.register(events=["workflowRun.completed"])

    with pytest.raises(APIConnectionError):
        await register()
    assert [r.status for r in server.requests if r.method == "DELETE"] == [202]
    assert server.webhooks == []


# -- waits sped up by events -----------------------------------------------------------------


async def test_start_and_wait_ends_on_the_event_with_one_get(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    server, client = live
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        server.reset_stats()
        run = await client.start_and_wait(server.workflow_id, {"x": 1}, policy=FAST, timeout=5)
        assert run.status is RunStatus.COMPLETE
        gets = [r for r in server.requests if r.method == "GET"]
        assert len(gets) == 1  # no poll before the event; one to verify it


@pytest.mark.parametrize("sweep", [False, True])
async def test_wait_for_runs_costs_at_most_one_read_per_run(
    live: tuple[FakeCopyAI, CopyAIClient], sweep: bool
) -> None:
    # Each event is verified by a GET, or (sweeps) by a page for the runs it shows.
    server, client = live
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        runs = [await client.start_run(server.workflow_id, {"i": i}) for i in range(30)]
        server.reset_stats()
        seen = [
            r.id
            async for r in client.wait_for_runs(
                server.workflow_id,
                [r.id for r in runs],
                policy=attrs.evolve(FAST, sweep=sweep),
                timeout=10,
            )
        ]
        assert sorted(seen) == sorted(r.id for r in runs)
        if sweep:
            assert server.stats.requests == server.stats.by_kind["list"] < 30
        else:
            assert server.stats.requests == server.stats.by_kind["get"] == 30


async def test_without_a_listener_waits_poll_as_before(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    server, client = live
    run = await client.start_run(server.workflow_id, {})
    server.reset_stats()
    await client.wait_for_run(server.workflow_id, run.id, policy=FAST, timeout=5)
    assert server.stats.requests >= 3  # 0, 0.05, 0.125, ... s until 0.2 s


async def test_a_forged_event_cannot_end_a_wait(live: tuple[FakeCopyAI, CopyAIClient]) -> None:
    server, client = live
    server.default_schedule = Schedule.seconds(("PROCESSING", 1.0))
    patient = PollPolicy(initial=0.05, max_interval=0.2, safety_interval=60, jitter=0)
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        run = await client.start_run(server.workflow_id, {})
        statuses: list[str] = []
        waiting = asyncio.create_task(
            client.wait_for_run(
                server.workflow_id,
                run.id,
                policy=patient,
                on_status=lambda r: statuses.append(r.status.value),
            )
        )
        await asyncio.sleep(0.1)
        server.reset_stats()
        assert await server.forge_event(str(listener.url), run.id) == 200
        await asyncio.sleep(0.15)
        assert not waiting.done()  # the GET said PROCESSING: the claim was false
        assert 1 <= server.stats.requests <= 2  # the verification (and one follow-up)
        # The genuine event, a second later, is not masked by the forged one: the wait
        # ends on it, not after the 60 s safety interval.
        finished = await asyncio.wait_for(waiting, 3)
        assert finished.status is RunStatus.COMPLETE
        assert statuses == ["PROCESSING", "COMPLETE"]
        assert listener.stats.accepted == 3  # started, the forged and the real completed


async def test_lost_deliveries_still_end_every_wait(live: tuple[FakeCopyAI, CopyAIClient]) -> None:
    server, client = live
    server.deliveries = Deliveries(drop_rate=0.5)
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        runs = [await client.start_run(server.workflow_id, {"i": i}) for i in range(20)]
        # Keep the listener live: a steady trickle of genuine deliveries.
        ids = [
            r.id
            async for r in client.wait_for_runs(
                server.workflow_id, [r.id for r in runs], policy=FAST, timeout=10
            )
        ]
        assert sorted(ids) == sorted(r.id for r in runs)
        assert server.stats.webhooks_dropped > 0


async def test_duplicated_and_reordered_deliveries_yield_each_run_once(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    server, client = live
    server.deliveries = Deliveries(
        duplicate_rate=1.0, reorder_rate=0.5, reorder_delay=0.05, shape="mixed"
    )
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        runs = [await client.start_run(server.workflow_id, {"i": i}) for i in range(20)]
        ids = [
            r.id
            async for r in client.wait_for_runs(
                server.workflow_id, [r.id for r in runs], policy=FAST, timeout=10
            )
        ]
        assert sorted(ids) == sorted(r.id for r in runs)
        assert len(ids) == len(set(ids))
        await server.deliveries_idle()
        assert listener.stats.duplicates >= 20
        assert listener.stats.accepted == 40  # started and completed, once each


async def test_a_run_finished_before_the_wait_began_is_polled_at_once(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    server, client = live
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        run = await client.start_run(server.workflow_id, {})
        await asyncio.sleep(0.3)  # finished, event delivered, nobody waiting yet
        await server.deliveries_idle()
        server.reset_stats()
        slow = PollPolicy(safety_interval=60)
        done = await asyncio.wait_for(
            client.wait_for_run(server.workflow_id, run.id, policy=slow), 2
        )
        assert done.status is RunStatus.COMPLETE
        assert server.stats.requests == 1


# -- waits at the edges of event delivery ------------------------------------------------


@pytest.fixture
async def virtual() -> AsyncIterator[tuple[FakeCopyAI, CopyAIClient, FakeClock]]:
    """A server and a client on one FakeClock (virtual seconds). The server's own
    deliveries are all lost: a test delivers what it means to with ``listener.feed``."""
    clock = FakeClock()
    async with (
        FakeCopyAI(clock=clock.monotonic, deliveries=Deliveries(drop_rate=1.0)) as server,
        CopyAIClient(server.api_key, base_url=server.url, clock=clock) as client,
    ):
        yield server, client, clock


def _get_times(server: FakeCopyAI, run_id: str) -> list[float]:
    return [r.received_at for r in server.requests if r.method == "GET" and run_id in r.path]


async def test_a_wait_looks_once_more_before_it_times_out(
    virtual: tuple[FakeCopyAI, CopyAIClient, FakeClock],
) -> None:
    # A listener is live, the run completes at 1 s, its delivery is lost; the default
    # safety interval (30 s) is longer than the timeout (8 s). The final look, 1 s
    # before the deadline, sees it finished: no false "PROCESSING" timeout.
    server, client, clock = virtual
    server.default_schedule = Schedule.seconds(("PROCESSING", 1.0))
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        run = await client.start_run(server.workflow_id, {})
        done = await client.wait_for_run(server.workflow_id, run.id, timeout=8)
        assert done.status is RunStatus.COMPLETE
        assert clock.now == pytest.approx(7.0)
        assert _get_times(server, run.id) == [pytest.approx(7.0)]


@pytest.mark.parametrize("sweep", [False, True])
async def test_many_waits_look_once_more_before_they_time_out(
    live: tuple[FakeCopyAI, CopyAIClient], sweep: bool
) -> None:
    # The same for wait_for_runs, on the real clock: a 2 s timeout, so the final look
    # goes out a quarter of it (0.5 s) before the deadline.
    server, client = live
    server.deliveries = Deliveries(drop_rate=1.0)
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        ids = [(await client.start_run(server.workflow_id, {})).id for _ in range(5)]
        server.reset_stats()
        policy = PollPolicy(sweep=sweep)
        waited = client.wait_for_runs(server.workflow_id, ids, timeout=2.0, policy=policy)
        seen = [r async for r in waited]
        assert sorted(r.id for r in seen) == sorted(ids)
        assert all(r.status is RunStatus.COMPLETE for r in seen)
        # The final looks only: one each, or one page for all five.
        assert server.stats.requests == (1 if sweep else 5)


async def test_a_timeout_reports_a_fresh_status(
    virtual: tuple[FakeCopyAI, CopyAIClient, FakeClock],
) -> None:
    server, client, clock = virtual
    server.default_schedule = Schedule.seconds(("PROCESSING", 1000.0))
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        run = await client.start_run(server.workflow_id, {})
        with pytest.raises(PollTimeoutError) as caught:
            await client.wait_for_run(server.workflow_id, run.id, timeout=8)
        assert caught.value.run.status is RunStatus.PROCESSING
        assert caught.value.age == pytest.approx(1.0)  # read at 7 s: not never, not at 0
        assert "last status PROCESSING, read 1.0 s before" in str(caught.value)
    # Without a listener, a reading at most 2 s before the deadline is fresh enough.
    quick = PollPolicy(initial=1.0, multiplier=1.0, max_interval=1.0, jitter=0)
    fresh = server.add_run(schedule=Schedule.seconds(("PROCESSING", 1000.0)))
    start = clock.now
    with pytest.raises(PollTimeoutError):
        await client.wait_for_run(server.workflow_id, fresh.id, timeout=4.5, policy=quick)
    assert [t - start for t in _get_times(server, fresh.id)] == pytest.approx([0, 1, 2, 3, 4])


async def test_many_timeouts_report_a_fresh_status(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    server, client = live
    server.default_schedule = Schedule.seconds(("PROCESSING", 1000.0))
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        ids = [(await client.start_run(server.workflow_id, {})).id for _ in range(3)]
        with pytest.raises(ExceptionGroup) as group:
            async for _ in client.wait_for_runs(server.workflow_id, ids, timeout=2.0):
                pass
    errors = group.value.exceptions
    assert [e.run_id for e in errors] == ids  # type: ignore[attr-defined]
    for error in errors:
        assert isinstance(error, PollTimeoutError)
        assert error.run is not None  # read by the final look, though never polled before
        assert error.run.status is RunStatus.PROCESSING
        assert error.age is not None
        assert error.age <= 0.5  # at most the final look's lead (a quarter of 2 s)


async def test_a_forged_event_does_not_mask_the_genuine_one(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    # A forged "failed" with the very body the genuine one will have arrives first; the
    # poll it causes contradicts it. The genuine delivery, later, is not a "repeat".
    server, client = live
    server.deliveries = Deliveries(drop_rate=1.0)  # this test delivers by hand
    server.default_schedule = Schedule.seconds(("PROCESSING", 1.5), final="FAILED")
    patient = PollPolicy(safety_interval=60, rechecks=(0.02, 0.02, 0.02))
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        run = await client.start_run(server.workflow_id, {})
        fake = next(r for r in server.runs() if r.id == run.id)
        body = json.dumps(server.event_body(fake, "workflowRun.failed", status="FAILED"))
        query = listener.url.query_string
        server.reset_stats()
        waiting = asyncio.create_task(
            client.wait_for_run(server.workflow_id, run.id, policy=patient, raise_on_failure=False)
        )
        assert await listener.feed(body, query=query) == 200  # forged: still PROCESSING
        await asyncio.sleep(0.8)
        assert not waiting.done()
        assert server.stats.requests == 4  # a check and three re-checks, then quiet
        await asyncio.sleep(0.8)  # the run fails 1.5 s after its start
        assert await listener.feed(body, query=query) == 200  # the genuine delivery
        finished = await asyncio.wait_for(waiting, 5)  # not after the 60 s safety interval
        assert finished.status is RunStatus.FAILED
        assert server.stats.requests == 5
        assert (listener.stats.accepted, listener.stats.duplicates) == (2, 0)
        # A third copy, once a poll has confirmed the second: a repeat.
        assert await listener.feed(body, query=query) == 200
        assert listener.stats.duplicates == 1


async def test_a_forged_event_costs_a_wait_at_most_four_gets(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    server, client = live
    server.deliveries = Deliveries(drop_rate=1.0)
    fake = server.add_run(schedule=Schedule.seconds(("PROCESSING", 1000.0)))
    policy = PollPolicy(rechecks=(0.02, 0.02, 0.02))  # the default safety interval: 30 s
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        forged = json.dumps(
            {"type": "workflowRun.completed", "workflowRunId": fake.id, "result": {"x": 1}}
        )
        server.reset_stats()
        first_read = asyncio.Event()
        waiting = asyncio.create_task(
            client.wait_for_run(
                server.workflow_id,
                fake.id,
                policy=policy,
                timeout=1.0,
                on_status=lambda _run: first_read.set(),
            )
        )
        await first_read.wait()  # its first poll (not started here: at once) is back
        assert await listener.feed(forged, query=listener.url.query_string) == 200
        with pytest.raises(PollTimeoutError):
            await waiting
    # The first poll, the check and three re-checks, and the final look at 0.75 s.
    assert len(_get_times(server, fake.id)) == 1 + 4 + 1


async def test_verify_event_settles_a_forged_copy_for_the_listener_too(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    # No wait: a consumer reads events with async for and verifies each. A forged
    # "failed" with the genuine event's very body, shown false by verify_event, must not
    # make the genuine delivery a repeat.
    server, client = live
    server.deliveries = Deliveries(drop_rate=1.0)
    server.default_schedule = Schedule.polls(("PROCESSING", 1), final="FAILED")
    async with client.listen(serve=False, public_url="https://hooks.example/in") as listener:
        run = await client.start_run(server.workflow_id, {})
        fake = next(r for r in server.runs() if r.id == run.id)
        body = json.dumps(server.event_body(fake, "workflowRun.failed", status="FAILED"))
        query = listener.url.query_string
        events = aiter(listener)
        assert await listener.feed(body, query=query) == 200  # forged: still PROCESSING
        forged = await anext(events)
        assert isinstance(forged, RunEvent)
        checked = await client.verify_event(forged)
        assert checked.status is RunStatus.PROCESSING
        assert await listener.feed(body, query=query) == 200  # the genuine delivery
        genuine = await asyncio.wait_for(anext(events), 5)  # not dropped as a repeat
        assert isinstance(genuine, RunEvent)
        assert (await client.verify_event(genuine)).status is RunStatus.FAILED
        assert (listener.stats.accepted, listener.stats.duplicates) == (2, 0)


async def test_an_unchecked_event_does_not_slow_other_waits(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    # One forged "started" naming a workflow nobody registered must not make waits on
    # that workflow poll at the safety interval (30 s): only a "finished" event that a
    # poll confirmed does. Before, these 20 waits timed out.
    server, client = live
    other = "WCFG-other"
    policy = PollPolicy(initial=0.1, max_interval=0.1, safety_interval=30)
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        query = listener.url.query_string
        forged = {"type": "workflowRun.started", "workflowRunId": "WRUN-x", "workflowId": other}
        assert await listener.feed(json.dumps(forged), query=query) == 200
        runs = [
            server.add_run(other, schedule=Schedule.seconds(("PROCESSING", 0.3))) for _ in range(20)
        ]
        ids = [r.id for r in runs]
        seen = [r async for r in client.wait_for_runs(other, ids, policy=policy, timeout=5)]
        assert sorted(r.id for r in seen) == sorted(ids)
        assert not client._waiter.hints.watching(other, policy)
        # A genuine "completed" of that workflow, confirmed by a poll, does count.
        late = server.add_run(other, schedule=Schedule.immediate())
        body = json.dumps(server.event_body(late, "workflowRun.completed"))
        assert await listener.feed(body, query=query) == 200
        await client.wait_for_run(other, late.id, policy=policy)
        assert client._waiter.hints.watching(other, policy)


async def test_verify_event(live: tuple[FakeCopyAI, CopyAIClient]) -> None:
    server, client = live
    run = await client.start_run(server.workflow_id, {"topic": "otters"})
    claimed = parse_event(
        {
            "type": "workflowRun.completed",
            "workflowRunId": run.id,
            "workflowId": server.workflow_id,
            "result": {"text": "forged"},
        }
    )
    assert isinstance(claimed, RunEvent)
    checked = await client.verify_event(claimed)
    assert checked.verified
    assert checked.run is not None
    assert checked.run.id == run.id
    assert checked.status is RunStatus.PROCESSING  # the API's word, not the claim
    assert checked.output is None
    assert checked.body["result"] == {"text": "forged"}
    with pytest.raises(NotFoundError):
        await client.verify_event(parse_event({**RESULT_SHAPE, "workflowId": server.workflow_id}))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="run events"):
        await client.verify_event(parse_event({"type": "workflowCreditLimit.reached"}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no workflow"):
        await client.verify_event(parse_event({"type": "workflowRun.failed", "id": "WRUN-1"}))  # type: ignore[arg-type]


# -- the fake server's side --------------------------------------------------------------------


async def test_the_fake_serves_the_documented_quirks(server: FakeCopyAI) -> None:
    headers = {"x-copy-ai-api-key": server.api_key}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(
            f"{server.url}/webhook", json={"url": "https://h/x", "eventType": "workflowRun.started"}
        ) as resp:
            created = await resp.json()
        assert created["status"] == "success"
        assert created["data"]["url"] == "https://h/x"
        async with session.get(f"{server.url}/webhook") as resp:
            listed = await resp.json()
        assert isinstance(listed, list)
        assert listed[0]["id"] == created["data"]["id"]
        async with session.get(f"{server.url}/webhook", params={"page": "1"}) as resp:
            assert await resp.json() == []
        async with session.delete(f"{server.url}/webhook/{created['data']['id']}") as resp:
            assert (resp.status, await resp.json()) == (202, {})
        async with session.post(
            f"{server.url}/webhook", json={"url": "x", "eventType": "nope"}
        ) as resp:
            assert resp.status == 422
            assert set((await resp.json())["details"]) == {"url", "eventType"}


async def test_the_fake_delivers_both_shapes_and_credit_limits(
    server: FakeCopyAI, client: CopyAIClient
) -> None:
    server.default_schedule = Schedule.immediate()
    server.credit_limit = 2
    async with client.listen() as listener:
        await listener.register(events=[*RUN_EVENTS, WebhookEventType.CREDIT_LIMIT_REACHED])
        server.deliveries = Deliveries(shape="run")
        await client.start_run(server.workflow_id, {})
        with pytest.raises(Exception, match="CREDIT_LIMIT"):
            await client.start_run(server.workflow_id, {})
        await server.deliveries_idle()
    kinds = sorted(d.event_type for d in server.delivered)
    assert kinds == ["workflowCreditLimit.reached", "workflowRun.completed", "workflowRun.started"]
    shaped = [d.body for d in server.delivered if d.event_type == "workflowRun.completed"]
    assert "output" in shaped[0]
    assert "result" not in shaped[0]
    assert all(d.status == 200 for d in server.delivered)


async def test_feed_answers_503_unless_running(client: CopyAIClient) -> None:
    listener = client.listen(serve=False, public_url="https://hooks.example/in")
    query = listener.url.query_string
    body = json.dumps(RESULT_SHAPE)
    assert await listener.feed(body, query=query) == 503
    async with listener:
        assert await listener.feed(body, query=query) == 200
    assert await listener.feed(body, query=query) == 503
    with pytest.raises(TypeError, match="bytes or str"):
        await listener.feed({"type": "x"}, query=query)  # type: ignore[arg-type]


def test_run_hints_follow_the_listeners() -> None:
    from copyai_async._poll import RunHints
    from copyai_async.testing import FakeClock

    clock = FakeClock()
    hints = RunHints(clock)
    policy = PollPolicy(safety_interval=30)
    assert not hints.watching("W", policy)  # no listener
    hints.attach()
    assert not hints.watching("W", policy)  # listening, but not for W's events
    hints.cover("W")
    assert hints.watching("W", policy)
    assert not hints.watching("OTHER", policy)
    clock.advance(31)
    assert not hints.watching("W", policy)  # nothing arrived for a safety interval
    hints.hint("WRUN-1", "OTHER", final=True)  # a delivery: the listener is live again
    assert hints.watching("W", policy)
    assert not hints.watching("OTHER", policy)  # an event nobody has checked proves nothing
    assert hints.claims_final("WRUN-1")
    hints.observed("WRUN-1", "ELSEWHERE", finished=True, checking=True)
    assert not hints.watching("ELSEWHERE", policy)  # the event named another workflow
    hints.observed("WRUN-1", "OTHER", finished=True, checking=True)
    assert hints.watching("OTHER", policy)  # a poll confirmed an event of OTHER
    hints.hint("WRUN-3", "THIRD", final=True)
    hints.observed("WRUN-3", "THIRD", finished=False, checking=False)  # sent before it
    assert hints.claims_final("WRUN-3")
    hints.observed("WRUN-3", "THIRD", finished=False, checking=True)  # sent after it
    assert not hints.claims_final("WRUN-3")  # contradicted: the claim is dropped
    assert not hints.watching("THIRD", policy)
    hints.hint("WRUN-4", "FOURTH", final=False)  # "started", about a run that exists
    hints.observed("WRUN-4", "FOURTH", finished=False, checking=False)
    assert not hints.watching("FOURTH", policy)  # anyone may name a run: no proof
    hints.uncover("W")
    assert not hints.watching("W", policy)
    hints.detach()
    assert not hints.watching("OTHER", policy)
    called: list[str] = []
    hints.subscribe("WRUN-2", called.append)
    hints.hint("WRUN-2", None, final=False)
    hints.hint("WRUN-2", None, final=True)
    hints.unsubscribe("WRUN-2", called.append)
    hints.hint("WRUN-2", None, final=True)
    assert called == ["WRUN-2"]


def test_public_surface_of_webhooks() -> None:
    import copyai_async.webhooks as webhooks

    assert sorted(webhooks.__all__) == sorted(
        [
            "DEFAULT_MAX_BODY",
            "DEFAULT_MAX_CONNECTIONS",
            "DEFAULT_PATH",
            "DEFAULT_REQUEST_TIMEOUT",
            "RUN_EVENTS",
            "TOKEN_PARAM",
            "CreditLimitEvent",
            "Listener",
            "ListenerStats",
            "RunEvent",
            "Webhook",
            "WebhookEvent",
            "WebhookEventType",
            "parse_event",
        ]
    )
    for name in webhooks.__all__:
        assert getattr(webhooks, name) is not None, name
    # client.listen() spells the defaults out (importing the listener costs time).
    listen = inspect.signature(CopyAIClient.listen).parameters
    listener = inspect.signature(webhooks.Listener).parameters
    for name, default in (
        ("max_body", webhooks.DEFAULT_MAX_BODY),
        ("max_connections", webhooks.DEFAULT_MAX_CONNECTIONS),
        ("request_timeout", webhooks.DEFAULT_REQUEST_TIMEOUT),
        ("path", webhooks.DEFAULT_PATH),
    ):
        assert listen[name].default == listener[name].default == default, name
    with pytest.raises(AttributeError):
        _ = webhooks.nothing_here  # type: ignore[attr-defined]


async def test_a_rescheduled_run_is_delivered_when_it_now_finishes(
    live: tuple[FakeCopyAI, CopyAIClient],
) -> None:
    server, client = live
    server.default_schedule = Schedule.seconds(("PROCESSING", 3600))
    async with client.listen() as listener:
        await listener.register(server.workflow_id)
        run = await client.start_run(server.workflow_id, {})
        fake = server.get(run.id)
        server.reschedule(fake, Schedule.seconds(("PROCESSING", 0.1)))
        patient = PollPolicy(safety_interval=60)  # only the event can end it in time
        done = await client.wait_for_run(server.workflow_id, run.id, policy=patient, timeout=5)
        assert done.status is RunStatus.COMPLETE
        assert [d.event_type for d in server.delivered][-1] == "workflowRun.completed"
