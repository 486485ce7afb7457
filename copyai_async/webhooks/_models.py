"""Typed webhooks and webhook events: plain frozen data, no parsing.

The wire rules (camelCase, the two event body shapes, numbers sent as strings) live in
:mod:`copyai_async._convert`; parsing a delivery's bytes is :mod:`._parse`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs

from .._models import RunStatus, WorkflowRun

__all__ = [
    "RUN_EVENTS",
    "CreditLimitEvent",
    "RunEvent",
    "Webhook",
    "WebhookEvent",
    "WebhookEventType",
]


class WebhookEventType(str, enum.Enum):
    """The kinds of event Copy.ai delivers to a webhook.

    ``UNKNOWN`` stands for a type the documentation does not list; the raw string is
    kept (``Webhook.raw_event_type``, ``WebhookEvent.raw_type``).
    """

    RUN_STARTED = "workflowRun.started"
    RUN_COMPLETED = "workflowRun.completed"
    RUN_FAILED = "workflowRun.failed"
    CREDIT_LIMIT_REACHED = "workflowCreditLimit.reached"
    UNKNOWN = "unknown"

    @property
    def implied_status(self) -> RunStatus | None:
        """The run status an event of this type claims: ``COMPLETE`` for completed,
        ``FAILED`` for failed, ``PROCESSING`` for started; ``None`` otherwise."""
        return _IMPLIED.get(self)

    def __str__(self) -> str:
        return self.value


_IMPLIED = {
    WebhookEventType.RUN_STARTED: RunStatus.PROCESSING,
    WebhookEventType.RUN_COMPLETED: RunStatus.COMPLETE,
    WebhookEventType.RUN_FAILED: RunStatus.FAILED,
}

RUN_EVENTS: tuple[WebhookEventType, ...] = (
    WebhookEventType.RUN_STARTED,
    WebhookEventType.RUN_COMPLETED,
    WebhookEventType.RUN_FAILED,
)
"""The three run events: what a listener registers for by default."""


@attrs.frozen(kw_only=True)
class Webhook:
    """A registered webhook.

    Attributes:
        id: the webhook's id.
        url: where Copy.ai delivers its events.
        event_type: the one kind of event it delivers; ``UNKNOWN`` for an undocumented
            one (kept as ``raw_event_type``).
        raw_event_type: the event type exactly as the API sent it.
        workflow_id: the workflow whose events it delivers, or ``None`` for every
            workflow of the workspace.
    """

    id: str
    url: str
    event_type: WebhookEventType = WebhookEventType.UNKNOWN
    raw_event_type: str | None = None
    workflow_id: str | None = None


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """One event delivered to a webhook, read from the delivery's body alone.

    **Deliveries are not signed**: anyone who knows a webhook's URL can post a body that
    looks like an event. Every field here is what the body claims, nothing more, and
    ``verified`` is ``False`` until :meth:`CopyAIClient.verify_event` has read the run
    from the API (waits accelerated by events always verify before they end).

    Events of a type the documentation does not list, with no run, come as this base
    class; run events as :class:`RunEvent`; credit-limit events as
    :class:`CreditLimitEvent`.

    Attributes:
        type: the event's type (``UNKNOWN`` for an undocumented one).
        raw_type: the type exactly as sent.
        workflow_id: the workflow it is about, if the body says.
        metadata: the run's metadata, if the body carries any.
        body: the decoded body, as delivered (fields this model does not name).
        verified: ``False``: from the delivery alone. ``True`` only on an event returned
            by :meth:`CopyAIClient.verify_event`.
    """

    type: WebhookEventType
    raw_type: str
    workflow_id: str | None = None
    metadata: dict[str, Any] | None = None
    body: dict[str, Any] = attrs.field(factory=dict, repr=False)
    verified: bool = False


@attrs.frozen(kw_only=True)
class RunEvent(WebhookEvent):
    """An event about one run: started, completed, failed (or an undocumented run event).

    Both body shapes seen in the wild come here: ``{"type", "workflowRunId",
    "workflowId", "result", "metadata", "credits"}`` and a whole run with a ``type``
    (``output`` in place of ``result``).

    Attributes:
        run_id: the run's id.
        status: the status the event's type implies (``COMPLETE``, ``FAILED``,
            ``PROCESSING``), or ``None`` for an undocumented type. On a verified event,
            the status the API reported.
        output: the run's output (``result`` or ``output`` in the body), if any.
        input: the run's start variables, if the body carries them.
        credits: credits the run used, if the body says.
        created_at: when the run was created, if the body says.
        run: on a verified event, the run as the API reported it; else ``None``.
    """

    run_id: str
    status: RunStatus | None = None
    output: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    credits: int | None = None
    created_at: datetime | None = None
    run: WorkflowRun | None = None


@attrs.frozen(kw_only=True)
class CreditLimitEvent(WebhookEvent):
    """``workflowCreditLimit.reached``: starts will be refused until credits are added.

    Attributes:
        run_id: the run that reached the limit, if the body names one.
        credits: the credit figure the body carries, if any.
    """

    run_id: str | None = None
    credits: int | None = None
