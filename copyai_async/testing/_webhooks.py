"""Webhooks on the fake server: the four endpoints (with their quirks) and deliveries.

As on Copy.ai, ``GET /webhook`` pages start at 0 and are a bare JSON array (no
``status``/``data`` envelope), ``DELETE`` answers 202 with ``{}``, and deliveries are
unsigned POSTs of one of two body shapes. Deliveries are what a network does to them:
late (``delay``), lost (``drop_rate``), repeated (``duplicate_rate``) and overtaken by
later ones (``reorder_rate``), as :class:`Deliveries` says.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import json
import random
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import attrs
from aiohttp import web

from ._quirks import Quirks, error_response, ok_response, render_run
from ._schedule import TERMINAL, FakeRun

if TYPE_CHECKING:
    from ._server import ServerStats

__all__ = [
    "EVENT_TYPES",
    "WEBHOOK_PAGE_SIZE",
    "Deliveries",
    "Delivery",
    "FakeWebhook",
    "FakeWebhooks",
]

EVENT_TYPES = (
    "workflowRun.started",
    "workflowRun.completed",
    "workflowRun.failed",
    "workflowCreditLimit.reached",
)
WEBHOOK_PAGE_SIZE = 10
_FINAL_EVENT = {"COMPLETE": "workflowRun.completed", "FAILED": "workflowRun.failed"}


def _rate(name: str) -> Callable[[Any, Any, float], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")

    return check


def _check_delay(_instance: Any, _attribute: Any, value: tuple[float, float]) -> None:
    low, high = value
    if not 0 <= low <= high:
        raise ValueError(f"delay must be (low, high) seconds with 0 <= low <= high, got {value!r}")


def _as_delay(value: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return (float(value), float(value))
    low, high = value
    return (float(low), float(high))


@attrs.frozen(kw_only=True)
class Deliveries:
    """How the fake server delivers webhook events.

    Attributes:
        shape: the body shape: ``"result"`` (``{"type", "workflowRunId", "workflowId",
            "result", "metadata", "credits"}``), ``"run"`` (the whole run with a
            ``type``), or ``"mixed"`` (either, at random).
        delay: seconds from the change to the delivery: a number, or ``(low, high)``
            for a uniform draw.
        drop_rate: share of deliveries never sent (0..1).
        duplicate_rate: share sent twice (0..1).
        reorder_rate: share held back by ``reorder_delay``, so later events overtake
            them (0..1).
        reorder_delay: seconds a reordered delivery is held back.
        timeout: seconds a delivery may take before it counts as failed.
    """

    shape: Literal["result", "run", "mixed"] = "result"
    delay: tuple[float, float] = attrs.field(
        default=(0.0, 0.0), converter=_as_delay, validator=_check_delay
    )
    drop_rate: float = attrs.field(default=0.0, validator=_rate("drop_rate"))
    duplicate_rate: float = attrs.field(default=0.0, validator=_rate("duplicate_rate"))
    reorder_rate: float = attrs.field(default=0.0, validator=_rate("reorder_rate"))
    reorder_delay: float = 0.2
    timeout: float = 5.0

    def __attrs_post_init__(self) -> None:
        if self.shape not in ("result", "run", "mixed"):
            raise ValueError(f"shape must be 'result', 'run' or 'mixed', got {self.shape!r}")
        if not self.reorder_delay >= 0 or not self.timeout > 0:
            raise ValueError("reorder_delay must be >= 0 and timeout > 0")


@attrs.define(kw_only=True)
class FakeWebhook:
    """A webhook registered with the fake server."""

    id: str
    url: str
    event_type: str
    workflow_id: str | None

    def render(self) -> dict[str, Any]:
        """The webhook as the API's JSON shows it."""
        return {
            "id": self.id,
            "url": self.url,
            "eventType": self.event_type,
            "workflowId": self.workflow_id,
        }


@attrs.frozen(kw_only=True)
class Delivery:
    """One delivery the fake server made (or tried to).

    Attributes:
        url: where it went.
        event_type: the event's type.
        run_id: the run it was about, if any.
        body: the JSON body sent.
        status: the HTTP status answered, or 0 if the POST failed.
        sent_at: when it began to be sent (``time.time()``, before the POST).
    """

    url: str
    event_type: str
    run_id: str | None
    body: dict[str, Any]
    status: int
    sent_at: float


