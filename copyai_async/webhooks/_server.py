"""The listener's own HTTP server: a public endpoint that bounds what strangers can cost.

aiohttp parses the requests (its low-level :class:`aiohttp.web.Server`, as a protocol
factory); this module decides which connections it gets, and for how long:

- at most ``max_connections`` are open at once. While they are all taken, the one that
  has waited longest for a whole request (connected, or since its last request, for at
  least :data:`MAKE_ROOM_AFTER`) is closed to make room for the next: a genuine delivery
  sends its request in milliseconds, so a flood of slow or idle connections cannot keep
  it out. If none has waited that long, new ones wait in the kernel's queue;
- each connection must send a whole request, headers and body, within
  ``request_timeout`` of its start or of the end of the request before; if not, it is
  closed. Slow senders cannot hold a connection, idle ones cannot keep it;
- out of file descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM), accepting pauses and is
  tried again with backoff (50 ms doubling to 1 s); one WARNING at most every five
  minutes (saying how often it happened since), and one INFO when it works again;
- bodies are not inflated by aiohttp (``auto_decompress=False``), nor read after an
  answer (``lingering_time=0``): the listener reads what it accepts, and inflates it
  within its limit (see :mod:`._body`); aiohttp's reports of malformed requests go to
  DEBUG (logger ``copyai_async.webhooks.server``), so strangers cannot fill the logs.

The cap keeps the listener's file descriptors, and so the client's own connections,
safe from any number of strangers: with the defaults, a client needs at most its
``max_connections`` plus the listener's.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import anyio
from aiohttp import web

from .._tasks import cancel_and_wait

if TYPE_CHECKING:
    from ._listener import ListenerStats

__all__ = ["GuardedServer"]

logger = logging.getLogger("copyai_async")

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BACKOFF = (0.05, 1.0)  # seconds: the first pause after a failed accept, the longest
MAKE_ROOM_AFTER = 0.5
"""Seconds a connection must have waited for a whole request before it may be closed to
make room for a new one (only while every ``max_connections`` is taken)."""
_SHUTDOWN = 1.0  # seconds the requests under way get to finish when the listener stops
_WARN_EVERY = 300.0  # seconds between WARNINGs about failing to accept


class _Quiet(logging.LoggerAdapter):  # type: ignore[type-arg]  # generic from 3.11 on
    """aiohttp's reports of requests it could not handle (malformed ones from strangers,
    on a public endpoint) at DEBUG: at ERROR, anyone could fill the logs."""

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        super().log(min(level, logging.DEBUG), msg, *args, **kwargs)  # type: ignore[arg-type]


_QUIET = cast(logging.Logger, _Quiet(logging.getLogger("copyai_async.webhooks.server"), {}))


class _Connection(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, a deadline around it."""

    def __init__(self, inner: asyncio.Protocol, server: GuardedServer) -> None:
        self._inner = inner
        self._server = server
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.waiting_since = math.inf  # when it began to owe a whole request (loop time)
        self._idle = False  # a request was served, and no byte of another has come since

    # -- asyncio's protocol, passed on to aiohttp's ---------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream socket's
        self._server.opened(self)
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._idle = False
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        try:
            self._inner.connection_lost(exc)
        finally:
            self._server.closed(self)

    # -- the guard ---------------------------------------------------------------------

    def request_read(self) -> None:
        """Its request arrived whole: the next one gets a deadline of its own."""
        self._idle = True
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self.waiting_since = loop.time()
        self._timer = loop.call_later(self._server.request_timeout, self._expire)

    def _expire(self) -> None:
        if self._idle:
            # A sender's keep-alive, idle since its last request: an ordinary close.
            if self.transport is not None:
                self.transport.close()
            return
        self._server.stats.timed_out += 1
        logger.debug("webhook listener: a connection sent no whole request in time; closed")
        self.abort()

    def abort(self) -> None:
        """Close at once, whatever is buffered (nothing more is read from it)."""
        if self.transport is not None:
            self.transport.abort()


