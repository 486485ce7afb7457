"""The exceptions copyai_async raises: one tree, rooted at :class:`CopyAIError`.

::

    CopyAIError
    ├── ConfigurationError          bad or missing setup (no API key, bad base URL)
    ├── ClientClosedError           the client was used after aclose() (also a RuntimeError)
    ├── EventLoopError              the client was used from a second event loop (also a
    │                               RuntimeError); one client serves one loop
    ├── PaginationError             the server keeps repeating a page; iteration stopped
    ├── BatchJournalError           a batch journal that cannot serve this batch (also a
    │                               ValueError): another workflow's or input's, or no journal
    ├── RunFailedError              a waited-for run ended FAILED
    ├── PollTimeoutError            a wait's timeout passed (also a TimeoutError)
    ├── PollFailedError             a wait's polls failed too many times in a row
    ├── WebhookEventError           a webhook delivery's body is not an event (also a
    │                               ValueError); from parse_event, never from a listener
    └── APIError                    a request went wrong; knows its method and path
        ├── APIStatusError          the server answered with an error status
        │   ├── BadRequestError             400 (e.g. WORKFLOW_CREDIT_LIMIT_REACHED)
        │   ├── AuthenticationError         401 / 403
        │   ├── NotFoundError               404 NOT_FOUND
        │   ├── UnprocessableEntityError    422 REQUEST_INVALID, with ``details``
        │   ├── RateLimitError              429, with ``retry_after``
        │   └── ServerError                 5xx
        ├── APIConnectionError      no answer: refused, reset, dropped mid-body
        │   ├── APITimeoutError     no answer in time (also a TimeoutError)
        │   └── ProxyError          the proxy failed: unreachable, or it refused or could
        │                           not open the way to the API (407, 403, a CONNECT 5xx)
        ├── InvalidResponseError    an answer that is not JSON, lacks the envelope, or
        │                           does not fit the model; names the JSON path
        └── StartUncertainError     a start's answer was lost and the client cannot tell
                                    whether the run exists; carries how to find it

Messages say what happened, to which request (method and path, never the API key or a
proxy's password) and,
where there is one, what to do. Every error from the network or the server is one of
these; aiohttp's own exceptions are only ever the ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchJournalError",
    "ClientClosedError",
    "ConfigurationError",
    "CopyAIError",
    "EventLoopError",
    "InvalidResponseError",
    "NotFoundError",
    "PaginationError",
    "PollFailedError",
    "PollTimeoutError",
    "ProxyError",
    "RateLimitError",
    "RunFailedError",
    "ServerError",
    "StartUncertainError",
    "UnprocessableEntityError",
    "WebhookEventError",
]


class CopyAIError(Exception):
    """Base class of every exception raised by copyai_async."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors defeat Exception's default pickling; rebuild from
        # the instance's state instead, so errors cross process boundaries intact.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[CopyAIError], args: tuple[Any, ...], state: dict[str, Any]) -> CopyAIError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigurationError(CopyAIError):
    """The client cannot be set up as asked (for example, no API key was given)."""


class ClientClosedError(CopyAIError, RuntimeError):
    """The client was used after :meth:`CopyAIClient.aclose`."""


class EventLoopError(CopyAIError, RuntimeError):
    """The client was used from an event loop other than the one it serves.

    A client serves the event loop it is first used in: its connections, limits and
    waits belong to that loop. Another loop (a second ``asyncio.run()``, another thread's
    loop) gets this error before any request is sent. Create one client per event loop,
    inside the coroutine that uses it (``async with CopyAIClient() as client: ...``).
    When the loop a client served shuts down (``asyncio.run()`` ends), the client's
    connections are closed with it.
    """


class PaginationError(CopyAIError):
    """The listing answered the same page again and again, so iterating would never end.

    Attributes:
        pages: the page numbers that repeated the page before them.
    """

    def __init__(self, message: str, *, pages: tuple[int, ...]) -> None:
        super().__init__(message)
        self.pages = pages


class BatchJournalError(CopyAIError, ValueError):
    """A batch journal that cannot serve the batch given it.

    It belongs to a batch of another workflow, a row of the input differs from the row it
    recorded (the input changed between passes), or the file is not a batch journal (or
    cannot be opened). Give another journal path for another batch.
    """


class RunFailedError(CopyAIError):
    """A run that was waited for ended ``FAILED``.

    Attributes:
        run: the failed run, as last seen (for aitasker, with its ``error_message``).
        run_id: its id.
    """

    def __init__(self, message: str, *, run: Any, run_id: str) -> None:
        super().__init__(message)
        self.run = run
        self.run_id = run_id


class PollTimeoutError(CopyAIError, TimeoutError):
    """A wait for a run passed its ``timeout`` before the run ended.

    Before giving up, a wait polls once more (unless its last reading is fresh), so
    ``run`` is how the run was just before the deadline, not a reading from long before.

    Attributes:
        run: the run as last seen, or ``None`` if it was never read.
        run_id: the id of the run waited for.
        timeout: the timeout, in seconds.
        age: seconds between that last reading and the timeout (``None``: never read).
    """

    def __init__(
        self, message: str, *, run: Any, run_id: str, timeout: float, age: float | None = None
    ) -> None:
        super().__init__(message)
        self.run = run
        self.run_id = run_id
        self.timeout = timeout
        self.age = age


