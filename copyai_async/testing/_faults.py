"""Failures the fake server answers with: what production does to a client on a bad day."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from aiohttp import web

from ._quirks import error_response

__all__ = ["DEFAULT_RANDOM_FAULTS", "Fault", "answer_with_fault"]

_HTML_ERROR = (
    "<!DOCTYPE html><html><head><title>{status} Error</title></head>"
    "<body><h1>{status}</h1><p>The server encountered a temporary error.</p></body></html>"
)
_HTML_OK = (
    "<!DOCTYPE html><html><head><title>Please wait</title></head>"
    "<body><p>Checking your connection before you reach the site...</p></body></html>"
)
_WRONG_SHAPE = b'{"message": "OK", "requestId": "fake-0000"}'
_FALLBACK_BODY = b'{"status": "success", "data": {"total": 0, "data": []}}'


@attrs.frozen(kw_only=True)
class Fault:
    """A failure the fake server answers with instead of (or after) the real answer.

    Build one with the class methods. ``after=True`` lets the request take effect first
    (a started run exists) and fails the answer: the case a client must not blindly retry.
    """

    kind: Literal["status", "disconnect", "truncate", "raw", "stall", "garbled"]
    status: int = 500
    html: bool = False
    retry_after: str | None = None
    error_code: str | None = None
    after: bool = False
    body: bytes = b""
    content_type: str = "application/json"
    extra_headers: tuple[tuple[str, str], ...] = ()
    garble: Literal["truncated", "html", "shape"] = "truncated"

    @classmethod
    def server_error(cls, status: int = 500, *, html: bool = False, after: bool = False) -> Fault:
        """A 5xx, with a JSON error body or (``html=True``) an HTML page."""
        return cls(kind="status", status=status, html=html, after=after)

    @classmethod
    def rate_limit(cls, retry_after: str | float | None = None) -> Fault:
        """A 429, with ``Retry-After`` (seconds or an HTTP date) or without."""
        value = None if retry_after is None else str(retry_after)
        return cls(kind="status", status=429, retry_after=value, error_code="RATE_LIMITED")

    @classmethod
    def status_code(
        cls,
        status: int,
        *,
        error_code: str | None = None,
        retry_after: str | None = None,
        html: bool = False,
    ) -> Fault:
        """Any status with an optional ``errorCode`` and ``Retry-After``."""
        return cls(
            kind="status", status=status, error_code=error_code, retry_after=retry_after, html=html
        )

    @classmethod
    def raw(
        cls,
        body: bytes | str | Any,
        *,
        status: int = 200,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer with exactly this body (bytes or text as given, anything else as JSON),
        status and extra headers (e.g. a ``Location`` for a redirect)."""
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        ctype = content_type or (
            "application/json" if not isinstance(body, (bytes, str)) else "text/plain"
        )
        return cls(
            kind="raw",
            status=status,
            body=data,
            content_type=ctype,
            extra_headers=tuple((headers or {}).items()),
        )

    @classmethod
    def disconnect(cls, *, after: bool = False) -> Fault:
        """Close the connection without answering."""
        return cls(kind="disconnect", after=after)

    @classmethod
    def stall(cls) -> Fault:
        """Send the headers and half the body, then nothing more until the client leaves."""
        return cls(kind="stall", after=True)

    @classmethod
    def truncate(cls, *, after: bool = False) -> Fault:
        """Send half of the JSON body (with the full Content-Length), then close."""
        return cls(kind="truncate", after=after)

    @classmethod
    def garbled(
        cls, kind: Literal["truncated", "html", "shape"] = "truncated", *, after: bool = True
    ) -> Fault:
        """Answer 200 with a body that cannot be read, its framing intact.

        Args:
            kind: ``"truncated"``, the first half of the real JSON body (with a
                Content-Length that matches, as when a proxy cuts it); ``"html"``, an
                HTML page (a proxy's or a captive portal's); ``"shape"``, JSON that is
                not the API's envelope.
            after: let the request take effect first (a started run exists), as when
                the answer is spoiled on its way back; ``False`` for a proxy that
                answered on the server's behalf.
        """
        if kind not in ("truncated", "html", "shape"):
            raise ValueError(f"kind must be 'truncated', 'html' or 'shape', got {kind!r}")
        return cls(kind="garbled", status=200, garble=kind, after=after)


DEFAULT_RANDOM_FAULTS: tuple[Fault, ...] = (
    Fault.server_error(500),
    Fault.server_error(503, html=True),
    Fault.server_error(502, html=True),
    Fault.rate_limit("0"),
    Fault.rate_limit(None),
    Fault.disconnect(),
    Fault.truncate(),
    Fault.garbled("truncated"),
    Fault.garbled("html"),
)


def _real_body(real: web.StreamResponse | None) -> bytes:
    body = real.body if isinstance(real, web.Response) else None
    return body if isinstance(body, bytes) and body else _FALLBACK_BODY


async def answer_with_fault(
    request: web.Request, fault: Fault, real: web.StreamResponse | None
) -> web.StreamResponse:
    """Answer ``request`` as ``fault`` says; ``real`` is the real answer when ``fault.after``."""
    if fault.kind == "status":
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.html:
            return web.Response(
                status=fault.status,
                text=_HTML_ERROR.format(status=fault.status),
                content_type="text/html",
                headers=headers,
            )
        code = fault.error_code or ("INTERNAL_SERVER_ERROR" if fault.status >= 500 else None)
        return error_response(fault.status, code, headers=headers)
    if fault.kind == "raw":
        return web.Response(
            status=fault.status,
            body=fault.body,
            headers={"Content-Type": fault.content_type, **dict(fault.extra_headers)},
        )
    if fault.kind == "garbled":
        if fault.garble == "html":
            return web.Response(status=200, text=_HTML_OK, content_type="text/html")
        body = _WRONG_SHAPE if fault.garble == "shape" else _real_body(real)
        if fault.garble == "truncated":
            body = body[: len(body) // 2]
        return web.Response(status=200, body=body, content_type="application/json")
    transport = request.transport
    if fault.kind == "disconnect":
        if transport is not None:
            transport.abort()
        return web.Response(status=500)
    # truncate (or stall): the real body (or a plausible one), half of it, then the
    # line drops (or goes quiet).
    full = _real_body(real)
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(full)
    await resp.prepare(request)
    await resp.write(full[: len(full) // 2])
    if fault.kind == "stall":
        await asyncio.Event().wait()  # until the client hangs up (and this is cancelled)
    if transport is not None:
        transport.abort()
    return resp
