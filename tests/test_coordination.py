"""Many processes, one key: the shared budget and event fan-out, on a real redis-server.

No mock stands in for Redis here: each test talks to a ``redis-server`` process on
loopback (see tests/redis_support.py). The first tests run clients in this process; the
last ones run one client per worker process (tests/coordination_worker.py), as in
production, against the fake server here, and check what the server saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio

import copyai_async._coordination as coordination_module
from copyai_async import CopyAIClient, PollPolicy, RedisCoordination
from copyai_async.aitasker import AITaskerClient
from copyai_async.testing import FakeCopyAI, Fault, Schedule

from .redis_support import RedisServer, free_port, max_in_window, require_redis, run_workers


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(require_redis()).start()
    yield server
    server.close()


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def raw_redis(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def quick_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first wait before trying Redis again, shortened so outages end fast in tests.
    monkeypatch.setattr(coordination_module, "_FIRST_BACKOFF", 0.05)


def client_for(
    server: FakeCopyAI, coordination: str | RedisCoordination, **options: object
) -> CopyAIClient:
    return CopyAIClient(server.api_key, base_url=server.url, coordination=coordination, **options)  # type: ignore[arg-type]


# -- arguments ---------------------------------------------------------------------------


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(TypeError, match="coordination must be a Redis URL"):
        CopyAIClient("k", coordination=6379)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"url must be a redis://.*'http://h:\*\*\*@x'"):
        RedisCoordination("http://h:secret@x")
    with pytest.raises(TypeError, match=r"url must be a str or a redis\.asyncio\.Redis"):
        RedisCoordination(b"redis://x")
    for bad in ("", "a b", "x" * 65, "{tag}"):
        with pytest.raises(ValueError, match="namespace must be 1 to 64"):
            RedisCoordination("redis://x", namespace=bad)
    with pytest.raises(TypeError, match="namespace must be a str"):
        RedisCoordination("redis://x", namespace=1)  # type: ignore[arg-type]
    for name in ("timeout", "retry_max"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
            RedisCoordination("redis://x", **{name: 0})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=f"{name} must be a number"):
            RedisCoordination("redis://x", **{name: "1"})  # type: ignore[arg-type]


async def test_repr_hides_the_redis_password() -> None:
    coordination = RedisCoordination("redis://user:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in repr(coordination)
    assert "redis://user:***@127.0.0.1:1/0" in repr(coordination)
    await coordination.aclose()


# -- the shared budget, in one process ----------------------------------------------------


async def test_keys_carry_a_hash_of_the_key_never_the_key(
    server: FakeCopyAI, redis_server: RedisServer, raw_redis: redis.asyncio.Redis, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with coordination, client_for(server, coordination, rate_limit=100) as client:
        await client.get_run(server.workflow_id, run.id)
        keys = [k.decode() async for k in raw_redis.scan_iter(f"*{namespace}*")]
    digest = hashlib.sha256(b"copyai-async\0" + server.api_key.encode()).hexdigest()[:32]
    base = f"copyai-async:{{{namespace}:{digest}}}"
    # The rate's next start stays; the lease set is empty (so gone) after the request.
    assert keys == [f"{base}:next"]
    everything = [k async for k in raw_redis.scan_iter("*")]
    assert not any(server.api_key.encode() in k for k in everything)


async def test_two_clients_share_one_rate(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with (
        coordination,
        client_for(server, coordination, rate_limit=20) as a,
        client_for(server, coordination, rate_limit=20) as b,
    ):
        began = time.monotonic()
        await asyncio.gather(
            *(c.get_run(server.workflow_id, run.id) for c in (a, b) for _ in range(20))
        )
        took = time.monotonic() - began
    # 40 requests at 20/s together (each alone would allow 40/s): 39 gaps of 50 ms.
    assert took >= 39 / 20 * 0.95
    assert max_in_window(r.received_at for r in server.requests) <= 21


async def test_clients_with_other_keys_or_namespaces_do_not_share(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    async with (
        RedisCoordination(redis_server.url, namespace=namespace) as one,
        RedisCoordination(redis_server.url, namespace=namespace + "-other") as other,
        client_for(server, one, rate_limit=10) as a,
        client_for(server, other, rate_limit=10) as b,
    ):
        began = time.monotonic()
        await asyncio.gather(
            *(c.get_run(server.workflow_id, run.id) for c in (a, b) for _ in range(6))
        )
        took = time.monotonic() - began
    # Each namespace paces its own 6 requests (0.5 s); shared, 12 would take 1.1 s.
    assert 0.45 <= took < 1.0


async def test_in_flight_cap_is_shared(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    server.latency = 0.1
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with (
        coordination,
        client_for(server, coordination, max_connections=3) as a,
        client_for(server, coordination, max_connections=3) as b,
    ):
        runs = await asyncio.gather(
            *(c.get_run(server.workflow_id, run.id) for c in (a, b) for _ in range(12))
        )
    assert len(runs) == 24
    assert server.stats.max_in_flight == 3  # not 6: the cap is for both clients


async def test_a_429_pauses_every_client_sharing_the_key(
    server: FakeCopyAI,
    redis_server: RedisServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = server.add_runs(1)[0]
    paused = asyncio.Event()

    class OnPause(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("paused every process"):
                paused.set()

    caplog.set_level(logging.INFO, logger="copyai_async")
    handler = OnPause()
    logging.getLogger("copyai_async").addHandler(handler)
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    try:
        async with (
            coordination,
            client_for(server, coordination) as a,
            client_for(server, coordination) as b,
        ):
            server.inject(Fault.rate_limit(retry_after=1), method="GET")
            retried = asyncio.ensure_future(a.get_run(server.workflow_id, run.id))
            await asyncio.wait_for(paused.wait(), 5)  # a saw the 429 and set the pause
            await b.get_run(server.workflow_id, run.id)  # b never saw a 429
            await retried
    finally:
        logging.getLogger("copyai_async").removeHandler(handler)
    limited, *answered = server.requests
    assert limited.status == 429
    assert [r.status for r in answered] == [200, 200]
    assert min(r.received_at for r in answered) >= limited.received_at + 1.0


async def test_aitasker_clients_share_a_budget_too(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run_id = server.add_aitasker_run().id
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    clients = [
        AITaskerClient(
            server.api_key, base_url=server.aitasker_url, rate_limit=20, coordination=coordination
        )
        for _ in range(2)
    ]
    async with coordination, clients[0] as a, clients[1] as b:
        wf = server.add_aitasker_run().workflow_id
        began = time.monotonic()
        await asyncio.gather(*(c.get_run(wf, run_id) for c in (a, b) for _ in range(10)))
        took = time.monotonic() - began
    assert took >= 19 / 20 * 0.95


async def test_a_client_closes_the_coordination_it_made_not_one_passed_in(
    server: FakeCopyAI, redis_server: RedisServer
) -> None:
    async with client_for(server, redis_server.url) as made:
        owned = made.coordination
        assert owned is not None
    assert owned._closed
    async with RedisCoordination(redis_server.url) as mine:
        async with client_for(server, mine):
            pass
        assert not mine._closed  # still usable by other clients
        async with client_for(server, mine) as again:
            run = server.add_runs(1)[0]
            await again.get_run(server.workflow_id, run.id)
        assert mine.available


# -- when Redis fails -------------------------------------------------------------------------


async def test_no_redis_means_local_limits_and_one_warning(
    server: FakeCopyAI, caplog: pytest.LogCaptureFixture
) -> None:
    run = server.add_runs(1)[0]
    dead = f"redis://127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.INFO, logger="copyai_async")
    async with client_for(server, dead, rate_limit=20) as client:
        began = time.monotonic()
        await asyncio.gather(*(client.get_run(server.workflow_id, run.id) for _ in range(10)))
        took = time.monotonic() - began
        assert client.coordination is not None
        assert not client.coordination.available
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "is unavailable" in warnings[0].getMessage()
    assert took >= 9 / 20 * 0.95  # the local rate still holds


async def test_a_redis_error_never_reaches_the_caller(
    server: FakeCopyAI,
    redis_server: RedisServer,
    raw_redis: redis.asyncio.Redis,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = server.add_runs(1)[0]
    digest = hashlib.sha256(b"copyai-async\0" + server.api_key.encode()).hexdigest()[:32]
    # Something else wrote a list where the rate's next start belongs: every script fails.
    await raw_redis.rpush(f"copyai-async:{{{namespace}:{digest}}}:next", "oops")
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    async with coordination, client_for(server, coordination, rate_limit=50) as client:
        for _ in range(3):
            assert (await client.get_run(server.workflow_id, run.id)).id == run.id
        assert not coordination.available
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


@pytest.mark.usefixtures("quick_retry")
async def test_shared_limits_return_when_redis_does(
    server: FakeCopyAI, caplog: pytest.LogCaptureFixture, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    later = RedisServer(require_redis())
    caplog.set_level(logging.INFO, logger="copyai_async")
    coordination = RedisCoordination(later.url, namespace=namespace)
    try:
        async with coordination, client_for(server, coordination, rate_limit=100) as client:
            await client.get_run(server.workflow_id, run.id)
            assert not coordination.available
            later.start()
            deadline = time.monotonic() + 10
            while not coordination.available and time.monotonic() < deadline:
                await client.get_run(server.workflow_id, run.id)
                await asyncio.sleep(0.02)
            assert coordination.available
            await client.get_run(server.workflow_id, run.id)
            async with redis.asyncio.Redis.from_url(later.url) as raw:
                assert [k async for k in raw.scan_iter(f"*{namespace}*:next")]
    finally:
        later.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is unavailable" in m for m in messages) == 1
    assert sum("is available again" in m for m in messages) == 1


# -- events, in one process ---------------------------------------------------------------------


async def test_an_event_at_one_client_ends_a_wait_at_another(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    # The run finishes 1.5 s from now; polls 60 s apart could not see it in time.
    run = server.add_run(schedule=Schedule.seconds(("PROCESSING", 1.5)))
    coordination = RedisCoordination(redis_server.url, namespace=namespace)
    policy = PollPolicy(initial=60, max_interval=60, safety_interval=60)
    async with (
        coordination,
        client_for(server, coordination) as listening,
        client_for(server, coordination) as waiting,
        listening.listen() as listener,
    ):
        await listener.register(server.workflow_id)
        done = await asyncio.wait_for(
            waiting.wait_for_run(server.workflow_id, run.id, policy=policy), timeout=10
        )
    assert done.status.value == "COMPLETE"
    gets = server.stats.by_path[f"GET /api/workflow/{server.workflow_id}/run/{run.id}"]
    assert gets == 2  # the first poll, and the one the relayed event asked for


# -- many processes: one client per worker process, as deployed ---------------------------


def worker(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str, **job: object
) -> dict[str, object]:
    return {
        "base_url": server.url,
        "api_key": server.api_key,
        "redis": redis_server.url,
        "namespace": namespace,
        "workflow_id": server.workflow_id,
        **job,
    }


def no_errors(results: list[dict[str, Any]]) -> None:
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:5]


async def test_eight_processes_hold_one_rate_limit(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    job = worker(server, redis_server, namespace, job="load", rate=50, seconds=30, run_id=run.id)
    results = await run_workers([job] * 8)
    no_errors(results)
    arrived = [r.received_at for r in server.requests]
    # At most 50 (+5%) in any one second at the server, over 30 s of 8 processes that
    # would each send 50/s on their own...
    assert max_in_window(arrived) <= 52
    # ...and the budget is used, not merely respected (1,500 in 30 s at 50/s).
    assert len(arrived) >= 0.95 * 50 * 30
    assert all(r["available"] for r in results)


async def test_a_429_in_one_process_pauses_every_process(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    job = worker(server, redis_server, namespace, job="load", rate=50, seconds=7, run_id=run.id)

    async def during() -> None:
        await asyncio.sleep(2)
        server.inject(Fault.rate_limit(retry_after=2), method="GET")

    results = await run_workers([job] * 8, during)
    no_errors(results)
    pauses = [t for r in results for t, _, m in r["logs"] if m.startswith("paused every process")]
    assert len(pauses) == 1  # one process saw the 429 and set the shared pause
    paused_at = pauses[0]
    starts = sorted(t for r in results for t in r["starts"])
    # No process sent anything for the 2 s the server asked, from when the pause was
    # set; then sending resumed.
    assert [t - paused_at for t in starts if paused_at < t < paused_at + 2.0] == []
    resumed = min(t for t in starts if t >= paused_at)
    assert paused_at + 2.0 <= resumed < paused_at + 2.5


async def test_events_at_one_process_end_waits_in_another(
    server: FakeCopyAI, redis_server: RedisServer, namespace: str
) -> None:
    runs = [server.add_run(schedule=Schedule.seconds(("PROCESSING", 3600))) for _ in range(30)]
    listen = worker(server, redis_server, namespace, job="listen")
    wait = worker(server, redis_server, namespace, job="wait", run_ids=[r.id for r in runs])

    async def during() -> None:
        await asyncio.sleep(0.5)  # the waiter's first polls are done
        for i, run in enumerate(runs):
            elapsed = server.clock() - run.created_mono
            server.reschedule(run, Schedule.seconds(("PROCESSING", elapsed + 0.5 + i * 0.1)))
        await asyncio.sleep(0.5 + len(runs) * 0.1 + 2.0)

    listener, waiter = await run_workers([listen, wait], during)
    no_errors([listener, waiter])
    delivered = {
        d.run_id: d.sent_at for d in server.delivered if d.event_type == "workflowRun.completed"
    }
    assert set(waiter["ended"]) == {r.id for r in runs}  # every wait ended...
    late = {run_id: ended - delivered[run_id] for run_id, ended in waiter["ended"].items()}
    # ...on the relayed event: polls 60 s apart would have taken a minute.
    assert max(late.values()) < 5.0, late
    gets = sum(
        n for path, n in server.stats.by_path.items() if path.startswith("GET /api/workflow/")
    )
    assert gets <= 2 * len(runs) + 5  # one first poll and one verifying GET per run


async def test_redis_killed_and_restarted_fails_no_api_call(
    server: FakeCopyAI, namespace: str
) -> None:
    run = server.add_runs(1)[0]
    redis_server = RedisServer(require_redis()).start()
    job = worker(
        server,
        redis_server,
        namespace,
        job="load",
        rate=50,
        seconds=8,
        run_id=run.id,
        start_every=10,
    )

    async def during() -> None:
        await asyncio.sleep(2)
        redis_server.kill()
        await asyncio.sleep(2)
        redis_server.start()

    try:
        results = await run_workers([job] * 4, during)
    finally:
        redis_server.close()
    no_errors(results)
    assert all(r["calls"] > 0 for r in results)
    for result in results:
        messages = [m for _, level, m in result["logs"] if level == "WARNING"]
        assert len(messages) == 1, result["logs"]
        assert "is unavailable" in messages[0]
        assert result["available"]  # shared again once Redis was back
