"""FakeCopyAI: an in-memory stand-in for the Copy.ai Workflow API over real loopback HTTP.

The server is split by concern: run schedules (``_schedule``), how answers are spelled
and the quirks (``_quirks``), faults (``_faults``) and aitasker's endpoints
(``_aitasker``). This module holds the server itself: options, lifecycle, state, the
Copy.ai routes, and the middleware that counts, logs, delays, faults and compresses.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import ssl
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Literal

import attrs
from aiohttp import hdrs, web

from .._clock import loop_time
from ._aitasker import (
    AITASKER_WORKFLOW_ID,
    AITASKER_WORKSPACE_ID,
    DEFAULT_ERROR_MESSAGE,
    FakeAITasker,
)
from ._faults import DEFAULT_RANDOM_FAULTS, Fault, answer_with_fault
from ._quirks import Quirks, error_response, ok_response, render_run
from ._schedule import FakeRun, Schedule
from ._webhooks import Deliveries, Delivery, FakeWebhook, FakeWebhooks

__all__ = [
    "AITASKER_WORKFLOW_ID",
    "AITASKER_WORKSPACE_ID",
    "DEFAULT_API_KEY",
    "DEFAULT_COMPRESS_MIN_SIZE",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "DEFAULT_WORKFLOW_ID",
    "FakeCopyAI",
    "RecordedRequest",
    "ServerStats",
]

DEFAULT_API_KEY = "test-key"
DEFAULT_WORKFLOW_ID = "WCFG-fake-workflow"
MAX_SIZE = 100
DEFAULT_KEEPALIVE_TIMEOUT = 5.0
"""Seconds an idle keep-alive connection stays open: uvicorn's and Node's default."""
DEFAULT_COMPRESS_MIN_SIZE = 1024
"""Answers of at least this many bytes are gzipped for clients that accept gzip."""
_NO_IDLE_TIMEOUT = 3600.0


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request as the fake server saw it.

    Attributes:
        method: the HTTP method.
        path: the path as sent, percent-encoding kept.
        query: the query parameters.
        headers: the request headers.
        body: the raw body.
        status: the status answered (0 when the connection was dropped).
        fault: the fault injected, if any.
        received_at: when it arrived, on the server's clock.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    status: int
    fault: Fault | None
    received_at: float = 0.0

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@attrs.define
class ServerStats:
    """Counters for tests and benchmarks.

    Attributes:
        requests: requests received.
        in_flight: requests being handled now.
        max_in_flight: the most handled at once.
        faults: faults injected.
        by_path: requests per ``"METHOD /path"``.
        by_kind: API requests per kind (the fake's own ``/_fake/...`` endpoints are not
            counted, so the kinds add up to the API requests): ``"start"`` (``POST
            /workflow/{id}/run``), ``"get"`` (``GET /workflow/{id}/run/{run_id}``, one
            run), ``"list"`` (``GET /workflow/{id}/run``, a page of the listing),
            ``"webhook"`` (the ``/webhook`` endpoints), ``"aitasker"`` (``/api/v1/...``)
            and ``"other"`` (anything else, e.g. a path outside ``/api``). ``GET
            /_fake/stats`` sends them as ``by_kind`` (every kind, zeros included), and
            its ``run_gets`` is ``by_kind["get"]``: reads of one run, listings not
            included.
        max_per_second: the most requests that arrived within any one second.
        runs_started: runs created by ``POST /workflow/{id}/run`` (seeded runs not counted).
        webhooks_sent: webhook deliveries made (duplicates included).
        webhooks_failed: deliveries the receiver did not answer with a 2xx.
        webhooks_dropped: deliveries left unsent (``Deliveries.drop_rate``).
        webhooks_duplicated: deliveries sent a second time.
        webhooks_reordered: deliveries held back so that later ones overtook them.
    """

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: int = 0
    by_path: Counter[str] = attrs.field(factory=Counter)
    by_kind: Counter[str] = attrs.field(factory=Counter)
    max_per_second: int = 0
    runs_started: int = 0
    webhooks_sent: int = 0
    webhooks_failed: int = 0
    webhooks_dropped: int = 0
    webhooks_duplicated: int = 0
    webhooks_reordered: int = 0
    _window: deque[float] = attrs.field(factory=deque, repr=False)


REQUEST_KINDS = ("start", "get", "list", "webhook", "aitasker", "other")
"""The kinds :attr:`ServerStats.by_kind` counts requests by."""

_KIND_OF_ROUTE = {
    ("POST", "/api/workflow/{workflow_id}/run"): "start",
    ("GET", "/api/workflow/{workflow_id}/run/{run_id}"): "get",
    ("GET", "/api/workflow/{workflow_id}/run"): "list",
}


def _request_kind(request: web.Request) -> str | None:
    """The kind of API request ``request`` is (see :attr:`ServerStats.by_kind`); ``None``
    for the fake's own ``/_fake/...`` endpoints, which are not counted."""
    path = request.path
    if path.startswith("/_fake/"):
        return None
    if path.startswith("/api/v1/"):
        return "aitasker"
    if path == "/api/webhook" or path.startswith("/api/webhook/"):
        return "webhook"
    # The route's pattern, not the path: ids are opaque segments and may hold anything.
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else path
    return _KIND_OF_ROUTE.get((request.method, canonical), "other")


