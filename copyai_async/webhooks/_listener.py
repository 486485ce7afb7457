"""The webhook listener: receive deliveries safely, feed the waits, yield the events.

Deliveries are not signed, so the listener treats each as a hint and guards the door:

- its URL carries a random secret (the ``token`` query parameter, 32 random bytes); a
  request without it, or with another, is answered 404 and not read any further (the
  comparison takes constant time);
- a body over ``max_body`` bytes is answered 413, a content type other than JSON 415,
  a body that is not an event 400; each is counted in :attr:`Listener.stats`, logged at
  DEBUG, and never raised into the server;
- a repeated delivery (the same type, run and output; or the same body, for other
  events) is acknowledged and dropped; a run's non-final event that arrives after that
  run's final one is acknowledged and dropped (a finished run does not change);
- events are handed to the client's waits as hints (a wait verifies with one GET), and
  yielded to ``async for`` marked ``verified=False``.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio
import attrs
from aiohttp import web
from yarl import URL

from .._base import http_url, is_loopback
from .._errors import APIError, ClientClosedError, WebhookEventError
from .._poll import RunHints
from ._models import RUN_EVENTS, RunEvent, Webhook, WebhookEvent, WebhookEventType
from ._parse import check_event_type, parse_event

if TYPE_CHECKING:
    from .._client import CopyAIClient

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_PATH", "TOKEN_PARAM", "Listener", "ListenerStats"]

logger = logging.getLogger("copyai_async")

DEFAULT_PATH = "/copyai-webhooks"
DEFAULT_MAX_BODY = 1 << 20
"""Largest body a listener reads, in bytes (1 MiB); larger ones are answered 413."""
TOKEN_PARAM = "token"  # noqa: S105 - the name of the parameter, not its value
"""The query parameter of a listener's URL that carries its secret."""
CLEANUP_TIMEOUT = 30.0
"""Seconds a listener's exit may spend deleting its webhooks."""
_SEEN_MEMORY = 100_000
_REASONS = {400: "not a webhook event", 404: "not found", 503: "not listening"}
_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - mapped away, not bound
_FINAL = frozenset({WebhookEventType.RUN_COMPLETED, WebhookEventType.RUN_FAILED})


@attrs.define
class ListenerStats:
    """What a listener has received.

    Attributes:
        accepted: events taken in (each delivery's first arrival).
        duplicates: repeated deliveries, acknowledged (200) and dropped.
        stale: run events that arrived after that run's final event, acknowledged and
            dropped.
        not_found: requests without the listener's secret (404, not read).
        too_large: bodies over ``max_body`` (413).
        bad_content_type: bodies that are not JSON by their content type (415).
        bad_body: bodies that are not an event (400).
        overflowed: events dropped from the ``async for`` buffer, oldest first, because
            nobody read them in time (waits still saw them).
    """

    accepted: int = 0
    duplicates: int = 0
    stale: int = 0
    not_found: int = 0
    too_large: int = 0
    bad_content_type: int = 0
    bad_body: int = 0
    overflowed: int = 0

    @property
    def rejected(self) -> int:
        """Requests answered with a 4xx."""
        return self.not_found + self.too_large + self.bad_content_type + self.bad_body


def _json_content_type(value: str | None) -> bool:
    if value is None or not value.strip():
        return True  # no content type at all: read it as JSON (a sender's omission)
    main = value.split(";", 1)[0].strip().lower()
    return main == "application/json" or (
        main.startswith("application/") and main.endswith("+json")
    )


def _check_public_url(value: Any) -> URL | None:
    if value is None:
        return None
    url = http_url("public_url", value)
    if TOKEN_PARAM in url.query:
        raise ValueError(f"public_url must not carry a {TOKEN_PARAM!r} query parameter")
    return url


