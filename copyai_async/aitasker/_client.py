"""AITaskerClient: aitasker's workflow runs on the same core as CopyAIClient."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from .._base import BaseClient
from .._check import base_url_from, credential, json_object
from .._clock import Clock
from .._coordination import RedisCoordination
from .._http import encode_segment
from .._poll import RunKind
from ._convert import AITASKER_WIRE
from ._models import AITaskerRun

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_FAILED_STATUSES",
    "DEFAULT_RUNNING_STATUSES",
    "DEFAULT_TERMINAL_STATUSES",
    "TOKEN_ENV",
    "AITaskerClient",
]

TOKEN_ENV = "AITASKER_API_TOKEN"  # noqa: S105 - the name of a variable, not a secret
BASE_URL_ENV = "AITASKER_BASE_URL"
DEFAULT_TERMINAL_STATUSES = frozenset(
    {"completed", "succeeded", "success", "failed", "error", "cancelled", "canceled"}
)
"""Statuses that end a run (compared case-insensitively)."""
DEFAULT_FAILED_STATUSES = frozenset({"failed", "error", "cancelled", "canceled"})
"""Terminal statuses that mean the run did not succeed."""
DEFAULT_RUNNING_STATUSES = frozenset(
    {"pending", "queued", "created", "waiting", "started", "running", "in_progress", "processing"}
)
"""Statuses known to mean "still going"; any other non-terminal one is logged once."""


def _statuses(name: str, values: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a collection of statuses, not a single string")
    result = set()
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"{name} must hold non-empty strings, got {value!r}")
        result.add(value.strip().lower())
    if not result:
        raise ValueError(f"{name} must not be empty")
    return frozenset(result)


def _fastapi_error_fields(body: Any) -> tuple[str | None, Any]:
    """``(error_code, details)`` of an aitasker (FastAPI) error body: ``{"detail": ...}``."""
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return (detail if isinstance(detail, str) and len(detail) <= 80 else None), detail
    return None, None


class AITaskerClient(BaseClient[AITaskerRun]):
    """Async client for aitasker's workflow-run API, with CopyAIClient's guarantees.

    Same lifecycle, retries, rate budget, error tree, key redaction and waits as
    :class:`~copyai_async.CopyAIClient`; see it for the shared options.

    Args:
        token: the API token, sent as ``Authorization: Bearer <token>``. Defaults to the
            ``AITASKER_API_TOKEN`` environment variable.
        base_url: the API's root, e.g. ``https://aitasker.example.com``. Defaults to the
            ``AITASKER_BASE_URL`` environment variable; one of the two is required (the
            documentation names no real host). Paths start with ``/api/v1``.
        terminal_statuses: statuses that end a run, compared case-insensitively
            (default: completed, succeeded, success, failed, error, cancelled,
            canceled). Any other status counts as still running.
        failed_statuses: the terminal statuses that mean failure (default: failed,
            error, cancelled, canceled); they must be terminal too.
        coordination: share the limits with other processes through Redis, as for
            :class:`~copyai_async.CopyAIClient` (keyed by a hash of the token).
        proxy: send every request through this HTTP proxy
            (``"http://user:password@proxy.example:3128"``), as for
            :class:`~copyai_async.CopyAIClient`.
        trust_env: without ``proxy``, read it from ``HTTPS_PROXY`` / ``HTTP_PROXY`` /
            ``NO_PROXY`` (never for a loopback base URL); ``False`` ignores them.

    Raises:
        ConfigurationError: no token, a bad ``base_url``, or a proxy variable that is
            not an http(s) proxy URL.
        TypeError, ValueError: an option of the wrong type or out of range.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        terminal_statuses: Iterable[str] = DEFAULT_TERMINAL_STATUSES,
        failed_statuses: Iterable[str] = DEFAULT_FAILED_STATUSES,
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
    ) -> None:
        terminal = _statuses("terminal_statuses", terminal_statuses)
        failed = _statuses("failed_statuses", failed_statuses)
        if not failed <= terminal:
            raise ValueError(
                f"failed_statuses must be terminal too; not in terminal_statuses: "
                f"{sorted(failed - terminal)}"
            )
        self.terminal_statuses = terminal
        self.failed_statuses = failed
        kind: RunKind[AITaskerRun] = RunKind(
            status=lambda run: run.status,
            is_terminal=lambda run: run.status.lower() in terminal,
            is_failed=lambda run: run.status.lower() in failed,
            is_unknown=lambda run: run.status.lower() not in DEFAULT_RUNNING_STATUSES | terminal,
            failure_detail=lambda run: run.error_message,
            created_at=lambda run: run.created_at.timestamp(),
        )
        super().__init__(
            secret=credential(
                token, name="token", env=TOKEN_ENV, what="aitasker API token", how="AITaskerClient"
            ),
            auth_headers=lambda key: {"Authorization": f"Bearer {key.get()}"},
            kind=kind,
            base_url=base_url_from(base_url, env=BASE_URL_ENV, default=None, how="AITaskerClient"),
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
            error_fields=_fastapi_error_fields,
            auth_hint=f"check the token (token= or the {TOKEN_ENV} variable)",
            credential="token",
            root_hint="its root is the server's address, without /api/v1",
        )

    async def list_runs(self, workspace_id: str, workflow_id: str) -> list[AITaskerRun]:
        """All runs of a workflow (``GET /api/v1/workspaces/{ws}/workflows/{wf}/runs``).

        The endpoint answers a bare JSON array: no envelope, no pagination.
        """
        ws = encode_segment("workspace_id", workspace_id)
        wf = encode_segment("workflow_id", workflow_id)
        return await self._transport.request(
            "GET",
            ("api", "v1", "workspaces", ws, "workflows", wf, "runs"),
            idempotent=True,
            parse=lambda resp: AITASKER_WIRE.runs(resp.data),
            what="workspace or workflow",
        )

    async def get_run(self, workflow_id: str, run_id: str) -> AITaskerRun:
        """One run (``GET /api/v1/workflows/{workflow_id}/runs/{run_id}``)."""
        wf = encode_segment("workflow_id", workflow_id)
        run = encode_segment("run_id", run_id)
        return await self._transport.request(
            "GET",
            ("api", "v1", "workflows", wf, "runs", run),
            idempotent=True,
            parse=lambda resp: AITASKER_WIRE.run(resp.data),
            what="workflow or run",
        )

    async def trigger(
        self, workspace_id: str, workflow_id: str, payload: Mapping[str, Any] | None = None
    ) -> AITaskerRun:
        """Start a run (``POST .../workflows/{wf}/trigger`` with ``{"trigger_payload": ...}``).

        Sent again only where it provably never reached the server (a failure to
        connect, a connection closing before the request was written, 408, 429). aitasker
        runs carry no metadata to tag them with, so where the server may have acted on it
        (the connection dropped after sending, a timeout, 500/502/503/504, a success
        answer that cannot be read) the client cannot look for the run: it raises
        :class:`~copyai_async.StartUncertainError`, never starting a run twice.

        Returns:
            The new run, as the API answers it.

        Raises:
            StartUncertainError: the answer was lost; the run may have started (look for
                it with :meth:`list_runs` before triggering again).
            CopyAIError: any other failure; the run was not started.
        """
        ws = encode_segment("workspace_id", workspace_id)
        wf = encode_segment("workflow_id", workflow_id)
        body = {"trigger_payload": {} if payload is None else json_object("payload", payload)}
        run = await self._start(
            ("api", "v1", "workspaces", ws, "workflows", wf, "trigger"),
            workflow_id=workflow_id,
            body=body,
            parse=lambda resp: AITASKER_WIRE.run(resp.data),
            start_key=None,
            find=None,
            what="workspace or workflow",
        )
        self._note_started(run.workflow_id, run.id, run.created_at)
        return run

    _run_label = "aitasker run"
