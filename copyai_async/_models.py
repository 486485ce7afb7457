"""Typed models of the Copy.ai Workflow API: plain frozen data, no parsing.

Every wire-format rule (camelCase names, numbers sent as strings, timestamps with or
without fractions, unknown statuses) lives in :mod:`copyai_async._convert`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs

__all__ = ["START_KEY", "RunPage", "RunStatus", "WorkflowRun"]

START_KEY = "copyai_async_start_key"
"""The metadata key under which a start carries its start key (see ``start_run``)."""


class RunStatus(str, enum.Enum):
    """Status of a workflow run, as documented by Copy.ai.

    ``COMPLETE`` and ``FAILED`` are final. ``UNKNOWN`` stands for a value the
    documentation does not list (or no status at all); the raw string is kept on the
    run as :attr:`WorkflowRun.raw_status`.
    """

    NEW = "NEW"
    WAITING = "WAITING"
    PROCESSING = "PROCESSING"
    COMPLETE = "COMPLETE"
    RETRYING = "RETRYING"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """True for ``COMPLETE`` and ``FAILED``: the run will not change any more."""
        return self is RunStatus.COMPLETE or self is RunStatus.FAILED

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class WorkflowRun:
    """One run of a workflow.

    Attributes:
        id: the run id (``WRUN-...``); taken from ``workflowRunId`` when ``id`` is absent.
        workflow_id: the workflow the run belongs to. When the answer omits it, the id
            the run was requested with.
        status: the run's status; ``UNKNOWN`` for an undocumented or missing value.
        raw_status: the status string exactly as sent, or ``None`` if none was sent.
        input: the run's start variables, if sent.
        output: the run's output, if sent (usually only once ``COMPLETE``).
        metadata: the metadata given at start, or ``None`` (sent as null, or missing).
        created_at: when the run was created, always timezone-aware (UTC if unmarked).
        credits: credits the run used, if sent (the API sends an integer or a
            numeric string; it is always an ``int`` here).

    The property :attr:`start_key` is the start key this client's ``start_run`` put in
    the run's metadata, if any.
    """

    id: str
    workflow_id: str
    status: RunStatus = RunStatus.UNKNOWN
    raw_status: str | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
    credits: int | None = None

    @property
    def is_terminal(self) -> bool:
        """True when the run is ``COMPLETE`` or ``FAILED``."""
        return self.status.is_terminal

    @property
    def start_key(self) -> str | None:
        """``metadata["copyai_async_start_key"]``: the key ``start_run`` tagged the run
        with, so that a start whose answer was lost can be found; ``None`` if untagged."""
        key = self.metadata.get(START_KEY) if self.metadata is not None else None
        return key if isinstance(key, str) else None


@attrs.frozen(kw_only=True)
class RunPage:
    """One page of a workflow's runs, newest first.

    Attributes:
        runs: the runs on this page.
        total: the server's count of all runs across pages, if it sent one. It is a
            hint: servers have been seen to send a stale count.
        page: the page number that was asked for (the first page is 1).
        size: the page size that was asked for.
        duplicates: runs the server sent on this page that an earlier page of the same
            iteration already gave; the paginator drops them from ``runs`` (always 0
            from ``list_runs``).
    """

    runs: tuple[WorkflowRun, ...]
    total: int | None
    page: int
    size: int
    duplicates: int = 0

    @property
    def has_next(self) -> bool:
        """True when the server's page was full, so a later page may hold more runs.

        ``total`` is deliberately not consulted: a full last page makes this ``True``
        and the next page then comes back empty.
        """
        return len(self.runs) + self.duplicates >= self.size
