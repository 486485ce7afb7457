"""The webhook listener: receive deliveries safely, feed the waits, yield the events.

Deliveries are not signed, and the listener usually faces the internet, so it treats
each delivery as a hint and guards the door:

- its URL carries a random secret (the ``token`` query parameter, 32 random bytes); a
  request without it, or with another, is answered 404 and its connection closed: not
  one byte of its body is read (the comparison takes constant time);
- a body over ``max_body`` bytes, counted as inflated for gzip and deflate and enforced
  while inflating, is answered 413; a content type other than JSON, or an encoding
  other than gzip and deflate, 415; a body that is not an event 400; each is counted in
  :attr:`Listener.stats`, logged at DEBUG, and never raised into the server;
- its own server (``serve=True``) keeps at most ``max_connections`` connections and
  closes any that has not sent a whole request within ``request_timeout`` (see
  :mod:`._server`);
- a repeated delivery (the same type, run and output; or the same body, for other
  events) is acknowledged and dropped, unless a poll has since shown the first one false;
  a run's non-final event that arrives after that run's final one is acknowledged and
  dropped (a finished run does not change);
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
from typing import Any, Protocol
from urllib.parse import parse_qs

import anyio
import attrs
from aiohttp import ClientError, web
from yarl import URL

from .._check import boolean, http_url, int_in, is_loopback, positive
from .._errors import APIError, ClientClosedError, WebhookEventError
from .._poll import RunHints
from ._body import BodyDecoder, BodyRefused
from ._models import RUN_EVENTS, RunEvent, Webhook, WebhookEvent, WebhookEventType
from ._parse import check_event_type, parse_event
from ._server import GuardedServer

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PATH",
    "DEFAULT_REQUEST_TIMEOUT",
    "TOKEN_PARAM",
    "Listener",
    "ListenerStats",
]

logger = logging.getLogger("copyai_async")

DEFAULT_PATH = "/copyai-webhooks"
DEFAULT_MAX_BODY = 1 << 20
"""Largest body a listener reads, in bytes (1 MiB), inflated; larger ones get 413."""
DEFAULT_MAX_CONNECTIONS = 100
"""Connections a listener's own server keeps open at once, by default."""
DEFAULT_REQUEST_TIMEOUT = 10.0
"""Seconds a connection has to send a whole request (headers and body), by default."""
TOKEN_PARAM = "token"  # noqa: S105 - the name of the parameter, not its value
"""The query parameter of a listener's URL that carries its secret."""
CLEANUP_TIMEOUT = 30.0
"""Seconds a listener's exit may spend deleting its webhooks."""
_SEEN_MEMORY = 100_000
_REASONS = {
    400: "not a webhook event",
    404: "not found",
    405: "method not allowed",
    408: "request timeout",
    413: "body too large",
    415: "expected application/json (gzip or deflate encoded, or not at all)",
    503: "not listening",
}
_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - mapped away, not bound
_FINAL = frozenset({WebhookEventType.RUN_COMPLETED, WebhookEventType.RUN_FAILED})


class WebhookClient(Protocol):
    """What a listener needs of its client (a :class:`~copyai_async.CopyAIClient`): the
    listener depends on this, not on the client's module, which imports it in turn."""

    @property
    def closed(self) -> bool:
        """Whether the client is closed."""
        ...

    @property
    def base_url(self) -> str:
        """The API root the client sends to."""
        ...

    def _enter(self) -> None: ...

    async def create_webhook(
        self, url: str, event_type: WebhookEventType | str, *, workflow_id: str | None = None
    ) -> Webhook:
        """Register a webhook."""
        ...

    def list_webhooks(self) -> AsyncIterator[Webhook]:
        """The key's webhooks."""
        ...

    async def delete_webhook(self, webhook_id: str, *, missing_ok: bool = False) -> None:
        """Delete a webhook."""
        ...


