"""Many processes, one API key: the request budget and webhook hints, shared on Redis.

A :class:`RedisCoordination` given to a client (``coordination=``) makes three of its
limits those of every process using the same API key and namespace:

- the rate (``rate_limit``): starts are spaced ``1/rate`` apart across all processes, by
  a start time reserved in Redis (no burst, however many processes);
- the in-flight cap (``max_connections``): leases in a sorted set, each expiring after
  the longest an attempt may take, so a process that dies does not keep its slots;
- the ``Retry-After`` pause: a 429 seen by any process pauses all of them.

Each is one Lua script, so atomic, and reads Redis's clock (``TIME``), never a host's:
hosts whose clocks disagree still space their requests right. A host only sleeps for the
durations Redis hands out.

Webhook events accepted by a listener of any process are published on a channel; every
client's waits take them as hints, exactly like their own listener's (a wait still ends
only on a GET). A lost message makes a wait poll at ``PollPolicy.safety_interval``. What
a client's waits learn of run durations (``PollPolicy.adaptive``) goes out on the same
channel, and every client learns it as its own; a lost message is one run less learned.

When Redis cannot be reached, nothing is raised: a WARNING is logged once, each process
keeps its own limits (as without coordination) and polls without shared events, and
Redis is tried again with growing backoff (0.5 s up to ``retry_max``), by one
operation at a time; when it answers again, an INFO line says so and the shared limits
apply again. One request waits on Redis for at most ``timeout`` in all, however many
operations its turns take (an :class:`~copyai_async._budget.Allowance`); a Redis slower
than that counts as down. Waiting for a slot of a full in-flight cap is not waiting on
Redis: the looks Redis answers cost nothing.

Each turn offers Redis what its process saw: the next start and the pause's end Redis
held, and how deep the rate was booked. Redis never holds less unless it lost them (a
``FLUSHALL``, a failover to an empty replica), so it rebuilds from them (see
:class:`_Booked`).

Everything sent to Redis goes through the coordination's one
:class:`~copyai_async._redis.RedisGateway` (which also reads the URL as redis-py does, and
keeps its secrets out of every repr, log line and message); its backoff and the event
subscription's timing run on a :class:`~copyai_async._clock.Clock`.

Keys: ``copyai-async:{<namespace>:<digest>}:...``, where the digest is a SHA-256 of the
API key (the key itself is never sent to Redis). The braces keep a client's keys in one
Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
import random
import re
import secrets
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._budget import Allowance, Budget, SharedUnavailable
from ._check import positive
from ._clock import Clock, SystemClock
from ._durations import DurationBook
from ._poll import RunHints
from ._redis import RedisGateway, import_redis

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisCoordination", "SharedLink"]

logger = logging.getLogger("copyai_async")

_T = TypeVar("_T")

_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_SLOT_POLL_FIRST = 0.002  # seconds between tries for a full in-flight cap, growing...
_SLOT_POLL_MAX = 0.05  # ...up to this
_PING_EVERY = 5.0  # the event subscription pings this often...
_SILENCE_LIMIT = 15.0  # ...and reconnects after this long without a word from Redis
_KEY_TTL_MS = 86_400_000  # keys of an idle key/namespace vanish after a day
# The next start outlives its booking by this long (seconds), so that one missing while
# a process's last sight of it is still ahead was lost, not expired (see _Booked).
_BOOKING_KEPT = 10.0

# KEYS: in-flight leases (zset), next start (µs), paused until (µs).
# ARGV: lease token, in-flight cap, lease ms, spacing µs, "1" to take a slot ("0": the
# slot is held; only take a new place in the rate, and extend the lease to match), key
# TTL ms, ms the next start outlives its booking; then what this process saw, to rebuild
# what Redis lost (a FLUSHALL, a failover to an empty replica; see _Booked): the next
# start (on Redis's clock, µs) and the µs left until it (on this process's clock),
# applied on every turn; the µs from now the rate is booked to if every process kept
# sending (applied only if the next start is gone while the one seen is still ahead:
# lost, not expired); the pause's end and the µs left until it, applied on every turn.
# Returns {granted (0/1), delay µs, the next start µs from now, pause µs, now µs}.
_TURN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function us(x) return string.format('%.0f', x) end
-- What a process saw Redis hold, on this Redis's clock. Its own countdown caps it:
-- after a failover to a host whose clock disagrees, that still means the same.
local function seen(at, left)
  left = tonumber(left)
  if left <= 0 then return 0 end
  return math.min(tonumber(at), now + left)
end
local spacing = tonumber(ARGV[4])
local function book(at)
  redis.call('SET', KEYS[2], us(at), 'PX', us(math.ceil((at - now) / 1000) + tonumber(ARGV[7])))
end
local paused = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now)
local known = seen(ARGV[11], ARGV[12])
if known > paused then
  paused = known
  redis.call('SET', KEYS[3], us(paused), 'PX', us(math.ceil((paused - now) / 1000) + 1000))
end
local kept = redis.call('GET', KEYS[2])
local held = math.max(tonumber(kept or '0'), now)
local nxt = math.max(held, seen(ARGV[8], ARGV[9]))
if not kept and tonumber(ARGV[9]) > 0 then  -- gone while still ahead: lost, not expired
  nxt = math.max(nxt, now + tonumber(ARGV[10]))
end
if nxt > held and spacing > 0 then book(nxt) end
local start = math.max(nxt, paused)
local pause_left = us(paused - now)
local function answer(granted, at)
  local ahead = 0
  if spacing > 0 then ahead = at - now end
  return {granted, us(start - now), us(ahead), pause_left, us(now)}
end
if ARGV[5] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', us(now))
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return answer(0, nxt) end
  redis.call('ZADD', KEYS[1], us(start + tonumber(ARGV[3]) * 1000), ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'XX', us(start + tonumber(ARGV[3]) * 1000), ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if spacing > 0 then book(start + spacing) end
return answer(1, start + spacing)
"""

