"""Time, injectable: every sleep and deadline in copyai_async goes through a :class:`Clock`.

Tests pass :class:`copyai_async.testing.FakeClock`, so backoff and polling are checked in
milliseconds instead of being slept through.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock"]


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
    """The real clock: :func:`time.monotonic` and :func:`anyio.sleep`."""

    def monotonic(self) -> float:
        """:func:`time.monotonic`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """:func:`anyio.sleep`."""
        await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"
