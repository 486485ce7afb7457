"""One request budget per client: a concurrency cap, a rate, a shared pause, deadlines.

Every attempt of every request of a client passes through its :class:`Budget`:

- at most ``max_concurrency`` requests in flight at once, across all operations;
- with ``rate_limit=R``, requests start at least ``1/R`` seconds apart (no burst), so no
  one-second window holds more than ``R`` of them;
- a 429 with ``Retry-After`` pauses the whole client, not only the request that got it;
- every wait (pacing, the pause, retry backoff) respects the caller's deadline, carried
  in a context variable by the poller: a wait that would end past it ends at it, with
  :class:`DeadlineExceeded`.

With ``shared`` limits (Redis coordination), the rate, the in-flight cap and the pause
are those of every process using the same key and namespace; while they cannot be
reached, this budget falls back to its own (see :mod:`copyai_async._coordination`). One
request (with its retries) waits on them for at most their ``timeout`` in all: its
:class:`Allowance`.
"""

from __future__ import annotations

import asyncio
import math
from contextvars import ContextVar
from typing import Protocol

from ._clock import Clock, SystemClock
from ._errors import ClientClosedError

__all__ = [
    "DEADLINE",
    "Allowance",
    "Budget",
    "DeadlineExceeded",
    "SharedLimits",
    "SharedUnavailable",
]

DEADLINE: ContextVar[float | None] = ContextVar("copyai_async_deadline", default=None)
"""The current operation's deadline on the client's clock, or ``None``."""


class DeadlineExceeded(Exception):
    """A wait reached the caller's deadline. ``__cause__`` is the last error, if any."""


class SharedUnavailable(Exception):
    """The shared limits cannot be reached just now: use the local ones."""


class Allowance:
    """How long one request (with its retries) may still wait on the shared limits' store.

    Every operation on the store comes out of it: the request's turns, the check after
    sleeping until its place, setting a 429's pause. Sleeps the store hands out (the
    rate's spacing, a pause) are not waiting on it and cost nothing, nor do the looks
    at a full in-flight cap that the store answers (waiting for a slot is not waiting
    on the store). An operation cut short by it makes the store count as unavailable;
    once it is spent, the request uses the local limits without trying the store.
    """

    __slots__ = ("left",)

    def __init__(self, seconds: float) -> None:
        self.left = seconds  # seconds; <= 0 once spent

    def __repr__(self) -> str:
        return f"<Allowance {self.left:.3f} s left>"


class SharedLimits(Protocol):
    """Limits kept outside this process (see :mod:`copyai_async._coordination`)."""

    def ready(self) -> bool:
        """Whether to try the shared limits now (false while backing off after a failure)."""
        ...

    def allowance(self) -> Allowance:
        """A new request's allowance for waiting on the shared limits, in all."""
        ...

    async def turn(self, budget: Budget, allowance: Allowance) -> str:
        """Wait for a shared slot and this request's place in the shared rate (sleeping
        through ``budget``, waiting on the store out of ``allowance``); returns the
        slot's lease. Raises :class:`SharedUnavailable`."""
        ...

    def release_soon(self, lease: str) -> None:
        """Give the slot back (in the background; never raises)."""
        ...

    async def pause(self, seconds: float, allowance: Allowance) -> None:
        """Pause every process sharing the limits (out of ``allowance``; never raises)."""
        ...

    def start(self) -> None:
        """Begin what runs in the background (in the running loop; idempotent)."""
        ...

    async def started(self) -> None:
        """Return once the first connection attempt is over (made or failed), or after
        the store's timeout, whichever comes first."""
        ...

    async def aclose(self) -> None:
        """Stop what runs in the background."""
        ...