def _check_keepalive(value: float | None) -> float:
    if value is None:
        return _NO_IDLE_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"keepalive_timeout must be a number of seconds > 0 or None, got {value!r}"
        )
    return float(value)


def _int_or(text: str | None, default: int) -> int:
    try:
        return default if text is None else int(text)
    except ValueError:
        return default


class FakeCopyAI:
    """A fake Copy.ai Workflow API on loopback, for tests, benchmarks and demos.

    It keeps workflows and runs in memory and serves the documented endpoints under
    ``/api`` (so ``base_url`` works the same as the real one)::

        async with FakeCopyAI() as server:
            async with CopyAIClient(server.api_key, base_url=server.url) as client:
                run = await client.start_run(server.workflow_id, {"topic": "otters"})

    It is no kinder than production: idle keep-alive connections are closed after
    ``keepalive_timeout`` seconds (so a request can meet a connection the server is just
    closing), and large answers are gzipped for clients that accept it.

    Args:
        api_key: the only key accepted; others get 401.
        workflows: workflow ids that exist at start (more with :meth:`add_workflow`).
        host: address to listen on; loopback only is intended.
        port: port to listen on; 0 picks a free one.
        latency: seconds added to each answer (requests still overlap).
        quirks: payload variations to send.
        default_schedule: schedule of runs started through the API and of runs added
            without one (default ``Schedule.default()``: NEW, WAITING, PROCESSING, then COMPLETE
            1 to 4 s after the start, each run at its own time, as production runs
            finish with time whether or not anyone reads them). Tests that want a run to
            change only when it is read give a ``Schedule.polls(...)``.
        schedule_for: if given, called with each new run's ``(workflow_id,
            start_variables)`` to pick its schedule.
        fault_rate: chance (0..1) that a request gets a random fault from ``faults``.
        faults: the faults to draw from.
        fault_methods: the methods random faults hit (all if ``None``), e.g. ``("GET",)``.
        credit_limit: credits available to runs started through the API; past it a start
            answers 400 ``WORKFLOW_CREDIT_LIMIT_REACHED``.
        seed: seed of the random faults, the generated ids and the run durations drawn
            for a schedule's ``spread`` (``None``: different every time).
        clock: the server's monotonic clock, for ``unit="seconds"`` schedules (default:
            the event loop's, so that runs finish on a test loop's virtual time too).
        request_log_size: how many recent requests :attr:`requests` keeps.
        keepalive_timeout: seconds before an idle keep-alive connection is closed
            (default 5, like uvicorn and Node); ``None`` keeps idle connections for an hour.
        compress_min_size: gzip answers of at least this many bytes when the request
            accepts gzip (default 1024); ``None`` never compresses.
        deliveries: how webhook events are delivered to registered URLs (body shape,
            delay, drop, duplicate and reorder rates); see :class:`Deliveries`.
        cache_pages: keep each encoded page of a listing and send it again while no run
            is added or removed (for benchmarks that measure the client, not the fake's
            page building; statuses that change with time are then frozen in the page).
        ssl_context: serve https with this server-side context (e.g. from ``trustme``; the
            client must trust its CA): :attr:`url` then starts ``https://``.

    Webhooks: ``POST/GET /webhook`` and ``GET/DELETE /webhook/{id}`` are served with the
    API's quirks (list pages from 0, a bare array; 202 ``{}`` on delete). As runs change,
    events go to the webhooks registered for them: ``workflowRun.started`` when a run is
    created, ``workflowRun.completed``/``failed`` when it is first seen finished (at its
    finish time for ``unit="seconds"`` schedules; at the GET that shows it for
    ``unit="polls"``), ``workflowCreditLimit.reached`` when a start is refused for
    credits. :meth:`forge_event` and :meth:`post_event` send deliveries the server never
    made, to test a receiver.

    Its own endpoints, outside ``/api``, need no key and meet no fault: ``GET
    /_fake/stats`` (the counters, with requests by kind; see :class:`ServerStats`) and
    ``GET /_fake/runs/{run_id}`` (a run's status, schedule and, for ``unit="seconds"``,
    ``finishes_at`` in Unix time), for scripts and tests that drive it from another
    process.

    Attributes you may change while it runs: ``latency``, ``quirks``, ``fault_rate``,
    ``default_schedule``, ``schedule_for``, ``credit_limit``, ``api_key``,
    ``compress_min_size``, and two hooks for paging tests: ``report_total`` (maps the real
    run count to the ``total`` sent; ``None`` from it leaves ``total`` out) and
    ``page_for`` (maps the page asked for to the page served, e.g. ``lambda page: 1`` for
    a server that ignores ``page``).
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        workflows: Iterable[str] = (DEFAULT_WORKFLOW_ID,),
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        quirks: Quirks | None = None,
        default_schedule: Schedule | None = None,
        schedule_for: Callable[[str, Mapping[str, Any]], Schedule] | None = None,
        fault_rate: float = 0.0,
        faults: Iterable[Fault] = DEFAULT_RANDOM_FAULTS,
        fault_methods: Iterable[str] | None = None,
        credit_limit: int | None = None,
        seed: int | None = 0,
        clock: Callable[[], float] = loop_time,
        request_log_size: int = 10_000,
        keepalive_timeout: float | None = DEFAULT_KEEPALIVE_TIMEOUT,
        compress_min_size: int | None = DEFAULT_COMPRESS_MIN_SIZE,
        deliveries: Deliveries | None = None,
        cache_pages: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate!r}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency!r}")
        if compress_min_size is not None and compress_min_size < 0:
            raise ValueError(f"compress_min_size must be >= 0 or None, got {compress_min_size!r}")
        self.api_key = api_key
        self.host = host
        self.port: int = port
        self.latency = latency
        self.quirks: Quirks = quirks or Quirks()
        self.default_schedule: Schedule = default_schedule or Schedule.default()
        self.schedule_for = schedule_for
        self.fault_rate = fault_rate
        self.random_faults: tuple[Fault, ...] = tuple(faults)
        self.fault_methods: frozenset[str] | None = (
            None if fault_methods is None else frozenset(fault_methods)
        )
        self.credit_limit = credit_limit
        self.credits_used: int = 0
        self.clock = clock
        self.keepalive_timeout: float = _check_keepalive(keepalive_timeout)
        self.compress_min_size = compress_min_size
        self.stats: ServerStats = ServerStats()
        self.requests: deque[RecordedRequest] = deque(maxlen=request_log_size)
        self._rng = random.Random(seed)
        # Run durations come from a stream of their own, so that a schedule with a spread
        # does not change which requests a seeded fault_rate hits, nor the ids.
        self._durations = random.Random(None if seed is None else f"durations-{seed}")
        self._scripted: list[tuple[str | None, str | None, Fault]] = []
        self._runs: dict[str, list[FakeRun]] = {}
        self._index: dict[str, dict[str, FakeRun]] = {}
        self.cache_pages = cache_pages
        self._ssl = ssl_context
        self._pages: dict[tuple[str, int, int], bytes] = {}
        self._webhooks = FakeWebhooks(
            clock=lambda: self.clock(),
            clock_is_real=lambda: self.clock in (loop_time, time.monotonic),
            rng=self._rng,
            stats=lambda: self.stats,
            quirks=lambda: self.quirks,
            has_workflow=lambda wf: wf in self._runs,
            deliveries=deliveries or Deliveries(),
        )
        for wf in workflows:
            self.add_workflow(wf)
        self._aitasker = FakeAITasker(
            clock=lambda: self.clock(), rng=self._rng, durations=self._durations
        )
        self.report_total: Callable[[int], int | None] | None = None
        self.page_for: Callable[[int], int] | None = None
        self._holds: list[tuple[Callable[[web.Request], bool], asyncio.Event]] = []
        self._idle: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def workflow_id(self) -> str:
        """The first workflow's id (the default workflow)."""
        return next(iter(self._runs))

    @property
    def url(self) -> str:
        """Base URL to give the client, e.g. ``http://127.0.0.1:54321/api``."""
        if self._runner is None:
            raise RuntimeError("the fake server is not started; use 'async with' or start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "http" if self._ssl is None else "https"
        return f"{scheme}://{host}:{self.port}/api"

    @property
    def aitasker_url(self) -> str:
        """Base URL to give :class:`~copyai_async.aitasker.AITaskerClient`, e.g.
        ``http://127.0.0.1:54321`` (its paths start with ``/api/v1``); the token is
        :attr:`api_key`."""
        return self.url.removesuffix("/api")

    async def start(self) -> str:
        """Start listening; returns :attr:`url`."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/api/workflow/{workflow_id}/run", self._start_run)
        app.router.add_get("/api/workflow/{workflow_id}/run", self._list_runs)
        app.router.add_get("/api/workflow/{workflow_id}/run/{run_id}", self._get_run)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_get("/_fake/runs/{run_id}", self._run_info)
        self._aitasker.add_routes(app)
        self._webhooks.add_routes(app)
        # handler_cancellation: a client that hangs up cancels its request here, as on a
        # real server, so stats.in_flight shows what clients still wait for.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            keepalive_timeout=self.keepalive_timeout,
        )
        await runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            await runner.cleanup()
            raise
        self.port = int(sock.getsockname()[1])
        await web.SockSite(runner, sock, ssl_context=self._ssl).start()
        self._runner = runner
        self._webhooks.start()
        return self.url

    async def aclose(self) -> None:
        """Stop listening and drop open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await self._webhooks.aclose()
            await runner.cleanup()

    async def __aenter__(self) -> FakeCopyAI:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- state -------------------------------------------------------------------------

    def add_workflow(self, workflow_id: str) -> None:
        """Create a workflow (no-op if it exists)."""
        self._runs.setdefault(workflow_id, [])
        self._index.setdefault(workflow_id, {})

    def add_run(
        self,
        workflow_id: str | None = None,
        *,
        schedule: Schedule | None = None,
        input: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        created_at: datetime | None = None,
        run_id: str | None = None,
    ) -> FakeRun:
        """Add a run directly (no request), newest so far; the workflow is created if new.

        Its schedule is ``schedule`` (default: :attr:`default_schedule`) with the
        durations drawn for this run when it has a ``spread``.
        """
        wf = workflow_id if workflow_id is not None else self.workflow_id
        self.add_workflow(wf)
        rid = run_id or f"WRUN-{uuid.UUID(int=self._rng.getrandbits(128), version=4)}"
        if rid in self._index[wf]:
            raise ValueError(f"run {rid!r} already exists in {wf!r}")
        run = FakeRun(
            id=rid,
            workflow_id=wf,
            input=dict(input or {}),
            metadata=None if metadata is None else dict(metadata),
            created_at=created_at or datetime.now(timezone.utc),
            created_mono=self.clock(),
            schedule=(schedule or self.default_schedule).draw(self._durations),
        )
        self._runs[wf].append(run)
        self._index[wf][rid] = run
        self._pages.clear()
        self._webhooks.run_added(run)
        return run

    def add_runs(
        self,
        count: int,
        workflow_id: str | None = None,
        *,
        apart: timedelta = timedelta(seconds=1),
        **kw: Any,
    ) -> list[FakeRun]:
        """Add ``count`` runs with creation times ``apart`` (one second), oldest first,
        the newest created now."""
        base = datetime.now(timezone.utc) - apart * count
        return [
            self.add_run(workflow_id, created_at=base + apart * (i + 1), **kw) for i in range(count)
        ]

    def runs(self, workflow_id: str | None = None) -> list[FakeRun]:
        """The workflow's runs, newest first."""
        return self._runs[workflow_id if workflow_id is not None else self.workflow_id][::-1]

    def get(self, run_id: str, workflow_id: str | None = None) -> FakeRun:
        """One run by id."""
        return self._index[workflow_id if workflow_id is not None else self.workflow_id][run_id]

    def reschedule(self, run: FakeRun, schedule: Schedule) -> None:
        """Give a run a new schedule (durations still count from its creation, and are
        drawn for it when the schedule has a ``spread``); its webhook events follow the
        new one. Assigning ``run.schedule`` directly changes what GETs show, but a
        ``unit="seconds"`` finish is then delivered only when a GET or
        :meth:`check_runs` sees it."""
        run.schedule = schedule.draw(self._durations)
        self._webhooks.rescheduled(run)

    def delete_run(self, run_id: str, workflow_id: str | None = None) -> None:
        """Remove a run (later pages shift up, as they would on the real API)."""
        wf = workflow_id if workflow_id is not None else self.workflow_id
        run = self._index[wf].pop(run_id)
        self._runs[wf].remove(run)
        self._pages.clear()

    def inject(self, *faults: Fault, method: str | None = None, path: str | None = None) -> None:
        """Queue faults for the next matching requests, one fault per request, in order.

        Args:
            faults: the faults to answer with.
            method: only requests with this method match (any if ``None``).
            path: only requests whose path contains this text match (any if ``None``).
        """
        self._scripted.extend((method, path, fault) for fault in faults)

    def clear_faults(self) -> int:
        """Drop the faults queued by :meth:`inject` that no request has met yet.

        Returns:
            How many were dropped.
        """
        dropped = len(self._scripted)
        self._scripted.clear()
        return dropped

    def hold(self, match: Callable[[web.Request], bool] | None = None) -> asyncio.Event:
        """Make matching requests wait before answering until the returned event is set.

        Args:
            match: which requests to hold (all if ``None``), e.g.
                ``lambda request: request.query.get("page") == "2"``.
        """
        event = asyncio.Event()
        self._holds.append((match or (lambda _request: True), event))
        return event

    async def idle(self) -> None:
        """Return once no request is being handled (clients that hung up count as gone)."""
        while self.stats.in_flight:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()

    def reset_stats(self) -> None:
        """Zero the counters and clear the request log."""
        self.stats = ServerStats()
        self.requests.clear()

    # -- webhooks ----------------------------------------------------------------------

    @property
    def deliveries(self) -> Deliveries:
        """How webhook events are delivered; assign a new :class:`Deliveries` to change it."""
        return self._webhooks.deliveries

    @deliveries.setter
    def deliveries(self, value: Deliveries) -> None:
        if not isinstance(value, Deliveries):
            raise TypeError(f"deliveries must be a Deliveries, got {type(value).__name__}")
        self._webhooks.deliveries = value

    @property
    def webhooks(self) -> list[FakeWebhook]:
        """The webhooks registered now, oldest first."""
        return list(self._webhooks.hooks.values())

    @property
    def delivered(self) -> list[Delivery]:
        """The deliveries made so far (the 10,000 most recent), oldest first."""
        return list(self._webhooks.log)

    async def deliveries_idle(self) -> None:
        """Return once every webhook delivery under way has been made."""
        await self._webhooks.idle()

    def check_runs(self) -> None:
        """Deliver the events of every change not yet delivered (runs whose schedule a
        test changed, or that a fake clock moved past their finish)."""
        now = self.clock()
        for runs in self._runs.values():
            for run in runs:
                if run.emitted != "final":
                    self._webhooks.observe(run, run.status(now))

    def event_body(
        self,
        run: FakeRun,
        event_type: str = "workflowRun.completed",
        *,
        status: str | None = None,
        shape: Literal["result", "run"] = "result",
    ) -> dict[str, Any]:
        """The body the server would deliver for ``event_type`` about ``run``."""
        return self._webhooks.event_body(event_type, run, status, shape=shape)

    async def forge_event(
        self,
        url: str,
        run_id: str,
        event_type: str = "workflowRun.completed",
        *,
        workflow_id: str | None = None,
        **fields: Any,
    ) -> int:
        """POST an event the server never made (e.g. "completed" for a run still at work).

        Args:
            url: where to send it (a listener's ``url``, with or without its secret).
            run_id: the run it claims to be about.
            event_type: the type it claims.
            workflow_id: the workflow it names (default: the default workflow).
            fields: more fields of the body (e.g. ``result={"text": "forged"}``).

        Returns:
            The status the receiver answered (0 if the POST failed).
        """
        body = {
            "type": event_type,
            "workflowRunId": run_id,
            "workflowId": workflow_id if workflow_id is not None else self.workflow_id,
            "result": {"text": "forged"},
            "metadata": None,
            **fields,
        }
        return await self.post_event(url, body)

    async def post_event(
        self,
        url: str,
        body: bytes | str | Mapping[str, Any],
        *,
        content_type: str | None = "application/json",
    ) -> int:
        """POST any body to ``url`` as a delivery would; returns the status answered."""
        if isinstance(body, Mapping):
            raw = json.dumps(dict(body)).encode()
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = bytes(body)
        return await self._webhooks.post(str(url), raw, content_type=content_type)

    # -- aitasker ----------------------------------------------------------------------

    def add_aitasker_run(
        self,
        workspace_id: str = AITASKER_WORKSPACE_ID,
        workflow_id: str = AITASKER_WORKFLOW_ID,
        *,
        schedule: Schedule | None = None,
        payload: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        error_message: str = DEFAULT_ERROR_MESSAGE,
    ) -> FakeRun:
        """Add an aitasker run (statuses are lower case, e.g. queued, running, completed)."""
        return self._aitasker.add_run(
            workspace_id,
            workflow_id,
            schedule=schedule,
            payload=payload,
            run_id=run_id,
            error_message=error_message,
        )

    def aitasker_runs(self, workflow_id: str = AITASKER_WORKFLOW_ID) -> list[FakeRun]:
        """An aitasker workflow's runs, oldest first."""
        return self._aitasker.runs(workflow_id)

    # -- serving -----------------------------------------------------------------------

    def _pick_fault(self, request: web.Request) -> Fault | None:
        for i, (method, path, fault) in enumerate(self._scripted):
            if (method is None or method == request.method) and (
                path is None or path in request.raw_path
            ):
                del self._scripted[i]
                return fault
        if (
            self.fault_rate
            and self.random_faults
            and (self.fault_methods is None or request.method in self.fault_methods)
            and self._rng.random() < self.fault_rate
        ):
            return self._rng.choice(self.random_faults)
        return None

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        received_at = self.clock()
        stats = self.stats
        stats.requests += 1
        window = stats._window
        window.append(received_at)
        while window[0] <= received_at - 1.0:
            window.popleft()
        stats.max_per_second = max(stats.max_per_second, len(window))
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        stats.by_path[f"{request.method} {request.path}"] += 1
        kind = _request_kind(request)
        if kind is not None:
            stats.by_kind[kind] += 1
        body = await request.read()
        # The fake's own endpoints (its stats) are not the API: never faulted.
        fault = None if request.path.startswith("/_fake/") else self._pick_fault(request)
        status = 0
        try:
            for match, event in list(self._holds):
                if match(request):
                    await event.wait()
            if self.latency:
                await asyncio.sleep(self.latency)
            if fault is not None:
                stats.faults += 1
                if not fault.after:
                    resp = await answer_with_fault(request, fault, None)
                    status = resp.status if fault.kind in ("status", "raw", "garbled") else 0
                    return resp
            resp = await self._answer(request, handler)
            if fault is not None:
                resp = await answer_with_fault(request, fault, resp)
                status = resp.status if fault.kind in ("status", "raw", "garbled") else 0
            else:
                status = resp.status
            self._maybe_compress(request, resp)
            return resp
        finally:
            stats.in_flight -= 1
            if not stats.in_flight and self._idle is not None:
                self._idle.set()
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.raw_path.split("?", 1)[0],
                    query=dict(request.query),
                    headers=dict(request.headers),
                    body=body,
                    status=status,
                    fault=fault,
                    received_at=received_at,
                )
            )

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """The real answer: authentication, then the route (errors in each API's style)."""
        if request.path.startswith("/_fake/"):
            resp: web.StreamResponse = await handler(request)  # no key, not counted
            return resp
        if not request.path.startswith("/api/"):
            # Outside the API (a base URL without /api): the web server answers, not the
            # API, with its own page rather than the API's JSON error.
            return web.Response(status=404, text="404: Not Found")
        if request.path.startswith("/api/v1/"):
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return web.json_response({"detail": "Not authenticated"}, status=401)
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                resp = web.json_response({"detail": exc.reason}, status=exc.status)
            return resp
        if request.headers.get("x-copy-ai-api-key") != self.api_key:
            return error_response(401, "UNAUTHORIZED", quirks=self.quirks)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status, "BAD_REQUEST")
            resp = error_response(exc.status, code, quirks=self.quirks)
        return resp

    def _maybe_compress(self, request: web.Request, resp: web.StreamResponse) -> None:
        """gzip a large answer for a client that accepts it, as production servers do."""
        least = self.compress_min_size
        if least is None or not isinstance(resp, web.Response) or resp.prepared:
            return
        body = resp.body
        if not isinstance(body, bytes) or len(body) < least:
            return
        if "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, "").lower():
            resp.enable_compression(web.ContentCoding.gzip)

    def _workflow(self, request: web.Request) -> tuple[str, list[FakeRun]]:
        wf = request.match_info["workflow_id"]
        runs = self._runs.get(wf)
        if runs is None:
            raise web.HTTPNotFound()
        return wf, runs

    def _error(self, status: int, code: str | None, **kw: Any) -> web.Response:
        return error_response(status, code, quirks=self.quirks, **kw)

    async def _stats(self, request: web.Request) -> web.Response:
        stats = self.stats
        counted = stats.requests - sum(
            n for path, n in stats.by_path.items() if path.split(" ", 1)[1].startswith("/_fake/")
        )
        return web.json_response(
            {
                "requests": counted,
                "faults": stats.faults,
                "max_in_flight": stats.max_in_flight,
                "max_per_second": stats.max_per_second,
                "runs_started": stats.runs_started,
                "run_gets": stats.by_kind["get"],
                "by_kind": {kind: stats.by_kind[kind] for kind in REQUEST_KINDS},
                "webhooks_sent": stats.webhooks_sent,
                "webhooks_failed": stats.webhooks_failed,
                "webhooks_dropped": stats.webhooks_dropped,
            }
        )

    async def _run_info(self, request: web.Request) -> web.Response:
        """One run as the fake sees it (any workflow): the status now, not counted as a
        poll; when it finishes, in Unix time, for a seconds schedule."""
        run_id = request.match_info["run_id"]
        run = next((idx[run_id] for idx in self._index.values() if run_id in idx), None)
        if run is None:
            raise web.HTTPNotFound()
        now = self.clock()
        finish = run.finishes_at
        schedule = run.schedule
        return web.json_response(
            {
                "id": run.id,
                "workflow_id": run.workflow_id,
                "status": run.status(now),
                "polls": run.polls,
                "unit": schedule.unit,
                "steps": [[status, duration] for status, duration in schedule.steps],
                "final": schedule.final,
                "finishes_at": None if finish is None else time.time() + (finish - now),
            }
        )

    async def _get_run(self, request: web.Request) -> web.Response:
        wf, _ = self._workflow(request)
        run = self._index[wf].get(request.match_info["run_id"])
        if run is None:
            raise web.HTTPNotFound()
        status = run.status(self.clock())
        run.polls += 1
        if self._webhooks.hooks:
            self._webhooks.observe(run, status)
        return ok_response(render_run(run, status, self.quirks, single=True))

    async def _list_runs(self, request: web.Request) -> web.Response:
        wf, runs = self._workflow(request)
        query = request.query
        key = (wf, _int_or(query.get("page"), -1), _int_or(query.get("size"), -1))
        if self.cache_pages and key in self._pages:
            return web.Response(body=self._pages[key], content_type="application/json")
        resp = await self._build_page(request, runs)
        if self.cache_pages and resp.status == 200 and isinstance(resp.body, bytes):
            self._pages[key] = resp.body
        return resp

    async def _build_page(self, request: web.Request, runs: list[FakeRun]) -> web.Response:
        params: dict[str, int] = {}
        for name, default in (("page", 1), ("size", 10)):
            raw = request.query.get(name)
            try:
                params[name] = default if raw is None else int(raw)
            except ValueError:
                return self._error(400, "BAD_REQUEST", details={name: ["must be an integer"]})
        page, size = params["page"], params["size"]
        if self.page_for is not None and page >= 1:
            page = self.page_for(page)
        if page < 1:
            return self._error(400, "BAD_REQUEST", details={"page": ["must be at least 1"]})
        if not 1 <= size <= MAX_SIZE:
            return self._error(400, "BAD_REQUEST", details={"size": [f"must be 1 to {MAX_SIZE}"]})
        end = len(runs) - (page - 1) * size
        chunk = runs[max(0, end - size) : max(0, end)][::-1]
        now = self.clock()
        data: dict[str, Any] = {}
        total = len(runs) if self.report_total is None else self.report_total(len(runs))
        if total is not None:
            data["total"] = str(total) if self.quirks.numbers_as_strings else total
        statuses = [r.status(now) for r in chunk]
        data["data"] = [
            render_run(r, status, self.quirks) for r, status in zip(chunk, statuses, strict=True)
        ]
        if self._webhooks.hooks:
            for r, status in zip(chunk, statuses, strict=True):
                self._webhooks.observe(r, status)
        if not (self.quirks.bare_listing or self.quirks.omit_status):
            for r in chunk:  # read with its status: a run that moves on when read does
                r.listed += 1
        return ok_response(data)

    async def _start_run(self, request: web.Request) -> web.Response:
        wf, _ = self._workflow(request)
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "BAD_REQUEST", details={"body": ["must be JSON"]})
        if not isinstance(body, dict) or "startVariables" not in body:
            return self._error(422, "REQUEST_INVALID", details={"startVariables": ["is required"]})
        variables = body["startVariables"]
        if not isinstance(variables, dict):
            return self._error(
                422, "REQUEST_INVALID", details={"startVariables": ["must be an object"]}
            )
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return self._error(422, "REQUEST_INVALID", details={"metadata": ["must be an object"]})
        schedule = self.schedule_for(wf, variables) if self.schedule_for else self.default_schedule
        if (
            self.credit_limit is not None
            and self.credits_used + schedule.credits > self.credit_limit
        ):
            self._webhooks.emit("workflowCreditLimit.reached", None, workflow_id=wf)
            return self._error(400, "WORKFLOW_CREDIT_LIMIT_REACHED")
        self.credits_used += schedule.credits
        run = self.add_run(wf, schedule=schedule, input=variables, metadata=metadata)
        self.stats.runs_started += 1
        data: dict[str, Any] = {"id": run.id}
        if self.quirks.full_start_answer:
            data.update(
                url=f"https://app.copy.ai/workflows/{wf}/runs/{run.id}",
                status="NEW",
                workflowRunId=run.id,
                workflowId=wf,
            )
        return ok_response(data)