# KEYS: paused until (µs). ARGV: pause µs. Returns {the pause left µs, now µs}.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wanted = now + tonumber(ARGV[1])
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if wanted > paused then
  redis.call('SET', KEYS[1], string.format('%.0f', wanted), 'PX',
    string.format('%.0f', math.ceil(tonumber(ARGV[1]) / 1000) + 1000))
  paused = wanted
end
return {string.format('%.0f', paused - now), string.format('%.0f', now)}
"""

# KEYS: paused until (µs). Returns the pause left, in µs (0 if none).
_PAUSE_LEFT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then return string.format('%.0f', paused - now) end
return '0'
"""


class RedisCoordination:
    """Share one API key's limits and webhook events among processes, through Redis.

    Pass it (or just its URL) to a client::

        client = CopyAIClient(rate_limit=50, coordination="redis://localhost:6379/0")

        coordination = RedisCoordination("redis://redis:6379/0", namespace="prod")
        client = CopyAIClient(rate_limit=50, coordination=coordination)

    Every client with the same API key and namespace then shares, whichever process or
    host it runs in:

    - ``rate_limit``: requests are spaced ``1/rate_limit`` apart across all of them;
    - ``max_connections``: the most requests in flight across all of them;
    - the pause a 429's ``Retry-After`` asks for: one process sees it, all wait.

    Each process applies the values it was given to the shared counters, so give every
    process the same ones. Webhook events a listener accepts in any process reach the
    waits of every client (each still verifies with one GET), and what any client's
    waits learn of run durations (``PollPolicy.adaptive``) is learned by all. Redis's
    clock is used, never a host's.

    If Redis cannot be reached, API calls go on: a WARNING is logged once, each process
    falls back to its own limits, and Redis is tried again with backoff (from 0.5 s up
    to ``retry_max``), by one operation at a time, until it answers. No Redis error is
    ever raised from an API call, and no request waits on Redis longer than ``timeout``
    in all (its turn, the check after sleeping until its place, a 429's pause; not the
    sleeps Redis hands out, nor waiting for a slot of a full ``max_connections``).

    If Redis loses its keys (``FLUSHALL``, a failover to an empty replica), each process
    rebuilds the shared rate and pause from what it saw Redis hold, so that the rebuilt
    state errs on the side of the limit. In-flight leases are not rebuilt: until the
    requests in flight then have ended, ``max_connections`` may be exceeded by that many.

    A coordination made from a URL by a client is closed with it. One you make yourself
    can serve many clients (of either API); close it with :meth:`aclose` or
    ``async with`` after them.

    No secret of the URL (the password, as ``user:password@``, ``:password@`` or
    ``?password=``, and ``?ssl_password=``) appears in ``repr()``, logs or messages, nor
    does any piece of one in a URL that is refused.

    Args:
        url: a ``redis.asyncio.Redis`` client you own (left open on :meth:`aclose`), or
            a URL: ``redis://[[user]:password@]host[:port][/db][?option=value&...]``,
            the same with ``rediss://`` (TLS), or
            ``unix://[[user]:password@]/path/to/socket[?db=N&option=value...]``.
            Options are those redis-py reads from a URL and passes to its connection
            (``db``, ``password``, ``client_name``, ``ssl_ca_certs``, ...), except the
            socket timeouts (see ``timeout``), ``max_connections`` (redis-py would fail
            the operations beyond it) and ``lib_name``/``lib_version``. In a password,
            percent-encode ``/``, ``?``, ``#``, ``%``, ``[`` and ``]`` (and in
            ``?password=``, ``&`` and ``+``).
        namespace: separates deployments sharing one Redis (1 to 64 letters, digits or
            ``_.:-``); processes share limits only within a namespace.
        timeout: the longest, in seconds, that one request (with its retries), entering
            a client (``async with``), or any other Redis operation may wait on Redis in
            all; past it, Redis counts as unavailable. A client passed in as ``url``
            keeps its own socket timeouts, but this bound holds for it too.
        retry_max: the longest wait between tries while Redis is unavailable, in seconds.

    Raises:
        ConfigurationError: the ``redis`` package is not installed (the ``redis``
            extra: ``pip install -e ".[redis]"`` in a checkout).
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range, or a URL that redis-py would read
            otherwise than written or refuse once connecting (a database that is not a
            number, a path with more than a database, a port that is not a number from
            1 to 65535, an option it does not take, reads otherwise (decodes twice,
            takes as a string) or whose value it refuses, a '#', an option given twice,
            an option refused above). Nothing is sent: whether Redis answers, and what
            only Redis can check (the password, a database beyond its count), is found
            on first use, as an outage.
    """

    def __init__(
        self,
        url: Any,
        *,
        namespace: str = "default",
        timeout: float = 1.0,
        retry_max: float = 30.0,
        _rebuild: bool = True,
        _clock: Clock | None = None,
    ) -> None:
        redis = import_redis()
        if not isinstance(url, (str, redis.asyncio.Redis)):
            raise TypeError(f"url must be a str or a redis.asyncio.Redis, got {type(url).__name__}")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                f"namespace must be 1 to 64 letters, digits or '_.:-', got {namespace!r}"
            )
        self.namespace: str = namespace
        self.timeout: float = positive("timeout", timeout)
        self.retry_max: float = positive("retry_max", retry_max)
        # False: offer Redis nothing to rebuild from after a loss (the baseline of
        # benchmarks/coordination.py, the behaviour before the rebuild).
        self._rebuild = _rebuild
        self._gateway = RedisGateway(
            url, timeout=self.timeout, retry_max=self.retry_max, clock=_clock or SystemClock()
        )

    def __repr__(self) -> str:
        state = "available" if self.available else "unavailable"
        return f"<RedisCoordination {self._gateway.address} namespace={self.namespace!r} {state}>"

    @property
    def available(self) -> bool:
        """False from a failed Redis operation until one succeeds again."""
        return self._gateway.available

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run (by you, or by the client that made it)."""
        return self._gateway.closed

    async def __aenter__(self) -> RedisCoordination:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the Redis connections this object opened (a client passed in is left
        open). Idempotent; close the API clients using it first."""
        await self._gateway.aclose()

    # -- for clients -------------------------------------------------------------------

    def _link(
        self,
        *,
        secret: str,
        clock: Clock,
        max_in_flight: int,
        rate_limit: float | None,
        lease_ttl: float,
    ) -> SharedLink:
        """The shared limits and events of one client (its API key ``secret``); its
        :attr:`SharedLink.hints` are the client's."""
        return SharedLink(
            self._gateway,
            namespace=self.namespace,
            rebuild=self._rebuild,
            secret=secret,
            clock=clock,
            max_in_flight=max_in_flight,
            rate_limit=rate_limit,
            lease_ttl=lease_ttl,
        )


