"""pytest plugin: a running fake Copy.ai server and a client bound to it.

Installed with copyai_async (entry point pytest11), so in your own tests:

    async def test_my_code(copyai_client, copyai_server):
        run = await copyai_client.start_run(copyai_server.workflow_id, {"topic": "otters"})
        assert await my_code(copyai_client, run.id) == ...

`copyai_server` is a started `copyai_async.testing.FakeCopyAI` (seed runs with
`add_run`, inject faults with `inject`); `copyai_client` is a `copyai_async.CopyAIClient`
on it, closed after the test. Both are async fixtures: they need pytest-asyncio (any
mode) or anyio's pytest plugin.

The fixtures' docstrings are plain text (no reST roles): `pytest --fixtures` prints them
as they are, and the documentation renders them as Markdown.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from copyai_async import CopyAIClient
    from copyai_async.testing import FakeCopyAI

_F = TypeVar("_F", bound=Callable[..., Any])
_LOOP_SCOPE = "asyncio_default_fixture_loop_scope"


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
    """A fake Copy.ai API (`FakeCopyAI`) on 127.0.0.1, an ephemeral port, for one test.

    Runs started through it follow its default schedule: NEW, WAITING, PROCESSING, then
    COMPLETE 1 to 4 s after the start, each run at its own time (the same times on every
    test run: the seed is 0). Set its `default_schedule` or `schedule_for` to choose,
    e.g. `Schedule.polls(("PROCESSING", 2))` for runs that move on only when read; seed
    runs with `add_run(...)`; inject faults with `inject(...)`.
    """
    from copyai_async.testing import FakeCopyAI  # imported here: pytest starts faster

    async with FakeCopyAI() as server:
        yield server


@_async_fixture
async def copyai_client(copyai_server: FakeCopyAI) -> AsyncIterator[CopyAIClient]:
    """A `CopyAIClient` bound to the `copyai_server` fixture, closed after the test."""
    from copyai_async import CopyAIClient

    async with CopyAIClient(copyai_server.api_key, base_url=copyai_server.url) as client:
        yield client


def _keeps_fixture_scope() -> bool:
    """Whether the installed pytest-asyncio takes "fixture-scope" as its default fixture
    loop scope (1.5 and later): the value that does what leaving it unset does."""
    with contextlib.suppress(PackageNotFoundError, ValueError):
        major, minor = (int(part) for part in version("pytest-asyncio").split(".")[:2])
        return (major, minor) >= (1, 5)
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: Any) -> None:
    """Register the `copyai_async` marker; spare the fixtures' users pytest-asyncio's
    warning about an unset fixture loop scope."""
    config.addinivalue_line(
        "markers", "copyai_async: tests using the copyai_async fake server fixtures"
    )
    # pytest-asyncio warns (a PytestDeprecationWarning, an error under -W error) when a
    # project leaves asyncio_default_fixture_loop_scope unset, which means: each async
    # fixture's loop lives as long as the fixture. "fixture-scope" says exactly that, so
    # setting it changes nothing but the warning. This hook runs before pytest-asyncio's
    # (tryfirst). pytest has no public setter: the value goes where getini() keeps the
    # values it has read. Older pytest-asyncio has no such value; the choice stays the
    # project's there.
    try:
        unset = not config.getini(_LOOP_SCOPE)
    except ValueError:  # pytest-asyncio is not installed, or disabled (-p no:asyncio)
        return
    cache = getattr(config, "_inicache", None)
    if unset and isinstance(cache, dict) and _keeps_fixture_scope():
        cache[_LOOP_SCOPE] = "fixture-scope"
