"""FakeClock: virtual time for tests of backoff, deadlines, pacing and polling."""

from __future__ import annotations

import heapq
import itertools

import anyio.lowlevel

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`copyai_async.Clock` whose sleeps take no real time.

    Pass it as ``CopyAIClient(clock=...)``: retries, pauses and waits then run in
    milliseconds, and :attr:`sleeps` records every wait that was asked for, in order.

    Time jumps forward when a task sleeps, once the other ready tasks have had their turn:
    concurrent sleepers wake in the order of their wake-up times, each seeing the time it
    asked for (as on a real clock, minus the waiting).

    Args:
        start: the initial reading of :meth:`monotonic`.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now: float = float(start)
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, int]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        """The current virtual time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Record the wait, then return once virtual time has reached its end."""
        self.sleeps.append(seconds)
        entry = (self.now + max(0.0, seconds), next(self._order))
        heapq.heappush(self._sleepers, entry)
        try:
            await anyio.lowlevel.checkpoint()  # let the others run, and sleep too
            while self._sleepers[0] != entry:  # earlier wake-ups go first
                await anyio.lowlevel.checkpoint()
        except BaseException:  # cancelled: leave the line without moving time
            self._sleepers.remove(entry)
            heapq.heapify(self._sleepers)
            raise
        heapq.heappop(self._sleepers)
        self.now = max(self.now, entry[0])

    def advance(self, seconds: float) -> None:
        """Move virtual time forward without sleeping."""
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r}, sleeps={len(self.sleeps)})"
