"""The webhook endpoints' and events' wire rules, on the shared converter's core.

- ``POST /webhook`` and ``GET /webhook/{id}`` answer in the usual ``{"status", "data"}``
  envelope; a bare webhook object is accepted too.
- ``GET /webhook`` is **not** wrapped: a bare JSON array, or an object holding ``data``
  (with ``total``, if any); the wrapped form is accepted too.
- ``eventType``/``workflowId`` are camelCase; an undocumented event type becomes
  ``WebhookEventType.UNKNOWN`` with the raw string kept.
- Events come in two shapes: ``{"type", "workflowRunId", "workflowId", "result",
  "metadata", "credits"}``, and a whole run (``id``, ``output``, ``input``, ``status``,
  ``createdAt``...) with a ``type``. ``credits`` is an integer or a numeric string. The
  status comes from the type, never from the body's own ``status`` field, and
  ``verified``/``run`` are never read from a body.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from .._convert import (
    WireError,
    _short,
    base_converter,
    parse_datetime,
    raise_error_envelope,
    register_wire_names,
    wire_error,
)
from .._models import RunStatus
from ._models import CreditLimitEvent, RunEvent, Webhook, WebhookEvent, WebhookEventType

if TYPE_CHECKING:
    import cattrs

if sys.version_info < (3, 11):  # pragma: no cover - version-dependent
    from exceptiongroup import ExceptionGroup

__all__ = ["WEBHOOK_WIRE", "WebhookWire"]

_TYPES = {t.value: t for t in WebhookEventType if t is not WebhookEventType.UNKNOWN}
_WEBHOOK_NAMES = {
    "event_type": "eventType",
    "raw_event_type": "eventType",
    "workflow_id": "workflowId",
}
_EVENT_NAMES = {
    "raw_type": "type",
    "workflow_id": "workflowId",
    "run_id": "workflowRunId",
    "created_at": "createdAt",
}
for _cls in (WebhookEvent, RunEvent, CreditLimitEvent):
    register_wire_names(_cls, _EVENT_NAMES)
register_wire_names(Webhook, _WEBHOOK_NAMES)


def _event_type(value: Any, _: Any) -> WebhookEventType:
    if isinstance(value, WebhookEventType):
        return value
    if isinstance(value, str):
        return _TYPES.get(value, WebhookEventType.UNKNOWN)
    raise ValueError(f"expected an event type string, got {_short(value)}")


def _status_or_none(value: Any, _: Any) -> RunStatus | None:
    if value is None or isinstance(value, RunStatus):
        return value
    raise ValueError(f"expected a run status, got {_short(value)}")


def _is(expected: Any) -> Callable[[Any], bool]:
    return lambda candidate: bool(candidate == expected)


@attrs.define
class WebhookWire:
    """Turns webhook answers and event bodies into models, or raises :class:`WireError`.

    Args:
        strict: refuse keys the models do not know in webhook answers (the test twin).
            Event bodies are read by name either way: their unknown keys stay in
            ``event.body``.
    """

    strict: bool = False
    _built: cattrs.Converter | None = attrs.field(init=False, default=None)

    @property
    def _conv(self) -> cattrs.Converter:
        if self._built is None:
            from cattrs.gen import make_dict_structure_fn, override

            conv = base_converter(strict=self.strict)
            conv.register_structure_hook(WebhookEventType, _event_type)
            conv.register_structure_hook_func(_is(RunStatus | None), _status_or_none)
            conv.register_structure_hook(
                Webhook,
                make_dict_structure_fn(
                    Webhook,
                    conv,
                    _cattrs_forbid_extra_keys=self.strict,
                    event_type=override(rename="eventType"),
                    raw_event_type=override(rename="eventType"),
                    workflow_id=override(rename="workflowId"),
                ),
            )
            # Never from a body: an unsigned delivery cannot claim to be verified.
            for cls in (WebhookEvent, CreditLimitEvent):
                hook = make_dict_structure_fn(cls, conv, verified=override(omit=True))
                conv.register_structure_hook(cls, hook)
            conv.register_structure_hook(
                RunEvent,
                make_dict_structure_fn(
                    RunEvent, conv, verified=override(omit=True), run=override(omit=True)
                ),
            )
            self._built = conv
        return self._built

    def _structure(self, data: dict[str, Any], cls: type[Any], path: str) -> Any:
        try:
            return self._conv.structure(data, cls)
        except (ExceptionGroup, ValueError, KeyError, TypeError) as exc:
            raise wire_error(exc, path) from exc

    # -- the webhook endpoints ------------------------------------------------------------

    def _webhook_obj(self, raw: Any, path: str) -> Webhook:
        if not isinstance(raw, dict):
            raise WireError(path, f"expected a webhook object, got {_short(raw)}")
        data = dict(raw)
        if "workflowId" in data and data["workflowId"] in ("", None):
            data["workflowId"] = None
        return self._structure(data, Webhook, path)  # type: ignore[no-any-return]

    def webhook(self, body: Any) -> Webhook:
        """Parse the answer of ``POST /webhook`` or ``GET /webhook/{id}``."""
        if isinstance(body, dict) and "status" in body and ("data" in body or "errorCode" in body):
            raise_error_envelope(body)
            return self._webhook_obj(body.get("data"), "$.data")
        return self._webhook_obj(body, "$")

    def webhook_page(self, body: Any) -> tuple[list[Webhook], int | None]:
        """Parse one page of ``GET /webhook``: its webhooks, and ``total`` if sent."""
        path = "$"
        total: Any = None
        items = body
        if isinstance(body, dict):
            raise_error_envelope(body)
            if "data" not in body:
                raise WireError("$", "expected a JSON array of webhooks, or an object with 'data'")
            items, total, path = body["data"], body.get("total"), "$.data"
            if isinstance(items, dict) and "data" in items:  # wrapped after all
                items, total, path = items["data"], items.get("total"), "$.data.data"
        if not isinstance(items, list):
            raise WireError(path, f"expected a list of webhooks, got {_short(items)}")
        if total is not None:
            try:
                total = self._conv.structure(total, int)
            except ValueError as exc:
                raise WireError(path.rsplit(".", 1)[0] + ".total", str(exc)) from exc
        hooks = [self._webhook_obj(item, f"{path}[{i}]") for i, item in enumerate(items)]
        return hooks, total

    # -- events -------------------------------------------------------------------------

    def event(self, body: Any) -> WebhookEvent:
        """Read a decoded event body (either shape) into its typed event."""
        if not isinstance(body, dict):
            raise WireError("$", f"expected a JSON object, got {_short(body)}")
        raw_type = body.get("type")
        type_key = "type"
        if raw_type is None and "eventType" in body:
            raw_type, type_key = body["eventType"], "eventType"
        if not isinstance(raw_type, str) or not raw_type.strip():
            raise WireError(f"$.{type_key}", f"expected the event type, got {_short(raw_type)}")
        kind = _TYPES.get(raw_type, WebhookEventType.UNKNOWN)
        common: dict[str, Any] = {
            "type": raw_type,
            "raw_type": raw_type,
            "workflow_id": body.get("workflowId"),
            "metadata": body.get("metadata"),
            "body": body,
        }
        run_id = body.get("workflowRunId")
        if run_id is None:
            run_id = body.get("id")  # the whole-run shape
        if kind is WebhookEventType.CREDIT_LIMIT_REACHED:
            common.update(run_id=body.get("workflowRunId"), credits=body.get("credits"))
            return self._structure(common, CreditLimitEvent, "$")  # type: ignore[no-any-return]
        is_run_event = kind is not WebhookEventType.UNKNOWN or run_id is not None
        if not is_run_event:
            return self._structure(common, WebhookEvent, "$")  # type: ignore[no-any-return]
        if run_id is None:
            raise WireError("$.workflowRunId", "a run event names no run")
        out_key = "result" if "result" in body else "output"
        output = body.get(out_key)
        if output is not None and not isinstance(output, dict):
            raise WireError(f"$.{out_key}", f"expected a JSON object, got {_short(output)}")
        created: datetime | None = None
        raw_created = body.get("createdAt")
        if raw_created is not None:
            try:
                created = parse_datetime(raw_created) if isinstance(raw_created, str) else None
            except ValueError:
                created = None
            if created is None and self.strict:
                raise WireError("$.createdAt", f"expected a date-time, got {_short(raw_created)}")
        common.update(
            run_id=run_id,
            status=kind.implied_status,
            output=output,
            input=body.get("input"),
            credits=body.get("credits"),
            created_at=created,
        )
        return self._structure(common, RunEvent, "$")  # type: ignore[no-any-return]


WEBHOOK_WIRE = WebhookWire()
"""The shipped, tolerant webhook wire format."""