class Budget:
    """The shared limits of one client (see the module docstring).

    Args:
        clock: the client's clock.
        max_concurrency: requests in flight at once.
        rate_limit: requests per second, or ``None`` for no limit.
        shared: limits kept with other processes, used while they can be reached.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        max_concurrency: int,
        rate_limit: float | None,
        shared: SharedLimits | None = None,
    ) -> None:
        self.clock = clock
        self.shared = shared
        self.slots = asyncio.Semaphore(max_concurrency)
        self.rate_limit = rate_limit
        self._spacing = 1.0 / rate_limit if rate_limit else 0.0
        self._next_start = -math.inf
        self._paused_until = -math.inf
        self.closing: asyncio.Future[None] | None = None  # resolved when the client closes

    @property
    def paused_until(self) -> float:
        """Until when (on the clock) the client is paused; in the past if it is not."""
        return self._paused_until

    def closing_future(self) -> asyncio.Future[None]:
        """The future resolved when the client closes (made in the running loop)."""
        if self.closing is None:
            self.closing = asyncio.get_running_loop().create_future()
        return self.closing

    def pause(self, seconds: float) -> None:
        """Pause every request of the client for ``seconds`` (a server's Retry-After)."""
        self._paused_until = max(self._paused_until, self.clock.monotonic() + seconds)

    def allowance(self) -> Allowance | None:
        """What a new request may wait on the shared limits, in all (``None``: there
        are none); pass it to every :meth:`wait_turn` and :meth:`pause_all` of the
        request, retries included."""
        return None if self.shared is None else self.shared.allowance()

    async def pause_all(self, seconds: float, allowance: Allowance | None = None) -> None:
        """Pause this client, and every process sharing its limits, for ``seconds``."""
        self.pause(seconds)
        shared = self.shared
        if shared is not None:
            await shared.pause(seconds, allowance or shared.allowance())

    def release(self, lease: str | None) -> None:
        """Give back the shared slot :meth:`wait_turn` returned (``None``: nothing to do)."""
        if lease is not None and self.shared is not None:
            self.shared.release_soon(lease)

    async def nap(self, seconds: float) -> None:
        """Sleep on the clock; if the client closes meanwhile, raise ClientClosedError at once."""
        closing = self.closing
        if closing is None:
            await self.clock.sleep(seconds)
            return
        if not closing.done():
            if isinstance(self.clock, SystemClock):
                # The loop's own clock: waiting on the future with a timeout is enough.
                await asyncio.wait((closing,), timeout=max(0.0, seconds))
            else:
                sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
                try:
                    await asyncio.wait((sleeper, closing), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not sleeper.done():
                        sleeper.cancel()
                        await asyncio.wait((sleeper,))
        if closing.done():
            raise ClientClosedError("the client was closed while this operation was waiting")

    async def sleep(self, seconds: float, *, cause: BaseException | None = None) -> None:
        """Sleep, but not past the deadline: reaching it raises :class:`DeadlineExceeded`."""
        deadline = DEADLINE.get()
        if deadline is not None:
            remaining = deadline - self.clock.monotonic()
            if seconds >= remaining:
                if remaining > 0:
                    await self.nap(remaining)
                raise DeadlineExceeded() from cause
        await self.nap(seconds)

    async def wait_turn(self, allowance: Allowance | None = None) -> str | None:
        """Wait out any pause, then for this request's place in the rate; call it while
        holding a slot, right before sending. Returns the lease of a shared slot, to
        give back with :meth:`release` once the request is over (``None`` when the
        local limits were used). ``allowance``: the request's, from :meth:`allowance`
        (a fresh one if not given)."""
        shared = self.shared
        if shared is not None and shared.ready():
            try:
                return await shared.turn(self, allowance or shared.allowance())
            except SharedUnavailable:
                pass  # logged by the shared limits; this process's own limits apply
        await self._local_turn()
        return None

    async def _local_turn(self) -> None:
        while True:
            now = self.clock.monotonic()
            start = max(now, self._next_start, self._paused_until)
            # Reserve the start time at once, so waiters are spaced rather than herded.
            self._next_start = start + self._spacing
            if start <= now:
                return
            await self.sleep(start - now)
            if self._paused_until <= self.clock.monotonic():
                return
            # A pause began while we slept: take a new place after it.
