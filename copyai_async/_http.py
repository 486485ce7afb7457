"""The one request path: URL building, auth, retries with backoff, Retry-After, error mapping.

Endpoint methods call :meth:`Transport.request` and get decoded JSON back, or one of the
documented exceptions. Three parts, each one thing:

- :class:`Sender` is the only code that calls aiohttp's request API: it sends one
  attempt and returns an :class:`Exchange` (status, headers, body, as they came) or a
  classified :class:`Failure` (what happened, and the :class:`Fate` it leaves the
  request in);
- :class:`Transport` reads that into an outcome (decoding, parsing, building the
  documented error) and does what the decision says: sleep, pause the client, raise,
  return;
- :class:`~copyai_async._retry.RetryPolicy` decides, with no I/O and no clock.

Retry rules:

- an *idempotent* request (GET) is retried on connection failures, timeouts, dropped
  responses, the statuses 408, 429, 500, 502, 503, 504, and a 2xx answer that cannot be
  read (not JSON, cut short, an HTML page, the wrong shape);
- a request that is *not* idempotent (POST: starting a run) is sent again only where the
  server cannot have acted on it: a failure to connect (or a connect timeout), a
  connection that was closing before the request was fully written (the keep-alive
  edge: the server closed an idle connection as the request went out), 408 and 429.
  Where the server may have acted on it (sent, then the connection dropped with no
  answer, a read timeout, 500, 502, 503, 504, or a 2xx that cannot be read), the request
  is not sent again here: :class:`OutcomeUnknown` hands the question to the caller,
  which can look for the result before deciding (see :mod:`copyai_async._once`).

Through a proxy (see :mod:`copyai_async._proxy`), a failure to connect to it, or a 5xx
answer to ``CONNECT``, means the request never reached the API: sent again, even a POST.
A refusal (407 Proxy Authentication Required, 403) would come again: raised at once.

Waits are exponential with full jitter, ``uniform(0, min(backoff_max, backoff_base * 2**n))``,
unless the server sent ``Retry-After`` (seconds or an HTTP date): then exactly that, as
long as it is at most ``max_retry_after``; a longer ask raises at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import attrs
from yarl import URL

from ._budget import DEADLINE, Allowance, Budget, DeadlineExceeded
from ._convert import ErrorEnvelope, WireError
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    InvalidResponseError,
    NotFoundError,
    ProxyError,
    RateLimitError,
    ServerError,
    UnprocessableEntityError,
)
from ._loop import LoopBinding
from ._proxy import Proxy
from ._retry import (
    RETRY_AFTER_STATUSES,
    UNSENT_STATUSES,
    Answered,
    Dropped,
    Expire,
    Fate,
    Outcome,
    OutcomeUnknown,
    Pause,
    Raise,
    Refused,
    RetryConfig,
    RetryPolicy,
    Return,
    Step,
    Unreadable,
)

__all__ = [
    "Exchange",
    "Failure",
    "OutcomeUnknown",
    "Redactor",
    "Response",
    "RetryConfig",
    "Secret",
    "Sender",
    "Transport",
    "encode_segment",
    "loads",
    "response_date",
]

logger = logging.getLogger("copyai_async")

_T = TypeVar("_T")

_fast_loads: Callable[[bytes], Any] | None
try:  # a faster decoder when installed (the fast extra: pip install -e ".[fast]")
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None


# 19 digits in a row: an integer literal that may not fit in 64 bits (or a long digit run
# in a string, which costs only the slower decoder). Found by mapping every digit to "d"
# and searching for 19 of them: a tenth of the time a regular expression takes, and about
# a third of orjson's own decoding.
_DIGITS_AS_D = bytes(0x64 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGITS = b"d" * 19


def _has_long_digit_run(raw: bytes) -> bool:
    return raw.translate(_DIGITS_AS_D).find(_LONG_DIGITS) >= 0


def loads(raw: bytes) -> Any:
    """Decode JSON exactly: with orjson when installed and safe, else the standard library.

    The result never depends on whether orjson is installed. orjson reads an integer
    beyond 64 bits as a float (``2**64 + 1`` would become ``2**64``), so a body with 19
    digits in a row goes to the standard library, which keeps every integer exact. If
    orjson refuses a body (``NaN``, ``Infinity``, a number past the float range), the
    standard library gets the last word too.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``), or an integer literal longer than
            Python's limit for converting text to ``int``.
        RecursionError: nested deeper than the standard library can follow.
    """
    if _fast_loads is not None and not _has_long_digit_run(raw):
        try:
            return _fast_loads(raw)
        except ValueError:
            pass
    return json.loads(raw)


# Texts of aiohttp's errors for a request that was not fully written: the connection was
# closing (or closed) first, so the server cannot have acted on it. aiohttp 3.10 raises
# ClientOSError, later releases ClientConnectionResetError, with these words.
_NOT_WRITTEN = ("Cannot write to closing transport", "Can not write request body")
_BODY_KEEP = 2000


class Secret:
    """A string that never shows itself in ``repr()``, ``str()`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret value itself."""
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


# A secret this long is masked wherever it appears, even inside a longer word: it cannot
# be there by chance. A shorter one is masked where it stands alone, as a whole token: an
# API key "k" must not turn "not known" into "not ***nown".
_MASK_ANYWHERE = 16
# Standing alone: no letter, digit, "_" or "-" next to it, nor a "." joining it to one (a
# host name, "api.copy.ai", is one token). A percent escape before it ("%20k") ends the
# word before.
_ALONE_BEFORE = r"(?:(?<=%[0-9A-Fa-f]{2})|(?<![\w-])(?<![\w-]\.))"
_ALONE_AFTER = r"(?![\w-])(?!\.[\w-])"


class Redactor:
    """Masks every secret a client holds (its API key, a proxy's credentials) as ``***``.

    Each secret is masked as written and percent-encoded (as in a URL). A secret of 16
    characters or more (a real key) is masked wherever it appears; a shorter one only as
    a whole token (a path segment, a query value, a quoted or spaced word), never inside
    another word.
    """

    __slots__ = ("_masks",)

    def __init__(self, *values: str) -> None:
        forms = {form for value in values if value for form in (value, quote(value, safe=""))}
        # Longest first: a secret that holds another is masked whole.
        self._masks = tuple(
            re.compile(
                re.escape(form)
                if len(form) >= _MASK_ANYWHERE
                else _ALONE_BEFORE + re.escape(form) + _ALONE_AFTER
            )
            for form in sorted(forms, key=len, reverse=True)
        )

    def redact(self, text: str) -> str:
        """``text`` with each secret replaced by ``***`` (see the class docstring)."""
        for mask in self._masks:
            text = mask.sub("***", text)
        return text


_URL_CACHE_SIZE = 4096
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_~-]+").fullmatch  # unreserved, dots aside


def encode_segment(name: str, value: object) -> str:
    """Percent-encode ``value`` as exactly one URL path segment.

    Every byte outside the unreserved set is encoded, so ``/``, ``?``, ``#`` and ``%``
    cannot change the path; ``.`` and ``..`` are encoded too, so they cannot walk it.

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: ``value`` is empty.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if _PLAIN_SEGMENT(value):
        return value  # nothing to encode (the usual id): no need to quote it
    if not value:
        raise ValueError(f"{name} must be a non-empty string")
    encoded = quote(value, safe="")
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


@attrs.frozen(kw_only=True)
class Response:
    """A successful answer, JSON already decoded."""

    method: str
    path: str
    status: int
    headers: Mapping[str, str]
    data: Any


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date).

    Returns ``None`` when absent or unreadable; a date in the past gives ``0.0``.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # NaN and infinities are not waits; negative asks mean "now".
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    reference = now or datetime.now(timezone.utc)
    return max(0.0, (when - reference).total_seconds())


def response_date(headers: Mapping[str, str]) -> datetime | None:
    """The server's ``Date``: the reference for an HTTP-date Retry-After (skew-proof)."""
    raw = headers.get("Date")
    if not raw:
        return None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def copyai_error_fields(body: Any) -> tuple[str | None, Any]:
    """``(errorCode, details)`` of a Copy.ai error body, if it has that shape."""
    if isinstance(body, dict):
        code = body.get("errorCode")
        return (code if isinstance(code, str) else None), body.get("details")
    return None, None


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

# For the API's error envelope on a 2xx answer, where the status says nothing.
_CODE_CLASSES: dict[str, type[APIStatusError]] = {
    "BAD_REQUEST": BadRequestError,
    "WORKFLOW_CREDIT_LIMIT_REACHED": BadRequestError,
    "UNAUTHORIZED": AuthenticationError,
    "FORBIDDEN": AuthenticationError,
    "NOT_FOUND": NotFoundError,
    "REQUEST_INVALID": UnprocessableEntityError,
}

_STATUS_HINTS: dict[type[APIStatusError], str] = {
    RateLimitError: "too many requests; slow down or raise max_retry_after",
    ServerError: "the server failed; retry later",
}


def _details_summary(details: Any) -> str:
    if isinstance(details, dict) and details:
        parts = []
        for field, reasons in list(details.items())[:5]:
            if isinstance(reasons, list):
                reasons = "; ".join(str(r) for r in reasons)
            parts.append(f"{field}: {reasons}")
        return ", ".join(parts)
    return ""


def _not_written(exc: BaseException) -> bool:
    """Whether aiohttp failed before the request was fully written (see ``_NOT_WRITTEN``)."""
    current: BaseException | None = exc
    for _ in range(4):  # the error and the causes aiohttp chains to it
        if current is None:
            return False
        if isinstance(current, OSError) and any(t in str(current) for t in _NOT_WRITTEN):
            return True
        current = current.__cause__ or current.__context__
    return False


def _classify_failure(exc: BaseException) -> tuple[type[APIConnectionError], str, Fate]:
    """Say what an aiohttp failure was, and what it means for the request's fate."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # Timed out connecting (or waiting for a pooled connection): nothing was sent.
        return APITimeoutError, "timed out connecting", Fate.UNSENT
    if isinstance(exc, asyncio.TimeoutError):
        return APITimeoutError, "no answer within the timeout", Fate.RUNNING
    if isinstance(exc, aiohttp.ClientSSLError):
        return APIConnectionError, "TLS failed", Fate.FINAL
    if isinstance(exc, aiohttp.ClientConnectorError):
        return APIConnectionError, "could not connect", Fate.UNSENT
    if _not_written(exc):
        # The keep-alive edge: the pooled connection was closing as the request went out.
        return APIConnectionError, "the connection closed before the request was sent", Fate.UNSENT
    return APIConnectionError, "the connection failed before a full answer arrived", Fate.UNKNOWN


def _proxy_failure(
    exc: BaseException, proxy: Proxy | None, target: str
) -> tuple[str, Fate, int | None] | None:
    """What a failure of the proxy itself was, if it was one: ``(what, fate, status)``.

    Either the proxy could not be reached, or it answered ``CONNECT`` (the tunnel to the
    API, for an https base URL) with something other than 200. Either way the request
    never reached the API.
    """
    name = f"the proxy {proxy.shown}" if proxy is not None else "the proxy"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"could not connect to {name}", Fate.UNSENT, None
    if not isinstance(exc, aiohttp.ClientHttpProxyError):
        return None
    status = exc.status
    answer = f"{status} {exc.message}".rstrip()
    if status == 407:
        return (
            f"{name} refused the tunnel to {target}: {answer}; {_auth_advice(proxy)}",
            (Fate.FINAL),
            status,
        )
    if status >= 500 or status in UNSENT_STATUSES:
        # The proxy could not reach the API (or was busy): worth another try.
        return (
            f"{name} could not open a tunnel to {target} ({answer}); the request never "
            "reached the API",
            Fate.UNSENT,
            status,
        )
    return (
        f"{name} refused to open a tunnel to {target} ({answer}): its rules may not allow "
        "this host; ask its administrator, or list the host in NO_PROXY if it can be "
        "reached directly",
        Fate.FINAL,
        status,
    )


def _auth_advice(proxy: Proxy | None) -> str:
    """What to do about a 407 Proxy Authentication Required."""
    if proxy is None:
        return (
            "a proxy on the way wants credentials: give its URL with them, "
            "http://user:password@host:port, as proxy= or HTTPS_PROXY"
        )
    where = proxy.where
    if proxy.authorization is None:
        return (
            f"it wants credentials: put them in its URL ({where}), as "
            "http://user:password@host:port (special characters percent-encoded)"
        )
    return (
        f"it refused the credentials given in {where}: check the user name and password "
        "(special characters percent-encoded)"
    )


@attrs.frozen
class Exchange:
    """One answer as it came off the wire: nothing decoded, nothing judged."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    content_type: str


@attrs.frozen(kw_only=True)
class Failure:
    """An attempt that got no answer, classified (aiohttp's exception is only the cause).

    Attributes:
        exception: what aiohttp raised.
        kind: the documented error class for it.
        what: what happened, in words, for the message.
        fate: what it means for the request (was it sent? may the server act on it?).
        proxy_status: for a failure of the proxy itself (``kind`` is
            :class:`ProxyError`), its status, if it answered.
    """

    exception: BaseException
    kind: type[APIConnectionError]
    what: str
    fate: Fate
    proxy_status: int | None = None


class Sender:
    """The one place that calls aiohttp's request API: one attempt in, an
    :class:`Exchange` or a classified :class:`Failure` out.

    It knows how to send (the per-attempt timeouts, the proxy, no redirects) and what
    aiohttp's exceptions mean; nothing about retries, errors or JSON.

    Args:
        timeout: per-attempt timeouts.
        proxy: the proxy every request goes through, or ``None``.
        proxy_headers: headers for the proxy's ``CONNECT`` (its credentials), if any.
        target: ``host:port`` of the API, for messages about the proxy's tunnel.
    """

    __slots__ = ("_proxy", "_proxy_headers", "_proxy_url", "_target", "_timeout")

    def __init__(
        self,
        *,
        timeout: aiohttp.ClientTimeout,
        proxy: Proxy | None,
        proxy_headers: Mapping[str, str] | None,
        target: str,
    ) -> None:
        self._timeout = timeout
        self._proxy = proxy
        self._proxy_url = None if proxy is None else proxy.url
        self._proxy_headers = proxy_headers
        self._target = target

    def __repr__(self) -> str:
        return f"<Sender proxy={None if self._proxy is None else self._proxy.shown!r}>"

    async def send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> Exchange | Failure:
        """Send one attempt and read the whole answer.

        Raises:
            Exception: only what is not a failure of the request (aiohttp's own
                internals tripped by closing the session under it, a bug).
        """
        try:
            # No redirects: the key must go to the configured base URL and nowhere else.
            async with session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                proxy=self._proxy_url,
                proxy_headers=self._proxy_headers,
            ) as resp:
                raw = await resp.read()
                return Exchange(resp.status, resp.headers, raw, resp.content_type)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return self.classify(exc)

    def classify(self, exc: BaseException) -> Failure:
        """What an aiohttp failure was, and what it means for the request."""
        proxied = _proxy_failure(exc, self._proxy, self._target)
        if proxied is not None:
            what, fate, status = proxied
            return Failure(
                exception=exc, kind=ProxyError, what=what, fate=fate, proxy_status=status
            )
        kind, what, fate = _classify_failure(exc)
        if self._proxy is not None:
            what += f" (through the proxy {self._proxy.shown})"
        return Failure(exception=exc, kind=kind, what=what, fate=fate)


@attrs.frozen(kw_only=True)
class _Call:
    """One logical request, ready to send (every attempt sends the same)."""

    method: str
    url: URL
    path: str  # for errors: no query
    shown: str  # for messages and logs: with the query
    body: bytes | None
    headers: Mapping[str, str] = attrs.field(repr=False)  # they hold the credential
    what: str | None = None  # what the path names, for a 404's message
    # Decodes a 2xx body its own way (a page into Structs), or answers None: then loads().
    decode: Callable[[bytes], Any] | None = attrs.field(default=None, repr=False)


class Transport:
    """Sends requests for one client and owns (or borrows) its aiohttp session.

    Args:
        base_url: the API root, e.g. ``https://api.copy.ai/api``.
        auth_headers: builds the authentication headers; called per request so the
            secret is never stored in a plain dict.
        redactor: masks the credential (and a proxy's) in anything shown.
        binding: the event loop the client serves; every use is checked against it.
        user_agent: the ``User-Agent`` header.
        timeout: per-attempt timeouts.
        retry: the retry settings.
        budget: the client's shared limits (concurrency, rate, pause, deadlines); its
            clock is where every wait goes.
        max_connections: pool size of an owned session.
        session: a session to borrow (left open) instead of owning one.
        proxy: the proxy every request goes through, or ``None``.
        error_fields: extracts ``(error_code, details)`` from an error body; a body it
            finds neither in is not the API's own error.
        auth_hint: what to do about a 401 or 403.
        credential: what the credential is called, for a 404 (``"API key"``).
        root_hint: where the API's root is, for a 404 that is not the API's own error
            (the base URL may be wrong), e.g. ``"Copy.ai's is https://api.copy.ai/api"``.
    """

    def __init__(
        self,
        *,
        base_url: URL,
        auth_headers: Callable[[], Mapping[str, str]],
        redactor: Redactor,
        binding: LoopBinding,
        user_agent: str,
        timeout: aiohttp.ClientTimeout,
        retry: RetryConfig,
        budget: Budget,
        max_connections: int,
        session: aiohttp.ClientSession | None = None,
        proxy: Proxy | None = None,
        error_fields: Callable[[Any], tuple[str | None, Any]] = copyai_error_fields,
        auth_hint: str = "check the API key",
        credential: str = "API key",
        root_hint: str = "",
    ) -> None:
        self._origin = str(base_url.origin())
        self._base_path = base_url.raw_path.rstrip("/")
        self._target = f"{base_url.host}:{base_url.port}"
        self._auth_headers = auth_headers
        self._redactor = redactor
        self._binding = binding
        self._headers = {"Accept": "application/json", "User-Agent": user_agent}
        self.proxy = proxy
        proxy_headers: dict[str, str] | None = None
        if proxy is not None and proxy.authorization is not None:
            if base_url.scheme == "https":
                # Credentials go on the CONNECT only: never into the tunnel to the API.
                proxy_headers = {"Proxy-Authorization": proxy.authorization}
            else:
                # Plain forwarding: the request itself goes to the proxy, which takes them.
                self._headers["Proxy-Authorization"] = proxy.authorization
        self._sender = Sender(
            timeout=timeout, proxy=proxy, proxy_headers=proxy_headers, target=self._target
        )
        self.retry = retry
        self.budget = budget
        self.clock = budget.clock
        self._max_connections = max_connections
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._error_fields = error_fields
        self._auth_hint = auth_hint
        self._credential = credential
        self._root_hint = root_hint
        rng = random.Random()
        # One policy per kind of request, built once (they share the jitter's source).
        self._policies = (
            RetryPolicy(config=retry, idempotent=False, rng=rng),
            RetryPolicy(config=retry, idempotent=True, rng=rng),
        )
        self._urls: dict[tuple[str, ...], URL] = {}

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def enter(self) -> None:
        """Check that the client can be used here: not closed, and in the event loop it
        serves (the running one, bound at first use).

        Raises:
            ClientClosedError: the client is closed.
            EventLoopError: the client serves another event loop.
        """
        if self._closed:
            raise ClientClosedError("this client is closed; create a new client to make requests")
        self._binding.enter()

    def open(self) -> aiohttp.ClientSession:
        """The session, created on first use (inside the running loop)."""
        self.enter()
        budget = self.budget
        budget.closing_future()
        if budget.shared is not None:
            budget.shared.start()
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            # The environment was read once, into self.proxy: aiohttp must not read it
            # again (nor ~/.netrc) per request.
            session = self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
            if self.proxy is not None:
                logger.debug(
                    "requests to %s go through the proxy %s (from %s)",
                    self._origin,
                    self.proxy.shown,
                    self.proxy.where,
                )
        elif session.closed:
            raise ClientClosedError(
                "the aiohttp session passed as session= is closed; keep it open while the "
                "client is in use"
            )
        return session

    async def aclose(self) -> None:
        """Close the owned session (a borrowed one is left open). Idempotent.

        Operations still running end promptly with :class:`ClientClosedError`: their
        waits wake up, and requests cut off by the closing session are not retried.

        Raises:
            EventLoopError: the session is open in another event loop (close it there),
                or was left open in a loop closed without shutting down.
        """
        await self._binding.leave()
        self._closed = True
        closing = self.budget.closing
        if closing is not None and not closing.done():
            closing.set_result(None)
        await self.release()

    async def release(self) -> None:
        """Close the owned session and the shared limits' background work (the client's
        event loop is shutting down, or the client is closing). Idempotent."""
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()
        if self.budget.shared is not None:
            await self.budget.shared.aclose()

    # -- requests ----------------------------------------------------------------------

    def url(self, segments: Sequence[str]) -> URL:
        """The URL of already-encoded path ``segments`` under the base URL.

        Recent URLs are kept: a wait asks for the same few again and again."""
        key = tuple(segments)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = URL(f"{self._origin}{self._base_path}/{'/'.join(key)}", encoded=True)
            self._urls[key] = url
        return url

    async def request(
        self,
        method: str,
        segments: Sequence[str],
        *,
        parse: Callable[[Response], _T],
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        idempotent: bool,
        first_attempt: int = 1,
        what: str | None = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> _T:
        """Send one logical request, retrying as the rules say; return ``parse(answer)``.

        Args:
            method: the HTTP method.
            segments: the path under the base URL, each segment already encoded.
            parse: turns a 2xx answer (JSON decoded) into the result; it may raise
                :class:`WireError` (the answer does not have the documented shape) or
                :class:`ErrorEnvelope` (the API's error envelope on a 2xx).
            params: the query.
            json_body: the body, sent as JSON.
            idempotent: whether sending the request twice is harmless (see the rules).
            first_attempt: the number of this call's first attempt (a caller sending a
                request again after :class:`OutcomeUnknown` continues the count), so that
                ``max_retries`` bounds every attempt of the request.
            what: what the path names, for the message of the API's 404 ("no such
                webhook"); ``None``: the message says only that it was not found.
            decode: decodes a 2xx body before :func:`loads` is tried (into a typed
                shape ``parse`` knows), or answers ``None`` to leave it to
                :func:`loads`. It must raise nothing: a body it cannot decode exactly as
                :func:`loads` would is one it leaves to :func:`loads`.

        Raises:
            ClientClosedError: the client or its borrowed session is closed.
            EventLoopError: the client serves another event loop (nothing was sent).
            ProxyError: the proxy failed the request (after retries, where worth one).
            APIStatusError: (a subclass of) for an error status, or the API's error
                envelope on a 2xx, after retries.
            APIConnectionError: no answer after retries (``APITimeoutError`` for timeouts).
            InvalidResponseError: a 2xx answer that cannot be read, after retries.
            OutcomeUnknown: a request that is not idempotent was sent and its answer was
                lost (only when ``idempotent`` is false).
        """
        call = self._call(method, segments, params, json_body, what, decode)
        policy = self._policies[idempotent]
        # The time this request, retries included, may wait on shared limits (Redis).
        allowance = self.budget.allowance()
        attempt = first_attempt
        while True:
            outcome = await self._attempt(call, parse, attempt, allowance)
            decision = policy.decide(attempt, outcome, time_left=self._time_left())
            if isinstance(decision, Return):
                return decision.value
            await self._follow(decision, call, attempt, allowance)
            attempt += 1

    def _call(
        self,
        method: str,
        segments: Sequence[str],
        params: Mapping[str, str] | None,
        json_body: Any,
        what: str | None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> _Call:
        url = self.url(segments)
        if params:
            url = url.with_query(params)
        body = None
        headers = {**self._headers, **self._auth_headers()}
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        return _Call(
            method=method,
            url=url,
            path=url.raw_path,
            shown=url.raw_path_qs,
            body=body,
            headers=headers,
            what=what,
            decode=decode,
        )

    def _time_left(self) -> float | None:
        """Seconds until the caller's deadline (``None``: there is none)."""
        deadline = DEADLINE.get()
        return None if deadline is None else deadline - self.clock.monotonic()

    async def _attempt(
        self,
        call: _Call,
        parse: Callable[[Response], _T],
        attempt: int,
        allowance: Allowance | None,
    ) -> Outcome[_T]:
        """Send one attempt through the client's limits; what it brought back."""
        session = self.open()
        budget = self.budget
        async with budget.slots:
            lease = await budget.wait_turn(allowance)
            started = self.clock.monotonic()
            try:
                result = await self._sender.send(
                    session, call.method, call.url, body=call.body, headers=call.headers
                )
            except Exception as exc:
                # Closing the session under a request can trip aiohttp's own internals
                # (an AssertionError on aiohttp 3.10): that is the close, reported below.
                if not self._closed:
                    raise
                result = self._sender.classify(exc)
            finally:
                budget.release(lease)
        if isinstance(result, Failure):
            if self._closed:
                raise ClientClosedError(
                    f"{call.method} {call.shown}: the client was closed while the request "
                    "was in flight"
                ) from result.exception
            return self._dropped(result, call, attempt)
        if logger.isEnabledFor(logging.DEBUG):
            elapsed_ms = (self.clock.monotonic() - started) * 1000.0
            logger.debug(
                "%s %s -> %d (%.1f ms, attempt %d)",
                call.method,
                call.shown,
                result.status,
                elapsed_ms,
                attempt,
            )
        return self._read(result, call, parse, attempt)

    def _read(
        self, exchange: Exchange, call: _Call, parse: Callable[[Response], _T], attempt: int
    ) -> Outcome[_T]:
        """What an answer means: the result, a refusal, or an unreadable 2xx."""
        status = exchange.status
        suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
        if 200 <= status < 300:
            try:
                data = self._decode(exchange, call, suffix)
                answer = Response(
                    method=call.method,
                    path=call.path,
                    status=status,
                    headers=exchange.headers,
                    data=data,
                )
                return Answered(self._parse(answer, parse, suffix))
            except ErrorEnvelope:
                # The API's own error, on a 2xx (from parse, so answer is set): an
                # answer, not a garbled one.
                error = self._status_error(exchange, call, attempt, envelope=True)
                return Refused(status=status, error=error)
            except InvalidResponseError as unreadable:
                return Unreadable(unreadable)
        if status == 407:
            # Only a proxy answers 407 (this request went to one, plain forwarding, or
            # one on the way intercepted it): the API never saw it, and the same
            # credentials would be refused again.
            return Refused(
                status=status, error=self._proxy_refused(call.method, call.path, call.shown)
            )
        retry_after = None
        if status in RETRY_AFTER_STATUSES:
            headers = exchange.headers
            retry_after = parse_retry_after(headers.get("Retry-After"), now=response_date(headers))
        error = self._status_error(exchange, call, attempt, retry_after=retry_after)
        return Refused(status=status, error=error, retry_after=retry_after)

    async def _follow(
        self, decision: Step, call: _Call, attempt: int, allowance: Allowance | None
    ) -> None:
        """Do what ``decision`` says before the next attempt (or raise what it says)."""
        budget = self.budget
        if isinstance(decision, Raise):
            raise decision.error
        if isinstance(decision, Expire):
            if decision.pause is not None:
                await budget.pause_all(decision.pause, allowance)
            await budget.sleep(decision.after, cause=decision.error)
            raise DeadlineExceeded() from decision.error
        if isinstance(decision, Pause):
            # The server asked this client to slow down: all its requests wait.
            await budget.pause_all(decision.after, allowance)
        self._log_retry(call.method, call.shown, attempt, decision.after, decision.why)
        await budget.sleep(decision.after, cause=decision.error)

    def _dropped(self, failure: Failure, call: _Call, attempt: int) -> Dropped:
        """The documented error for an attempt that got no answer."""
        method, path, shown = call.method, call.path, call.shown
        exc = failure.exception
        detail = self._redactor.redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
        suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
        message = f"{method} {shown}: {failure.what} ({detail}){suffix}"
        error: APIConnectionError
        if failure.kind is ProxyError:
            error = ProxyError(
                message,
                method=method,
                path=path,
                proxy=None if self.proxy is None else self.proxy.shown,
                status=failure.proxy_status,
            )
        else:
            error = failure.kind(message, method=method, path=path)
        error.__cause__ = exc
        return Dropped(error=error, fate=failure.fate, why=type(exc).__name__)

    def _proxy_refused(self, method: str, path: str, shown: str) -> ProxyError:
        """A 407 answer: the proxy (configured, or one on the way) wants credentials."""
        name = "the proxy" if self.proxy is None else f"the proxy {self.proxy.shown}"
        return ProxyError(
            f"{method} {shown} -> 407: {name} refused the request: 407 Proxy Authentication "
            f"Required; "
            f"{_auth_advice(self.proxy)}",
            method=method,
            path=path,
            proxy=None if self.proxy is None else self.proxy.shown,
            status=407,
        )

    def policy(self, *, idempotent: bool) -> RetryPolicy:
        """The decisions for a request that is (or is not) idempotent."""
        return self._policies[idempotent]

    def backoff(self, attempt: int) -> float:
        """The wait before attempt ``attempt + 1`` (full jitter, as for retries)."""
        return self._policies[0].backoff(attempt)

    def _log_retry(self, method: str, shown: str, attempt: int, delay: float, why: str) -> None:
        logger.info(
            "retrying %s %s in %.2f s after %s (attempt %d of %d)",
            method,
            shown,
            delay,
            why,
            attempt + 1,
            self.retry.max_retries + 1,
        )

    def _decode(self, exchange: Exchange, call: _Call, suffix: str) -> Any:
        """A 2xx body decoded; one that is not JSON is InvalidResponseError."""
        raw = exchange.body
        if call.decode is not None:
            typed = call.decode(raw)
            if typed is not None:
                return typed
        try:
            return loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            # Keep the reason, not the exception: it holds the whole body (which may echo
            # the API key), and anything raised in this block would chain to it.
            reason = str(exc)
        except RecursionError:
            reason = "nested deeper than the JSON decoder can follow"
        preview = self._redactor.redact(raw[:80].decode("utf-8", "replace"))
        status = exchange.status
        raise InvalidResponseError(
            f"{call.method} {call.shown} -> {status}: the body is not JSON ({reason}; "
            f"content type {exchange.content_type or 'none'}, starts {preview!r}){suffix}",
            method=call.method,
            path=call.path,
            status=status,
        )

    def _parse(self, answer: Response, parse: Callable[[Response], _T], suffix: str) -> _T:
        try:
            return parse(answer)
        except WireError as exc:
            json_path, reason = exc.json_path, exc.reason
        # Raised outside the handler, and unchained: the wire error and cattrs' errors
        # behind it quote payload values, which could echo the API key.
        reason = self._redactor.redact(reason)
        raise InvalidResponseError(
            f"{answer.method} {answer.path} -> {answer.status}: the answer does not have the "
            f"documented shape: {reason} at {json_path}{suffix}",
            method=answer.method,
            path=answer.path,
            status=answer.status,
            json_path=json_path,
        )

    def _status_error(
        self,
        exchange: Exchange,
        call: _Call,
        attempts: int,
        *,
        retry_after: float | None = None,
        envelope: bool = False,
    ) -> APIStatusError:
        """The documented error for an error status (or the API's error envelope on a
        2xx: ``envelope``), with what to do about it."""
        method, path, shown, what = call.method, call.path, call.shown, call.what
        status, headers, content_type = exchange.status, exchange.headers, exchange.content_type
        too_long = self.retry.too_long(retry_after)
        text = self._redactor.redact(exchange.body.decode("utf-8", "replace"))
        try:
            parsed = json.loads(text) if "json" in content_type or text[:1] in "{[" else None
        except (ValueError, RecursionError):
            parsed = None
        error_code, details = self._error_fields(parsed)
        if envelope:
            # A 2xx whose envelope says "error": the code says what kind of error it is.
            cls = _CODE_CLASSES.get(error_code or "", APIStatusError)
        else:
            cls = _STATUS_CLASSES.get(status) or (ServerError if status >= 500 else APIStatusError)
        label = error_code or (
            "(non-JSON body)" if parsed is None and text.strip() else "(no error code)"
        )
        message = f"{method} {shown} -> {status} {label}"
        if envelope:
            message += " (an error envelope in a success answer)"
        summary = _details_summary(details)
        if summary:
            message += f": {summary}"
        if too_long:
            message += (
                f"; the server asked to wait {retry_after:.1f} s, longer than "
                f"max_retry_after={self.retry.max_retry_after:g} s"
            )
        elif cls is AuthenticationError:
            message += f"; {self._auth_hint}"
        elif cls is NotFoundError:
            # The API's own error has a code (or details); a web server's page has neither.
            from_the_api = error_code is not None or details is not None
            message += f"; {self._not_found_hint(from_the_api, what)}"
        elif cls in _STATUS_HINTS:
            message += f"; {_STATUS_HINTS[cls]}"
        if attempts > 1:
            message += f" (after {attempts} attempts)"
        kwargs: dict[str, Any] = {
            "method": method,
            "path": path,
            "status": status,
            "error_code": error_code,
            "details": details,
            "body": text[:_BODY_KEEP],
            "headers": dict(headers),
        }
        if cls is RateLimitError:
            return RateLimitError(message, retry_after=retry_after, **kwargs)
        return cls(message, **kwargs)

    def _not_found_hint(self, from_the_api: bool, what: str | None) -> str:
        """What a 404 means: the API has no such thing, or (when the answer is not the
        API's own error: a web server's page, a proxy's) the base URL is not the API's."""
        if from_the_api:
            missing = f"no such {what}" if what else "not found"
            return f"{missing}, or not visible to this {self._credential}"
        base = self._redactor.redact(self._origin + self._base_path)
        hint = f"not the API's own error: the base URL {base} may be wrong"
        return f"{hint} ({self._root_hint})" if self._root_hint else hint
