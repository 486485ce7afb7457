"""CopyAIClient: lifecycle and the endpoint methods (thin: they validate, call, convert)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

import aiohttp

from ._base import BaseClient, credential, int_in, json_object, parse
from ._budget import DeadlineExceeded
from ._clock import Clock
from ._convert import WIRE
from ._errors import PollTimeoutError
from ._http import encode_segment
from ._models import RunPage, RunStatus, WorkflowRun
from ._paginate import DEFAULT_PREFETCH, RunPaginator
from ._poll import PollPolicy, RunKind, bounded, check_timeout

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


class CopyAIClient(BaseClient[WorkflowRun]):
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
        super().__init__(
            secret=credential(
                api_key, name="api_key", env=API_KEY_ENV, what="Copy.ai API key", how="CopyAIClient"
            ),
            auth_headers=lambda key: {"x-copy-ai-api-key": key.get()},
            kind=COPYAI_RUNS,
            base_url=base_url,
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
        resp = await self._transport.request("GET", ("workflow", wf, "run", run), idempotent=True)
        return parse(resp, lambda: WIRE.run(resp.data, workflow_id=workflow_id), self._key)

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
        page = int_in("page", page, 1)
        size = int_in("size", size, 1, MAX_PAGE_SIZE)
        resp = await self._transport.request(
            "GET",
            ("workflow", wf, "run"),
            params={"page": str(page), "size": str(size)},
            idempotent=True,
        )
        return parse(
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
        body: dict[str, Any] = {"startVariables": json_object("start_variables", start_variables)}
        if metadata is not None:
            body["metadata"] = json_object("metadata", metadata)
        resp = await self._transport.request(
            "POST", ("workflow", wf, "run"), json_body=body, idempotent=False
        )
        run = parse(resp, lambda: WIRE.started_run(resp.data, workflow_id=workflow_id), self._key)
        self._note_started(workflow_id, run.id)
        return run

    # -- waiting (wait_for_run, watch_run, wait_for_runs: see BaseClient) ---------------

    _run_label = "run"

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
