"""FakeCopyAI: an in-memory stand-in for the Copy.ai Workflow API over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Literal

import attrs
from aiohttp import web

__all__ = [
    "AITASKER_WORKFLOW_ID",
    "AITASKER_WORKSPACE_ID",
    "DEFAULT_API_KEY",
    "DEFAULT_WORKFLOW_ID",
    "FakeCopyAI",
    "FakeRun",
    "Fault",
    "Quirks",
    "RecordedRequest",
    "Schedule",
    "ServerStats",
]

DEFAULT_API_KEY = "test-key"
DEFAULT_WORKFLOW_ID = "WCFG-fake-workflow"
AITASKER_WORKSPACE_ID = "6f1c2a0e-0000-4000-8000-00000000a17a"
AITASKER_WORKFLOW_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
AITASKER_SCHEDULE_STEPS = (("queued", 1.0), ("running", 2.0))
MAX_SIZE = 100
TERMINAL = frozenset({"COMPLETE", "FAILED"})

_HTML_ERROR = (
    "<!DOCTYPE html><html><head><title>{status} Error</title></head>"
    "<body><h1>{status}</h1><p>The server encountered a temporary error.</p></body></html>"
)


def _check_duration(steps: tuple[tuple[str, float], ...]) -> None:
    for status, duration in steps:
        if not isinstance(status, str) or not status:
            raise TypeError(f"each step's status must be a non-empty str, got {status!r}")
        if not duration >= 0:
            raise ValueError(f"each step's duration must be >= 0, got {duration!r}")


@attrs.frozen(kw_only=True)
class Schedule:
    """How a fake run moves through its statuses.

    Each step is ``(status, duration)``; after the last step the run is ``final``.
    Durations count GETs of the run (``unit="polls"``: the first GET shows the first
    step) or seconds since the run was created (``unit="seconds"``, on the server's clock).

    Build one with :meth:`polls`, :meth:`seconds` or :meth:`immediate`.
    """

    steps: tuple[tuple[str, float], ...] = (("NEW", 1), ("WAITING", 1), ("PROCESSING", 2))
    final: str = "COMPLETE"
    unit: Literal["polls", "seconds"] = "polls"
    output: Mapping[str, Any] | None = None
    credits: int = 2

    def __attrs_post_init__(self) -> None:
        _check_duration(self.steps)
        if self.unit not in ("polls", "seconds"):
            raise ValueError(f"unit must be 'polls' or 'seconds', got {self.unit!r}")

    @classmethod
    def polls(cls, *steps: tuple[str, float], final: str = "COMPLETE", **kw: Any) -> Schedule:
        """Steps measured in GETs of the run, e.g. ``Schedule.polls(("PROCESSING", 3))``."""
        return cls(steps=tuple(steps), final=final, unit="polls", **kw)

    @classmethod
    def seconds(cls, *steps: tuple[str, float], final: str = "COMPLETE", **kw: Any) -> Schedule:
        """Steps measured in seconds since creation, e.g. ``(("PROCESSING", 2.5),)``."""
        return cls(steps=tuple(steps), final=final, unit="seconds", **kw)

    @classmethod
    def immediate(cls, final: str = "COMPLETE", **kw: Any) -> Schedule:
        """A run that is ``final`` from its first observation."""
        return cls(steps=(), final=final, **kw)

    def status_at(self, elapsed: float) -> str:
        """The status after ``elapsed`` polls or seconds."""
        edge = 0.0
        for status, duration in self.steps:
            edge += duration
            if elapsed < edge:
                return status
        return self.final


@attrs.frozen(kw_only=True)
class Fault:
    """A failure the fake server answers with instead of (or after) the real answer.

    Build one with the class methods. ``after=True`` lets the request take effect first
    (a started run exists) and fails the answer: the case a client must not retry.
    """

    kind: Literal["status", "disconnect", "truncate", "raw", "stall"]
    status: int = 500
    html: bool = False
    retry_after: str | None = None
    error_code: str | None = None
    after: bool = False
    body: bytes = b""
    content_type: str = "application/json"
    extra_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def server_error(cls, status: int = 500, *, html: bool = False, after: bool = False) -> Fault:
        """A 5xx, with a JSON error body or (``html=True``) an HTML page."""
        return cls(kind="status", status=status, html=html, after=after)

    @classmethod
    def rate_limit(cls, retry_after: str | float | None = None) -> Fault:
        """A 429, with ``Retry-After`` (seconds or an HTTP date) or without."""
        value = None if retry_after is None else str(retry_after)
        return cls(kind="status", status=429, retry_after=value, error_code="RATE_LIMITED")

    @classmethod
    def status_code(
        cls,
        status: int,
        *,
        error_code: str | None = None,
        retry_after: str | None = None,
        html: bool = False,
    ) -> Fault:
        """Any status with an optional ``errorCode`` and ``Retry-After``."""
        return cls(
            kind="status", status=status, error_code=error_code, retry_after=retry_after, html=html
        )

    @classmethod
    def raw(
        cls,
        body: bytes | str | Any,
        *,
        status: int = 200,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer with exactly this body (bytes or text as given, anything else as JSON),
        status and extra headers (e.g. a ``Location`` for a redirect)."""
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        ctype = content_type or (
            "application/json" if not isinstance(body, (bytes, str)) else "text/plain"
        )
        return cls(
            kind="raw",
            status=status,
            body=data,
            content_type=ctype,
            extra_headers=tuple((headers or {}).items()),
        )

    @classmethod
    def disconnect(cls, *, after: bool = False) -> Fault:
        """Close the connection without answering."""
        return cls(kind="disconnect", after=after)

    @classmethod
    def stall(cls) -> Fault:
        """Send the headers and half the body, then nothing more until the client leaves."""
        return cls(kind="stall", after=True)

    @classmethod
    def truncate(cls, *, after: bool = False) -> Fault:
        """Send half of the JSON body (with the full Content-Length), then close."""
        return cls(kind="truncate", after=after)


DEFAULT_RANDOM_FAULTS: tuple[Fault, ...] = (
    Fault.server_error(500),
    Fault.server_error(503, html=True),
    Fault.server_error(502, html=True),
    Fault.rate_limit("0"),
    Fault.rate_limit(None),
    Fault.disconnect(),
    Fault.truncate(),
)


@attrs.frozen(kw_only=True)
class Quirks:
    """Switches for the payload variations seen in Copy.ai's own documentation.

    Attributes:
        numbers_as_strings: send ``total`` and ``credits`` as strings (``"22"``).
        empty_metadata: how a run without metadata sends it: ``"null"`` or ``"missing"``.
        whole_second_timestamps: ``createdAt`` without fractional seconds.
        run_id_keys: send the run id as ``id``, ``workflowRunId`` or both.
        omit_workflow_id: leave ``workflowId`` out of runs.
        omit_status: leave ``status`` out of runs.
        omit_input: leave ``input`` out of runs.
        extra_fields: add undocumented fields (``error``, ``toolKey``).
        full_start_answer: answer a start with ``id``, ``url``, ``status``,
            ``workflowRunId`` and ``workflowId`` rather than ``id`` alone.
    """

    numbers_as_strings: bool = False
    empty_metadata: Literal["null", "missing"] = "null"
    whole_second_timestamps: bool = False
    run_id_keys: Literal["id", "workflowRunId", "both"] = "both"
    omit_workflow_id: bool = False
    omit_status: bool = False
    omit_input: bool = False
    extra_fields: bool = False
    full_start_answer: bool = False


@attrs.define(kw_only=True, eq=False)
class FakeRun:
    """A run held by the fake server. Change its fields to steer a test."""

    id: str
    workflow_id: str
    input: dict[str, Any]
    metadata: dict[str, Any] | None
    created_at: datetime
    created_mono: float
    schedule: Schedule
    polls: int = 0

    def status(self, now: float) -> str:
        """The run's status at server-clock time ``now`` (not counting a new poll)."""
        if self.schedule.unit == "polls":
            return self.schedule.status_at(self.polls)
        return self.schedule.status_at(now - self.created_mono)


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
        max_per_second: the most requests that arrived within any one second.
    """

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: int = 0
    by_path: Counter[str] = attrs.field(factory=Counter)
    max_per_second: int = 0
    _window: deque[float] = attrs.field(factory=deque, repr=False)


class FakeCopyAI:
    """A fake Copy.ai Workflow API on loopback, for tests, benchmarks and demos.

    It keeps workflows and runs in memory and serves the documented endpoints under
    ``/api`` (so ``base_url`` works the same as the real one)::

        async with FakeCopyAI() as server:
            async with CopyAIClient(server.api_key, base_url=server.url) as client:
                run = await client.start_run(server.workflow_id, {"topic": "otters"})

    Args:
        api_key: the only key accepted; others get 401.
        workflows: workflow ids that exist at start (more with :meth:`add_workflow`).
        host: address to listen on; loopback only is intended.
        port: port to listen on; 0 picks a free one.
        latency: seconds added to each answer (requests still overlap).
        quirks: payload variations to send.
        default_schedule: schedule of runs started through the API.
        schedule_for: if given, called with each new run's ``(workflow_id,
            start_variables)`` to pick its schedule.
        fault_rate: chance (0..1) that a request gets a random fault from ``faults``.
        faults: the faults to draw from.
        fault_methods: the methods random faults hit (all if ``None``), e.g. ``("GET",)``.
        credit_limit: credits available to runs started through the API; past it a start
            answers 400 ``WORKFLOW_CREDIT_LIMIT_REACHED``.
        seed: seed of the random faults and generated ids.
        clock: the server's monotonic clock, for ``unit="seconds"`` schedules.
        request_log_size: how many recent requests :attr:`requests` keeps.

    Attributes you may change while it runs: ``latency``, ``quirks``, ``fault_rate``,
    ``default_schedule``, ``schedule_for``, ``credit_limit``, ``api_key``, and two hooks
    for paging tests: ``report_total`` (maps the real run count to the ``total`` sent;
    ``None`` from it leaves ``total`` out) and ``page_for`` (maps the page asked for to
    the page served, e.g. ``lambda page: 1`` for a server that ignores ``page``).
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
        clock: Callable[[], float] = time.monotonic,
        request_log_size: int = 10_000,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate!r}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency!r}")
        self.api_key = api_key
        self.host = host
        self.port = port
        self.latency = latency
        self.quirks = quirks or Quirks()
        self.default_schedule = default_schedule or Schedule()
        self.schedule_for = schedule_for
        self.fault_rate = fault_rate
        self.random_faults = tuple(faults)
        self.fault_methods = None if fault_methods is None else frozenset(fault_methods)
        self.credit_limit = credit_limit
        self.credits_used = 0
        self.clock = clock
        self.stats = ServerStats()
        self.requests: deque[RecordedRequest] = deque(maxlen=request_log_size)
        self._rng = random.Random(seed)
        self._scripted: list[tuple[str | None, str | None, Fault]] = []
        self._runs: dict[str, list[FakeRun]] = {}
        self._index: dict[str, dict[str, FakeRun]] = {}
        for wf in workflows:
            self.add_workflow(wf)
        self._at_runs: dict[str, list[FakeRun]] = {}
        self._at_index: dict[str, dict[str, FakeRun]] = {}
        self._at_workspace: dict[str, str] = {}
        self._at_errors: dict[str, str] = {}
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
        return f"http://{host}:{self.port}/api"

    async def start(self) -> str:
        """Start listening; returns :attr:`url`."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/api/workflow/{workflow_id}/run", self._start_run)
        app.router.add_get("/api/workflow/{workflow_id}/run", self._list_runs)
        app.router.add_get("/api/workflow/{workflow_id}/run/{run_id}", self._get_run)
        app.router.add_get("/_fake/stats", self._stats)
        # aitasker's API (Bearer auth, FastAPI-style errors, bare arrays)
        app.router.add_get(
            "/api/v1/workspaces/{workspace_id}/workflows/{workflow_id}/runs", self._at_list
        )
        app.router.add_get("/api/v1/workflows/{workflow_id}/runs/{run_id}", self._at_get)
        app.router.add_post(
            "/api/v1/workspaces/{workspace_id}/workflows/{workflow_id}/trigger", self._at_trigger
        )
        # handler_cancellation: a client that hangs up cancels its request here, as on a
        # real server, so stats.in_flight shows what clients still wait for.
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
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
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner
        return self.url

    async def aclose(self) -> None:
        """Stop listening and drop open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
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
        """Add a run directly (no request), newest so far; the workflow is created if new."""
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
            schedule=schedule or self.default_schedule,
        )
        self._runs[wf].append(run)
        self._index[wf][rid] = run
        return run

    def add_runs(self, count: int, workflow_id: str | None = None, **kw: Any) -> list[FakeRun]:
        """Add ``count`` runs with creation times one second apart, oldest first."""
        base = datetime.now(timezone.utc) - timedelta(seconds=count)
        return [
            self.add_run(workflow_id, created_at=base + timedelta(seconds=i), **kw)
            for i in range(count)
        ]

    def runs(self, workflow_id: str | None = None) -> list[FakeRun]:
        """The workflow's runs, newest first."""
        return self._runs[workflow_id if workflow_id is not None else self.workflow_id][::-1]

    def get(self, run_id: str, workflow_id: str | None = None) -> FakeRun:
        """One run by id."""
        return self._index[workflow_id if workflow_id is not None else self.workflow_id][run_id]

    def delete_run(self, run_id: str, workflow_id: str | None = None) -> None:
        """Remove a run (later pages shift up, as they would on the real API)."""
        wf = workflow_id if workflow_id is not None else self.workflow_id
        run = self._index[wf].pop(run_id)
        self._runs[wf].remove(run)

    def inject(self, *faults: Fault, method: str | None = None, path: str | None = None) -> None:
        """Queue faults for the next matching requests, one fault per request, in order.

        Args:
            faults: the faults to answer with.
            method: only requests with this method match (any if ``None``).
            path: only requests whose path contains this text match (any if ``None``).
        """
        self._scripted.extend((method, path, fault) for fault in faults)

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

    # -- aitasker ----------------------------------------------------------------------

    def add_aitasker_run(
        self,
        workspace_id: str = AITASKER_WORKSPACE_ID,
        workflow_id: str = AITASKER_WORKFLOW_ID,
        *,
        schedule: Schedule | None = None,
        payload: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        error_message: str = "node 'summarise' failed: model timeout",
    ) -> FakeRun:
        """Add an aitasker run (statuses are lower case, e.g. queued, running, completed)."""
        self._at_workspace.setdefault(workflow_id, workspace_id)
        runs = self._at_runs.setdefault(workflow_id, [])
        index = self._at_index.setdefault(workflow_id, {})
        rid = run_id or str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        run = FakeRun(
            id=rid,
            workflow_id=workflow_id,
            input=dict(payload or {}),
            metadata=None,
            created_at=datetime.now(timezone.utc),
            created_mono=self.clock(),
            schedule=schedule or Schedule.polls(*AITASKER_SCHEDULE_STEPS, final="completed"),
        )
        runs.append(run)
        index[rid] = run
        self._at_errors[rid] = error_message
        return run

    def aitasker_runs(self, workflow_id: str = AITASKER_WORKFLOW_ID) -> list[FakeRun]:
        """An aitasker workflow's runs, oldest first."""
        return list(self._at_runs.get(workflow_id, []))

    def _at_json(self, run: FakeRun, status: str) -> dict[str, Any]:
        first = run.schedule.steps[0][0] if run.schedule.steps else status
        terminal = status.lower() in ("completed", "failed", "succeeded", "error", "cancelled")
        failed = status.lower() in ("failed", "error", "cancelled")
        stamp = run.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        started = None if status == first and not terminal else stamp
        finished = stamp if terminal else None
        node = {
            "id": str(uuid.UUID(int=hash(run.id) & (2**128 - 1), version=4)),
            "workflow_run_id": run.id,
            "workflow_node_id": "3c90c3cc-0d44-4b50-8888-000000000001",
            "status": status,
            "created_at": stamp,
            "task_id": None,
            "input_data": run.input,
            "output_data": {"summary": "done"} if terminal and not failed else None,
            "started_at": started,
            "completed_at": finished,
        }
        return {
            "id": run.id,
            "workflow_id": run.workflow_id,
            "status": status,
            "created_at": stamp,
            "triggered_by": "api",
            "trigger_payload": run.input,
            "started_at": started,
            "completed_at": finished,
            "error_message": self._at_errors.get(run.id) if failed else None,
            "total_cost_cents": run.schedule.credits if terminal else 0,
            "node_runs": [node],
        }

    async def _at_list(self, request: web.Request) -> web.Response:
        wf = request.match_info["workflow_id"]
        if self._at_workspace.get(wf) != request.match_info["workspace_id"]:
            raise web.HTTPNotFound()
        now = self.clock()
        runs = self._at_runs[wf]
        return web.json_response([self._at_json(r, r.status(now)) for r in reversed(runs)])

    async def _at_get(self, request: web.Request) -> web.Response:
        index = self._at_index.get(request.match_info["workflow_id"], {})
        run = index.get(request.match_info["run_id"])
        if run is None:
            raise web.HTTPNotFound()
        status = run.status(self.clock())
        run.polls += 1
        return web.json_response(self._at_json(run, status))

    async def _at_trigger(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        payload = body.get("trigger_payload") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(payload, dict):
            detail = [
                {"loc": ["body", "trigger_payload"], "msg": "field required", "type": "missing"}
            ]
            return web.json_response({"detail": detail}, status=422)
        ws, wf = request.match_info["workspace_id"], request.match_info["workflow_id"]
        if self._at_workspace.get(wf, ws) != ws:
            raise web.HTTPNotFound()
        run = self.add_aitasker_run(ws, wf, payload=payload)
        return web.json_response(self._at_json(run, run.status(self.clock())))

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
        body = await request.read()
        fault = self._pick_fault(request)
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
                    resp = await self._fault(request, fault, None)
                    status = resp.status if fault.kind in ("status", "raw") else 0
                    return resp
            if request.path.startswith("/_fake/"):
                resp = await handler(request)  # the fake's own stats: no key, not counted
            elif request.path.startswith("/api/v1/"):
                if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                    resp = web.json_response({"detail": "Not authenticated"}, status=401)
                else:
                    try:
                        resp = await handler(request)
                    except web.HTTPException as exc:
                        resp = web.json_response({"detail": exc.reason}, status=exc.status)
            elif request.headers.get("x-copy-ai-api-key") != self.api_key:
                resp = _error(401, "UNAUTHORIZED")
            else:
                try:
                    resp = await handler(request)
                except web.HTTPException as exc:
                    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(
                        exc.status, "BAD_REQUEST"
                    )
                    resp = _error(exc.status, code)
            if fault is not None:
                resp = await self._fault(request, fault, resp)
                status = resp.status if fault.kind in ("status", "raw") else 0
            else:
                status = resp.status
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

    async def _fault(
        self, request: web.Request, fault: Fault, real: web.StreamResponse | None
    ) -> web.StreamResponse:
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            if fault.html:
                return web.Response(
                    status=fault.status,
                    text=_HTML_ERROR.format(status=fault.status),
                    content_type="text/html",
                    headers=headers,
                )
            code = fault.error_code or ("INTERNAL_SERVER_ERROR" if fault.status >= 500 else None)
            return _error(fault.status, code, headers=headers)
        if fault.kind == "raw":
            return web.Response(
                status=fault.status,
                body=fault.body,
                headers={"Content-Type": fault.content_type, **dict(fault.extra_headers)},
            )
        transport = request.transport
        if fault.kind == "disconnect":
            if transport is not None:
                transport.abort()
            return web.Response(status=500)
        # truncate (or stall): the real body (or a plausible one), half of it, then the
        # line drops (or goes quiet).
        full = real.body if isinstance(real, web.Response) and isinstance(real.body, bytes) else b""
        full = full or json.dumps({"status": "success", "data": {"total": 0, "data": []}}).encode()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = len(full)
        await resp.prepare(request)
        await resp.write(full[: len(full) // 2])
        if fault.kind == "stall":
            await asyncio.Event().wait()  # until the client hangs up (and this is cancelled)
        if transport is not None:
            transport.abort()
        return resp

    def _workflow(self, request: web.Request) -> tuple[str, list[FakeRun]]:
        wf = request.match_info["workflow_id"]
        runs = self._runs.get(wf)
        if runs is None:
            raise web.HTTPNotFound()
        return wf, runs

    def _run_json(self, run: FakeRun, status: str) -> dict[str, Any]:
        q = self.quirks
        out: dict[str, Any] = {}
        if not q.omit_status:
            out["status"] = status
        if not q.omit_input:
            out["input"] = run.input
        if status == "COMPLETE":
            out["output"] = (
                dict(run.schedule.output)
                if run.schedule.output is not None
                else {"result": f"Generated text for {len(run.input)} input(s)"}
            )
        if run.metadata is not None:
            out["metadata"] = run.metadata
        elif q.empty_metadata == "null":
            out["metadata"] = None
        created = run.created_at.astimezone(timezone.utc)
        if q.whole_second_timestamps:
            out["createdAt"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            out["createdAt"] = (
                created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z"
            )
        if q.run_id_keys in ("id", "both"):
            out["id"] = run.id
        if q.run_id_keys in ("workflowRunId", "both"):
            out["workflowRunId"] = run.id
        if not q.omit_workflow_id:
            out["workflowId"] = run.workflow_id
        credits = run.schedule.credits if status in TERMINAL else 0
        out["credits"] = str(credits) if q.numbers_as_strings else credits
        if q.extra_fields:
            out["toolKey"] = "fake-tool"
            out["error"] = "the step failed" if status == "FAILED" else None
        return out

    async def _stats(self, request: web.Request) -> web.Response:
        stats = self.stats
        counted = stats.requests - stats.by_path["GET /_fake/stats"]
        return web.json_response(
            {
                "requests": counted,
                "faults": stats.faults,
                "max_in_flight": stats.max_in_flight,
                "max_per_second": stats.max_per_second,
            }
        )

    async def _get_run(self, request: web.Request) -> web.Response:
        wf, _ = self._workflow(request)
        run = self._index[wf].get(request.match_info["run_id"])
        if run is None:
            raise web.HTTPNotFound()
        status = run.status(self.clock())
        run.polls += 1
        return _ok(self._run_json(run, status))

    async def _list_runs(self, request: web.Request) -> web.Response:
        _, runs = self._workflow(request)
        params: dict[str, int] = {}
        for name, default in (("page", 1), ("size", 10)):
            raw = request.query.get(name)
            try:
                params[name] = default if raw is None else int(raw)
            except ValueError:
                return _error(400, "BAD_REQUEST", details={name: ["must be an integer"]})
        page, size = params["page"], params["size"]
        if self.page_for is not None and page >= 1:
            page = self.page_for(page)
        if page < 1:
            return _error(400, "BAD_REQUEST", details={"page": ["must be at least 1"]})
        if not 1 <= size <= MAX_SIZE:
            return _error(400, "BAD_REQUEST", details={"size": [f"must be 1 to {MAX_SIZE}"]})
        end = len(runs) - (page - 1) * size
        chunk = runs[max(0, end - size) : max(0, end)][::-1]
        now = self.clock()
        data: dict[str, Any] = {}
        total = len(runs) if self.report_total is None else self.report_total(len(runs))
        if total is not None:
            data["total"] = str(total) if self.quirks.numbers_as_strings else total
        data["data"] = [self._run_json(r, r.status(now)) for r in chunk]
        return _ok(data)

    async def _start_run(self, request: web.Request) -> web.Response:
        wf, _ = self._workflow(request)
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "BAD_REQUEST", details={"body": ["must be JSON"]})
        if not isinstance(body, dict) or "startVariables" not in body:
            return _error(422, "REQUEST_INVALID", details={"startVariables": ["is required"]})
        variables = body["startVariables"]
        if not isinstance(variables, dict):
            return _error(422, "REQUEST_INVALID", details={"startVariables": ["must be an object"]})
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return _error(422, "REQUEST_INVALID", details={"metadata": ["must be an object"]})
        schedule = self.schedule_for(wf, variables) if self.schedule_for else self.default_schedule
        if (
            self.credit_limit is not None
            and self.credits_used + schedule.credits > self.credit_limit
        ):
            return _error(400, "WORKFLOW_CREDIT_LIMIT_REACHED")
        self.credits_used += schedule.credits
        run = self.add_run(wf, schedule=schedule, input=variables, metadata=metadata)
        data: dict[str, Any] = {"id": run.id}
        if self.quirks.full_start_answer:
            data.update(
                url=f"https://app.copy.ai/workflows/{wf}/runs/{run.id}",
                status="NEW",
                workflowRunId=run.id,
                workflowId=wf,
            )
        return _ok(data)


def _ok(data: Any) -> web.Response:
    return web.json_response({"status": "success", "data": data})


def _error(
    status: int,
    code: str | None,
    *,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"status": "error"}
    if code is not None:
        body["errorCode"] = code
    if details is not None:
        body["details"] = dict(details)
    return web.json_response(body, status=status, headers=headers)
