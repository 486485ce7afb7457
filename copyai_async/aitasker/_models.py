"""aitasker's runs: plain frozen data (the wire rules are in ``_convert``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

__all__ = ["AITaskerRun", "NodeRun"]


@attrs.frozen(kw_only=True)
class NodeRun:
    """One node's run inside a workflow run (every documented field).

    Attributes:
        id: the node run's id.
        workflow_run_id: the run it belongs to.
        workflow_node_id: the workflow node it ran.
        status: its status, a free string.
        created_at: when it was created (timezone-aware).
        task_id: its task, if any.
        input_data: its input, if any.
        output_data: its output, if any.
        started_at: when it started, if it has.
        completed_at: when it ended, if it has.
    """

    id: str
    workflow_run_id: str
    workflow_node_id: str
    status: str
    created_at: datetime
    task_id: str | None = None
    input_data: dict[str, Any] | None = None
    output_data: dict[str, Any] | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


@attrs.frozen(kw_only=True)
class AITaskerRun:
    """One run of an aitasker workflow (every documented field).

    Attributes:
        id: the run's id.
        workflow_id: its workflow.
        status: a free string (no list is published); see the client's terminal statuses.
        created_at: when it was created (timezone-aware).
        triggered_by: who or what triggered it, if known.
        trigger_payload: the payload it was triggered with, if any.
        started_at: when it started, if it has.
        completed_at: when it ended, if it has.
        error_message: why it failed, if it did.
        total_cost_cents: what it cost (0 when the answer leaves it out).
        node_runs: its nodes' runs.
    """

    id: str
    workflow_id: str
    status: str
    created_at: datetime
    triggered_by: str | None = None
    trigger_payload: dict[str, Any] | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    total_cost_cents: int = 0
    node_runs: tuple[NodeRun, ...] = ()
