"""CopyAIClient: lifecycle and the endpoint methods (thin: they validate, call, convert)."""

from __future__ import annotations

import copy
import enum
import functools
import math
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Container, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp
import attrs

from ._base import BaseClient, LookupInconclusive
from ._batch import Batch
from ._budget import DeadlineExceeded
from ._check import base_url_from, boolean, credential, http_url, int_in, json_object
from ._clock import Clock
from ._convert import WIRE
from ._coordination import RedisCoordination
from ._errors import APIError, NotFoundError, PaginationError, PollTimeoutError
from ._http import OutcomeUnknown, Response, encode_segment, response_date
from ._models import START_KEY, RunPage, RunStatus, WorkflowRun
from ._once import AtMostOnce, Lookup, Unsettled
from ._paginate import DEFAULT_PREFETCH, RunPaginator
from ._poll import PollPolicy, RunKind, bounded, check_timeout
from ._sweep import Listing, Usable

if TYPE_CHECKING:
    # Imported where used: webhooks cost a tenth of the package's import otherwise.
    from .webhooks._listener import Listener
    from .webhooks._models import RunEvent, Webhook, WebhookEventType

__all__ = ["DEFAULT_BASE_URL", "MAX_PAGE_SIZE", "CopyAIClient"]

DEFAULT_BASE_URL = "https://api.copy.ai/api"
MAX_PAGE_SIZE = 100
MAX_PREFETCH = 100
API_KEY_ENV = "COPYAI_API_KEY"
BASE_URL_ENV = "COPYAI_BASE_URL"
MAX_START_KEY_LENGTH = 200
LOOKUP_PAGES = 10
"""Pages of 100 runs a lost start's lookup may read before it gives up (1,000 runs)."""
LOOKUP_MARGIN = 5.0
"""Seconds the lookup looks back further than the start was sent, on the server's clock
(its ``Date`` header, to the second; ``createdAt`` may come from another of its clocks)."""
LOOKUP_MARGIN_NO_DATE = 60.0
"""The same, when the server sends no ``Date`` and the client's own clock must do."""
MAX_WEBHOOK_PAGES = 1_000
"""Pages of ``GET /webhook`` read at most before the listing is taken to repeat itself."""


def _webhook_uncertain(
    lost: OutcomeUnknown, reason: Unsettled, lookup_error: Exception | None
) -> APIError:
    """The error for a webhook creation whose answer was lost and could not be settled:
    the lost answer's own (documented) error, saying that the webhook may exist."""
    if reason is Unsettled.LOOKUP_FAILED:
        why = f"listing webhooks to look for it failed ({lookup_error})"
    elif reason is Unsettled.MAY_STILL_APPEAR:
        why = "none like it is listed yet, but the server may still be creating it"
    else:
        why = "there was nothing to look for it by"
    message = (
        f"{lost.error.message}; the webhook may or may not have been created: {why}; "
        "look for it with list_webhooks() before creating it again"
    )
    error = copy.copy(lost.error)  # the same class and attributes, a message that says so
    error.args = (message,)
    error.message = message
    error.__cause__ = lost.error
    return error


