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
only on a GET). A lost message makes a wait poll at ``PollPolicy.safety_interval``.

When Redis cannot be reached, nothing is raised: a WARNING is logged once, each process
keeps its own limits (as without coordination) and polls without shared events, and
Redis is tried again with growing backoff (0.5 s up to ``retry_max``); when it answers
again, an INFO line says so and the shared limits apply again. One request waits on
Redis for at most ``timeout`` in all, however many operations its turns take (an
:class:`~copyai_async._budget.Allowance`); a Redis slower than that counts as down.

When Redis loses the keys (``FLUSHALL``, a failover to an empty replica), the next turn
of each process offers what it saw: how far ahead the rate was booked, and the pause.
Redis rebuilds the next start and the pause from them (see :class:`_Booked`).

The URL is read as redis-py reads it, and refused where that differs from what it
says; its password never reaches a repr, a log line or a message (:class:`_Address`).

Keys: ``copyai-async:{<namespace>:<digest>}:...``, where the digest is a SHA-256 of the
API key (the key itself is never sent to Redis). The braces keep a client's keys in one
Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import json
import logging
import math
import random
import re
import secrets
import time
import typing
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, unquote_plus, urlsplit

import anyio

from ._budget import Allowance, Budget, SharedUnavailable
from ._errors import ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ._poll import RunHints

__all__ = ["RedisCoordination", "SharedLink"]

logger = logging.getLogger("copyai_async")

_T = TypeVar("_T")

_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_FIRST_BACKOFF = 0.5
_SLOT_POLL_FIRST = 0.002  # seconds between tries for a full in-flight cap, growing...
_SLOT_POLL_MAX = 0.05  # ...up to this
_PING_EVERY = 5.0  # the event subscription pings this often...
_SILENCE_LIMIT = 15.0  # ...and reconnects after this long without a word from Redis
_KEY_TTL_MS = 86_400_000  # keys of an idle key/namespace vanish after a day
# The next start outlives its booking by this long (seconds), so that a process that
# saw it booked less long ago than that (less the slack) knows a missing one was lost.
_BOOKING_KEPT = 10.0
_BOOKING_SLACK = 1.0

# KEYS: in-flight leases (zset), next start (µs), paused until (µs).
# ARGV: lease token, in-flight cap, lease ms, spacing µs, "1" to take a slot ("0": the
# slot is held; only take a new place in the rate, and extend the lease to match), key
# TTL ms, ms the next start outlives its booking; then what this process knows, in µs
# from now, to rebuild what Redis lost (a FLUSHALL, a failover to an empty replica): how
# far ahead it saw the rate booked (used only if the next start is gone), and how long
# the pause it knows of still lasts.
# Returns {granted (0/1), delay µs, the rate's booking beyond any pause µs, pause µs}.
_TURN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease_us = tonumber(ARGV[3]) * 1000
local known_pause = tonumber(ARGV[9])
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if known_pause > 0 and now + known_pause > paused then
  paused = now + known_pause
  redis.call('SET', KEYS[3], string.format('%.0f', paused), 'PX',
    string.format('%.0f', math.ceil(known_pause / 1000) + 1000))
