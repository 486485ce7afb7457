"""The one way to Redis (:class:`RedisGateway`), and reading its URL as redis-py does.

Everything copyai_async sends to Redis goes through :meth:`RedisGateway.call`, out of an
:class:`~copyai_async._budget.Allowance`: a failure, or running out of the allowance,
marks Redis unavailable (a WARNING once per outage), and it is tried again after a
growing backoff, by one operation at a time, on the gateway's :class:`Clock`. No Redis
error leaves this module: callers see :class:`SharedUnavailable`.

The URL is read as redis-py reads it, and refused where that differs from what it says
or where redis-py would fail on it only once connecting; its secrets (the password,
``?ssl_password=``) never reach a repr, a log line or a message (:class:`_Address`).
"""

from __future__ import annotations

import codecs
import inspect
import logging
import math
import random
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, unquote_plus, urlsplit

import anyio

from ._budget import Allowance, SharedUnavailable
from ._clock import Clock
from ._errors import ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisGateway", "import_redis"]

logger = logging.getLogger("copyai_async")

_T = TypeVar("_T")

_FIRST_BACKOFF = 0.5
# While one operation tries a Redis that was unavailable, others asking when they may
# try are told to look again this soon.
_PROBE_LOOK = 0.05


def import_redis() -> Any:
    try:
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - the test extra installs redis
        raise ConfigurationError(
            "coordination needs the redis package (copyai_async's redis extra): "
            "pip install -e '.[redis]' (in a checkout of copyai_async)"
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
# Options redis-py takes but this object refuses, and why.
_REFUSED = {
    **dict.fromkeys(
        ("socket_timeout", "socket_connect_timeout"),
        "it would override timeout: give RedisCoordination(timeout=...) instead",
    ),
    # redis-py fails an operation beyond it (MaxConnectionsError), which would count as
    # an outage. Unbounded, the pool holds one connection per operation under way at
    # once: at most about one per request in flight, which the clients' own caps bound.
    "max_connections": "redis-py would fail the operations beyond it, a false outage",
    **dict.fromkeys(
        ("lib_name", "lib_version"),
        "newer redis-py versions deprecate it and warn on every connection",
    ),
}
# Read by redis-py's connection itself from the string a URL gives (redis-py 5 has no
# URL parser for it, and its connection takes "3" as it takes 3).
_READ_BY_THE_CONNECTION = frozenset({"protocol"})
# Options that carry a secret: redis-py's password and ssl_password (the TLS key's
# passphrase), and any such option a later version adds.
_SECRET_OPTION = re.compile(r"password|passphrase|secret|token|credential")
# A secret shorter than this is not masked in free text (redis-py's messages): it would
# match by chance (a digit of an address, letters of a word) and garble the text, and
# hides little.
_SHORTEST_MASKED = 4


class _Address:
    """Where Redis is, shown without its secrets; hides them in other texts too."""

    __slots__ = ("_secrets", "shown")

    def __init__(self, shown: str, secrets: Iterable[str]) -> None:
        self._secrets = _maskable(secrets)
        self.shown = shown

    def redact(self, text: str) -> str:
        """``text`` with every form of each secret (as written, decoded) as ``***``."""
        return _mask(text, self._secrets)

    def __repr__(self) -> str:
        return self.shown

    @classmethod
    def of_url(cls, parts: SplitResult, options: dict[str, str]) -> _Address:
        """A URL's address: its password and secret options (as written, decoded)."""
        secret = {name for name in options if _SECRET_OPTION.search(name)}
        secrets = {parts.password or "", unquote(parts.password or "")}
        for name in secret:
            secrets |= {options[name], *_raw_values(parts.query, name)}
        masked = _maskable(secrets)
        return cls(_shown(parts, secret, lambda text: _mask(text, masked)), secrets)

    @classmethod
    def of_client(cls, client: Any) -> _Address:
        """A ``redis.asyncio.Redis`` passed in: its secrets are hidden too."""
        kwargs = getattr(client.connection_pool, "connection_kwargs", {})
        secrets = (v for n, v in kwargs.items() if _SECRET_OPTION.search(n))
        return cls("<redis client>", (s for s in secrets if isinstance(s, str)))


def _maskable(secrets: Iterable[str]) -> tuple[str, ...]:
    """The secrets long enough to mask in free text, longest first (so that no piece of
    a longer form is left behind)."""
    return tuple(sorted({s for s in secrets if len(s) >= _SHORTEST_MASKED}, key=len, reverse=True))


def _mask(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _url_error(problem: str) -> ValueError:
    # Never the URL itself: any part of it may be a piece of a password.
    return ValueError(f"url {problem}; expected {_URL_FORMS}")


def _parse_url(url: str, redis: Any) -> _Address:
    """Check ``url`` the way redis-py will read it, and return its address.

    Refused: a URL redis-py would read otherwise than written (a path that is not a
    database, an option it ignores or decodes twice, a ``#``), an option this object
    sets or refuses (:data:`_REFUSED`), and a value redis-py cannot read. Values that
    only its connection checks are checked by :func:`_connection_pool`.

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
    return _Address.of_url(parts, options)


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


def _shown(parts: SplitResult, secret: set[str], redact: Callable[[str], str]) -> str:
    """The URL as written, but for its secrets: the password and the values of the
    ``secret`` options as ``***``, and any form of them in the free text that is left
    (never in the scheme, the option names or the punctuation: that would garble it)."""
    userinfo, at, location = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    query = "&".join(
        f"{name}={'***' if unquote_plus(name) in secret else redact(value)}"
        for name, _, value in (p.partition("=") for p in parts.query.split("&") if p)
    )
    shown_userinfo = f"{redact(user)}{':***' if colon else ''}{at}"
    where = redact(location) + redact(parts.path)
    return f"{parts.scheme}://{shown_userinfo}{where}{'?' if query else ''}{query}"


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
    """Each option must be one that redis-py's own parser (``parse_url``) reads as
    written and the connection it makes accepts, with a value it can use."""
    connection = redis.asyncio.connection
    parsers: Any = connection.URL_QUERY_ARGUMENT_PARSERS
    connection_class = {
        "rediss": connection.SSLConnection,
        "unix": connection.UnixDomainSocketConnection,
    }.get(scheme, connection.Connection)
    accepted = _accepted_options(connection_class, redis)
    for name, value in options.items():
        if name in _REFUSED:
            raise _url_error(f"sets {name}: {_REFUSED[name]}")
        if name in _URL_PARTS:
            raise _url_error(f"gives the {name} as an option: write it in the URL itself")
        if name not in accepted:
            # Not quoted: an unknown name may be a piece of a password ('&' in it).
            usable = sorted(
                n
                for n, p in accepted.items()
                if (n in parsers or _takes_str(p, n)) and n not in _URL_PARTS | _REFUSED.keys()
            )
            raise _url_error(
                f"has an option redis-py does not take (for {scheme}://, it takes: "
                f"{', '.join(usable)})"
            )
        parser = parsers.get(name)
        if parser is not None and not _parses(parser, value):
            raise _url_error(f"has option {name} with a value redis-py cannot read")
        if parser is None and not _takes_str(accepted[name], name):
            wanted = _type_name(accepted[name])
            raise _url_error(
                f"has option {name}, which redis-py passes on as the string written, not "
                f"as the {wanted} its connection takes"
                + (" (any value, 'no' too, would mean yes)" if wanted == "bool" else "")
            )
    try:
        read = connection.parse_url(url)
    except ValueError:
        raise _url_error("has an option with a value redis-py cannot read") from None
    for name, value in options.items():
        parser = parsers.get(name)
        if read.get(name) != (value if parser is None else parser(value)):
            # redis-py 5 decodes ?option= values twice: '%2541' is 'A' to it, not '%41'.
            raise _url_error(
                f"has option {name}, which this redis-py decodes twice (a '%' in its value):"
                " give a password as user:password@, or upgrade redis-py"
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


def _takes_str(param: inspect.Parameter, name: str) -> bool:
    """Whether a parameter takes a string (an option redis-py has no parser for is passed
    on as the string written)."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty or name in _READ_BY_THE_CONNECTION:
        return True
    if isinstance(annotation, str):  # postponed annotations
        return re.search(r"\bstr\b", annotation) is not None
    return annotation is str or str in typing.get_args(annotation)


def _type_name(param: inspect.Parameter) -> str:
    annotation = param.annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _connection_pool(url: str, settings: dict[str, Any], redis: Any) -> Any:
    """redis-py's connection pool for ``url``, with this object's ``settings``; one
    connection is made (not connected: no I/O) so that redis-py checks what it checks
    only then (``?protocol=``, the TLS options), and its encoder is tried.

    Raises:
        ValueError: naming the option redis-py refuses, never quoting the URL.
    """
    try:
        return _checked_pool(url, settings, redis)
    except Exception:
        # Which option? Each alone, on the same address (no value is quoted: a piece of
        # a password may have been read as one, after a '&').
        address, _, query = url.partition("?")
        for piece in (p for p in query.split("&") if p):
            try:
                _checked_pool(f"{address}?{piece}", settings, redis)
            except Exception:
                name = unquote_plus(piece.partition("=")[0])
                raise _url_error(f"has option {name} with a value redis-py refuses") from None
        raise _url_error("has options that redis-py refuses together") from None


def _connection_settings(timeout: float, redis: Any) -> dict[str, Any]:
    """What this object sets on each connection it makes from a URL."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # One immediate retry on a new connection, for a pooled connection that died with a
    # Redis since restarted: on a connection error only (redis-py 5 retries only those
    # named in retry_on_error), never a timeout; no backoff: an API call must not wait
    # on a Redis that is down (this object's own backoff says when to try again). Each
    # operation is also bounded by the allowance of the request it serves, so a Redis
    # that hangs costs it ``timeout`` at most, retry or not.
    refused = redis.exceptions.ConnectionError
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(refused,)),
        "retry_on_error": [refused],
        "client_name": "copyai-async",
    }


def _checked_pool(url: str, settings: dict[str, Any], redis: Any) -> Any:
    pool = redis.asyncio.ConnectionPool.from_url(url, **settings)
    pool.make_connection()  # refuses bad values; connects only when used
    encoder = pool.get_encoder()
    encoder.encode("copyai-async")  # an encoding that does not exist fails here...
    codecs.lookup_error(encoder.encoding_errors)  # ...and an error handler here
    return pool


# -- the gateway ------------------------------------------------------------------------


class RedisGateway:
    """The one way to Redis: its client (made on first use, from a pool made from the
    URL, or one passed in), Lua scripts, and whether Redis is available now.

    Args:
        url: a URL (read and checked here, as redis-py would read it) or a
            ``redis.asyncio.Redis`` the caller owns (left open on :meth:`aclose`).
        timeout: the most one caller's operations may wait on Redis in all
            (:meth:`allowance`), and the sockets' timeouts.
        retry_max: the longest backoff while Redis is unavailable, in seconds.
        clock: the clock of the backoff and of every duration measured here.
    """

    def __init__(self, url: Any, *, timeout: float, retry_max: float, clock: Clock) -> None:
        redis = import_redis()
        self.timeout = timeout
        self.retry_max = retry_max
        self.clock = clock
        self._pool: Any = None
        self._redis: Redis | None = None
        if isinstance(url, str):
            self.address = _parse_url(url, redis)
            self._pool = _connection_pool(url, _connection_settings(timeout, redis), redis)
            self._owns = True
        else:
            self.address = _Address.of_client(url)
            self._redis = url
            self._owns = False
        self._scripts: dict[str, Any] = {}
        self._down = False
        self._retry_at = -math.inf
        self._backoff = 0.0
        self._probing = False
        self.closed = False
        self._rng = random.Random()

    @property
    def available(self) -> bool:
        """False from a failed operation until one succeeds again."""
        return not self._down

    async def aclose(self) -> None:
        """Close the connections this gateway opened (a client passed in is left open).
        Idempotent."""
        self.closed = True
        redis, self._redis = self._redis, None
        self._scripts.clear()
        if redis is not None and self._owns:
            await redis.aclose()

    def client(self) -> Redis:
        """The Redis client, made on first use (from the pool made from the URL)."""
        if self.closed:
            raise SharedUnavailable("the coordination is closed")
        redis = self._redis
        if redis is None:
            redis = self._redis = import_redis().asyncio.Redis.from_pool(self._pool)
        return redis

    def script(
        self, source: str, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Callable[[Redis], Awaitable[Any]]:
        """An operation for :meth:`call` that runs a Lua script (registered on its
        first run, so inside the call: redis-py encodes it then; reloaded by redis-py
        if Redis forgot it)."""

        def run(redis: Redis) -> Awaitable[Any]:
            script = self._scripts.get(source)
            if script is None:
                script = self._scripts[source] = redis.register_script(source)
            return script(keys=keys, args=args, client=redis)

        return run

    def allowance(self) -> Allowance:
        """What one request (or one background operation) may wait on Redis, in all."""
        return Allowance(self.timeout)

    def ready(self) -> bool:
        """Whether to use Redis now: it answered last time, or its backoff is over and
        no other operation is trying it already."""
        if self.closed:
            return False
        return not self._down or (self.clock.monotonic() >= self._retry_at and not self._probing)

    def retry_in(self) -> float:
        """Seconds until Redis may be tried again (0: now)."""
        if not self._down:
            return 0.0
        if self._probing:
            return _PROBE_LOOK  # another operation is trying it: look again soon
        return max(0.0, self._retry_at - self.clock.monotonic())

    async def call(self, operation: Callable[[Redis], Awaitable[_T]], allowance: Allowance) -> _T:
        """Run one Redis operation out of ``allowance``: everything it does, making the
        client and encoding its script included. A failure, or running out of the
        allowance, marks Redis unavailable and raises :class:`SharedUnavailable` (never
        a Redis error); so does :meth:`_claim`, without trying."""
        trying = self._claim(allowance)
        began = self.clock.monotonic()
        try:
            with anyio.fail_after(allowance.left):
                result = await operation(self.client())
        except Exception as exc:
            # Redis's errors, and any other failure of its client library (a connection
            # torn down under it, an encoding it cannot find): none may reach an API call.
            if isinstance(exc, TimeoutError):  # the allowance ran out (an empty message)
                exc = TimeoutError(f"no answer within timeout={self.timeout:g} s")
            why = self.failed(exc)
            raise SharedUnavailable(why) from None  # redis-py's text may hold a password
        finally:
            allowance.left -= self.clock.monotonic() - began
            if trying:
                self._probing = False
        self._succeeded()
        return result

    def _claim(self, allowance: Allowance) -> bool:
        """Let an operation go to Redis, or raise :class:`SharedUnavailable`: once
        closed, with the allowance spent (a slow Redis that answered: no outage), and
        while Redis is unavailable, unless its backoff is over and no other operation is
        trying it already (the others keep the local limits meanwhile). Returns whether
        this operation is that try."""
        if self.closed:
            raise SharedUnavailable("the coordination is closed")
        if allowance.left <= 0:
            raise SharedUnavailable(f"waited on Redis for timeout={self.timeout:g} s already")
        if not self._down:
            return False
        if self._probing or self.clock.monotonic() < self._retry_at:
            raise SharedUnavailable("Redis is unavailable")
        self._probing = True
        return True

    def failed(self, exc: BaseException) -> str:
        """Note a failed operation: the first of an outage logs a WARNING. Returns what
        failed, without the password."""
        why = self.address.redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
        now = self.clock.monotonic()
        if self._down and now < self._retry_at:
            return why  # the same outage, seen by another operation already under way
        self._backoff = min(self.retry_max, self._backoff * 2 or _FIRST_BACKOFF)
        self._retry_at = now + self._backoff * self._rng.uniform(0.8, 1.0)
        if self._down:
            logger.debug("Redis at %s is still unavailable (%s)", self.address, why)
            return why
        self._down = True
        logger.warning(
            "Redis at %s is unavailable (%s): each process uses its own limits and "
            "waits poll without shared events until it is back; trying again in %.1f s",
            self.address,
            why,
            self._backoff,
        )
        return why

    def _succeeded(self) -> None:
        """Note a successful operation: the first after an outage logs it at INFO."""
        if self._down:
            self._down = False
            self._backoff = 0.0
            logger.info("Redis at %s is available again: limits are shared again", self.address)
