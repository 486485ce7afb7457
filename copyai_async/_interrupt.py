"""Ctrl-C on the command line: a command ends promptly, whatever it was doing.

Python delivers SIGINT as a ``KeyboardInterrupt`` raised wherever the main thread happens
to be, and silently drops it when that is a ``__del__`` or a weakref callback (an import
lock's, say): the command then goes on waiting. asyncio.run on 3.11+ cancels its task
instead, but a cleanup that does not end (a shielded close waiting on a peer) still keeps
the process alive. :func:`run_interruptible` makes both the same on every Python: the
first Ctrl-C cancels the command, which closes what it opened; a second Ctrl-C, or a
cleanup longer than the grace period, ends the process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["EXIT_INTERRUPTED", "GRACE", "run_interruptible"]

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C, as shells report a process ended by SIGINT."""

GRACE = 5.0
"""Seconds a command may take to clean up after the first Ctrl-C."""


def run_interruptible(command: Coroutine[Any, Any, int], *, grace: float = GRACE) -> int:
    """Run a command's coroutine to its exit status, with Ctrl-C handled as above.

    Raises:
        KeyboardInterrupt: the command was interrupted and ended within ``grace``
            seconds (its cleanup ran); the caller reports it. Past ``grace``, or on a
            second Ctrl-C, the process exits with :data:`EXIT_INTERRUPTED` instead.
    """
    if not grace > 0:
        raise ValueError(f"grace must be > 0 seconds, got {grace!r}")
    interrupt = _Interrupt(grace)
    try:
        return asyncio.run(_guarded(command, interrupt))
    finally:
        # Only now: the grace covers asyncio.run's own shutdown too (the tasks it
        # cancels, the resolver threads it waits for).
        interrupt.disarm()


async def _guarded(command: Coroutine[Any, Any, int], interrupt: _Interrupt) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    try:
        loop.add_signal_handler(signal.SIGINT, interrupt.signalled, task)
    except (NotImplementedError, RuntimeError, ValueError):
        # Windows' loops, or not the main thread: Python's own KeyboardInterrupt.
        return await command
    try:
        status = await command
    except asyncio.CancelledError:
        if interrupt.count:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if interrupt.count:  # the command caught the cancellation and returned
        raise KeyboardInterrupt
    return status


class _Interrupt:
    """Counts Ctrl-Cs for one command: the first cancels its task and arms the grace
    timer, the second ends the process."""

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._timer: threading.Timer | None = None
        self.count = 0

    def signalled(self, task: asyncio.Task[Any]) -> None:
        self.count += 1
        if self.count > 1:
            _exit_now()
        task.cancel()
        # A thread, not loop.call_later: it fires even if the loop itself is stuck.
        self._timer = threading.Timer(self._grace, _exit_now)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _exit_now() -> None:
    """End the process with :data:`EXIT_INTERRUPTED`, output flushed, no cleanup."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    with contextlib.suppress(OSError):
        os.write(2, b"interrupted\n")
    os._exit(EXIT_INTERRUPTED)
