"""One client, one event loop: a second loop gets EventLoopError, and nothing is left open.

The two ways people meet it: ``asyncio.run()`` twice with one client, and two threads
with their own loops sharing one. These tests run their own loops (asyncio.run), so
they are synchronous; the fake server serves from a loop in a thread of its own.
Every warning is an error here, and an unclosed session or transport is looked for
explicitly (they are reported from ``__del__``, outside any test's frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from copyai_async import ClientClosedError, CopyAIClient, CopyAIError, EventLoopError
from copyai_async.testing import Schedule

from .test_cli import ThreadedServer


@pytest.fixture
def api() -> Iterator[ThreadedServer]:
    threaded = ThreadedServer()
    yield threaded
    threaded.close()


@contextlib.contextmanager
def nothing_left_behind() -> Iterator[None]:
    """Fail if anything is reported unclosed (ResourceWarning, or an error from
    ``__del__``) by the end of the block, garbage collected there."""
    reports: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda info: reports.append(f"{info.exc_value!r} in {info.object!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        sys.unraisablehook = previous
    reports += [str(w.message) for w in caught]
    assert reports == []


def _requests(api: ThreadedServer) -> int:
    return api.call(lambda: api.server.stats.requests)


def _client(api: ThreadedServer) -> CopyAIClient:
    return CopyAIClient(api.server.api_key, base_url=api.server.url, max_retries=0)


# -- asyncio.run() twice with one client --------------------------------------------------


def test_asyncio_run_twice_raises_event_loop_error_and_leaves_nothing_open(
    api: ThreadedServer,
) -> None:
    workflow = api.server.workflow_id
    with nothing_left_behind():
        client = _client(api)
        asyncio.run(client.list_runs(workflow))
        assert _requests(api) == 1
        with pytest.raises(EventLoopError) as info:
            asyncio.run(client.list_runs(workflow))
        error = info.value
        assert isinstance(error, CopyAIError)
        assert isinstance(error, RuntimeError)
        message = str(error)
        assert "served an event loop that has ended" in message
        assert "a CopyAIClient serves one event loop" in message
        assert "async with CopyAIClient() as client" in message
        assert _requests(api) == 1  # nothing sent
        # Closing it afterwards, from any loop, is fine: nothing is left to close.
        asyncio.run(client.aclose())
        assert client.closed
        with pytest.raises(ClientClosedError):
            asyncio.run(client.list_runs(workflow))
        del client


def _every_public_call(
    client: CopyAIClient, workflow: str, run: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def iterate(iterator: Any) -> None:
        async for _ in iterator:
            pass

    async def listen() -> None:
        async with client.listen(serve=False, public_url="https://example.org/hooks"):
            pass

    return {
        "get_run": lambda: client.get_run(workflow, run),
        "list_runs": lambda: client.list_runs(workflow),
        "start_run": lambda: client.start_run(workflow, {"topic": "otters"}),
        "find_started_run": lambda: client.find_started_run(workflow, "key"),
        "start_and_wait": lambda: client.start_and_wait(workflow, {"topic": "otters"}),
        "wait_for_run": lambda: client.wait_for_run(workflow, run),
        "watch_run": lambda: iterate(client.watch_run(workflow, run)),
        "wait_for_runs": lambda: iterate(client.wait_for_runs(workflow, [run])),
        "iter_runs": lambda: iterate(client.iter_runs(workflow)),
        "list_webhooks": lambda: iterate(client.list_webhooks()),
        "get_webhook": lambda: client.get_webhook("WH-1"),
        "delete_webhook": lambda: client.delete_webhook("WH-1"),
        "create_webhook": lambda: client.create_webhook(
            "https://example.org/hook", "workflowRun.completed"
        ),
        "listen": listen,
    }


def test_every_public_call_from_a_second_loop_raises_before_sending(
    api: ThreadedServer,
) -> None:
    workflow = api.server.workflow_id
    run = api.call(lambda: api.server.add_run(schedule=Schedule.immediate()).id)
    with nothing_left_behind():
        client = _client(api)
        asyncio.run(client.get_run(workflow, run))
        before = _requests(api)
        for name, call in _every_public_call(client, workflow, run).items():
            with pytest.raises(EventLoopError):
                asyncio.run(call())
            assert _requests(api) == before, name
        del client


# -- two threads, each with its own loop ---------------------------------------------------


def _in_thread(name: str, work: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    return thread


def _first_loop_and_a_second(api: ThreadedServer) -> dict[str, Any]:
    """A client used in a loop in one thread, kept running while another thread's loop
    calls it and tries to close it; what each got."""
    workflow = api.server.workflow_id
    client = _client(api)
    used = threading.Event()
    checked = threading.Event()
    outcome: dict[str, Any] = {}

    async def first() -> None:
        async with client:
            outcome["first"] = await client.list_runs(workflow)
            used.set()
            # The loop keeps running (and serving the client) while the other thread tries.
            await asyncio.to_thread(checked.wait, 10)
            outcome["after"] = await client.list_runs(workflow)

    def second() -> None:
        used.wait(10)
        for label, call in (
            ("call", lambda: client.list_runs(workflow)),
            ("close", client.aclose),
        ):
            try:
                asyncio.run(call())
            except BaseException as error:
                outcome[label] = error
        checked.set()

    threads = [_in_thread("first-loop", lambda: asyncio.run(first()))]
    threads.append(_in_thread("second-loop", second))
    for thread in threads:
        thread.join(20)
    return outcome


def test_second_thread_gets_event_loop_error_while_the_first_loop_runs(
    api: ThreadedServer,
) -> None:
    with nothing_left_behind():
        outcome = _first_loop_and_a_second(api)
    assert outcome["first"].runs == ()
    assert outcome["after"].runs == ()
    call, close = outcome["call"], outcome["close"]
    assert isinstance(call, EventLoopError), repr(call)
    assert "serves the event loop it was first used in (in thread 'first-loop')" in str(call)
    assert "asyncio.run_coroutine_threadsafe" in str(call)
    # Closing from the other thread cannot work (the session is the first loop's): it says so.
    assert isinstance(close, EventLoopError), repr(close)
    assert "close it there" in str(close)
    assert _requests(api) == 2


def _race(api: ThreadedServer) -> list[Any]:
    """Two threads, each with its own loop, using a new client at the same moment."""
    workflow = api.server.workflow_id
    client = _client(api)
    start = threading.Barrier(2)
    outcomes: list[Any] = []

    def race() -> None:
        async def go() -> Any:
            start.wait(10)
            return await client.list_runs(workflow)

        try:
            outcomes.append(asyncio.run(go()))
        except BaseException as error:
            outcomes.append(error)

    threads = [_in_thread(f"racer-{n}", race) for n in range(2)]
    for thread in threads:
        thread.join(20)
    return outcomes


def test_two_threads_racing_on_first_use(api: ThreadedServer) -> None:
    for _ in range(10):
        with nothing_left_behind():
            outcomes = _race(api)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(outcomes) == 2
        assert len(errors) == 1, outcomes
        assert isinstance(errors[0], EventLoopError), repr(errors[0])