def _optional_id(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


class _Auto(enum.Enum):
    """The type of :data:`AUTO`."""

    AUTO = "auto"


AUTO = _Auto.AUTO
"""``start_key`` left to the client: a fresh one, if the client's ``start_keys`` is on."""

_T = TypeVar("_T")

COPYAI_RUNS: RunKind[WorkflowRun] = RunKind(
    status=lambda run: run.raw_status if run.raw_status is not None else run.status.value,
    is_terminal=lambda run: run.is_terminal,
    is_failed=lambda run: run.status is RunStatus.FAILED,
    is_unknown=lambda run: run.status is RunStatus.UNKNOWN,
    created_at=lambda run: None if run.created_at is None else run.created_at.timestamp(),
)
"""How the poller reads a Copy.ai run: COMPLETE and FAILED end it, FAILED is failure."""


def _listed_usable(run: WorkflowRun) -> Usable:
    """What a run in the listing is good for: a listing without ``status`` says nothing;
    a finished run without its ``output`` is read on its own before a wait ends."""
    if run.raw_status is None:
        return Usable.NO_STATUS
    if run.is_terminal and run.output is None:
        return Usable.VERIFY
    return Usable.YES


class CopyAIClient(BaseClient[WorkflowRun]):
    """Async client for the Copy.ai Workflow API.

    Use it as an async context manager, or call :meth:`aclose` when done::

        async with CopyAIClient() as client:
            run = await client.get_run("WCFG-...", "WRUN-...")

    The client owns one :class:`aiohttp.ClientSession`, opened on first use inside the
    running event loop, and serves that event loop only: a call from another (a second
    ``asyncio.run()``, another thread) raises :class:`EventLoopError` before anything is
    sent. When that loop shuts down (``asyncio.run()`` ending), the session is closed
    with it. Every request sends ``x-copy-ai-api-key``, ``Accept:
    application/json`` and ``User-Agent: copyai-async/<version>``; requests are logged at
    DEBUG on the ``copyai_async`` logger, without the key.

    Args:
        api_key: the Copy.ai API key. Defaults to the ``COPYAI_API_KEY`` environment
            variable.
        base_url: the API root. Defaults to the ``COPYAI_BASE_URL`` environment variable,
            else ``https://api.copy.ai/api``.
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
        coordination: share ``rate_limit``, ``max_connections`` and ``Retry-After``
            pauses with every process using the same API key, and webhook events with
            their waits, through Redis: a ``redis://`` URL, or a
            :class:`RedisCoordination` (to choose a namespace, or share one connection
            among clients). Needs the ``redis`` extra. If Redis is unreachable, the
            client goes on with its own limits (one WARNING) and shares again once it
            is back; no Redis error is raised from a call.
        proxy: send every request through this HTTP proxy, e.g.
            ``"http://user:password@proxy.example:3128"`` (``http://`` or ``https://``;
            credentials percent-encoded, sent as ``Proxy-Authorization`` and never shown).
            It applies whatever the environment says.
        trust_env: without ``proxy``, read the proxy from the environment, once, here:
            ``HTTPS_PROXY`` (``HTTP_PROXY`` for an http base URL, lower-case names
            first), unless ``NO_PROXY`` names the host. A loopback base URL (the fake
            server) never goes through a proxy from the environment. ``False`` ignores
            the environment. With ``session=``, the session's own ``trust_env`` decides.
        start_keys: tag each run ``start_run`` starts with a fresh random key in its
            metadata (``metadata["copyai_async_start_key"]``), so that a start whose
            answer is lost can be found instead of guessed at, and never started twice.
            ``False`` sends the metadata exactly as given (a lost answer then raises
            :class:`StartUncertainError`).

    Raises:
        ConfigurationError: no API key (argument or ``COPYAI_API_KEY``), a bad
            ``base_url``, or a proxy variable that is not an http(s) proxy URL.
        TypeError, ValueError: an option of the wrong type or out of range (``proxy``
            not an http(s) URL with a host).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
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
        coordination: str | RedisCoordination | None = None,
        proxy: str | None = None,
        trust_env: bool = True,
        start_keys: bool = True,
    ) -> None:
        self.start_keys: bool = boolean("start_keys", start_keys)
        super().__init__(
            secret=credential(
                api_key, name="api_key", env=API_KEY_ENV, what="Copy.ai API key", how="CopyAIClient"
            ),
            auth_headers=lambda key: {"x-copy-ai-api-key": key.get()},
            kind=COPYAI_RUNS,
            base_url=base_url_from(
                base_url, env=BASE_URL_ENV, default=DEFAULT_BASE_URL, how="CopyAIClient"
            ),
            timeout=timeout,
            max_retries=max_retries,
            max_connections=max_connections,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_after=max_retry_after,
            session=session,
            clock=clock,
            rate_limit=rate_limit,
            allow_http=allow_http,
            coordination=coordination,
            proxy=proxy,
            trust_env=trust_env,
            root_hint=f"Copy.ai's API root is {DEFAULT_BASE_URL}",
            listing=Listing(
                read_page=self._listed,
                run_id=lambda run: run.id,
                usable=_listed_usable,
                created_at=lambda run: run.created_at,
            ),
        )

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
        return await self._transport.request(
            "GET",
            ("workflow", wf, "run", run),
            idempotent=True,
            parse=lambda resp: WIRE.run(resp.data, workflow_id=workflow_id),
            what="workflow or run",
        )

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
        page = int_in("page", page, 1)
        size = int_in("size", size, 1, MAX_PAGE_SIZE)
        return (await self._page(workflow_id, page, size))[0]

    async def _page(
        self, workflow_id: str, page: int, size: int
    ) -> tuple[RunPage, Mapping[str, str]]:
        """One page of runs, and the headers of its answer (checked arguments)."""

        def parse(resp: Response) -> tuple[RunPage, Mapping[str, str]]:
            data = WIRE.page(resp.data, workflow_id=workflow_id, page=page, size=size)
            return data, resp.headers

        return await self._transport.request(
            "GET",
            ("workflow", encode_segment("workflow_id", workflow_id), "run"),
            params={"page": str(page), "size": str(size)},
            idempotent=True,
            parse=parse,
            what="workflow",
            decode=WIRE.decode_page,
        )

    async def _listed(
        self, workflow_id: str, page: int, size: int
    ) -> tuple[tuple[WorkflowRun, ...], int | None]:
        """One page of runs as sweeps read it: the runs and ``total``."""
        listed = (await self._page(workflow_id, page, size))[0]
        return listed.runs, listed.total

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
        size = min(int_in("page_size", page_size, 1), MAX_PAGE_SIZE)
        first = int_in("start_page", start_page, 1)
        limit = None if max_items is None else int_in("max_items", max_items, 0)
        ahead = int_in("prefetch", prefetch, 0, MAX_PREFETCH)

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
        start_key: str | Literal[_Auto.AUTO] | None = AUTO,
    ) -> WorkflowRun:
        """Start a run (``POST /workflow/{id}/run``), once.

        The run is tagged with a start key in its metadata (see ``start_key``). If the
        request provably never reached the server (a failure to connect, a connection
        that was closing before the request was written, 408, 429), it is sent again. If
        the server may have acted on it (the connection dropped after sending, a timeout,
        500/502/503/504, a success answer that cannot be read), the client looks for the
        key among the workflow's newest runs: the run found is returned; if none has it,
        the start is sent again (within ``max_retries``); if it cannot tell,
        :class:`StartUncertainError` says so. A run is never started twice by the client.

        Args:
            workflow_id: the workflow's id.
            start_variables: the workflow's inputs, sent as ``startVariables``.
            metadata: optional data attached to the run and echoed back on it.
            start_key: the key sent as ``metadata["copyai_async_start_key"]``: leave it
                out for a fresh random one (when the client's ``start_keys`` is on, the
                default), give your own (e.g. a job id, up to 200 characters, so that you
                can find the run later with :meth:`find_started_run`), or ``None`` for
                none (a lost answer then raises :class:`StartUncertainError`).

        Returns:
            The new run (``run.start_key`` holds its key). The API may answer with only
            its id: the run then has status ``NEW``, the given ``workflow_id``, and the
            ``input`` and ``metadata`` that were sent.

        Raises:
            TypeError: ``start_variables`` or ``metadata`` is not a mapping, or holds
                values JSON cannot encode; ``start_key`` is not a str.
            ValueError: ``metadata`` holds NaN or is nested too deeply; ``start_key`` is
                empty, too long, or differs from the key already in ``metadata``.
            UnprocessableEntityError: the API refused the variables (``details`` says why).
            BadRequestError: e.g. ``WORKFLOW_CREDIT_LIMIT_REACHED``.
            StartUncertainError: the answer was lost and the client cannot tell whether
                the run started (``.start_key`` says what to look for).
            CopyAIError: any other failure; the run was not started.
        """
        return await self._send_start(
            workflow_id, *self._start_body(workflow_id, start_variables, metadata, start_key)
        )

    def _start_body(
        self,
        workflow_id: str,
        start_variables: Any,
        metadata: Any,
        start_key: str | _Auto | None,
    ) -> tuple[dict[str, Any], str | None]:
        """The checked body of a start, and the start key it carries (in its metadata)."""
        encode_segment("workflow_id", workflow_id)
        body: dict[str, Any] = {"startVariables": json_object("start_variables", start_variables)}
        meta = None if metadata is None else json_object("metadata", metadata)
        key = self._start_key(start_key, meta)
        if key is not None:
            meta = {**(meta or {}), START_KEY: key}
        if meta is not None:
            body["metadata"] = meta
        return body, key

    async def _send_start(
        self, workflow_id: str, body: dict[str, Any], key: str | None
    ) -> WorkflowRun:
        run = await self._start(
            ("workflow", encode_segment("workflow_id", workflow_id), "run"),
            workflow_id=workflow_id,
            body=body,
            parse=lambda resp: WIRE.started_run(
                resp.data,
                workflow_id=workflow_id,
                start_variables=body["startVariables"],
                metadata=body.get("metadata"),
            ),
            start_key=key,
            find=lambda key, sent: self._find_lost_start(workflow_id, key, sent),
        )
        self._note_started(workflow_id, run.id, run.created_at)
        return run

    def _start_key(
        self, start_key: str | _Auto | None, metadata: Mapping[str, Any] | None
    ) -> str | None:
        given = metadata.get(START_KEY) if metadata is not None else None
        if start_key is AUTO:
            if isinstance(given, str) and given:
                return given  # the caller tagged the run already
            return uuid.uuid4().hex if self.start_keys else None
        if start_key is None:
            return None
        if not isinstance(start_key, str):
            raise TypeError(f"start_key must be a str or None, got {type(start_key).__name__}")
        if not start_key.strip() or len(start_key) > MAX_START_KEY_LENGTH:
            raise ValueError(
                f"start_key must be a non-blank string of at most {MAX_START_KEY_LENGTH} "
                f"characters, got {len(start_key)} characters"
            )
        if given is not None and given != start_key:
            raise ValueError(
                f"start_key differs from metadata[{START_KEY!r}]; give the key in one place"
            )
        return start_key

    async def find_started_run(
        self, workflow_id: str, start_key: str, *, max_runs: int = 1000
    ) -> WorkflowRun | None:
        """Look for the run a start tagged with ``start_key`` among the newest runs.

        For a :class:`StartUncertainError` (``exc.start_key``), or your own key given to
        :meth:`start_run`. Reads pages of 100 runs, newest first, until the run is found,
        the listing ends, or ``max_runs`` runs have been read.

        Args:
            workflow_id: the workflow the run was started in.
            start_key: the key to look for (``metadata["copyai_async_start_key"]``).
            max_runs: how many of the newest runs to read at most, 1 to 100,000.

        Returns:
            The run, or ``None`` if none of the runs read carries the key.

        Raises:
            TypeError, ValueError: bad arguments.
            CopyAIError: a page could not be read (after retries).
        """
        encode_segment("workflow_id", workflow_id)
        if not isinstance(start_key, str) or not start_key:
            raise TypeError(f"start_key must be a non-empty str, got {start_key!r}")
        limit = int_in("max_runs", max_runs, 1, 100_000)
        for page_no in range(1, -(-limit // MAX_PAGE_SIZE) + 1):
            page, _headers = await self._page(workflow_id, page_no, MAX_PAGE_SIZE)
            for run in page.runs:
                if run.start_key == start_key:
                    return run
            if len(page.runs) < MAX_PAGE_SIZE:
                return None
        return None

    async def _find_lost_start(
        self, workflow_id: str, start_key: str, sent: float
    ) -> WorkflowRun | None:
        """The run tagged ``start_key``; ``None`` once the pages read reach back past the
        moment it was sent (so it would have been seen); LookupInconclusive if they can't.

        The listing is newest first. The first page's ``Date`` header says what time it
        is on the server; ``sent`` (the client's monotonic clock) says how long ago the
        start went out. A run created by it cannot be older than that, less a margin, so
        a page holding an older run shows every run newer than it was read.
        """
        horizon: datetime | None = None
        for page_no in range(1, LOOKUP_PAGES + 1):
            page, headers = await self._page(workflow_id, page_no, MAX_PAGE_SIZE)
            for run in page.runs:
                if run.start_key == start_key:
                    return run
            if len(page.runs) < MAX_PAGE_SIZE:
                return None  # the whole listing was read
            if horizon is None:
                date = response_date(headers)
                margin = LOOKUP_MARGIN if date is not None else LOOKUP_MARGIN_NO_DATE
                now = date if date is not None else datetime.now(timezone.utc)
                ago = self.clock.monotonic() - sent + margin
                horizon = now - timedelta(seconds=ago)
            if any(r.created_at is not None and r.created_at < horizon for r in page.runs):
                return None
        raise LookupInconclusive(
            f"the {LOOKUP_PAGES * MAX_PAGE_SIZE} newest runs hold none with it, but do not "
            "reach back to when the start was sent"
        )

    # -- webhooks ------------------------------------------------------------------------

    async def create_webhook(
        self,
        url: str,
        event_type: WebhookEventType | str,
        *,
        workflow_id: str | None = None,
    ) -> Webhook:
        """Register a webhook (``POST /webhook``): Copy.ai will POST events to ``url``.

        Sent once, as a run's start is: if the answer is lost after the request went
        out, the client waits (a 503's ``Retry-After``, or a backoff), then looks for a
        webhook with the same URL, event type and workflow among the existing ones (a
        webhook already registered like it is returned as is). Found: returned. Not
        there: sent again, within ``max_retries``. If the lookup fails, or the server
        may still be creating it (a timeout, a 504), the client cannot tell: it raises
        the lost answer's error, saying that the webhook may or may not exist.

        Args:
            url: where to deliver events: http(s), no ``user:password@``, no fragment.
                Deliveries are unsigned, so make it hard to guess (a listener's
                :attr:`~copyai_async.webhooks.Listener.url` carries a random secret).
            event_type: one of ``workflowRun.started``, ``workflowRun.completed``,
                ``workflowRun.failed``, ``workflowCreditLimit.reached`` (or the
                :class:`WebhookEventType`).
            workflow_id: the workflow whose events to deliver; ``None`` for every
                workflow of the workspace.

        Returns:
            The webhook.

        Raises:
            TypeError, ValueError: a bad URL, event type or workflow id (before any
                request).
            UnprocessableEntityError, NotFoundError: the API refused it.
            APIConnectionError, ServerError, InvalidResponseError: the answer was lost
                and the client cannot tell whether the webhook was created: the message
                says "may or may not have been created" (its ``__cause__`` is the lost
                answer's error); look for it with :meth:`list_webhooks` before creating
                it again. Raised with no such words, they mean nothing was created.
            CopyAIError: any other failure; the webhook was not created.
        """
        from .webhooks._convert import WEBHOOK_WIRE
        from .webhooks._parse import check_event_type

        checked_url = str(http_url("url", url))
        kind = check_event_type(event_type)
        wf = _optional_id("workflow_id", workflow_id)
        body: dict[str, Any] = {"url": checked_url, "eventType": kind.value}
        if wf is not None:
            body["workflowId"] = wf
        lookup: Lookup[Webhook] = Lookup(
            find=functools.partial(self._find_lost_webhook, checked_url, kind, wf),
            uncertain=_webhook_uncertain,
            noun="webhook",
            by="its URL, event type and workflow",
        )
        return await AtMostOnce(
            self._transport,
            ("webhook",),
            body=body,
            parse=lambda resp: WEBHOOK_WIRE.webhook(resp.data),
            lookup=lookup,
            what=None if wf is None else "workflow",
        ).send()

    async def _find_lost_webhook(
        self, url: str, kind: WebhookEventType, workflow_id: str | None, _sent: float
    ) -> Webhook | None:
        """The webhook a lost create made (same URL, event type and workflow), if any."""
        async for hook in self.list_webhooks():
            if hook.url == url and hook.event_type is kind and hook.workflow_id == workflow_id:
                return hook
        return None

    async def get_webhook(self, webhook_id: str) -> Webhook:
        """Fetch one webhook (``GET /webhook/{webhook_id}``).

        Raises:
            TypeError, ValueError: the id is not a non-empty string.
            NotFoundError: no such webhook.
            CopyAIError: any other failure.
        """
        from .webhooks._convert import WEBHOOK_WIRE

        hook = encode_segment("webhook_id", webhook_id)
        return await self._transport.request(
            "GET",
            ("webhook", hook),
            idempotent=True,
            parse=lambda resp: WEBHOOK_WIRE.webhook(resp.data),
            what="webhook",
        )

    async def delete_webhook(self, webhook_id: str, *, missing_ok: bool = False) -> None:
        """Delete a webhook (``DELETE /webhook/{webhook_id}``; the API answers 202).

        Args:
            webhook_id: the webhook's id.
            missing_ok: treat a webhook that does not exist (404) as deleted. A delete
                that is retried after a lost answer may meet its own success as a 404.

        Raises:
            TypeError, ValueError: the id is not a non-empty string.
            NotFoundError: no such webhook (unless ``missing_ok``).
            CopyAIError: any other failure.
        """
        hook = encode_segment("webhook_id", webhook_id)
        try:
            await self._transport.request(
                "DELETE",
                ("webhook", hook),
                idempotent=True,
                parse=lambda resp: None,
                what="webhook",
            )
        except NotFoundError:
            if not missing_ok:
                raise

    async def list_webhooks(self) -> AsyncIterator[Webhook]:
        """Every webhook of the workspace, all pages: ``async for hook in ...``.

        ``GET /webhook`` pages start at 0 and are not wrapped in the usual envelope;
        pages are read until one is empty, adds no webhook not yet seen (a server that
        ignores ``page``), or ``total`` (if sent) is reached. Each webhook is yielded once.

        Raises:
            CopyAIError: while iterating, a page that failed after retries;
                :class:`PaginationError` past 1,000 pages that each add webhooks.
        """
        from .webhooks._convert import WEBHOOK_WIRE

        seen: set[str] = set()
        page = 0
        while True:
            hooks, total = await self._transport.request(
                "GET",
                ("webhook",),
                params={"page": str(page)},
                idempotent=True,
                parse=lambda resp: WEBHOOK_WIRE.webhook_page(resp.data),
            )
            fresh = [hook for hook in hooks if hook.id not in seen]
            for hook in fresh:
                seen.add(hook.id)
                yield hook
            if not fresh or (total is not None and len(seen) >= total):
                return
            page += 1
            if page >= MAX_WEBHOOK_PAGES:
                raise PaginationError(
                    f"GET /webhook: {MAX_WEBHOOK_PAGES} pages each brought new webhooks; "
                    "stopped reading",
                    pages=(page,),
                )

    def listen(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/copyai-webhooks",
        public_url: str | None = None,
        serve: bool = True,
        max_body: int = 1 << 20,
        buffer: int = 10_000,
        max_connections: int = 100,
        request_timeout: float = 10.0,
    ) -> Listener:
        """A webhook listener for this client: ``async with client.listen() as listener``.

        While it runs, this client's waits finish the moment an event says their run
        finished (verified with one GET), and poll only every
        ``PollPolicy.safety_interval`` meanwhile. See
        :class:`~copyai_async.webhooks.Listener`.

        Args:
            host: the address its server listens on (``"0.0.0.0"`` for every interface).
            port: its port; 0 picks a free one.
            path: the path it serves; the secret goes in the ``token`` query parameter.
            public_url: the address Copy.ai can reach it at, when it is behind a tunnel
                or proxy (e.g. ``"https://abc.ngrok.app/copyai-webhooks"``); the secret
                is added to it. Required with ``serve=False``.
            serve: run its own aiohttp server; ``False`` to mount
                :meth:`~copyai_async.webhooks.Listener.handler` in your aiohttp app or
                call :meth:`~copyai_async.webhooks.Listener.feed` from another server.
            max_body: the largest body read, in bytes (default 1 MiB), counted as
                inflated for gzip and deflate bodies; larger get 413.
            buffer: unread events kept for ``async for`` (the oldest are dropped first).
            max_connections: connections its own server keeps open at once (default
                100); while all are taken, the one that has waited longest (0.5 s at
                least) for a whole request is closed to make room for the next.
                Keep it well under the process's open-file limit (``ulimit -n``) minus
                the client's own ``max_connections``, so that strangers can never
                starve the client's requests.
            request_timeout: seconds a connection to its own server has to send a
                whole request, headers and body (default 10); slower ones are closed.

        Raises:
            TypeError, ValueError: a bad option (here, before anything starts).
        """
        from .webhooks._listener import Listener

        return Listener(
            self,
            self._waiter.hints,
            host=host,
            port=port,
            path=path,
            public_url=public_url,
            serve=serve,
            max_body=max_body,
            buffer=buffer,
            max_connections=max_connections,
            request_timeout=request_timeout,
        )

    async def verify_event(self, event: RunEvent) -> RunEvent:
        """Check a run event against the API: one ``GET`` of its run.

        A listener of this client learns what the GET showed: an event it contradicts
        (a "finished" run still at work) no longer makes the same delivery a repeat.

        Returns:
            The event with ``verified=True``, ``run`` set to the run as read, and its
            ``status``, ``output``, ``input``, ``metadata``, ``credits`` and
            ``created_at`` taken from that run (the body stays in ``event.body``). Its
            status may differ from the one the event claimed: the API's is the truth.

        Raises:
            TypeError: not a :class:`~copyai_async.webhooks.RunEvent`.
            ValueError: the event names no workflow (the run cannot be read without one).
            NotFoundError: no such run in that workflow (a forged event, perhaps).
            CopyAIError: any other failure.
        """
        from .webhooks._models import RunEvent

        if not isinstance(event, RunEvent):
            raise TypeError(f"only run events name a run to verify, got {type(event).__name__}")
        if event.workflow_id is None:
            raise ValueError("the event names no workflow, so its run cannot be read")
        run = await self.get_run(event.workflow_id, event.run_id)
        # What the API says settles the event for this client's listeners too: one that
        # said "finished" of a run still at work is contradicted (so that its repeat is
        # taken as news), one confirmed counts as evidence, as a wait's poll would.
        self._waiter.hints.observed(
            event.run_id, event.workflow_id, finished=run.is_terminal, checking=True
        )
        return attrs.evolve(
            event,
            verified=True,
            run=run,
            status=run.status,
            output=run.output,
            input=run.input,
            metadata=run.metadata,
            credits=run.credits,
            created_at=run.created_at,
        )

    # -- waiting (wait_for_run, watch_run, wait_for_runs: see BaseClient) ---------------

    _run_label = "run"

    async def start_and_wait(
        self,
        workflow_id: str,
        start_variables: Mapping[str, Any],
        *,
        metadata: Mapping[str, Any] | None = None,
        start_key: str | Literal[_Auto.AUTO] | None = AUTO,
        timeout: float | None = None,
        policy: PollPolicy | None = None,
        raise_on_failure: bool = True,
    ) -> WorkflowRun:
        """Start a run and wait for it: :meth:`start_run`, then :meth:`wait_for_run`.

        ``timeout`` covers both. A 404 just after the start is polled again (the run may
        not be readable yet), for ``policy.not_found_grace`` seconds.

        Raises:
            RunFailedError: the run ended ``FAILED`` (with ``raise_on_failure``).
            PollTimeoutError: ``timeout`` passed first.
            PollFailedError: polls kept failing (see :class:`PollPolicy`).
            StartUncertainError: the start's answer was lost and the run was not found.
            CopyAIError: any other failure, as :meth:`start_run` and :meth:`wait_for_run`.
        """
        timeout = check_timeout(timeout)
        body, key = self._start_body(workflow_id, start_variables, metadata, start_key)
        deadline = self._waiter.deadline(timeout)
        try:
            run = await bounded(
                lambda: self._send_start(workflow_id, body, key),
                deadline,
                self.clock,
            )
        except DeadlineExceeded as exc:
            find = f"; look for start key {key!r} with client.find_started_run()" if key else ""
            raise PollTimeoutError(
                f"starting a run of workflow {workflow_id}: no answer within the "
                f"{timeout:g} s timeout (the run may or may not have started{find})",
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

    # -- bulk runs -----------------------------------------------------------------------

    def run_batch(
        self,
        workflow_id: str,
        rows: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]],
        *,
        journal: str | os.PathLike[str] | None = None,
        max_running: int = 100,
        retry_failed: bool = False,
        policy: PollPolicy | None = None,
        metadata: Mapping[str, Any] | None = None,
        skip_rows: Container[int] | None = None,
    ) -> Batch:
        """Run a workflow once for each row; yield each row's result as its run ends.

        ``async for result in client.run_batch(wf, rows, journal="leads.journal")``.
        Rows are read one at a time, as places free up (a file of a million rows is
        never held in memory). At most ``max_running`` rows are started and not yet
        delivered; the client's ``rate_limit`` and ``max_connections`` bound the
        requests, starts and polls together. Each result (:class:`BatchResult`)
        carries the row's number and input and its run, ``COMPLETE`` or ``FAILED``; a
        row whose start the API refused (400 or 422, e.g. a missing variable) ends
        ``REFUSED``, with the API's message, and the batch goes on.

        **With a journal** (a SQLite file, created if missing), each row is run exactly
        once across crashes: its start key is on disk before its start is sent. Run
        again with the same journal and rows, the batch resumes: rows delivered before
        are skipped, rows whose start may or may not have reached the API are settled by
        looking their keys up among the workflow's newest runs, rows running are waited
        on again. A result handed out in the last moments before a crash may be handed
        out again (dedupe by ``result.row``; the CLI's ``batch`` command does).

        **Without a journal**, no row is started twice and each is yielded once within
        this iteration; nothing is remembered after it.

        Args:
            workflow_id: the workflow to run.
            rows: the start variables of each row: an iterable or async iterable of
                mappings, read lazily, in order (a row's number is its position).
            journal: the journal file, or ``None`` for none.
            max_running: rows started and not yet delivered, at most, 1 to 10,000.
            retry_failed: with a journal, run again (with new start keys) the rows an
                earlier pass saw end ``FAILED`` or ``REFUSED``, and those whose run the
                API no longer has.
            policy: the poll timing (default :class:`PollPolicy()`).
            metadata: metadata for every run (each also gets its start key).
            skip_rows: the rows your own store already holds (``row in skip_rows``):
                they are neither run nor yielded, and every other row is yielded even
                if the journal says it was delivered before. Give it when results go
                somewhere that may lose its last writes in a crash (a file not yet
                synced): the store, not the journal, then says what was delivered. With
                ``retry_failed``, a row the journal saw fail that is not in it is run
                again.

        Returns:
            A :class:`Batch`: an async iterator of :class:`BatchResult`, with live
            counters in ``batch.progress``. Close it (``async with`` or ``aclose()``)
            to stop early; runs already started go on, and a journal resumes them.

        Raises:
            TypeError, ValueError: bad arguments (at the call), or a row that is not a
                mapping of JSON values (while iterating, naming the row).
            BatchJournalError: while iterating, the journal is another workflow's, or
                a row differs from the one it recorded.
            BadRequestError: while iterating, ``WORKFLOW_CREDIT_LIMIT_REACHED``: no more
                rows are started; the runs started are delivered first. (Starts in
                flight that fail alike are raised as one error, the first.)
            ExceptionGroup: while iterating, after every other row is delivered, the
                :class:`CopyAIError` of each row whose run could not be waited for (a
                404, polls failing past ``policy.max_failed_polls``); their places go to
                the next rows meanwhile. Run again with the journal to wait on them
                again.
            CopyAIError: while iterating, any other failure (after the runs started are
                delivered); run again with the journal to resume.
        """
        return Batch(
            self,
            workflow_id,
            rows,
            journal=journal,
            max_running=max_running,
            retry_failed=retry_failed,
            policy=policy,
            metadata=metadata,
            skip_rows=skip_rows,
        )
