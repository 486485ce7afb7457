"""The one way to Redis (copyai_async._redis.RedisGateway): its outage backoff runs on the
Clock it is given, so it is checked here without sleeping."""

from __future__ import annotations

import logging

import pytest

from copyai_async._budget import Allowance, SharedUnavailable
from copyai_async._redis import RedisGateway
from copyai_async.testing import FakeClock
from tests.redis_support import free_port

pytest.importorskip("redis")


async def ping(redis: object) -> object:
    return await redis.ping()  # type: ignore[attr-defined]


async def test_the_backoff_runs_on_the_gateways_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=100.0)
    gateway = RedisGateway(
        f"redis://127.0.0.1:{free_port()}/0", timeout=1.0, retry_max=30.0, clock=clock
    )
    try:
        assert gateway.ready()
        assert gateway.available
        with (
            caplog.at_level(logging.WARNING, logger="copyai_async"),
            pytest.raises(SharedUnavailable, match=r"Connect"),
        ):
            await gateway.call(ping, Allowance(1.0))
        assert not gateway.available
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        # The first backoff is 0.4 to 0.5 s on the gateway's clock; no real time passes.
        wait = gateway.retry_in()
        assert 0.4 <= wait <= 0.5
        assert not gateway.ready()
        with pytest.raises(SharedUnavailable, match="unavailable"):
            await gateway.call(ping, Allowance(1.0))  # not tried: still backing off
        clock.advance(wait)
        assert gateway.ready()
        assert gateway.retry_in() == 0
        # The next failure doubles the backoff (0.8 to 1.0 s), on the same clock.
        with pytest.raises(SharedUnavailable):
            await gateway.call(ping, Allowance(1.0))
        assert 0.8 <= gateway.retry_in() <= 1.0
    finally:
        await gateway.aclose()
    assert gateway.closed
    assert not gateway.ready()
    with pytest.raises(SharedUnavailable, match="closed"):
        await gateway.call(ping, Allowance(1.0))
