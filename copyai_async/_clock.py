"""Time, injectable: every sleep and deadline in copyai_async goes through a :class:`Clock`.

Tests pass :class:`copyai_async.testing.FakeClock`, so backoff and polling are checked in
milliseconds instead of being slept through.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock", "loop_time"]


def loop_time() -> float:
    """The running event loop's clock, else :func:`time.monotonic`.

    For asyncio's own loops the two are the same clock. A test loop whose time is
    virtual (looptime's, which jumps ahead while everything waits) is followed by every
    sleep anyway; reading time from the loop too keeps deadlines on that same time.
    """
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # no loop running in this thread
        return time.monotonic()


@runtime_checkable
class Clock(Protocol):
    """What copyai_async needs of time: a monotonic reading and a way to sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` (cancellable)."""
        ...


class SystemClock:
    """The event loop's clock (``loop_time()``: :func:`time.monotonic` in a normal
    loop) and :func:`anyio.sleep`."""

    def monotonic(self) -> float:
        """The running event loop's time (``loop_time()``)."""
        return loop_time()

    async def sleep(self, seconds: float) -> None:
        """:func:`anyio.sleep`."""
        await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"