class PollFailedError(CopyAIError):
    """A wait gave up: more polls in a row failed than its policy allows.

    A poll that fails for a passing reason (5xx, 429, a dropped connection, a timeout, an
    answer that cannot be read), after the request's own retries, is a missed poll: the
    wait logs it and polls again on its schedule. Once ``PollPolicy.max_failed_polls``
    polls in a row have failed, the next failure ends the wait with this error; the last
    failure is its ``__cause__``.

    Attributes:
        run: the last good reading of the run, or ``None`` if it was never read.
        run_id: the id of the run waited for.
        failures: how many polls in a row failed.
    """

    def __init__(self, message: str, *, run: Any, run_id: str, failures: int) -> None:
        super().__init__(message)
        self.run = run
        self.run_id = run_id
        self.failures = failures


class APIError(CopyAIError):
    """A request to the API failed.

    Attributes:
        method: HTTP method of the request, e.g. ``"GET"``.
        path: URL path of the request (percent-encoded, no host, no query).
    """

    def __init__(self, message: str, *, method: str, path: str) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path


class APIStatusError(APIError):
    """The server answered with a non-success HTTP status.

    Attributes:
        status: the HTTP status code.
        error_code: the ``errorCode`` of the error body (``"NOT_FOUND"``...), or ``None``
            when the body had none (an HTML error page, for instance).
        details: the ``details`` of the error body, or ``None``.
        body: the response body as text, cut to 2,000 characters.
        headers: the response headers.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path: str,
        status: int,
        error_code: str | None = None,
        details: Any = None,
        body: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.status = status
        self.error_code = error_code
        self.details = details
        self.body = body
        self.headers: Mapping[str, str] = dict(headers or {})


class BadRequestError(APIStatusError):
    """400: the request was refused, e.g. ``WORKFLOW_CREDIT_LIMIT_REACHED``."""


class AuthenticationError(APIStatusError):
    """401 or 403: the API key is missing, wrong, or lacks permission."""


class NotFoundError(APIStatusError):
    """404: no such workflow, run or webhook (for this key); or, when the answer is not
    the API's own error (a web server's page), no API at this path: the base URL may be
    wrong."""


class UnprocessableEntityError(APIStatusError):
    """422 ``REQUEST_INVALID``: ``details`` maps each field to its reasons."""


class RateLimitError(APIStatusError):
    """429: too many requests.

    Raised when retries are exhausted, or at once when the server's ``Retry-After``
    asks for a longer wait than the client's ``max_retry_after``.

    Attributes:
        retry_after: seconds the server asked to wait, or ``None`` if it did not say.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the server failed (its body may be an HTML page rather than JSON)."""


class APIConnectionError(APIError):
    """No usable answer arrived: connection refused, reset, or dropped mid-response."""


class APITimeoutError(APIConnectionError, TimeoutError):
    """No answer arrived within the client's ``timeout``."""


class ProxyError(APIConnectionError):
    """The proxy the request went through failed it; the API never saw the request.

    The client could not connect to the proxy, or the proxy refused the request
    (``407 Proxy Authentication Required``: credentials missing or wrong; ``403``: its
    rules forbid the host) or could not open the way to the API (a ``5xx`` answer to
    ``CONNECT``). Connecting failures and a ``CONNECT`` 5xx are retried (a start too:
    it never reached the API); a refusal is raised at once, since it would come again.
    The message says what to check; it never shows the proxy's credentials.

    Attributes:
        proxy: the proxy's URL, without credentials (``None`` for a proxy on the way
            that the client was not told about, which answered 407).
        status: the proxy's HTTP status (407, 403, 502...), or ``None`` if it could not
            be reached.
    """

    def __init__(
        self, message: str, *, method: str, path: str, proxy: str | None, status: int | None
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.proxy = proxy
        self.status = status


class InvalidResponseError(APIError):
    """The answer could not be read: not JSON, no envelope, or not the documented shape.

    Attributes:
        status: the HTTP status code of the answer.
        json_path: where in the body the problem is, e.g. ``"$.data.total"``.
    """

    def __init__(
        self, message: str, *, method: str, path: str, status: int, json_path: str = "$"
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.status = status
        self.json_path = json_path


class StartUncertainError(APIError):
    """A start was sent, its answer was lost, and the client cannot tell if the run exists.

    The server may have created the run before the answer was lost (a dropped
    connection, a timeout, a 5xx or an unreadable answer after the request was sent).
    The client looks for the run by its start key before sending again; this error means
    it could not settle the question: the start carried no key, the lookup failed, or the
    server may still be creating the run. Look for the run before starting it again:
    ``await client.find_started_run(exc.workflow_id, exc.start_key)``.

    Attributes:
        workflow_id: the workflow the run was started in.
        start_key: the value of ``metadata["copyai_async_start_key"]`` sent with the start,
            or ``None`` if it carried none.
        sent_at: when the start was first sent (UTC, the client's clock).
        status: the HTTP status of the lost answer, or ``None`` if none arrived.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path: str,
        workflow_id: str,
        start_key: str | None,
        sent_at: datetime,
        status: int | None = None,
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.workflow_id = workflow_id
        self.start_key = start_key
        self.sent_at = sent_at
        self.status = status


class WebhookEventError(CopyAIError, ValueError):
    """A webhook delivery's body is not an event: not JSON, not an object, no ``type``,
    or a field of the wrong kind.

    Raised by :func:`copyai_async.webhooks.parse_event`. A listener never raises it: it
    answers such a delivery with 400 and counts it.

    Attributes:
        json_path: where in the body the problem is, e.g. ``"$.credits"``.
    """

    def __init__(self, message: str, *, json_path: str = "$") -> None:
        super().__init__(message)
        self.json_path = json_path