end
local nxt = redis.call('GET', KEYS[2])
if nxt then nxt = tonumber(nxt) else nxt = now + tonumber(ARGV[8]) end
local start = math.max(now, nxt, paused)
local pause_left = string.format('%.0f', math.max(paused - now, 0))
if ARGV[5] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return {0, 0, string.format('%.0f', start - math.max(now, paused)), pause_left}
  end
  redis.call('ZADD', KEYS[1], string.format('%.0f', start + lease_us), ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', start + lease_us), ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local spacing = tonumber(ARGV[4])
local depth = 0
if spacing > 0 then
  local after = start + spacing
  redis.call('SET', KEYS[2], string.format('%.0f', after), 'PX',
    string.format('%.0f', math.ceil((after - now) / 1000) + tonumber(ARGV[7])))
  depth = after - math.max(now, paused)
end
return {1, string.format('%.0f', start - now), string.format('%.0f', depth), pause_left}
"""

# KEYS: paused until (µs). ARGV: pause µs. Returns the pause left, in µs.
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
return string.format('%.0f', paused - now)
"""

# KEYS: paused until (µs). Returns the pause left, in µs (0 if none).
_PAUSE_LEFT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then return string.format('%.0f', paused - now) end
return '0'
"""


def _import_redis() -> Any:
    try:
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - the test extra installs redis
        raise ConfigurationError(
            "coordination needs the redis package: pip install 'copyai-async[redis]'"
        ) from exc
    return redis


# -- the URL --------------------------------------------------------------------------

_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db][?option=value&...], the same with "
    "rediss:// (TLS), or unix://[[user]:password@]/path/to/socket[?db=N&option=value...]"
    " (percent-encode '/', '?', '#', '%', '[' and ']' in a password, and in"
    " ?password= '&' and '+' too)"
)
_DB_PATH = re.compile(r"/?([0-9]+)?")
# Options the URL itself carries (host, port, path): given as ?options too, redis-py
# would quietly let one win.
_URL_PARTS = frozenset({"host", "port", "path", "connection_class"})
# Set from this object's own ``timeout``: in a URL, they would quietly override it.
_OWN_OPTIONS = frozenset({"socket_timeout", "socket_connect_timeout"})


class _Address:
    """Where Redis is, shown without its password; hides the password in other texts."""

    __slots__ = ("_secrets", "shown")

    def __init__(self, shown: str, secrets: set[str]) -> None:
        # Longest first, so that no piece of a longer form is left behind.
        self._secrets = sorted((s for s in secrets if s), key=len, reverse=True)
        self.shown = self.redact(shown)

    def redact(self, text: str) -> str:
        """``text`` with every form of the password (as written, decoded) as ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return self.shown

    @classmethod
    def of_client(cls, client: Any) -> _Address:
        """A ``redis.asyncio.Redis`` passed in: its password is hidden too."""
        kwargs = getattr(client.connection_pool, "connection_kwargs", {})
        password = kwargs.get("password")
        return cls("<redis client>", {password} if isinstance(password, str) else set())


def _url_error(problem: str) -> ValueError:
    # Never the URL itself: any part of it may be a piece of a password.
    return ValueError(f"url {problem}; expected {_URL_FORMS}")


def _parse_url(url: str, redis: Any) -> _Address:
    """Check ``url`` the way redis-py will read it: refuse one it would read otherwise
    than written, or fail on only once connecting.

    Raises:
        ValueError: naming what is wrong, never quoting the URL.
    """
    parts = _split(url)
    db_in_path = _check_location(parts)
    options = _query_options(parts.query)
    userinfo = parts.netloc.rpartition("@")[0]  # the last '@', as redis-py splits
    user, colon, _ = userinfo.partition(":")
    for name, in_url in (("db", db_in_path), ("username", user), ("password", colon)):
        if name in options and in_url:
            raise _url_error(f"gives the {name} twice (as ?{name}= and in the URL itself)")
    _check_options(url, options, parts.scheme, redis)
    secrets = {parts.password or "", unquote(parts.password or "")}
    if "password" in options:
        secrets |= {options["password"], *_raw_values(parts.query, "password")}
    return _Address(_shown(parts), secrets)


def _split(url: str) -> SplitResult:
    """``url`` in parts, if it has none that redis-py would drop or misread."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise _url_error("contains spaces or control characters")
    if "#" in url:
        # redis-py drops a fragment: with a '#' in a password, the rest is lost.
        raise _url_error("contains '#'")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _url_error("cannot be parsed") from None  # its message quotes the URL
    scheme = parts.scheme  # lower-cased, as redis-py compares it
    if scheme not in ("redis", "rediss", "unix") or url[len(scheme) : len(scheme) + 3] != "://":
        raise _url_error("must start with redis://, rediss:// or unix://")
    return parts


def _check_location(parts: SplitResult) -> str | None:
    """Check the host, port and path; return the database the path gives, if any."""
    try:
        port = parts.port
    except ValueError:
        raise _url_error("has a port that is not a number from 1 to 65535") from None
    path = unquote(parts.path)
    if parts.scheme == "unix":
        if parts.hostname or port is not None:
            raise _url_error("names a host or port, which unix:// takes none of (three slashes)")
        if path in ("", "/"):
            raise _url_error("has no socket path")
        return None
    if port == 0:
        raise _url_error("has port 0, which redis-py takes as 6379")
    match = _DB_PATH.fullmatch(path)
    if match is None:
        # redis-py would quietly use database 0 (or read /0/1 as 1).
        raise _url_error("has a path that is not a database number (such as /0)")
    return match.group(1)


def _shown(parts: SplitResult) -> str:
    """The URL as written, but for the password (in the userinfo or ``?password=``)."""
    userinfo, at, location = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    query = "&".join(
        f"{name}={'***' if unquote_plus(name) == 'password' else value}"
        for name, _, value in (p.partition("=") for p in parts.query.split("&") if p)
    )
    shown_userinfo = f"{user}{':***' if colon else ''}{at}"
    return f"{parts.scheme}://{shown_userinfo}{location}{parts.path}{'?' if query else ''}{query}"


def _query_options(query: str) -> dict[str, str]:
    """The ``?name=value`` options, each given once and with a value."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise _url_error("has a query that is not name=value pairs joined by &") from None
    options = dict(pairs)
    if len(options) < len(pairs):
        raise _url_error("gives an option more than once")
    if any(not value for value in options.values()):
        raise _url_error("has an option without a value (redis-py would ignore it)")
    return options


def _raw_values(query: str, wanted: str) -> list[str]:
    """The values of option ``wanted`` as written in ``query`` (before decoding)."""
    return [
        value
        for name, _, value in (p.partition("=") for p in query.split("&"))
        if unquote_plus(name) == wanted
    ]


def _check_options(url: str, options: dict[str, str], scheme: str, redis: Any) -> None:
    """Each option must be one that redis-py's own parser (``parse_url``) reads and the
    connection it makes accepts, with a value it can use."""
    parsers: Any = redis.asyncio.connection.URL_QUERY_ARGUMENT_PARSERS
    for name in options:
        if name in _OWN_OPTIONS:
            raise _url_error(f"sets {name}: give RedisCoordination(timeout=...) instead")
        if name in _URL_PARTS:
            raise _url_error(f"gives the {name} as an option: write it in the URL itself")
    try:
        kwargs = redis.asyncio.connection.parse_url(url)
    except ValueError:
        bad = next(
            (n for n in options if n in parsers and not _parses(parsers[n], options[n])), None
        )
        what = f"option {bad}" if bad else "an option"
        raise _url_error(f"has {what} with a value redis-py cannot read") from None
    accepted = _accepted_options(kwargs.get("connection_class", redis.asyncio.Connection), redis)
    usable = sorted(n for n, p in accepted.items() if n in parsers or _takes_str(p))
    for name in options:
        if name not in usable:
            # Not quoted: an unknown name may be a piece of a password ('&' in it).
            raise _url_error(
                f"has an option redis-py does not take (for {scheme}://, it takes: "
                f"{', '.join(n for n in usable if n not in _URL_PARTS | _OWN_OPTIONS)})"
            )


def _parses(parser: Callable[[str], object], value: str) -> bool:
    try:
        parser(value)
    except (TypeError, ValueError):
        return False
    return True


def _accepted_options(connection_class: type, redis: Any) -> dict[str, inspect.Parameter]:
    """The keyword arguments a connection of ``connection_class`` (made by redis-py's
    connection pool) accepts: its ``__init__``'s, and its bases' while they pass
    ``**kwargs`` on."""
    accepted = _named_parameters(redis.asyncio.ConnectionPool.__init__)
    for cls in connection_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in _named_parameters(init).items():
            accepted.setdefault(name, param)
        if all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in _parameters(init)):
            break  # nothing is passed on to the bases
    accepted.pop("connection_class", None)
    return accepted