class _Booked:
    """What this client last saw of the shared rate and pause: what each of its turns
    offers Redis to rebuild them from, should Redis have lost them (a FLUSHALL, a
    failover to an empty replica), so that the rebuilt state errs on the side of the
    limit (:meth:`offers`).

    - The next start, and the pause's end, that it saw Redis hold. Redis never holds
      less unless it lost them, so every turn applies them: they change nothing while
      Redis keeps its keys, delay no one after a quiet period (they are past by then),
      and overrule a process that knew nothing and asked first after a loss. Each is
      offered on Redis's clock (so a turn that waited in a slow Redis does not stretch
      it), capped by its countdown on this process's clock (so a failover to a host
      whose clock disagrees does not either).
    - The rate booked as deep (beyond any pause) as it last saw it, from now: where the
      booking is if every process kept sending as then (each request books at its far
      end, so the depth stays about the same). Applied only when the next start is
      gone while the one seen is still ahead: lost, not expired (it outlives its
      booking by :data:`_BOOKING_KEPT`). It costs at most one wait of that depth, once,
      after a loss.
    """

    __slots__ = ("_depth", "_next_start", "_paused_until", "_seen_at")

    def __init__(self) -> None:
        self._seen_at = -math.inf
        self._depth = 0.0
        # (on this process's clock, on Redis's clock in µs)
        self._next_start = (-math.inf, 0)
        self._paused_until = (-math.inf, 0)

    def saw(self, asked_at: float, redis_now: int, pause: float, ahead: float = 0.0) -> None:
        """Redis answered, at ``redis_now`` (µs, its clock), a turn or pause asked at
        ``asked_at`` (taken before sending, so this never reaches past what Redis
        holds): a pause lasting ``pause`` s more, and the next start ``ahead`` s on."""
        self._paused_until = _later(self._paused_until, asked_at, redis_now, pause)
        self._next_start = _later(self._next_start, asked_at, redis_now, ahead)
        if ahead > 0 and asked_at >= self._seen_at:  # not an older answer, come late
            self._seen_at, self._depth = asked_at, max(0.0, ahead - pause)

    def pause(self, now: float) -> float:
        """Seconds the last pause seen still lasts (0 if over)."""
        return max(0.0, self._paused_until[0] - now)

    def next_start(self, now: float) -> float:
        """Seconds until the next start seen (0 if past)."""
        return max(0.0, self._next_start[0] - now)

    def if_lost(self, now: float) -> float:
        """Seconds from now to book the next start at, should Redis have lost it: the
        booking as deep as last seen, while the next start seen is still ahead."""
        return self.pause(now) + self._depth if self.next_start(now) > 0 else 0.0

    def offers(self, now: float) -> list[int]:
        """ARGV 8 to 12 of :data:`_TURN` (µs)."""
        return [
            self._next_start[1],
            math.floor(self.next_start(now) * 1e6),
            math.floor(self.if_lost(now) * 1e6),
            self._paused_until[1],
            math.floor(self.pause(now) * 1e6),
        ]


