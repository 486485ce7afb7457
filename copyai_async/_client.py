"""CopyAIClient: lifecycle and the endpoint methods (thin: they validate, call, convert)."""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from ._budget import Budget, DeadlineExceeded
from ._clock import Clock, SystemClock
from ._convert import WIRE, WireError
from ._errors import ConfigurationError, InvalidResponseError, PollTimeoutError
from ._http import Response, RetryConfig, Secret, Transport, encode_segment
from ._models import RunPage, RunStatus, WorkflowRun
from ._paginate import DEFAULT_PREFETCH, RunPaginator
from ._poll import DEFAULT_CONCURRENCY, PollPolicy, RunKind, Target, Waiter, bounded, check_timeout
from ._version import version

__all__ = ["DEFAULT_BASE_URL", "MAX_PAGE_SIZE", "CopyAIClient"]

DEFAULT_BASE_URL = "https://api.copy.ai/api"
MAX_PAGE_SIZE = 100
MAX_PREFETCH = 100
API_KEY_ENV = "COPYAI_API_KEY"

_T = TypeVar("_T")

COPYAI_RUNS: RunKind[WorkflowRun] = RunKind(
    status=lambda run: run.raw_status if run.raw_status is not None else run.status.value,
    is_terminal=lambda run: run.is_terminal,
    is_failed=lambda run: run.status is RunStatus.FAILED,
    is_unknown=lambda run: run.status is RunStatus.UNKNOWN,
)
"""How the poller reads a Copy.ai run: COMPLETE and FAILED end it, FAILED is failure."""


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and low_ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _int_in(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _base_url(value: Any, *, allow_http: bool) -> URL:
    if not isinstance(value, (str, URL)):
        raise TypeError(f"base_url must be a str, got {type(value).__name__}")
    url = URL(value)
    if url.user is not None or url.password is not None:
        # Say so without echoing them: they are secrets too.
        raise ConfigurationError(
            "base_url must not contain credentials (user:password@); the API key goes in api_key="
        )
    shown = str(url)
    if url.scheme not in ("http", "https"):
        raise ConfigurationError(
            f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {shown!r}"
        )
    if not url.host:
        raise ConfigurationError(f"base_url must name a host, got {shown!r}")
    if url.query_string or url.fragment:
        raise ConfigurationError("base_url must not carry a query or a fragment")
    if url.scheme == "http" and not allow_http and not _is_loopback(url.host):
        raise ConfigurationError(
            f"base_url {shown!r} is plain http to a host that is not loopback: the API key "
            "would cross the network unencrypted; use https, or pass allow_http=True"
        )
    return url


def _client_timeout(value: Any) -> aiohttp.ClientTimeout:
    if isinstance(value, aiohttp.ClientTimeout):
        return value
    total = _positive("timeout", value)
    # A separate connect limit lets a stalled connect be told apart from a slow answer:
    # only the former is safe to retry for a POST.
    return aiohttp.ClientTimeout(total=total, connect=min(total, 10.0))


class CopyAIClient:
    """Async client for the Copy.ai Workflow API.

    Use it as an async context manager, or call :meth:`aclose` when done::

        async with CopyAIClient() as client:
            run = await client.get_run("WCFG-...", "WRUN-...")

    The client owns one :class:`aiohttp.ClientSession`, opened on first use inside the
    running event loop. Every request sends ``x-copy-ai-api-key``, ``Accept:
    application/json`` and ``User-Agent: copyai-async/<version>``; requests are logged at
    DEBUG on the ``copyai_async`` logger, without the key.

    Args:
        api_key: the Copy.ai API key. Defaults to the ``COPYAI_API_KEY`` environment
            variable.
        base_url: the API root.
        timeout: seconds one attempt may take in all (connecting is limited to 10 s of
            it), or an :class:`aiohttp.ClientTimeout` for full control.
        max_retries: retries after the first attempt (0 disables retrying).
        max_connections: the most requests in flight at once across everything this
            client does (also the size of its own connection pool).
        backoff_base: seconds of the first backoff ceiling; it doubles each retry.
        backoff_max: largest backoff ceiling, in seconds.
        max_retry_after: the longest ``Retry-After`` wait the client will honour, in
            seconds; a server asking for more gets a :class:`RateLimitError` raised at
            once, carrying ``retry_after``.
        session: an aiohttp session to use instead of owning one. It is left open by
            :meth:`aclose`; its own connection limits apply.
        clock: where sleeps and deadlines go (tests pass
            :class:`copyai_async.testing.FakeClock`).
        rate_limit: requests per second for everything this client does (``None``: no
            limit). Requests are spaced evenly, so no one-second window holds more. A
            429 with ``Retry-After`` pauses every request of the client, not only the
            one that got it.
        allow_http: allow a plain ``http://`` base URL to a host that is not loopback
            (the key would travel unencrypted); loopback hosts are always allowed.

    Raises:
        ConfigurationError: no API key (argument or ``COPYAI_API_KEY``), or a bad
            ``base_url``.
        TypeError, ValueError: an option of the wrong type or out of range.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | aiohttp.ClientTimeout = 60.0,
        max_retries: int = 3,
        max_connections: int = 100,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        rate_limit: float | None = None,
        allow_http: bool = False,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV)
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, got {type(api_key).__name__}")
        if not api_key or not api_key.strip():
            raise ConfigurationError(
                "no Copy.ai API key: pass CopyAIClient(api_key=...) or set the "
                f"{API_KEY_ENV} environment variable"
            )
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError(
                f"session must be an aiohttp.ClientSession, got {type(session).__name__}"
            )
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError("clock must have monotonic() and async sleep(seconds)")
        base = _base_url(base_url, allow_http=allow_http)
        backoff_base_s = _positive("backoff_base", backoff_base)
        backoff_max_s = _positive("backoff_max", backoff_max)
        if backoff_max_s < backoff_base_s:
            raise ValueError(
                f"backoff_max must be >= backoff_base ({backoff_base_s:g}), got {backoff_max_s:g}"
            )
        retry = RetryConfig(
            max_retries=_int_in("max_retries", max_retries, 0),
            backoff_base=backoff_base_s,
            backoff_max=backoff_max_s,
            max_retry_after=_positive("max_retry_after", max_retry_after, allow_zero=True),
        )
        secret = Secret(api_key)
        self._key = secret
        self.base_url = str(base)
        connections = _int_in("max_connections", max_connections, 1)
        budget = Budget(
            clock=clock or SystemClock(),
            max_concurrency=connections,
            rate_limit=None if rate_limit is None else _positive("rate_limit", rate_limit),
        )
        self._transport = Transport(
            base_url=base,
            auth_headers=lambda: {"x-copy-ai-api-key": secret.get()},
            secret=secret,
            user_agent=f"copyai-async/{version()}",
            timeout=_client_timeout(timeout),
            retry=retry,
            budget=budget,
            max_connections=connections,
            session=session,
        )

        self._waiter = Waiter(kind=COPYAI_RUNS, budget=budget)

    def __repr__(self) -> str:
        state = "closed" if self._transport.closed else "open"
        return f"<CopyAIClient base_url={self.base_url!r} api_key='***' {state}>"

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has been called."""
        return self._transport.closed

    @property
    def clock(self) -> Clock:
        """The clock this client sleeps on."""
        return self._transport.clock

    async def __aenter__(self) -> CopyAIClient:
        self._transport.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client and its own session (a session passed in is left open).

        Calling it again does nothing. Any later request raises
        :class:`ClientClosedError`.
        """
        await self._transport.aclose()

    # -- endpoints ---------------------------------------------------------------------

    async def get_run(self, workflow_id: str, run_id: str) -> WorkflowRun:
        """Fetch one run (``GET /workflow/{workflow_id}/run/{run_id}``).

        Args:
            workflow_id: the workflow's id (any prefix; sent as one opaque path segment).
            run_id: the run's id.

        Returns:
            The run. ``workflow_id`` is filled in from the argument if the answer omits it.

        Raises:
            TypeError, ValueError: an id is not a string, or is empty.
            NotFoundError: no such workflow or run.
            CopyAIError: any other failure (see the error tree).
        """
        wf = encode_segment("workflow_id", workflow_id)
        run = encode_segment("run_id", run_id)
        resp = await self._transport.request("GET", ("workflow", wf, "run", run), idempotent=True)
        return _parse(resp, lambda: WIRE.run(resp.data, workflow_id=workflow_id), self._key)

    async def list_runs(self, workflow_id: str, *, page: int = 1, size: int = 10) -> RunPage:
        """Fetch one page of a workflow's runs, newest first (``GET /workflow/{id}/run``).

        Args:
            workflow_id: the workflow's id.
            page: page number, from 1.
            size: runs per page, 1 to 100 (the API's maximum).

        Returns:
            The page; ``has_next`` says whether a further page may hold runs.

        Raises:
            TypeError, ValueError: ``page`` < 1, ``size`` outside 1..100, or a bad id.
            CopyAIError: any failure of the request (see the error tree).
        """
        wf = encode_segment("workflow_id", workflow_id)
        page = _int_in("page", page, 1)
        size = _int_in("size", size, 1, MAX_PAGE_SIZE)
        resp = await self._transport.request(
            "GET",
            ("workflow", wf, "run"),
            params={"page": str(page), "size": str(size)},
            idempotent=True,
        )
        return _parse(
            resp,
            lambda: WIRE.page(resp.data, workflow_id=workflow_id, page=page, size=size),
            self._key,
        )

    def iter_runs(
        self,
        workflow_id: str,
        *,
        page_size: int = MAX_PAGE_SIZE,
        start_page: int = 1,
        max_items: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> RunPaginator:
        """Every run of a workflow, newest first, each once: ``async for run in ...``.

        The first page is fetched alone; while the caller works through a full page, up
        to ``prefetch`` later pages are requested concurrently (pages are still yielded
        in order). Memory stays bounded by about ``(prefetch + 1) * page_size`` runs
        however many runs the workflow has.

        The iteration ends at the first empty or short page; ``total`` only plans the
        prefetch. Runs repeated on a later page (new runs push older ones down) are
        yielded once. Runs created while iterating may or may not be yielded; a run
        deleted while iterating may make one older run be missed. See
        :class:`RunPaginator`.

        Args:
            workflow_id: the workflow's id.
            page_size: runs per request; above 100 (the API's maximum) it is capped at 100.
            start_page: the first page to read, from 1.
            max_items: stop after this many runs (``None``: all of them).
            prefetch: pages requested ahead, 0 (strictly one request at a time) to 100.
                The default, 6, is fast and stays polite.

        Returns:
            A :class:`RunPaginator`: iterate it once (or call ``.pages()``); close it
            (``async with``, ``contextlib.aclosing``, ``aclose()``) to stop early.

        Raises:
            TypeError, ValueError: bad arguments (raised here, before any request).
            CopyAIError: while iterating, a page that failed after retries, where that
                page would have been yielded; :class:`PaginationError` if the server
                repeats a page forever.
        """
        encode_segment("workflow_id", workflow_id)
        size = min(_int_in("page_size", page_size, 1), MAX_PAGE_SIZE)
        first = _int_in("start_page", start_page, 1)
        limit = None if max_items is None else _int_in("max_items", max_items, 0)
        ahead = _int_in("prefetch", prefetch, 0, MAX_PREFETCH)

        async def fetch(page: int, page_size: int) -> RunPage:
            return await self.list_runs(workflow_id, page=page, size=page_size)

        return RunPaginator(
            fetch,
            label=f"GET /workflow/{workflow_id}/run",
            page_size=size,
            start_page=first,
            max_items=limit,
            prefetch=ahead,
        )

    async def start_run(
        self,
        workflow_id: str,
        start_variables: Mapping[str, Any],
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> WorkflowRun:
        """Start a run (``POST /workflow/{id}/run``).

        The request is retried only where the run cannot have been created (429, and
        failures to connect), so a run is never started twice by the client.

        Args:
            workflow_id: the workflow's id.
            start_variables: the workflow's inputs, sent as ``startVariables``.
            metadata: optional data attached to the run and echoed back on it.

        Returns:
            The new run. The API may answer with only its id: the run then has status
            ``NEW`` and the given ``workflow_id``.

        Raises:
            TypeError: ``start_variables`` or ``metadata`` is not a mapping, or holds
                values JSON cannot encode.
            UnprocessableEntityError: the API refused the variables (``details`` says why).
            BadRequestError: e.g. ``WORKFLOW_CREDIT_LIMIT_REACHED``.
            CopyAIError: any other failure.
        """
        wf = encode_segment("workflow_id", workflow_id)
        body: dict[str, Any] = {"startVariables": _json_object("start_variables", start_variables)}
        if metadata is not None:
            body["metadata"] = _json_object("metadata", metadata)
        resp = await self._transport.request(
            "POST", ("workflow", wf, "run"), json_body=body, idempotent=False
        )
        run = _parse(resp, lambda: WIRE.started_run(resp.data, workflow_id=workflow_id), self._key)
        self._waiter.note_started(f"{workflow_id}\0{run.id}")
        return run

    # -- waiting -----------------------------------------------------------------------

    def _target(self, workflow_id: str, run_id: str) -> Callable[[PollPolicy], Target[WorkflowRun]]:
        encode_segment("workflow_id", workflow_id)
        encode_segment("run_id", run_id)

        async def fetch() -> WorkflowRun:
            return await self.get_run(workflow_id, run_id)

        def make(policy: PollPolicy) -> Target[WorkflowRun]:
            return self._waiter.target(
                run_id=run_id,
                key=f"{workflow_id}\0{run_id}",
                label=f"run {run_id} of workflow {workflow_id}",
                fetch=fetch,
                policy=policy,
            )

        return make

    async def wait_for_run(
        self,
        workflow_id: str,
        run_id: str,
        *,
        timeout: float | None = None,
        policy: PollPolicy | None = None,
        raise_on_failure: bool = True,
        on_status: Callable[[WorkflowRun], Any] | None = None,
    ) -> WorkflowRun:
        """Poll a run until it is ``COMPLETE`` or ``FAILED``.

        The first poll is immediate; then sleeps grow as ``policy`` says (with jitter) up
        to its ``max_interval``. ``NEW``, ``WAITING``, ``PROCESSING`` and ``RETRYING``
        keep polling; so does an undocumented status (logged once at WARNING). A 429's
        ``Retry-After`` pauses every request of this client. A 404 for a run this client
        started less than ``policy.not_found_grace`` seconds ago is polled again (the run
        may not be readable yet); any other 404 is raised.

        Args:
            workflow_id: the workflow's id.
            run_id: the run's id.
            timeout: one deadline, in seconds on the client's monotonic clock, over
                requests, retries, pauses and sleeps (``None``: wait as long as it takes).
            policy: the poll timing (default :class:`PollPolicy()`).
            raise_on_failure: raise :class:`RunFailedError` for a ``FAILED`` run (else
                return it).
            on_status: called (sync, or awaited if it returns an awaitable) with the run
                at its first reading and at each status change; what it raises ends the
                wait.

        Returns:
            The run, ``COMPLETE`` (or ``FAILED`` with ``raise_on_failure=False``).

        Raises:
            RunFailedError: the run ended ``FAILED`` (``.run`` holds it).
            PollTimeoutError: ``timeout`` passed first (``.run`` is the last reading; it
                is also a ``TimeoutError``).
            NotFoundError: no such run (outside the grace window).
            CopyAIError: any other failure, after retries.
            TypeError, ValueError: bad arguments.
        """
        return await self._waiter.wait(
            self._target(workflow_id, run_id),
            time_limit=timeout,
            policy=policy,
            raise_on_failure=raise_on_failure,
            on_status=on_status,
        )

    def watch_run(
        self,
        workflow_id: str,
        run_id: str,
        *,
        timeout: float | None = None,
        policy: PollPolicy | None = None,
    ) -> AsyncGenerator[WorkflowRun, None]:
        """Follow a run's status: ``async for run in client.watch_run(wf, run_id)``.

        Yields the first reading, then each reading whose status differs from the one
        before, and ends after the terminal one (a ``FAILED`` run is yielded, not
        raised). Polling, ``timeout`` and ``policy`` are as for :meth:`wait_for_run`;
        the timeout starts when iteration does. Breaking out or closing it cancels the
        request in flight.

        Raises:
            PollTimeoutError: while iterating, when ``timeout`` passes first.
            CopyAIError: while iterating, a failure after retries.
            TypeError, ValueError: bad arguments (at the call).
        """
        return self._waiter.watch(self._target(workflow_id, run_id), timeout=timeout, policy=policy)

    def wait_for_runs(
        self,
        workflow_id: str,
        run_ids: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float | None = None,
        policy: PollPolicy | None = None,
        on_status: Callable[[WorkflowRun], Any] | None = None,
    ) -> AsyncGenerator[WorkflowRun, None]:
        """Wait on many runs at once: yields each run once, as soon as it is seen terminal.

        ``FAILED`` runs are yielded, not raised. Polls are scheduled by due time (first
        polls at once, then each run's sleeps grow as ``policy`` says), with at most
        ``concurrency`` requests of this wait in flight; the client's own limits
        (``max_connections``, ``rate_limit``) apply on top. Duplicate ids are waited on
        once. Polling pauses while the loop body runs (requests in flight go on).

        A run that cannot be polled (a 404 outside the grace window, a failure after
        retries, or the ``timeout``) does not stop the others: once every other run has
        been yielded, those errors are raised together as an ``ExceptionGroup`` of
        :class:`CopyAIError` (each naming its run; :class:`PollTimeoutError` for runs
        the timeout caught), in the order the ids were given.

        Args:
            workflow_id: the workflow's id.
            run_ids: the runs' ids (a collection of str, not one str).
            concurrency: requests of this wait in flight at once, 1 to 1,000 (default 16).
            timeout: one deadline for the whole wait, in seconds; it starts when
                iteration does.
            policy: the poll timing (default :class:`PollPolicy()`).
            on_status: called (sync, or awaited) with each run at its first reading and
                at each change of its status, e.g. to show progress.

        Raises:
            ExceptionGroup: while iterating, after the last run is yielded, if any failed.
            TypeError, ValueError: bad arguments (at the call).
        """
        if isinstance(run_ids, (str, bytes)):
            raise TypeError("run_ids must be a collection of run ids, not a single string")
        try:
            ids = list(dict.fromkeys(run_ids))
        except TypeError as exc:
            raise TypeError(f"run_ids must be an iterable of str: {exc}") from exc
        makers = [self._target(workflow_id, run_id) for run_id in ids]
        return self._waiter.wait_many(
            lambda policy: [make(policy) for make in makers],
            concurrency=concurrency,
            timeout=timeout,
            policy=policy,
            on_status=on_status,
        )

    async def start_and_wait(
        self,
        workflow_id: str,
        start_variables: Mapping[str, Any],
        *,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        policy: PollPolicy | None = None,
        raise_on_failure: bool = True,
    ) -> WorkflowRun:
        """Start a run and wait for it: :meth:`start_run`, then :meth:`wait_for_run`.

        ``timeout`` covers both. A 404 just after the start is polled again (the run may
        not be readable yet), for ``policy.not_found_grace`` seconds.

        Raises:
            RunFailedError, PollTimeoutError, CopyAIError: as :meth:`start_run` and
                :meth:`wait_for_run`.
        """
        timeout = check_timeout(timeout)
        deadline = self._waiter.deadline(timeout)
        try:
            run = await bounded(
                lambda: self.start_run(workflow_id, start_variables, metadata=metadata),
                deadline,
                self.clock,
            )
        except DeadlineExceeded as exc:
            raise PollTimeoutError(
                f"starting a run of workflow {workflow_id}: no answer within the "
                f"{timeout:g} s timeout (the run may or may not have started)",
                run=None,
                run_id="",
                timeout=timeout if timeout is not None else math.inf,
            ) from exc.__cause__
        return await self._waiter.wait(
            self._target(workflow_id, run.id),
            time_limit=timeout,
            policy=policy,
            raise_on_failure=raise_on_failure,
            on_status=None,
            deadline=deadline,
        )


def _json_object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping (dict), got {type(value).__name__}")
    obj = dict(value)
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must hold only JSON-encodable values: {exc}") from exc
    return obj


def _parse(resp: Response, convert: Callable[[], _T], secret: Secret | None = None) -> _T:
    try:
        return convert()
    except WireError as exc:
        json_path, reason = exc.json_path, exc.reason
    # Raised outside the handler, and unchained: the wire error and cattrs' errors behind
    # it quote payload values, which could echo the API key.
    if secret is not None:
        reason = secret.redact(reason)
    raise InvalidResponseError(
        f"{resp.method} {resp.path} -> {resp.status}: the answer does not have the "
        f"documented shape: {reason} at {json_path}",
        method=resp.method,
        path=resp.path,
        status=resp.status,
        json_path=json_path,
    )