class GuardedServer:
    """Serves ``handler`` on a listening socket with the limits of the module docstring.

    Args:
        handler: answers one request (aiohttp's low-level handler).
        max_connections: connections open at once.
        request_timeout: seconds a connection has to send a whole request.
        stats: the listener's counters (``timed_out``, ``evicted`` are kept here).
    """

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        max_connections: int,
        request_timeout: float,
        stats: ListenerStats,
    ) -> None:
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.stats = stats
        self._handler = handler
        self._web: web.Server | None = None
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        self._changed = asyncio.Event()  # a connection opened or closed
        self._accepting: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._full_noted = False
        self._starved = False  # accepting fails for lack of descriptors
        self._warned_at = -math.inf  # when that was last logged at WARNING
        self._unwarned = 0  # episodes since then not logged at WARNING

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    async def start(self, sock: socket.socket) -> None:
        """Start accepting on ``sock`` (bound; listened on here)."""
        self._web = web.Server(
            self._handler,
            access_log=None,
            auto_decompress=False,
            lingering_time=0,
            keepalive_timeout=self.request_timeout,
            logger=_QUIET,
        )
        sock.listen(min(socket.SOMAXCONN, 1024))
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.get_running_loop().create_task(
            self._accept(sock), name="copyai_async.webhook-listener"
        )

    def request_read(self, transport: asyncio.BaseTransport | None) -> None:
        """The handler read a whole request from ``transport``."""
        connection = self._open.get(transport) if transport is not None else None
        if connection is not None:
            connection.request_read()

    # -- connections -------------------------------------------------------------------

    def opened(self, connection: _Connection) -> None:
        if connection.transport is not None:
            self._open[connection.transport] = connection
        self._changed.set()

    def closed(self, connection: _Connection) -> None:
        if connection.transport is not None:
            self._open.pop(connection.transport, None)
        self._changed.set()

    async def _room(self) -> None:
        """Return once a connection may be accepted: fewer than the cap are open (the
        one that has waited longest for its request is closed to make room, if it has
        waited :data:`MAKE_ROOM_AFTER`)."""
        while len(self._open) >= self.max_connections:
            if not self._full_noted:
                self._full_noted = True  # once per listener: its stats count the rest
                logger.warning(
                    "webhook listener: all %d connections (max_connections) are taken; the "
                    "slowest are closed to make room, and each has %g s (request_timeout) to "
                    "send its request (logged once; listener.stats counts what is closed)",
                    self.max_connections,
                    self.request_timeout,
                )
            slowest = min(self._open.values(), key=lambda c: c.waiting_since)
            wait = slowest.waiting_since + MAKE_ROOM_AFTER - asyncio.get_running_loop().time()
            if wait <= 0:
                self.stats.evicted += 1
                slowest.abort()
                wait = MAKE_ROOM_AFTER  # its close frees the slot (on the loop's next turn)
            self._changed.clear()
            with anyio.move_on_after(wait):
                await self._changed.wait()

    # -- accepting ---------------------------------------------------------------------

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        factory = self._web
        if factory is None:
            raise RuntimeError("GuardedServer.start() makes the aiohttp server first")
        pause = _ACCEPT_BACKOFF[0]
        while True:
            await self._room()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                await self._accept_failed(exc, pause)
                pause = min(pause * 2, _ACCEPT_BACKOFF[1])
                continue
            pause = _ACCEPT_BACKOFF[0]
            if self._starved:
                self._starved = False
                level = logging.DEBUG if self._unwarned else logging.INFO
                logger.log(level, "webhook listener: accepting connections again")
            conn.setblocking(False)
            try:
                await loop.connect_accepted_socket(lambda: _Connection(factory(), self), conn)
            except OSError as exc:
                conn.close()
                logger.debug("webhook listener: a connection failed as it opened: %s", exc)

    async def _accept_failed(self, exc: OSError, pause: float) -> None:
        """Log a failed accept (out of descriptors: once per episode) and pause."""
        if exc.errno in _OUT_OF_RESOURCES:
            if not self._starved:
                self._starved = True
                self._note_starved(exc)
        else:
            logger.debug("webhook listener: accepting a connection failed: %s", exc)
        await anyio.sleep(pause)

    def _note_starved(self, exc: OSError) -> None:
        """A new episode of failing to accept: a WARNING, unless one was logged lately."""
        now = asyncio.get_running_loop().time()
        if now - self._warned_at < _WARN_EVERY:
            self._unwarned += 1
            logger.debug("webhook listener: cannot accept connections (%s) again", exc)
            return
        since = f"; {self._unwarned} more times since the last warning" if self._unwarned else ""
        self._warned_at, self._unwarned = now, 0
        logger.warning(
            "webhook listener: cannot accept connections (%s); pausing and trying again "
            "(at most one warning every %g s%s). Lower listen(max_connections=...) below "
            "the process's open-file limit",
            exc,
            _WARN_EVERY,
            since,
        )

    # -- stopping ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop accepting, give the requests under way a moment, and close every
        connection. Runs to the end even if the caller is cancelled."""
        accepting, self._accepting = self._accepting, None
        if accepting is not None:
            await cancel_and_wait([accepting])
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        with anyio.CancelScope(shield=True):
            shutdown = None
            if self._web is not None:
                # Idle keep-alive connections (a sender's pooled one, between deliveries)
                # are closed now, those with a request under way once it is answered:
                # aiohttp's shutdown alone would wait out its timeout on each idle one,
                # so every listener's exit took 0.5 s more.
                self._web.pre_shutdown()
                # aiohttp's shutdown has a timeout of its own and is never cancelled from
                # outside: aiohttp 3.10 swallows that cancellation and then raises an
                # anonymous one.
                shutdown = asyncio.get_running_loop().create_task(
                    self._web.shutdown(_SHUTDOWN / 2), name="copyai_async.listener-shutdown"
                )
                await asyncio.wait((shutdown,), timeout=_SHUTDOWN)
            for connection in list(self._open.values()):
                connection.abort()
            if shutdown is not None:
                await shutdown
            while self._open:
                self._changed.clear()
                await self._changed.wait()