@attrs.define
class ListenerStats:
    """What a listener has received.

    Attributes:
        accepted: events taken in (each delivery's first arrival).
        duplicates: repeated deliveries, acknowledged (200) and dropped.
        stale: run events that arrived after that run's final event, acknowledged and
            dropped.
        not_found: requests without the listener's secret (404, not read, connection
            closed).
        too_large: bodies over ``max_body``, as sent or inflated (413).
        bad_content_type: bodies that are not JSON by their content type, or encoded
            other than with gzip or deflate (415).
        bad_body: bodies that are not an event, or garbled compressed data (400).
        timed_out: connections closed for not sending a whole request within
            ``request_timeout`` (the listener's own server; and bodies read by
            :meth:`Listener.handler` that took longer, answered 408).
        evicted: connections the listener's own server closed to make room for new
            ones, all ``max_connections`` being taken: each time, the one that had waited
            longest (at least 0.5 s) for a whole request.
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
    timed_out: int = 0
    evicted: int = 0
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


async def _refuse(
    request: web.BaseRequest, status: int, *, headers: Mapping[str, str] | None = None
) -> web.StreamResponse:
    """Answer ``status`` and close the connection: the rest of the body is never read
    (aiohttp would otherwise drain it, inflating it as it goes, to keep the connection)."""
    response = web.Response(status=status, text=_REASONS[status], headers=headers)
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except (OSError, ClientError):
        pass  # the connection is gone already: nothing to answer
    transport = request.transport
    if transport is not None:
        transport.close()  # after what was written is sent
    return response


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
    server (FastAPI, Starlette, Django...). The listener's own server is the hardened one:
    at most ``max_connections`` open at once (the slowest closed to make room for new
    ones), each closed if it has not sent a whole request within ``request_timeout``, a
    request without the secret closed unread, bodies inflated only by the listener and
    only up to ``max_body``. Mounted or fed, the same checks apply to each request, but
    connections are your server's to limit (for aiohttp, run it with
    ``auto_decompress=False``, so that it inflates nothing before the secret is checked).

    ``async for event in listener`` yields each event once (duplicates and stale
    deliveries dropped), unverified (``event.verified is False``), from when the listener
    started until it stops; up to ``buffer`` unread events are kept.

    Attributes:
        stats: counters of what was received and refused (:class:`ListenerStats`).
        registered: the webhooks :meth:`register` created (deleted again on exit).
    """

    def __init__(
        self,
        client: WebhookClient,
        hints: RunHints,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = DEFAULT_PATH,
        public_url: str | None = None,
        serve: bool = True,
        max_body: int = DEFAULT_MAX_BODY,
        buffer: int = 10_000,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        int_in("port", port, 0, 65535)  # 0: any free port
        if not isinstance(path, str) or not path.startswith("/") or "?" in path or "#" in path:
            raise ValueError(
                f"path must start with '/' and hold no query or fragment, got {path!r}"
            )
        for name, value in (
            ("max_body", max_body),
            ("buffer", buffer),
            ("max_connections", max_connections),
        ):
            int_in(name, value, 1)
        timeout = positive("request_timeout", request_timeout)
        boolean("serve", serve)
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
        self.max_connections: int = max_connections
        self.request_timeout: float = timeout
        self.stats: ListenerStats = ListenerStats()
        self.registered: list[Webhook] = []
        self._secret = secrets.token_urlsafe(32)
        self._secret_bytes = self._secret.encode()
        self._buffer: collections.deque[WebhookEvent] = collections.deque()
        self._buffer_size = buffer
        self._arrived: anyio.Event | None = None
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._covers: list[str | None] = []
        self._attempted = False
        self._server: GuardedServer | None = None
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
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        server = GuardedServer(
            self._route,
            max_connections=self.max_connections,
            request_timeout=self.request_timeout,
            stats=self.stats,
        )
        self._server = server  # before it accepts: _route passes it to each request
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            self.port = int(sock.getsockname()[1])
            await server.start(sock)
        except BaseException:
            self._server = None
            sock.close()
            await server.aclose()
            raise

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        """The listener's own server: its one path takes POSTs; nothing else is read."""
        if request.path != self.path:
            return await _refuse(request, 404)
        if request.method != "POST":
            return await _refuse(request, 405, headers={"Allow": "POST"})
        return await self._receive(request, server=self._server)

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
                server, self._server = self._server, None
                if server is not None:
                    await server.aclose()

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

    def authorized(self, query: Mapping[str, str] | str | None) -> bool:
        """Whether a request's query (a mapping or the query string) carries this
        listener's secret (compared in constant time). Serving deliveries yourself,
        check it before reading the body, and close the connection if it does not."""
        return self._authorized(query)

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

    async def handler(self, request: web.BaseRequest) -> web.StreamResponse:
        """An aiohttp handler: mount it for POST in your own app, e.g.
        ``app.router.add_post("/hooks", listener.handler)`` (then give ``public_url`` the
        address of that route).

        A request without the secret, or refused before its body is read (wrong content
        type or encoding, a ``Content-Length`` over ``max_body``), is answered and its
        connection closed, so that nothing more is read from it. Run your app with
        ``auto_decompress=False`` (``web.AppRunner(app, auto_decompress=False)``) for the
        same protection as the listener's own server: aiohttp then inflates nothing, and
        this handler inflates gzip and deflate bodies itself, only up to ``max_body``."""
        return await self._receive(request, server=None)

    async def _receive(
        self, request: web.BaseRequest, *, server: GuardedServer | None
    ) -> web.StreamResponse:
        """Check, read and take one delivery; ``server``: the listener's own, which
        bounds the request's time itself (from the connection's start)."""
        if not self._authorized(request.query):
            self.stats.not_found += 1
            return await _refuse(request, 404)
        try:
            headers = request.headers
            decoder = self._decoder(headers.get("Content-Type"), headers.get("Content-Encoding"))
            length = request.content_length
            if length is not None and length > self.max_body:
                raise BodyRefused(413, "body too large")
            if server is not None and request.headers.get("Expect", "").lower() == "100-continue":
                # The sender waits for this before sending its body (aiohttp's router
                # sends it for a mounted handler; the listener's own server, here).
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            with anyio.fail_after(None if server is not None else self.request_timeout):
                async for chunk in request.content.iter_any():
                    decoder.feed(chunk)
            body = decoder.finish()
        except BodyRefused as refused:
            self._count_refused(refused)
            return await _refuse(request, refused.status)
        except TimeoutError:
            self.stats.timed_out += 1
            return await _refuse(request, 408)
        except (OSError, ClientError) as exc:
            # The sender went away mid-body (or its connection was closed for it).
            logger.debug("webhook delivery cut short: %s", exc)
            return web.Response(status=400, text=_REASONS[400])
        if server is not None:
            server.request_read(request.transport)
        status = self._take(body)
        if status == 200:
            return web.json_response({})
        return web.Response(status=status, text=_REASONS[status])

    def _decoder(self, content_type: str | None, content_encoding: str | None) -> BodyDecoder:
        """The decoder for a delivery's body, given its headers.

        Raises:
            BodyRefused: (415) not JSON by its content type, or an encoding not taken.
        """
        if not _json_content_type(content_type):
            raise BodyRefused(415, "not JSON")
        return BodyDecoder(content_encoding, self.max_body)

    def _count_refused(self, refused: BodyRefused) -> None:
        if refused.status == 413:
            self.stats.too_large += 1
        elif refused.status == 415:
            self.stats.bad_content_type += 1
        else:
            self.stats.bad_body += 1
        logger.debug("webhook delivery refused (%d): %s", refused.status, refused.reason)

    async def feed(
        self,
        body: bytes | str,
        *,
        query: Mapping[str, str] | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Take one delivery received by another server; returns the status to answer.

        For FastAPI, Starlette or any framework: pass the raw body, the query (a mapping
        or the query string) and the headers (``Content-Type``, ``Content-Encoding`` and
        ``Content-Length`` are read, case-insensitively), and answer with the status
        returned: 200 taken (or a duplicate), 404 no secret, 413 too large (inflated,
        for a gzip or deflate body), 415 not JSON (or another encoding), 400 not an
        event, 503 the listener is not running. It never raises for a bad delivery.

        To read no body without the secret, check :meth:`authorized` first.

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
        try:
            decoder = self._decoder(found.get("content-type"), found.get("content-encoding"))
            decoder.feed(body)
            decoded = decoder.finish()
        except BodyRefused as refused:
            self._count_refused(refused)
            return refused.status
        return self._take(decoded)

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
            # The same claim about the same run: a repeat, unless a poll has since shown
            # the first one false (a forged "finished", or one ahead of the API's reads),
            # so that it cannot mask the genuine event that follows it.
            output = json.dumps(event.output, sort_keys=True, default=str).encode()
            key = f"{event.raw_type}\0{event.run_id}\0{hashlib.sha256(output).hexdigest()}"
            final = event.type in _FINAL
            believed = self._hints.claims_final(event.run_id)
            if key in self._seen and (believed or not final):
                self.stats.duplicates += 1
                return 200
            if not final and believed:
                # Overtaken by the run's final event: a finished run does not change.
                self.stats.stale += 1
                return 200
            self._remember(key)
            self._hints.hint(event.run_id, event.workflow_id, final=final)
        else:
            key = hashlib.sha256(body).hexdigest()
            if key in self._seen:
                self.stats.duplicates += 1
                return 200
            self._remember(key)
        self.stats.accepted += 1
        self._buffer.append(event)
        if len(self._buffer) > self._buffer_size:
            self._buffer.popleft()
            self.stats.overflowed += 1
        if self._arrived is not None:
            self._arrived.set()
        return 200

    def _remember(self, key: str) -> None:
        self._seen.pop(key, None)
        self._seen[key] = None
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
