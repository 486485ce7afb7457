"""A FastAPI app that starts runs and awaits them without blocking its event loop.

Against the fake server (no edits)::

    pip install -e . fastapi uvicorn          # in a checkout of copyai_async
    copyai-async fake-server
    export COPYAI_API_KEY=test-key COPYAI_BASE_URL=http://127.0.0.1:<port>/api
    python examples/fastapi_app.py            # or: uvicorn examples.fastapi_app:app
    curl -X POST localhost:8000/workflows/WCFG-fake-workflow/runs?wait=true \\
         -H 'content-type: application/json' -d '{"topic": "sea otters"}'

One client for the whole app, opened and closed by the app's lifespan: it keeps one
connection pool and one request budget for every request the app serves. A request that
waits for a run awaits it; the event loop serves other requests meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from copyai_async import (
    CopyAIClient,
    CopyAIError,
    NotFoundError,
    PollTimeoutError,
    RunFailedError,
    WorkflowRun,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with CopyAIClient() as client:  # COPYAI_API_KEY, and COPYAI_BASE_URL if set
        app.state.copyai = client
        yield


app = FastAPI(title="copyai_async example", lifespan=lifespan)


def client_of(request: Request) -> CopyAIClient:
    client: CopyAIClient = request.app.state.copyai
    return client


def as_json(run: WorkflowRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status.value,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "credits": run.credits,
        "input": run.input,
        "output": run.output,
    }


@app.post("/workflows/{workflow_id}/runs")
async def start(
    workflow_id: str, variables: dict[str, Any], request: Request, wait: bool = False
) -> dict[str, Any]:
    """Start a run with the body as its start variables; with ``?wait=true``, return it
    finished (504 if it takes longer than two minutes, 502 if it failed)."""
    client = client_of(request)
    try:
        run = await client.start_run(workflow_id, variables)
        if wait:
            run = await client.wait_for_run(workflow_id, run.id, timeout=120)
    except RunFailedError as error:
        raise HTTPException(502, {"error": "run failed", "run": as_json(error.run)}) from error
    except PollTimeoutError as error:
        raise HTTPException(504, {"error": "still running", "run_id": error.run_id}) from error
    except NotFoundError as error:
        raise HTTPException(404, "no such workflow") from error
    except CopyAIError as error:
        raise HTTPException(502, f"Copy.ai: {error}") from error
    return as_json(run)


@app.get("/workflows/{workflow_id}/runs/{run_id}")
async def get(workflow_id: str, run_id: str, request: Request) -> dict[str, Any]:
    """One run as it is now."""
    try:
        return as_json(await client_of(request).get_run(workflow_id, run_id))
    except NotFoundError as error:
        raise HTTPException(404, "no such run") from error
    except CopyAIError as error:
        raise HTTPException(502, f"Copy.ai: {error}") from error


@app.get("/health")
async def health() -> dict[str, str]:
    """Answers at once, even while other requests wait for runs."""
    return {"status": "ok"}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
