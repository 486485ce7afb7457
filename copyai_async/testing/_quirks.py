"""How the fake server spells Copy.ai's answers: the envelope, runs, and the quirks.

Every variation here has been seen in Copy.ai's own documentation or in the published
API definition of its endpoints; :class:`Quirks` switches each one on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import attrs
from aiohttp import web

from ._schedule import TERMINAL, FakeRun

__all__ = ["Quirks", "error_response", "ok_response", "render_run"]

_OFFSET_RE = re.compile(r"Z|[+-](\d{2}):(\d{2})")


def _check_offset(_instance: Any, _attribute: Any, value: str) -> None:
    m = _OFFSET_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None or (m.group(1) and (int(m.group(1)) > 23 or int(m.group(2)) > 59)):
        raise ValueError(f"timestamp_offset must be 'Z' or '+HH:MM' / '-HH:MM', got {value!r}")


@attrs.frozen(kw_only=True)
class Quirks:
    """Switches for the payload variations seen in Copy.ai's documentation and definition.

    Attributes:
        numbers_as_strings: send ``total`` and ``credits`` as strings (``"22"``).
        empty_metadata: how a run without metadata sends it: ``"null"`` or ``"missing"``.
        whole_second_timestamps: ``createdAt`` without fractional seconds.
        timestamp_offset: the offset ``createdAt`` is written in: ``"Z"`` (the default)
            or ``"+HH:MM"`` / ``"-HH:MM"`` (the same instant, another zone).
        run_id_keys: send the run id as ``id``, ``workflowRunId`` or both.
        omit_workflow_id: leave ``workflowId`` out of runs.
        omit_status: leave ``status`` out of runs.
        omit_input: leave ``input`` out of runs.
        omit_created_at: leave ``createdAt`` out of runs.
        omit_credits: leave ``credits`` out of runs.
        omit_output_on_get: leave ``output`` out of a run read on its own (``GET
            /workflow/{id}/run/{run_id}``), as the published definition's schema of that
            endpoint does; the listing still carries it.
        bare_listing: send listing items (``GET /workflow/{id}/run``) in the documentation's
            second shape, the schema's "success" example: no ``status``, ``input`` or
            ``output``, only ``metadata``, ``createdAt``, the ids and ``credits``. A run read
            on its own (``GET /workflow/{id}/run/{run_id}``) still carries all three.
        extra_fields: add undocumented fields (``error``, ``toolKey``).
        full_start_answer: answer a start with ``id``, ``url``, ``status``,
            ``workflowRunId`` and ``workflowId`` rather than ``id`` alone.
        errors_as_200: answer every Copy.ai error (401, 404, 400, 422) with HTTP 200 and
            the error envelope ``{"status": "error", "errorCode": ...}``.
    """

    numbers_as_strings: bool = False
    empty_metadata: Literal["null", "missing"] = "null"
    whole_second_timestamps: bool = False
    timestamp_offset: str = attrs.field(default="Z", validator=_check_offset)
    run_id_keys: Literal["id", "workflowRunId", "both"] = "both"
    omit_workflow_id: bool = False
    omit_status: bool = False
    omit_input: bool = False
    omit_created_at: bool = False
    omit_credits: bool = False
    omit_output_on_get: bool = False
    bare_listing: bool = False
    extra_fields: bool = False
    full_start_answer: bool = False
    errors_as_200: bool = False


def _timestamp(when: datetime, quirks: Quirks) -> str:
    offset = quirks.timestamp_offset
    if offset == "Z":
        zone, suffix = timezone.utc, "Z"
    else:
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        zone, suffix = timezone(sign * delta), offset
    local = when.astimezone(zone)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if not quirks.whole_second_timestamps:
        text += f".{local.microsecond // 1000:03d}"
    return text + suffix


def render_run(
    run: FakeRun, status: str, quirks: Quirks, *, single: bool = False
) -> dict[str, Any]:
    """A run as the API sends it, with the quirks applied (``single``: read on its own)."""
    q = quirks
    out: dict[str, Any] = {}
    bare = q.bare_listing and not single
    if not (q.omit_status or bare):
        out["status"] = status
    if not (q.omit_input or bare):
        out["input"] = run.input
    if status == "COMPLETE" and not bare and not (single and q.omit_output_on_get):
        out["output"] = (
            dict(run.schedule.output)
            if run.schedule.output is not None
            else {"result": f"Generated text for {len(run.input)} input(s)"}
        )
    if run.metadata is not None:
        out["metadata"] = run.metadata
    elif q.empty_metadata == "null":
        out["metadata"] = None
    if not q.omit_created_at:
        out["createdAt"] = _timestamp(run.created_at, q)
    if q.run_id_keys in ("id", "both"):
        out["id"] = run.id
    if q.run_id_keys in ("workflowRunId", "both"):
        out["workflowRunId"] = run.id
    if not q.omit_workflow_id:
        out["workflowId"] = run.workflow_id
    if not q.omit_credits:
        credits = run.schedule.credits if status in TERMINAL else 0
        out["credits"] = str(credits) if q.numbers_as_strings else credits
    if q.extra_fields:
        out["toolKey"] = "fake-tool"
        out["error"] = "the step failed" if status == "FAILED" else None
    return out


def ok_response(data: Any) -> web.Response:
    """The success envelope around ``data``."""
    return web.json_response({"status": "success", "data": data})


def error_response(
    status: int,
    code: str | None,
    *,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    quirks: Quirks | None = None,
) -> web.Response:
    """Copy.ai's error body; with ``quirks.errors_as_200``, sent with HTTP 200."""
    body: dict[str, Any] = {"status": "error"}
    if code is not None:
        body["errorCode"] = code
    if details is not None:
        body["details"] = dict(details)
    if quirks is not None and quirks.errors_as_200:
        status = 200
    return web.json_response(body, status=status, headers=headers)
