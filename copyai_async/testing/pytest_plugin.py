"""pytest plugin: a running fake Copy.ai server and a client bound to it.

Installed with copyai_async (entry point ``pytest11``), so in your own tests::

    async def test_my_code(copyai_client, copyai_server):
        run = await copyai_client.start_run(copyai_server.workflow_id, {"topic": "otters"})
        assert await my_code(copyai_client, run.id) == ...

``copyai_server`` is a started :class:`~copyai_async.testing.FakeCopyAI` (seed runs with
``add_run``, inject faults with ``inject``); ``copyai_client`` is a
:class:`~copyai_async.CopyAIClient` on it, closed after the test. Both are async
fixtures: they need pytest-asyncio (any mode) or anyio's pytest plugin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from copyai_async import CopyAIClient
    from copyai_async.testing import FakeCopyAI

_F = TypeVar("_F", bound=Callable[..., Any])


def _async_fixture(function: _F) -> _F:
    """pytest-asyncio's fixture decorator (its strict mode needs it; auto mode takes it
    too) when installed, else pytest's own (for anyio's plugin)."""
    decorate: Callable[[Any], Any]
    try:
        from pytest_asyncio import fixture as decorate
    except ImportError:  # pragma: no cover - depends on the user's plugins
        decorate = pytest.fixture
    return cast(_F, decorate(function))


@_async_fixture
async def copyai_server() -> AsyncIterator[FakeCopyAI]:
    """A fake Copy.ai API on 127.0.0.1 (an ephemeral port), for one test."""
    from copyai_async.testing import FakeCopyAI  # imported here: pytest starts faster

    async with FakeCopyAI() as server:
        yield server


@_async_fixture
async def copyai_client(copyai_server: FakeCopyAI) -> AsyncIterator[CopyAIClient]:
    """A :class:`CopyAIClient` bound to :func:`copyai_server`, closed after the test."""
    from copyai_async import CopyAIClient

    async with CopyAIClient(copyai_server.api_key, base_url=copyai_server.url) as client:
        yield client


def pytest_configure(config: Any) -> None:
    """Register the ``copyai_async`` marker."""
    config.addinivalue_line(
        "markers", "copyai_async: tests using the copyai_async fake server fixtures"
    )