def _later(
    known: tuple[float, int], asked_at: float, redis_now: int, ahead: float
) -> tuple[float, int]:
    """The later of ``known`` and a time ``ahead`` s after an answer, on both clocks."""
    if ahead <= 0 or asked_at + ahead <= known[0]:
        return known
    return asked_at + ahead, redis_now + math.floor(ahead * 1e6)


class SharedLink:
    """One client's shared limits and events (made by :meth:`RedisCoordination._link`),
    through the coordination's :class:`~copyai_async._redis.RedisGateway`.

    It implements :class:`~copyai_async._budget.SharedLimits` for the client's budget,
    publishes the events its listeners accept, and runs one task that subscribes to
    the events of the others.
    """

    def __init__(
        self,
        gateway: RedisGateway,
        *,
        namespace: str,
        rebuild: bool,
        secret: str,
        clock: Clock,
        max_in_flight: int,
        rate_limit: float | None,
        lease_ttl: float,
    ) -> None:
        self.gateway = gateway
        self._rebuild = rebuild
        digest = hashlib.sha256(b"copyai-async\0" + secret.encode()).hexdigest()[:32]
        base = f"copyai-async:{{{namespace}:{digest}}}"
        self.keys = (f"{base}:inflight", f"{base}:next", f"{base}:pause")
        self.channel = f"{base}:events"
        self.origin = secrets.token_hex(8)
        self._clock = clock  # the client's: the budget sleeps on it
        # The client's hints: this link passes their events on (relay) and brings the
        # other processes' in; built here, so that neither is wired up after the fact.
        self.hints = RunHints(clock, relay=self.publish)
        # What the client's waits learn of run durations, passed on and brought in the
        # same way.
        self.durations = DurationBook(relay=self.publish_duration)
        self._max_in_flight = max_in_flight
        self._spacing_us = round(1e6 / rate_limit) if rate_limit else 0
        self._lease_ms = math.ceil(lease_ttl * 1000)
        self._leases = itertools.count()
        self._booked = _Booked()
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscriber: asyncio.Task[None] | None = None
        self._first_try: asyncio.Event | None = None
        self._rng = random.Random()
        self._closed = False

    def __repr__(self) -> str:
        return f"<SharedLink {self.channel.rsplit(':', 1)[0]} on {self.gateway.address}>"

    # -- the budget --------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether to use Redis for the next request."""
        return not self._closed and self.gateway.ready()

    def allowance(self) -> Allowance:
        """A new request's allowance for waiting on Redis (the coordination's timeout)."""
        return self.gateway.allowance()

    async def _turn_script(
        self, lease: str, take_slot: bool, allowance: Allowance
    ) -> tuple[bool, float]:
        asked_at = self._clock.monotonic()
        args: list[str | int | float] = [
            lease,
            self._max_in_flight,
            self._lease_ms,
            self._spacing_us,
            "1" if take_slot else "0",
            _KEY_TTL_MS,
            round(_BOOKING_KEPT * 1000),
            *(self._booked.offers(asked_at) if self._rebuild else [0] * 5),
        ]
        granted, delay_us, ahead_us, pause_us, now_us = await self.gateway.call(
            self.gateway.script(_TURN, self.keys, args), allowance
        )
        self._booked.saw(asked_at, int(now_us), int(pause_us) / 1e6, int(ahead_us) / 1e6)
        return bool(int(granted)), int(delay_us) / 1e6

    async def _pause_left(self, allowance: Allowance) -> float:
        operation = self.gateway.script(_PAUSE_LEFT, self.keys[2:], [])
        return int(await self.gateway.call(operation, allowance)) / 1e6

    async def turn(self, budget: Budget, allowance: Allowance) -> str:
        """Take a shared slot and a place in the shared rate (after any shared pause),
        sleeping on ``budget`` (so deadlines and closing apply) and waiting on Redis out
        of ``allowance``; returns the lease."""
        lease = f"{self.origin}:{next(self._leases)}"
        held = False
        poll = _SLOT_POLL_FIRST
        try:
            while True:
                left = allowance.left
                granted, delay = await self._turn_script(lease, not held, allowance)
                if not granted:
                    # Every slot is taken. Redis answered: waiting for a slot is not
                    # waiting on Redis, so this look costs the allowance nothing. Look
                    # again soon (a slot frees when a request of any process ends, and
                    # Redis does not say when).
                    allowance.left = left
                    await budget.sleep(poll * self._rng.uniform(0.5, 1.0))
                    poll = min(poll * 2, _SLOT_POLL_MAX)
                    continue
                held = True
                if delay <= 0:
                    return lease
                await budget.sleep(delay)
                if await self._pause_left(allowance) <= 0:
                    return lease
                # A pause began while this request slept: a new place, after it.
        except BaseException:
            if held:
                self.release_soon(lease)
            raise

    def release_soon(self, lease: str) -> None:
        """Give back a slot, in the background (an unreachable Redis lets it expire)."""
        if self._closed:
            return
        key = self.keys[0]
        self._spawn(self._quietly(lambda redis: redis.zrem(key, lease)))

    async def pause(self, seconds: float, allowance: Allowance) -> None:
        """Pause every process sharing the key for ``seconds`` (waiting on Redis out of
        ``allowance``)."""
        if not self.ready():
            return
        operation = self.gateway.script(_PAUSE, self.keys[2:], [math.ceil(seconds * 1e6)])
        asked_at = self._clock.monotonic()
        try:
            left_us, now_us = await self.gateway.call(operation, allowance)
        except SharedUnavailable:
            return  # the local pause holds this process
        self._booked.saw(asked_at, int(now_us), int(left_us) / 1e6)
        logger.info("paused every process sharing this key for %.2f s", seconds)

    async def _quietly(self, operation: Callable[[Redis], Awaitable[object]]) -> None:
        """A background operation: if Redis fails it, so be it (logged by the
        coordination)."""
        with contextlib.suppress(SharedUnavailable):
            await self.gateway.call(operation, self.gateway.allowance())

    # -- events ------------------------------------------------------------------------

    def publish(self, run_id: str, workflow_id: str | None, final: bool) -> None:
        """Tell the other processes' waits about an event (in the background; unsent,
        waits elsewhere fall back to their safety interval)."""
        if self._closed or not self.gateway.ready():
            return
        message = json.dumps({"o": self.origin, "r": run_id, "w": workflow_id, "f": final})
        channel = self.channel
        self._spawn(self._quietly(lambda redis: redis.publish(channel, message)))

    def publish_duration(
        self, workflow_id: str, low: float, high: float, run_id: str | None
    ) -> None:
        """Tell the other processes' waits how long a run of the workflow took (in the
        background; unsent, they learn from their own waits)."""
        if self._closed or not self.gateway.ready():
            return
        message = json.dumps({"o": self.origin, "d": workflow_id, "l": low, "h": high, "r": run_id})
        channel = self.channel
        self._spawn(self._quietly(lambda redis: redis.publish(channel, message)))

    def _take(self, data: Any) -> None:
        try:
            message = json.loads(data)
            origin = message["o"]
            if "d" in message:
                self._take_duration(
                    origin, message["d"], message["l"], message["h"], message.get("r")
                )
                return
            run_id, workflow_id, final = message["r"], message["w"], message["f"]
        except (ValueError, TypeError, KeyError, ArithmeticError, AttributeError) as exc:
            logger.debug("ignored a malformed message on %s: %s", self.channel, exc)
            return
        if origin == self.origin:
            return  # this client's own listener already told its waits
        if not isinstance(run_id, str) or not isinstance(final, bool):
            logger.debug("ignored a malformed message on %s", self.channel)
            return
        self.hints.hint(
            run_id,
            workflow_id if isinstance(workflow_id, str) else None,
            final=final,
            relayed=True,
        )

    def _take_duration(
        self, origin: Any, workflow_id: Any, low: Any, high: Any, run_id: Any
    ) -> None:
        """Another process's wait saw a run of ``workflow_id`` end between ``low`` and
        ``high`` seconds after its start."""
        if origin == self.origin:
            return  # learned here already
        numbers = all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= 1e12
            for x in (low, high)
        )
        if (
            not isinstance(workflow_id, str)
            or not numbers
            or not (run_id is None or isinstance(run_id, str))
        ):
            logger.debug("ignored a malformed message on %s", self.channel)
            return
        self.durations.observe(workflow_id, float(low), float(high), run_id=run_id, relayed=True)

    def start(self) -> None:
        """Start following the other processes' events (idempotent; in the loop)."""
        if self._closed or (self._subscriber is not None and not self._subscriber.done()):
            return
        self._first_try = asyncio.Event()
        self._subscriber = asyncio.get_running_loop().create_task(
            self._follow(self._first_try), name="copyai-async redis events"
        )

    async def started(self) -> None:
        """Return once the first subscription attempt is over (made or failed), or
        after the coordination's timeout: entering a client waits no longer on Redis."""
        first = self._first_try
        if first is not None:
            with anyio.move_on_after(self.gateway.timeout):
                await first.wait()

    async def _follow(self, first_try: asyncio.Event) -> None:
        """Subscribe, follow, and subscribe again after a failure (once Redis may be
        tried again), until closed."""
        gateway = self.gateway
        while not (self._closed or gateway.closed):
            wait = gateway.retry_in()
            if wait > 0:
                first_try.set()
                await gateway.clock.sleep(wait)
                continue
            await self._follow_once(first_try)

    async def _follow_once(self, first_try: asyncio.Event) -> None:
        """One subscription, until it fails (noted by the coordination)."""
        gateway = self.gateway
        attached = False
        pubsub: Any = None
        try:
            pubsub = gateway.client().pubsub()
            # Up once Redis confirms it, within the timeout (redis-py may return from
            # subscribe() unconnected).
            await gateway.call(lambda _redis: self._subscribe(pubsub), gateway.allowance())
            self.hints.attach()
            attached = True
            first_try.set()
            await self._listen(pubsub)
        except SharedUnavailable:
            pass  # noted by the coordination (or it was closed)
        except Exception as exc:  # as in _call: any failure means "unavailable"
            gateway.failed(exc)
        finally:
            first_try.set()
            if attached:
                self.hints.detach()
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _subscribe(self, pubsub: Any) -> None:
        """Subscribe, and return once Redis has confirmed it."""
        await pubsub.subscribe(self.channel)
        while True:
            message = await pubsub.get_message(timeout=1.0)  # bounded by the caller
            if message is not None and message.get("type") == "subscribe":
                return

    async def _listen(self, pubsub: Any) -> None:
        """Hand the events of the other processes to this client's waits; raise when
        Redis has been silent too long (pinging it meanwhile)."""
        clock = self.gateway.clock
        heard = pinged = clock.monotonic()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = clock.monotonic()
            if message is not None:
                heard = now
                if message.get("type") == "message":
                    self._take(message.get("data"))
            if now - heard > _SILENCE_LIMIT:
                raise ConnectionError(f"no word from Redis for {_SILENCE_LIMIT:g} s")
            if now - pinged > _PING_EVERY:
                pinged = now
                await pubsub.ping()

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop following events; let slot releases and publishes under way finish (for
        at most the coordination's timeout)."""
        self._closed = True
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.cancel()
            await asyncio.wait((subscriber,))
        if self._tasks:
            pending = list(self._tasks)
            _, late = await asyncio.wait(pending, timeout=self.gateway.timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