class Listener:
    """Receives Copy.ai's webhook deliveries for a client, safely; made by
    :meth:`CopyAIClient.listen`, used as an async context manager::

        async with client.listen(public_url="https://my-tunnel.example/hooks") as listener:
            await listener.register(workflow_id)
            run = await client.start_and_wait(workflow_id, {"topic": "otters"})

    While it runs, the client's waits (``wait_for_run``, ``wait_for_runs``,
    ``start_and_wait``) use its events: an event saying a run finished makes the wait
    poll that run at once, and only the poll can end the wait. Runs whose events arrive
    are meanwhile polled every ``PollPolicy.safety_interval`` (30 s by default), so a lost
    delivery delays a wait, never strands it.

    Three ways to receive: the listener's own small aiohttp server (``serve=True``, the
    default), :meth:`handler` mounted in your aiohttp app, or :meth:`feed` from any other
    server (FastAPI, Starlette, Django...).

    ``async for event in listener`` yields each event once (duplicates and stale
    deliveries dropped), unverified (``event.verified is False``), from when the listener
    started until it stops; up to ``buffer`` unread events are kept.

    Attributes:
        stats: counters of what was received and refused (:class:`ListenerStats`).
        registered: the webhooks :meth:`register` created (deleted again on exit).
    """

    def __init__(
        self,
        client: CopyAIClient,
        hints: RunHints,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = DEFAULT_PATH,
        public_url: str | None = None,
        serve: bool = True,
        max_body: int = DEFAULT_MAX_BODY,
        buffer: int = 10_000,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, got {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535 (0: any free port), got {port}")
        if not isinstance(path, str) or not path.startswith("/") or "?" in path or "#" in path:
            raise ValueError(
                f"path must start with '/' and hold no query or fragment, got {path!r}"
            )
        for name, value, low in (("max_body", max_body, 1), ("buffer", buffer, 1)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not isinstance(serve, bool):
            raise TypeError(f"serve must be a bool, got {type(serve).__name__}")
        self._public = _check_public_url(public_url)
        if not serve and self._public is None:
            raise ValueError("a listener that does not serve (serve=False) needs public_url=")
        self._client = client
        self._hints = hints
        self.host = host
        self.port: int = port
        self.path = path
        self.serve = serve
        self.max_body = max_body
        self.stats: ListenerStats = ListenerStats()
        self.registered: list[Webhook] = []
        self._secret = secrets.token_urlsafe(32)
        self._secret_bytes = self._secret.encode()
        self._buffer: collections.deque[WebhookEvent] = collections.deque()
        self._buffer_size = buffer
        self._arrived: anyio.Event | None = None
        self._seen: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._covers: list[str | None] = []
        self._attempted = False
        self._runner: web.AppRunner | None = None
        self._state = "new"  # new -> running -> closed

    def __repr__(self) -> str:
        shown = self.url.with_query(None) if self._state == "running" else self.path
        return f"<Listener {shown} (secret hidden) {self._state}>"

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> URL:
        """The URL to register with Copy.ai, secret included (treat it as a secret).

        ``public_url`` with the secret added, if one was given; else the local server's
        address (``http://127.0.0.1:<port><path>?token=...``).
        """
        if self._public is not None:
            return self._public.update_query({TOKEN_PARAM: self._secret})
        if self._state == "new":
            raise RuntimeError("the listener is not started; use 'async with client.listen()'")
        host = self.host
        if host in _ANY_HOST:
            host = _ANY_HOST[host]  # every interface: the loopback one names it
        shown = f"[{host}]" if ":" in host else host
        return URL(f"http://{shown}:{self.port}{self.path}").with_query({TOKEN_PARAM: self._secret})

    @property
    def running(self) -> bool:
        """True between start and close."""
        return self._state == "running"

    async def start(self) -> Listener:
        """Start receiving (and serving, if ``serve``); ``async with`` calls it."""
        if self._state != "new":
            raise RuntimeError(f"the listener is {self._state}; a listener starts once")
        if self._client.closed:
            raise ClientClosedError("the client is closed; a listener needs an open client")
        self._client._enter()  # its waits are this loop's: EventLoopError from another
        self._arrived = anyio.Event()
        if self.serve:
            await self._serve()
        self._state = "running"
        self._hints.attach()
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self.handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            self.port = int(sock.getsockname()[1])
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner

    async def aclose(self) -> None:
        """Delete the webhooks :meth:`register` created, then stop; ``async with`` calls it.

        Runs to the end even if the caller is cancelled (for up to 30 s): webhooks left
        behind would go on delivering to a URL nobody serves. A webhook that cannot be
        deleted is logged at WARNING with its id. Calling it again does nothing.
        """
        if self._state == "closed":
            return
        was_running = self._state == "running"
        self._state = "closed"
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(CLEANUP_TIMEOUT) as scope:
                    await self._unregister()
                if scope.cancelled_caught:
                    self._left_behind(f"deleting them took over {CLEANUP_TIMEOUT:g} s")
            finally:
                for workflow_id in self._covers:
                    self._hints.uncover(workflow_id)
                self._covers.clear()
                if was_running:
                    self._hints.detach()
                if self._arrived is not None:
                    self._arrived.set()
                runner, self._runner = self._runner, None
                if runner is not None:
                    await runner.cleanup()

    async def __aenter__(self) -> Listener:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- registering -------------------------------------------------------------------

    async def register(
        self,
        workflow_id: str | None = None,
        events: Iterable[WebhookEventType | str] = RUN_EVENTS,
    ) -> list[Webhook]:
        """Create a webhook to this listener's :attr:`url` for each event type.

        The webhooks are deleted again when the listener stops (even on an error or
        cancellation), as is any webhook to this URL whose creation answer was lost.

        Args:
            workflow_id: the workflow whose events to receive (``None``: every workflow
                of the workspace).
            events: the event types (default: started, completed and failed).

        Returns:
            The webhooks created.

        Raises:
            RuntimeError: the listener is not running.
            TypeError, ValueError: a bad workflow id or event type.
            CopyAIError: a webhook could not be created (those created before it are
                still deleted on exit).
        """
        if self._state != "running":
            raise RuntimeError(f"the listener is {self._state}; register while it runs")
        if isinstance(events, (str, WebhookEventType)):
            events = [events]
        kinds = list(dict.fromkeys(check_event_type(e) for e in events))
        if not kinds:
            raise ValueError("events must name at least one event type")
        url = str(self.url)
        if is_loopback(URL(url).host) and not is_loopback(URL(self._client.base_url).host):
            logger.warning(
                "registering webhooks to a loopback URL with %s: the API cannot reach it; "
                "give client.listen(public_url=...) the address it can reach",
                self._client.base_url,
            )
        created: list[Webhook] = []
        for kind in kinds:
            self._attempted = True
            hook = await self._client.create_webhook(url, kind, workflow_id=workflow_id)
            self.registered.append(hook)
            created.append(hook)
        if _FINAL & set(kinds):
            # Final events will arrive: waits on this workflow may slow their polling.
            self._covers.append(workflow_id)
            self._hints.cover(workflow_id)
        return created

    async def _unregister(self) -> None:
        if not self._attempted:
            return
        url = str(self.url)
        doomed = {hook.id: hook for hook in self.registered}
        client = self._client
        if client.closed:
            self._left_behind("the client was closed first", doomed)
            return
        try:
            # A creation whose answer was lost left a webhook nobody recorded; the URL
            # holds this listener's secret, so a webhook to it is certainly this one's.
            async for hook in client.list_webhooks():
                if hook.url == url:
                    doomed.setdefault(hook.id, hook)
        except APIError as exc:
            logger.warning("could not list webhooks to clean up after a listener: %s", exc)
        failed: dict[str, Webhook] = {}
        for hook_id, hook in doomed.items():
            try:
                await client.delete_webhook(hook_id, missing_ok=True)
            except APIError as exc:
                logger.warning("could not delete webhook %s: %s", hook_id, exc)
                failed[hook_id] = hook
        self.registered = list(failed.values())
        if failed:
            self._left_behind("deleting them failed", failed)

    def _left_behind(self, why: str, hooks: Mapping[str, Webhook] | None = None) -> None:
        ids = list(hooks or {hook.id: hook for hook in self.registered})
        if ids:
            logger.warning(
                "webhooks %s were left registered (%s); delete them with "
                "'copyai-async webhooks delete ID' or client.delete_webhook(id)",
                ", ".join(ids),
                why,
            )

    # -- receiving ---------------------------------------------------------------------

    def _authorized(self, query: Mapping[str, str] | str | None) -> bool:
        if isinstance(query, str):
            values = parse_qs(query.lstrip("?")).get(TOKEN_PARAM, [])
            given = values[0] if len(values) == 1 else None
        elif query is not None:
            raw = query.get(TOKEN_PARAM)
            given = raw if isinstance(raw, str) else None
        else:
            given = None
        if given is None:
            return False
        return hmac.compare_digest(given.encode(), self._secret_bytes)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        """An aiohttp handler: mount it for POST in your own app, e.g.
        ``app.router.add_post("/hooks", listener.handler)`` (then give
        ``public_url`` the address of that route)."""
        if not self._authorized(request.query):
            self.stats.not_found += 1
            return web.Response(status=404, text="not found")
        if not _json_content_type(request.headers.get("Content-Type")):
            self.stats.bad_content_type += 1
            return web.Response(status=415, text="expected application/json")
        length = request.content_length
        if length is not None and length > self.max_body:
            self.stats.too_large += 1
            return web.Response(status=413, text="body too large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self.max_body:
                self.stats.too_large += 1
                return web.Response(status=413, text="body too large")
            chunks.append(chunk)
        status = self._take(b"".join(chunks))
        if status == 200:
            return web.json_response({})
        return web.Response(status=status, text=_REASONS[status])

    async def feed(
        self,
        body: bytes | str,
        *,
        query: Mapping[str, str] | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Take one delivery received by another server; returns the status to answer.

        For FastAPI, Starlette or any framework: pass the raw body, the query (a mapping
        or the query string) and the headers (``Content-Type`` and ``Content-Length`` are
        read, case-insensitively), and answer with the status returned: 200 taken (or a
        duplicate), 404 no secret, 413 too large, 415 not JSON, 400 not an event, 503
        the listener is not running. It never raises for a bad delivery.

        Raises:
            TypeError: ``body`` is neither bytes nor str.
        """
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        elif isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        elif not isinstance(body, bytes):
            raise TypeError(f"body must be bytes or str, got {type(body).__name__}")
        if not self._authorized(query):
            self.stats.not_found += 1
            return 404
        found = {k.lower(): v for k, v in (headers or {}).items()}
        if not _json_content_type(found.get("content-type")):
            self.stats.bad_content_type += 1
            return 415
        if len(body) > self.max_body:
            self.stats.too_large += 1
            return 413
        return self._take(body)

    def _take(self, body: bytes) -> int:
        if self._state != "running":
            return 503
        try:
            event = parse_event(body)
        except WebhookEventError as exc:
            self.stats.bad_body += 1
            logger.debug("webhook delivery refused: %s", exc)
            return 400
        self._hints.alive()
        if isinstance(event, RunEvent):
            # The same claim about the same run: a repeat. A different output is another
            # claim (a forged event must not mask the genuine one that follows it).
            output = json.dumps(event.output, sort_keys=True, default=str).encode()
            key = f"{event.raw_type}\0{event.run_id}\0{hashlib.sha256(output).hexdigest()}"
            final = event.type in _FINAL
            if key in self._seen:
                self.stats.duplicates += 1
                return 200
            if not final and self._seen.get(event.run_id, False):
                # Overtaken by the run's final event: a finished run does not change.
                self.stats.stale += 1
                return 200
            self._remember(key, True)
            self._remember(event.run_id, final or self._seen.get(event.run_id, False))
            self._hints.hint(event.run_id, event.workflow_id, final=final)
        else:
            key = hashlib.sha256(body).hexdigest()
            if key in self._seen:
                self.stats.duplicates += 1
                return 200
            self._remember(key, True)
        self.stats.accepted += 1
        self._buffer.append(event)
        if len(self._buffer) > self._buffer_size:
            self._buffer.popleft()
            self.stats.overflowed += 1
        if self._arrived is not None:
            self._arrived.set()
        return 200

    def _remember(self, key: str, value: bool) -> None:
        self._seen.pop(key, None)
        self._seen[key] = value
        if len(self._seen) > _SEEN_MEMORY:
            self._seen.popitem(last=False)

    # -- the events --------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[WebhookEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[WebhookEvent]:
        while True:
            while self._buffer:
                yield self._buffer.popleft()
            if self._state == "closed" or self._arrived is None:
                return
            self._arrived = anyio.Event()
            await self._arrived.wait()
