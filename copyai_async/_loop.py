"""One client, one event loop: bound at first use, checked on every call, released at the end.

A client's session, limits and waits belong to the event loop they were made in; aiohttp
fails in raw and confusing ways when they are used from another (``Event loop is
closed``, ``Timeout context manager should be used inside a task``). So a client binds
to the loop of its first call and every later call checks it, before anything is sent.

Releasing: when the bound loop shuts down its async generators (``asyncio.run()`` and
``asyncio.Runner`` do so as they end, before closing the loop), the client's lazily
opened resources are closed there, in their own loop, so that a client used without
``async with`` leaves no unclosed session behind. That hook is the one asyncio offers: a
suspended async generator, registered with the loop on its first step, whose ``finally``
runs when the loop closes it. (A loop closed without that step, by hand, leaves the
resources open: :meth:`LoopBinding.leave` then says so.)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable

from ._errors import EventLoopError

__all__ = ["LoopBinding"]


class _State(enum.Enum):
    UNBOUND = "unbound"  # never used in a loop
    BOUND = "bound"  # serving the loop in ``_loop``
    RELEASED = "released"  # its loop shut down; resources closed there
    LEFT = "left"  # closed by its owner (aclose) in its own loop


class LoopBinding:
    """The event loop a client serves (a small state machine; see the module docstring).

    Args:
        owner: the client's class name, for messages.
        release: closes the client's resources; awaited in the bound loop when it shuts
            down.
    """

    def __init__(self, *, owner: str, release: Callable[[], Awaitable[None]]) -> None:
        self._owner = owner
        self._release = release
        self._lock = threading.Lock()
        self._state = _State.UNBOUND
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = ""
        self._keeper: AsyncGenerator[None, None] | None = None

    def enter(self) -> None:
        """Bind to the running loop on first use; after that, check it is that loop.

        Raises:
            EventLoopError: the client serves (or served) another loop.
        """
        loop = asyncio.get_running_loop()
        if loop is self._loop and self._state is _State.BOUND:
            return
        with self._lock:  # two threads may race to be first
            if self._state is _State.UNBOUND:
                self._bind(loop)
                return
            if self._state is _State.BOUND and loop is self._loop:
                return
        raise EventLoopError(self._foreign_message())

    async def leave(self) -> None:
        """The owner is closing: unbind, in the bound loop (or anywhere, if nothing was
        left open in another loop).

        Raises:
            EventLoopError: the resources belong to another loop, still there (close the
                client in that loop) or closed by hand without shutting down (they can no
                longer be closed).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            state, bound = self._state, self._loop
            if state is _State.BOUND and loop is not bound:
                raise EventLoopError(self._close_message())
            if state is not _State.RELEASED:
                self._state = _State.LEFT
            keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.aclose()  # in its own loop; its finally sees LEFT and does nothing

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.current_thread().name
        self._state = _State.BOUND
        keeper = self._until_shutdown()
        # Its first step registers it with the loop (the loop's async-generator hook) and
        # runs to the yield without suspending, so it completes here, synchronously.
        step = keeper.__anext__()
        with contextlib.suppress(StopIteration):  # the generator reached its yield
            step.send(None)
        self._keeper = keeper

    async def _until_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                shutting_down = self._state is _State.BOUND
                if shutting_down:
                    self._state = _State.RELEASED
                    self._keeper = None
            if shutting_down:
                await self._release()

    def _foreign_message(self) -> str:
        rule = (
            f"a {self._owner} serves one event loop (its connections, limits and waits "
            "belong to it)"
        )
        bound = self._loop
        if self._state is not _State.BOUND or bound is None or bound.is_closed():
            return (
                f"this {self._owner} served an event loop that has ended (an earlier "
                f"asyncio.run(), for instance), and cannot be used from another: {rule}. "
                f"Create the client inside the coroutine that uses it (async with "
                f"{self._owner}() as client: ...), once per event loop"
            )
        return (
            f"this {self._owner} serves the event loop it was first used in (in thread "
            f"{self._thread!r}), not this one: {rule}. Create a client in each event loop "
            "(or thread) that needs one, or run the work in the client's loop "
            "(asyncio.run_coroutine_threadsafe)"
        )

    def _close_message(self) -> str:
        bound = self._loop
        if bound is not None and bound.is_closed():
            return (
                f"this {self._owner}'s event loop was closed without shutting down "
                "(loop.shutdown_asyncgens() never ran), so its connections can no longer "
                "be closed: close a client in its own loop before the loop ends "
                "(async with, or asyncio.run, which shuts loops down properly)"
            )
        return (
            f"this {self._owner} serves the event loop it was first used in (in thread "
            f"{self._thread!r}): close it there, e.g. with "
            "asyncio.run_coroutine_threadsafe(client.aclose(), loop)"
        )