class FakeWebhooks:
    """The fake server's webhooks: routes, registry, and the delivery engine.

    Args:
        clock: the server's monotonic clock.
        rng: the server's seeded random numbers.
        stats: the server's counters.
        quirks: how the server spells runs (read on each delivery).
        has_workflow: whether a workflow exists.
        runs: every run of the server (for the finish timer).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        clock_is_real: Callable[[], bool],
        rng: random.Random,
        stats: Callable[[], ServerStats],
        quirks: Callable[[], Quirks],
        has_workflow: Callable[[str], bool],
        deliveries: Deliveries,
        log_size: int = 10_000,
    ) -> None:
        self.clock = clock
        self._clock_is_real = clock_is_real
        self._rng = rng
        self._stats = stats
        self._quirks = quirks
        self._has_workflow = has_workflow
        self.deliveries = deliveries
        self.hooks: dict[str, FakeWebhook] = {}
        self.log: collections.deque[Delivery] = collections.deque(maxlen=log_size)
        self._timers: list[tuple[float, int, FakeRun]] = []
        self._seq = itertools.count()
        self._timer_changed: asyncio.Event | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/webhook", self._create)
        app.router.add_get("/api/webhook", self._list)
        app.router.add_get("/api/webhook/{webhook_id}", self._get)
        app.router.add_delete("/api/webhook/{webhook_id}", self._delete)

    def start(self) -> None:
        self._timer_changed = asyncio.Event()
        self._timer_task = asyncio.create_task(self._finish_timer(), name="fake.webhook-timer")

    async def aclose(self) -> None:
        tasks = [t for t in (self._timer_task, *self._tasks) if t is not None]
        self._timer_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def idle(self) -> None:
        """Return once every delivery under way has been made."""
        while True:
            # (a task that is done may still be in the set until its callback runs:
            # waiting on it again would spin the loop)
            under_way = [task for task in self._tasks if not task.done()]
            if not under_way:
                return
            await asyncio.gather(*under_way, return_exceptions=True)

    # -- runs changing -------------------------------------------------------------------

    def run_added(self, run: FakeRun) -> None:
        """A run was created: its started event, and a timer for when it finishes."""
        if self.hooks:
            self.observe(run, run.status(self.clock()))
        else:
            run.emitted = "started"  # nobody listened when it started
        self.rescheduled(run)

    def rescheduled(self, run: FakeRun) -> None:
        """The run's schedule is new: deliver its final event when it now finishes."""
        finish = run.finishes_at
        if finish is not None and run.emitted != "final":
            heapq.heappush(self._timers, (finish, next(self._seq), run))
            if self._timer_changed is not None:
                self._timer_changed.set()

    def observe(self, run: FakeRun, status: str) -> None:
        """The run was seen with ``status``: deliver what changed since last time."""
        if run.emitted is None:
            run.emitted = "started"
            self.emit("workflowRun.started", run, status)
        if status in TERMINAL and run.emitted != "final":
            run.emitted = "final"
            self.emit(_FINAL_EVENT[status], run, status)

    async def _finish_timer(self) -> None:
        assert self._timer_changed is not None
        while True:
            now = self.clock()
            while self._timers and self._timers[0][0] <= now:
                _, _, run = heapq.heappop(self._timers)
                self.observe(run, run.status(now))
            self._timer_changed.clear()
            wait = None
            if self._timers:
                wait = self._timers[0][0] - now
                if not self._clock_is_real():
                    wait = min(wait, 0.05)  # another clock may jump: look again soon
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._timer_changed.wait(), timeout=wait)

    # -- delivering ----------------------------------------------------------------------

    def event_body(
        self,
        event_type: str,
        run: FakeRun,
        status: str | None = None,
        *,
        shape: Literal["result", "run"] = "result",
    ) -> dict[str, Any]:
        """The body the server delivers for ``event_type`` about ``run`` (its status now,
        unless ``status`` is given)."""
        status = status if status is not None else run.status(self.clock())
        rendered = render_run(run, status, self._quirks(), single=True)
        if shape == "run":
            return {"type": event_type, **rendered}
        body: dict[str, Any] = {
            "type": event_type,
            "workflowRunId": run.id,
            "workflowId": run.workflow_id,
            "result": rendered.get("output") if status in TERMINAL else None,
            "metadata": run.metadata,
        }
        if status in TERMINAL and "credits" in rendered:
            body["credits"] = rendered["credits"]
        return body

    def emit(
        self,
        event_type: str,
        run: FakeRun | None,
        status: str | None = None,
        *,
        workflow_id: str | None = None,
    ) -> int:
        """Deliver an event to every webhook registered for it; returns how many match."""
        wf = run.workflow_id if run is not None else workflow_id
        targets = [
            hook
            for hook in self.hooks.values()
            if hook.event_type == event_type
            and (hook.workflow_id is None or hook.workflow_id == wf)
        ]
        if not targets:
            return 0
        plan = self.deliveries
        for hook in targets:
            shape = plan.shape
            if shape == "mixed":
                shape = "run" if self._rng.random() < 0.5 else "result"
            if run is not None:
                payload = self.event_body(event_type, run, status, shape=shape)
            else:
                payload = {"type": event_type, "workflowId": wf}
            stats = self._stats()
            if self._rng.random() < plan.drop_rate:
                stats.webhooks_dropped += 1
                continue
            copies = 2 if self._rng.random() < plan.duplicate_rate else 1
            stats.webhooks_duplicated += copies - 1
            for _ in range(copies):
                delay = self._rng.uniform(*plan.delay)
                if self._rng.random() < plan.reorder_rate:
                    delay += plan.reorder_delay
                    stats.webhooks_reordered += 1
                self._spawn(self._deliver(hook.url, event_type, payload, delay))
        return len(targets)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def post(
        self, url: str, body: bytes, *, content_type: str | None = "application/json"
    ) -> int:
        """POST ``body`` to ``url`` as a delivery would; the status, or 0 if it failed."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.deliveries.timeout)
            )
        headers = {"User-Agent": "fake-copyai-webhooks"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return 0

    async def _deliver(self, url: str, event_type: str, body: dict[str, Any], delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at = time.time()
        status = await self.post(url, json.dumps(body).encode())
        stats = self._stats()
        stats.webhooks_sent += 1
        if not 200 <= status < 300:
            stats.webhooks_failed += 1
        run_id = body.get("workflowRunId", body.get("id"))
        self.log.append(
            Delivery(
                url=url,
                event_type=event_type,
                run_id=run_id if isinstance(run_id, str) else None,
                body=body,
                status=status,
                sent_at=sent_at,
            )
        )

    # -- the endpoints -------------------------------------------------------------------

    def _error(self, status: int, code: str, **kw: Any) -> web.Response:
        return error_response(status, code, quirks=self._quirks(), **kw)

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "BAD_REQUEST", details={"body": ["must be JSON"]})
        if not isinstance(body, dict):
            return self._error(422, "REQUEST_INVALID", details={"body": ["must be an object"]})
        url, event_type, wf = body.get("url"), body.get("eventType"), body.get("workflowId")
        problems: dict[str, list[str]] = {}
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            problems["url"] = ["must be an http(s) URL"]
        if event_type not in EVENT_TYPES:
            problems["eventType"] = [f"must be one of {', '.join(EVENT_TYPES)}"]
        if wf is not None and not isinstance(wf, str):
            problems["workflowId"] = ["must be a string"]
        if problems:
            return self._error(422, "REQUEST_INVALID", details=problems)
        if wf is not None and not self._has_workflow(wf):
            return self._error(404, "NOT_FOUND")
        hook = FakeWebhook(
            id=f"WHK-{uuid.UUID(int=self._rng.getrandbits(128), version=4)}",
            url=str(url),
            event_type=str(event_type),
            workflow_id=wf,
        )
        self.hooks[hook.id] = hook
        return ok_response(hook.render())

    async def _list(self, request: web.Request) -> web.Response:
        raw = request.query.get("page", "0")
        try:
            page = int(raw)
        except ValueError:
            page = -1
        if page < 0:
            return self._error(400, "BAD_REQUEST", details={"page": ["must be 0 or more"]})
        hooks = list(self.hooks.values())
        chunk = hooks[page * WEBHOOK_PAGE_SIZE : (page + 1) * WEBHOOK_PAGE_SIZE]
        # Not wrapped in {"status", "data"}: a bare array, as the API documents.
        return web.json_response([hook.render() for hook in chunk])

    async def _get(self, request: web.Request) -> web.Response:
        hook = self.hooks.get(request.match_info["webhook_id"])
        if hook is None:
            return self._error(404, "NOT_FOUND")
        return ok_response(hook.render())

    async def _delete(self, request: web.Request) -> web.Response:
        if self.hooks.pop(request.match_info["webhook_id"], None) is None:
            return self._error(404, "NOT_FOUND")
        return web.json_response({}, status=202)
