"""Reading a webhook delivery's body into a typed event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._convert import WireError
from .._errors import WebhookEventError
from .._http import loads
from ._convert import WEBHOOK_WIRE
from ._models import WebhookEvent, WebhookEventType

__all__ = ["check_event_type", "parse_event"]


def parse_event(body: bytes | str | Mapping[str, Any]) -> WebhookEvent:
    """Read one webhook delivery into its event (from the body alone: ``verified=False``).

    Both body shapes seen in the wild are read: ``{"type", "workflowRunId",
    "workflowId", "result", "metadata", "credits"}`` and a whole run with a ``type``
    (``output`` for ``result``). Run events (started, completed, failed) come as
    :class:`RunEvent`, with the status their type implies; ``workflowCreditLimit.reached``
    as :class:`CreditLimitEvent`; a type the documentation does not list is kept
    (``type=UNKNOWN``, ``raw_type`` as sent): as a :class:`RunEvent` if it names a run,
    else as a plain :class:`WebhookEvent`.

    Args:
        body: the delivery's body: raw bytes or text (JSON), or a decoded JSON object.

    Returns:
        The event. Deliveries are unsigned: treat it as a claim, and verify it with
        :meth:`CopyAIClient.verify_event` before acting on it.

    Raises:
        WebhookEventError: the body is not JSON, not an object, has no ``type``, names
            no run for a run event, or has a field of the wrong kind (``json_path``
            says where).
        TypeError: ``body`` is none of bytes, str or a mapping.
    """
    if isinstance(body, (bytes, bytearray, memoryview)):
        obj = _decode(bytes(body))
    elif isinstance(body, str):
        obj = _decode(body.encode("utf-8", "surrogatepass"))
    elif isinstance(body, Mapping):
        obj = dict(body)
    else:
        raise TypeError(f"body must be bytes, str or a mapping, got {type(body).__name__}")
    try:
        return WEBHOOK_WIRE.event(obj)
    except WireError as exc:
        json_path, reason = exc.json_path, exc.reason
    raise WebhookEventError(f"not a webhook event: {reason} at {json_path}", json_path=json_path)


def _decode(raw: bytes) -> Any:
    try:
        return loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        # The reason only: the exception may quote the whole body.
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    except RecursionError:
        reason = "nested deeper than the JSON decoder can follow"
    raise WebhookEventError(f"not a webhook event: the body is not JSON ({reason})")


_KNOWN = [t for t in WebhookEventType if t is not WebhookEventType.UNKNOWN]


def check_event_type(value: Any, name: str = "event_type") -> WebhookEventType:
    """``value`` as one of the four documented event types, or a clear error."""
    if isinstance(value, WebhookEventType) and value is not WebhookEventType.UNKNOWN:
        return value
    if isinstance(value, str) and not isinstance(value, WebhookEventType):
        for kind in _KNOWN:
            if value == kind.value:
                return kind
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a WebhookEventType or str, got {type(value).__name__}")
    allowed = ", ".join(repr(k.value) for k in _KNOWN)
    raise ValueError(f"{name} must be one of {allowed}, got {str(value)!r}")