def _parameters(function: Callable[..., object]) -> list[inspect.Parameter]:
    return list(inspect.signature(function).parameters.values())


def _named_parameters(function: Callable[..., object]) -> dict[str, inspect.Parameter]:
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p for p in _parameters(function) if p.kind in named and p.name != "self"}


def _takes_str(param: inspect.Parameter) -> bool:
    """Whether a parameter takes a string (an option redis-py has no parser for is passed
    on as the string written)."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return True
    if isinstance(annotation, str):  # postponed annotations
        return re.search(r"\bstr\b", annotation) is not None
    return annotation is str or str in typing.get_args(annotation)


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
    waits of every client (each still verifies with one GET). Redis's clock is used,
    never a host's.

    If Redis cannot be reached, API calls go on: a WARNING is logged once, each process
    falls back to its own limits, and Redis is tried again with backoff (from 0.5 s up
    to ``retry_max``) until it answers. No Redis error is ever raised from an API call,
    and no request waits on Redis longer than ``timeout`` in all (its turn, the check
    after sleeping until its place, a 429's pause; not the sleeps Redis hands out).

    If Redis loses its keys (``FLUSHALL``, a failover to an empty replica), each process
    rebuilds the shared rate from how far ahead it last saw it booked, and the pause
    from the one it knows of, so that the rebuilt state errs on the side of the limit.
    In-flight leases are not rebuilt: until the requests in flight then have ended,
    ``max_connections`` may be exceeded by that many.

    A coordination made from a URL by a client is closed with it. One you make yourself
    can serve many clients (of either API); close it with :meth:`aclose` or
    ``async with`` after them.

    The password (``user:password@``, ``:password@`` or ``?password=``) never appears in
    ``repr()``, logs or messages, nor does any piece of it in a URL that is refused.

    Args:
        url: a ``redis.asyncio.Redis`` client you own (left open on :meth:`aclose`), or
            a URL: ``redis://[[user]:password@]host[:port][/db][?option=value&...]``,
            the same with ``rediss://`` (TLS), or
            ``unix://[[user]:password@]/path/to/socket[?db=N&option=value...]``.
            Options are those redis-py reads from a URL and passes to its connection
            (``db``, ``password``, ``client_name``, ``ssl_ca_certs``, ...), except the
            socket timeouts (see ``timeout``). In a password, percent-encode ``/``,
            ``?``, ``#``, ``%``, ``[`` and ``]`` (and in ``?password=``, ``&`` and
            ``+``).
        namespace: separates deployments sharing one Redis (1 to 64 letters, digits or
            ``_.:-``); processes share limits only within a namespace.
        timeout: the longest, in seconds, that one request (with its retries), entering
            a client (``async with``), or any other Redis operation may wait on Redis in
            all; past it, Redis counts as unavailable. A client passed in as ``url``
            keeps its own socket timeouts, but this bound holds for it too.
        retry_max: the longest wait between tries while Redis is unavailable, in seconds.

    Raises:
        ConfigurationError: the ``redis`` package is not installed (install
            ``copyai-async[redis]``).
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range, or a URL that redis-py would read
            otherwise than written (a database that is not a number, a path with more
            than a database, a port that is not a number from 1 to 65535, an option it
            does not take or whose value it cannot read, a '#', an option given twice).
    """

    def __init__(
        self,
        url: Any,
        *,
        namespace: str = "default",
        timeout: float = 1.0,
        retry_max: float = 30.0,
    ) -> None:
        redis = _import_redis()
        if isinstance(url, str):
            self._address = _parse_url(url, redis)
            self._url = url
            self._redis: Redis | None = None
            self._owns = True
        elif isinstance(url, redis.asyncio.Redis):
            self._address = _Address.of_client(url)
            self._url = ""  # never used: the client is made already
            self._redis = url
            self._owns = False
        else:
            raise TypeError(f"url must be a str or a redis.asyncio.Redis, got {type(url).__name__}")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                f"namespace must be 1 to 64 letters, digits or '_.:-', got {namespace!r}"
            )
        for name, value in (("timeout", timeout), ("retry_max", retry_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.namespace: str = namespace
        self.timeout: float = float(timeout)
        self.retry_max: float = float(retry_max)
        self._scripts: dict[str, Any] = {}
        self._down = False
        self._retry_at = -math.inf
        self._backoff = 0.0
        self._closed = False
        self._rng = random.Random()

    def __repr__(self) -> str:
        state = "available" if self.available else "unavailable"
        return f"<RedisCoordination {self._address} namespace={self.namespace!r} {state}>"

    @property
    def available(self) -> bool:
        """False from a failed Redis operation until one succeeds again."""
        return not self._down

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
        self._closed = True
        redis, self._redis = self._redis, None
        self._scripts.clear()
        if redis is not None and self._owns:
            await redis.aclose()

    # -- for clients -------------------------------------------------------------------

    def _link(
        self,
        *,
        secret: str,
        hints: RunHints,
        max_in_flight: int,
        rate_limit: float | None,
        lease_ttl: float,
    ) -> SharedLink:
        """The shared limits and events of one client (its API key ``secret``)."""
        return SharedLink(
            self,
            secret=secret,
            hints=hints,
            max_in_flight=max_in_flight,
            rate_limit=rate_limit,
            lease_ttl=lease_ttl,
        )

    def _client(self) -> Redis:
        """The Redis client, made on first use."""
        if self._closed:
            raise SharedUnavailable("the coordination is closed")
        redis = self._redis
        if redis is None:
            module = _import_redis()
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # One immediate retry on a new connection, for a pooled connection that died
            # with a Redis since restarted; no backoff: an API call must not wait on a
            # Redis that is down (this object's own backoff says when to try again).
            # Each operation is also bounded by the allowance of the request it serves,
            # so a Redis that hangs costs it ``timeout`` at most, retry or not.
            redis = self._redis = module.asyncio.Redis.from_url(
                self._url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 1),
                client_name="copyai-async",
            )
        return redis

    def _script(self, source: str) -> Any:
        """A registered Lua script (reloaded by redis-py if Redis forgot it)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client().register_script(source)
        return script

    def _allowance(self) -> Allowance:
        """What one request (or one background operation) may wait on Redis, in all."""
        return Allowance(self.timeout)

    def _ready(self) -> bool:
        """Whether to use Redis now: it answered last time, or its backoff is over."""
        return not self._closed and (not self._down or time.monotonic() >= self._retry_at)

    def _retry_in(self) -> float:
        """Seconds until Redis may be tried again (0: now)."""
        return 0.0 if not self._down else max(0.0, self._retry_at - time.monotonic())

    async def _call(self, operation: Callable[[Redis], Awaitable[_T]], allowance: Allowance) -> _T:
        """Run one Redis operation out of ``allowance``; a failure, or running out of
        it, marks Redis unavailable and raises :class:`SharedUnavailable` (never a Redis
        error)."""
        redis = self._client()  # SharedUnavailable once closed
        began = time.monotonic()
        try:
            with anyio.fail_after(max(0.0, allowance.left)):
                result = await operation(redis)
        except Exception as exc:
            # Redis's errors, and any other failure of its client library (a connection
            # torn down under it): none of them may reach an API call.
            if isinstance(exc, TimeoutError):  # the allowance ran out (an empty message)
                exc = TimeoutError(f"no answer within timeout={self.timeout:g} s")
            why = self._failed(exc)
            raise SharedUnavailable(why) from None  # redis-py's text may hold a password
        finally:
            allowance.left -= time.monotonic() - began
        self._succeeded()
        return result

    def _failed(self, exc: BaseException) -> str:
        """Note a failed operation: the first of an outage logs a WARNING. Returns what
        failed, without the password."""
        why = self._address.redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
        now = time.monotonic()
        if self._down and now < self._retry_at:
            return why  # the same outage, seen by another operation already under way
        self._backoff = min(self.retry_max, self._backoff * 2 or _FIRST_BACKOFF)
        self._retry_at = now + self._backoff * self._rng.uniform(0.8, 1.0)
        if self._down:
            logger.debug("Redis at %s is still unavailable (%s)", self._address, why)
            return why
        self._down = True
        logger.warning(
            "Redis at %s is unavailable (%s): each process uses its own limits and "
            "waits poll without shared events until it is back; trying again in %.1f s",
            self._address,
            why,
            self._backoff,
        )
        return why

    def _succeeded(self) -> None:
        """Note a successful operation: the first after an outage logs it at INFO."""
        if self._down:
            self._down = False
            self._backoff = 0.0
            logger.info("Redis at %s is available again: limits are shared again", self._address)


class _Booked:
    """What this client last saw of the shared rate and pause, on its own clock: what it
    offers Redis to rebuild them from if Redis lost them (a FLUSHALL, a failover to an
    empty replica), so that the rebuilt state errs on the side of the limit.

    - The rate's depth (how far beyond any pause it was booked) is kept as seen, not
      counted down. While processes keep sending, the booking stays about that deep
      (each request books at its far end), and a process that was quiet for a while
      saw the others' bookings only then. It is offered only while Redis must still
      hold the next start (which outlives its booking by :data:`_BOOKING_KEPT`): a next
      start missing then was lost, not expired, and waiting that long once is safe.
    - The pause counts down: its end is known.

    Both are relative to now (seconds), never Redis's time: after a failover to a host
    whose clock disagrees, they still mean the same.
    """

    __slots__ = ("_depth", "_paused_until", "_seen_at")

    def __init__(self) -> None:
        self._seen_at = -math.inf
        self._depth = 0.0
        self._paused_until = -math.inf

    def saw(self, asked_at: float, depth: float, pause: float) -> None:
        """Redis answered a turn asked at ``asked_at`` (taken before sending, so this
        never reaches past what Redis holds): the rate was booked ``depth`` s beyond a
        pause lasting ``pause`` s more."""
        self._paused_until = max(self._paused_until, asked_at + pause)
        if asked_at >= self._seen_at:
            self._seen_at, self._depth = asked_at, depth

    def pause(self, now: float) -> float:
        """Seconds the last pause seen still lasts (0 if over)."""
        return max(0.0, self._paused_until - now)

    def booked(self, now: float) -> float:
        """Seconds from ``now`` to offer as the next start, should Redis have lost it."""
        ahead = max(0.0, self._paused_until - self._seen_at) + self._depth
        if now - self._seen_at >= ahead + _BOOKING_KEPT - _BOOKING_SLACK:
            return 0.0  # Redis may have let it expire: nothing to rebuild
        return self.pause(now) + self._depth


class SharedLink:
    """One client's shared limits and events (made by :meth:`RedisCoordination._link`).

    It implements :class:`~copyai_async._budget.SharedLimits` for the client's budget,
    publishes the events its listeners accept, and runs one task that subscribes to
    the events of the others.
    """

    def __init__(
        self,
        coordination: RedisCoordination,
        *,
        secret: str,
        hints: RunHints,
        max_in_flight: int,
        rate_limit: float | None,
        lease_ttl: float,
    ) -> None:
        self.coordination = coordination
        digest = hashlib.sha256(b"copyai-async\0" + secret.encode()).hexdigest()[:32]
        base = f"copyai-async:{{{coordination.namespace}:{digest}}}"
        self.keys = (f"{base}:inflight", f"{base}:next", f"{base}:pause")
        self.channel = f"{base}:events"
        self.origin = secrets.token_hex(8)
        self._hints = hints
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
        return f"<SharedLink {self.channel.rsplit(':', 1)[0]} of {self.coordination!r}>"

    # -- the budget --------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether to use Redis for the next request."""
        return not self._closed and self.coordination._ready()

    def allowance(self) -> Allowance:
        """A new request's allowance for waiting on Redis (the coordination's timeout)."""
        return self.coordination._allowance()

    def _known(self, budget: Budget, now: float) -> tuple[float, float]:
        """Seconds from ``now`` (on the budget's clock) that this client saw the rate
        booked, and that the pause it knows of (seen, or set by its own 429) still
        lasts: Redis rebuilds them from these if it lost them."""
        pause = max(self._booked.pause(now), budget.paused_until - now, 0.0)
        return self._booked.booked(now), pause

    async def _turn_script(
        self, budget: Budget, lease: str, take_slot: bool, allowance: Allowance
    ) -> tuple[bool, float]:
        script = self.coordination._script(_TURN)
        asked_at = budget.clock.monotonic()
        booked, paused = self._known(budget, asked_at)
        granted, delay_us, depth_us, pause_us = await self.coordination._call(
            lambda redis: script(
                keys=self.keys,
                args=[
                    lease,
                    self._max_in_flight,
                    self._lease_ms,
                    self._spacing_us,
                    "1" if take_slot else "0",
                    _KEY_TTL_MS,
                    round(_BOOKING_KEPT * 1000),
                    math.floor(booked * 1e6),
                    math.floor(paused * 1e6),
                ],
                client=redis,
            ),
            allowance,
        )
        self._booked.saw(asked_at, int(depth_us) / 1e6, int(pause_us) / 1e6)
        return bool(int(granted)), int(delay_us) / 1e6

    async def _pause_left(self, allowance: Allowance) -> float:
        script = self.coordination._script(_PAUSE_LEFT)
        left = await self.coordination._call(
            lambda redis: script(keys=self.keys[2:], args=[], client=redis), allowance
        )
        return int(left) / 1e6

    async def turn(self, budget: Budget, allowance: Allowance) -> str:
        """Take a shared slot and a place in the shared rate (after any shared pause),
        sleeping on ``budget`` (so deadlines and closing apply) and waiting on Redis out
        of ``allowance``; returns the lease."""
        lease = f"{self.origin}:{next(self._leases)}"
        held = False
        poll = _SLOT_POLL_FIRST
        try:
            while True:
                granted, delay = await self._turn_script(budget, lease, not held, allowance)
                if not granted:
                    # Every slot is taken: look again soon (a slot frees when a request
                    # of any process ends, and Redis does not say when).
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
        script = self.coordination._script(_PAUSE)
        try:
            await self.coordination._call(
                lambda redis: script(
                    keys=self.keys[2:], args=[math.ceil(seconds * 1e6)], client=redis
                ),
                allowance,
            )
        except SharedUnavailable:
            return  # the local pause holds this process
        logger.info("paused every process sharing this key for %.2f s", seconds)

    async def _quietly(self, operation: Callable[[Redis], Awaitable[object]]) -> None:
        """A background operation: if Redis fails it, so be it (logged by the
        coordination)."""
        with contextlib.suppress(SharedUnavailable):
            await self.coordination._call(operation, self.coordination._allowance())

    # -- events ------------------------------------------------------------------------

    def publish(self, run_id: str, workflow_id: str | None, final: bool) -> None:
        """Tell the other processes' waits about an event (in the background; unsent,
        waits elsewhere fall back to their safety interval)."""
        if self._closed or not self.coordination._ready():
            return
        message = json.dumps({"o": self.origin, "r": run_id, "w": workflow_id, "f": final})
        channel = self.channel
        self._spawn(self._quietly(lambda redis: redis.publish(channel, message)))

    def _take(self, data: Any) -> None:
        try:
            message = json.loads(data)
            origin, run_id, workflow_id = message["o"], message["r"], message["w"]
            final = message["f"]
        except (ValueError, TypeError, KeyError) as exc:
            logger.debug("ignored a malformed message on %s: %s", self.channel, exc)
            return
        if origin == self.origin:
            return  # this client's own listener already told its waits
        if not isinstance(run_id, str) or not isinstance(final, bool):
            logger.debug("ignored a malformed message on %s", self.channel)
            return
        self._hints.hint(
            run_id,
            workflow_id if isinstance(workflow_id, str) else None,
            final=final,
            relayed=True,
        )

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
            with anyio.move_on_after(self.coordination.timeout):
                await first.wait()

    async def _follow(self, first_try: asyncio.Event) -> None:
        """Subscribe, follow, and subscribe again after a failure (once Redis may be
        tried again), until closed."""
        coordination = self.coordination
        while not (self._closed or coordination._closed):
            wait = coordination._retry_in()
            if wait > 0:
                first_try.set()
                await asyncio.sleep(wait)
                continue
            await self._follow_once(first_try)

    async def _follow_once(self, first_try: asyncio.Event) -> None:
        """One subscription, until it fails (noted by the coordination)."""
        coordination = self.coordination
        attached = False
        pubsub: Any = None
        try:
            pubsub = coordination._client().pubsub()
            # Up once Redis confirms it, within the timeout (redis-py may return from
            # subscribe() unconnected).
            await coordination._call(
                lambda _redis: self._subscribe(pubsub), coordination._allowance()
            )
            self._hints.attach()
            attached = True
            first_try.set()
            await self._listen(pubsub)
        except SharedUnavailable:
            pass  # noted by the coordination (or it was closed)
        except Exception as exc:  # as in _call: any failure means "unavailable"
            coordination._failed(exc)
        finally:
            first_try.set()
            if attached:
                self._hints.detach()
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
        heard = pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
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
            _, late = await asyncio.wait(pending, timeout=self.coordination.timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
