"""FakeClock: virtual time for tests of backoff, deadlines and polling."""

from __future__ import annotations

import anyio
import anyio.lowlevel

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`copyai_async.Clock` whose sleeps return at once and advance virtual time.

    Pass it as ``CopyAIClient(clock=...)``: retries and waits then take no real time,
    and :attr:`sleeps` records every wait that was asked for, in order.

    Args:
        start: the initial reading of :meth:`monotonic`.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The current virtual time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Record the wait, advance virtual time by it, and yield to the event loop once."""
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()

    def advance(self, seconds: float) -> None:
        """Move virtual time forward without sleeping."""
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r}, sleeps={len(self.sleeps)})"
