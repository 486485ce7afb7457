"""aitasker's endpoints on the fake server: Bearer auth, FastAPI-style errors, bare arrays."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from ._schedule import FakeRun, Schedule

__all__ = ["AITASKER_WORKFLOW_ID", "AITASKER_WORKSPACE_ID", "FakeAITasker"]

AITASKER_WORKSPACE_ID = "6f1c2a0e-0000-4000-8000-00000000a17a"
AITASKER_WORKFLOW_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
# aitasker runs added without a schedule move on when read (queued, running twice).
AITASKER_SCHEDULE = Schedule.polls(("queued", 1.0), ("running", 2.0), final="completed")
DEFAULT_ERROR_MESSAGE = "node 'summarise' failed: model timeout"


class FakeAITasker:
    """aitasker's runs and routes, held by :class:`~copyai_async.testing.FakeCopyAI`.

    Args:
        clock: the server's monotonic clock.
        rng: the server's seeded random numbers (for ids).
        durations: the server's seeded random numbers for run durations.
    """

    def __init__(
        self, *, clock: Callable[[], float], rng: random.Random, durations: random.Random
    ) -> None:
        self.clock = clock
        self._rng = rng
        self._durations = durations
        self._runs: dict[str, list[FakeRun]] = {}
        self._index: dict[str, dict[str, FakeRun]] = {}
        self._workspace: dict[str, str] = {}
        self._errors: dict[str, str] = {}

    def add_routes(self, app: web.Application) -> None:
        """Serve aitasker's three endpoints on ``app``."""
        app.router.add_get(
            "/api/v1/workspaces/{workspace_id}/workflows/{workflow_id}/runs", self._list
        )
        app.router.add_get("/api/v1/workflows/{workflow_id}/runs/{run_id}", self._get)
        app.router.add_post(
            "/api/v1/workspaces/{workspace_id}/workflows/{workflow_id}/trigger", self._trigger
        )

    def add_run(
        self,
        workspace_id: str = AITASKER_WORKSPACE_ID,
        workflow_id: str = AITASKER_WORKFLOW_ID,
        *,
        schedule: Schedule | None = None,
        payload: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        error_message: str = DEFAULT_ERROR_MESSAGE,
    ) -> FakeRun:
        """Add a run (statuses are lower case, e.g. queued, running, completed)."""
        self._workspace.setdefault(workflow_id, workspace_id)
        runs = self._runs.setdefault(workflow_id, [])
        index = self._index.setdefault(workflow_id, {})
        rid = run_id or str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        run = FakeRun(
            id=rid,
            workflow_id=workflow_id,
            input=dict(payload or {}),
            metadata=None,
            created_at=datetime.now(timezone.utc),
            created_mono=self.clock(),
            schedule=(schedule or AITASKER_SCHEDULE).draw(self._durations),
        )
        runs.append(run)
        index[rid] = run
        self._errors[rid] = error_message
        return run

    def runs(self, workflow_id: str = AITASKER_WORKFLOW_ID) -> list[FakeRun]:
        """A workflow's runs, oldest first."""
        return list(self._runs.get(workflow_id, []))

    def _json(self, run: FakeRun, status: str) -> dict[str, Any]:
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
            "error_message": self._errors.get(run.id) if failed else None,
            "total_cost_cents": run.schedule.credits if terminal else 0,
            "node_runs": [node],
        }

    async def _list(self, request: web.Request) -> web.Response:
        wf = request.match_info["workflow_id"]
        if self._workspace.get(wf) != request.match_info["workspace_id"]:
            raise web.HTTPNotFound()
        now = self.clock()
        runs = self._runs[wf]
        return web.json_response([self._json(r, r.status(now)) for r in reversed(runs)])

    async def _get(self, request: web.Request) -> web.Response:
        index = self._index.get(request.match_info["workflow_id"], {})
        run = index.get(request.match_info["run_id"])
        if run is None:
            raise web.HTTPNotFound()
        status = run.status(self.clock())
        run.polls += 1
        return web.json_response(self._json(run, status))

    async def _trigger(self, request: web.Request) -> web.Response:
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
        if self._workspace.get(wf, ws) != ws:
            raise web.HTTPNotFound()
        run = self.add_run(ws, wf, payload=payload)
        return web.json_response(self._json(run, run.status(self.clock())))
