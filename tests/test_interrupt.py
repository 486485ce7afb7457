"""Ctrl-C on the command line (copyai_async._interrupt), in real processes with real
signals: the first cancels the command, a second or a stuck cleanup ends the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from copyai_async._interrupt import EXIT_INTERRUPTED, run_interruptible

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# Each program prints "ready" once its command runs, then behaves as its body says.
PROGRAM = """
import asyncio, sys
from copyai_async._interrupt import run_interruptible

async def command() -> int:
    print("ready", flush=True)
{body}

try:
    status = run_interruptible(command(), grace={grace})
except KeyboardInterrupt:
    print("interrupted, cleanly", flush=True)
    sys.exit(130)
print("status", status, flush=True)
sys.exit(status)
"""

CLEANS_UP = """
    try:
        await asyncio.sleep(3600)
    finally:
        print("closed", flush=True)
    return 0
"""

# A cleanup that never ends: the cancellation is caught and the wait goes on, shielded.
STUCK = """
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        print("cleaning up", flush=True)
        await asyncio.shield(asyncio.sleep(3600))
    return 0
"""

# The command ends, but a task it left behind ignores cancellation: asyncio.run's own
# shutdown (which cancels and awaits leftover tasks) would wait for ever.
LEAVES_A_STUBBORN_TASK = """
    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(3600)
    return 0
"""

SWALLOWS = """
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass
    return 0
"""


def spawn(body: str, grace: float) -> subprocess.Popen[str]:
    source = PROGRAM.format(body=body, grace=grace)
    proc = subprocess.Popen(
        [sys.executable, "-c", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:  # never leave a process behind, whatever failed
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def interrupt(proc: subprocess.Popen[str], times: int = 1) -> tuple[str, str, float]:
    began = time.monotonic()
    for _ in range(times):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    return out, err, time.monotonic() - began


def test_first_ctrl_c_cancels_the_command_and_its_cleanup_runs(
    procs: list[subprocess.Popen[str]],
) -> None:
    procs.append(proc := spawn(CLEANS_UP, grace=30))
    out, err, _ = interrupt(proc)
    assert proc.returncode == EXIT_INTERRUPTED
    assert out.splitlines() == ["closed", "interrupted, cleanly"]
    assert err == ""


def test_a_cleanup_that_hangs_ends_after_the_grace_period(
    procs: list[subprocess.Popen[str]],
) -> None:
    procs.append(proc := spawn(STUCK, grace=1.0))
    out, err, took = interrupt(proc)
    assert proc.returncode == EXIT_INTERRUPTED
    assert out.splitlines() == ["cleaning up"]  # the KeyboardInterrupt path never ran
    assert err.strip() == "interrupted"
    assert 1.0 <= took < 30  # waited out the grace, then ended instead of an hour


def test_the_grace_period_covers_asyncio_runs_own_shutdown(
    procs: list[subprocess.Popen[str]],
) -> None:
    procs.append(proc := spawn(LEAVES_A_STUBBORN_TASK, grace=1.0))
    out, err, took = interrupt(proc)
    assert proc.returncode == EXIT_INTERRUPTED
    assert out == ""  # asyncio.run never returned
    assert err.strip() == "interrupted"
    assert 1.0 <= took < 30


def test_a_second_ctrl_c_ends_at_once(procs: list[subprocess.Popen[str]]) -> None:
    procs.append(proc := spawn(STUCK, grace=3600))
    out, err, took = interrupt(proc, times=2)
    assert proc.returncode == EXIT_INTERRUPTED
    assert out.splitlines() == ["cleaning up"]
    assert err.strip() == "interrupted"
    assert took < 30  # not the hour of the shielded cleanup


def test_a_command_that_swallows_the_cancellation_is_still_interrupted(
    procs: list[subprocess.Popen[str]],
) -> None:
    procs.append(proc := spawn(SWALLOWS, grace=30))
    out, _, _ = interrupt(proc)
    assert proc.returncode == EXIT_INTERRUPTED
    assert out.splitlines() == ["interrupted, cleanly"]  # not "status 0"


def test_without_ctrl_c_the_status_is_returned() -> None:
    async def command() -> int:
        return 7

    assert run_interruptible(command()) == 7


def test_grace_must_be_positive() -> None:
    async def command() -> int:
        return 0

    coro = command()
    with pytest.raises(ValueError, match="grace must be > 0"):
        run_interruptible(coro, grace=0)
    coro.close()
