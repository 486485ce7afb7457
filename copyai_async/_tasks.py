"""Ending background tasks cleanly: cancel, wait (shielded), retrieve every outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import anyio

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, even if the caller is cancelled.

    The wait is shielded: each task ends at its next await, so nothing is left running or
    unreported. Every outcome is retrieved, so asyncio never warns about an exception that
    nobody looked at.
    """
    for task in tasks:
        task.cancel()  # a no-op for a task that is done
    pending = [task for task in tasks if not task.done()]
    if pending:
        with anyio.CancelScope(shield=True):
            await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled():
            task.exception()
