"""The listener as a public endpoint, and waits at the edges of event delivery, measured
against the previous release (docs: Reliability).

    python benchmarks/hardening.py              # the full measurements (about 5 minutes)
    python benchmarks/hardening.py --tiny       # a minute: checks the harness works
    python benchmarks/hardening.py --no-baseline       # this checkout only
    python benchmarks/hardening.py --baseline-dir DIR   # a baseline checkout of your own

Each measurement runs the listener (and its client) in a process of its own, once with
this checkout's copyai_async and once with the baseline's (by default the release before
the hardening, checked out from git into a temporary worktree), side by side in the same
run; this process attacks it, and the fake Copy.ai server runs in a third.

1. bombs: two 1 MB gzip bodies that inflate to 1 GiB each, sent without the secret, at
   once, while deliveries with the secret arrive every 0.1 s. Measured in the listener's
   process: how long its event loop was blocked in all (the lateness of a 5 ms ticker
   beyond 2 ms, summed) and at most at once, its API calls (one every 50 ms, 1 s
   timeout) that failed; and how long the deliveries took.
2. slow: 20 connections that send half a request line, then a byte a second; how long
   until the listener closes them (watched for 30 s).
3. flood: 1,100 such connections against a process limited to 1,024 open files, for 15 s,
   while it calls the API every 50 ms (each on a new connection) and deliveries with the
   secret arrive every 0.5 s: API calls that failed, failed accepts logged, deliveries
   answered, and how long they took.
4. forged: 300 runs that fail 1 to 5 s after they start; 0.5 s after each start, a forged
   ``workflowRun.failed`` with the very body the genuine one will have. All are waited on
   with one ``wait_for_runs`` (default policy) while a listener receives the events: GETs
   of the runs, and how long after each run failed its wait saw it.

Results go to ``results/hardening.json``; ratios are this checkout / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

BASELINE_REF = "4e869b1"
"""The release before the hardening (issue 25): the default baseline."""

EVENT = {"type": "workflowRun.completed", "workflowRunId": "WRUN-x", "workflowId": "WCFG-x"}


# -- the listener's side (a child process, with the copyai_async under test) -------------


class _Ticker:
    """How late a 5 ms ticker wakes: the event loop's blocked time (lateness past 2 ms
    counts; less is the scheduler's usual jitter)."""

    def __init__(self) -> None:
        self.late: list[float] = []

    async def run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            self.late.append(max(0.0, time.perf_counter() - start - 0.005 - 0.002))


class _Records(logging.Handler):
    """Appends the messages that contain ``words`` to ``into``."""

    def __init__(self, words: str, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self._words, self._into = words, into

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self._words in message:
            self._into.append(message)


async def _probe_api(client: Any, workflow_id: str, run_id: str, into: dict[str, Any]) -> None:
    from copyai_async import CopyAIError

    while True:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(client.get_run(workflow_id, run_id), 1.0)
        except (CopyAIError, asyncio.TimeoutError) as exc:
            into["failed"] += 1
            into.setdefault("errors", set()).add(type(exc).__name__)
        into["calls"] += 1
        into["latency"].append(time.perf_counter() - start)
        await asyncio.sleep(0.05)


async def _line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def child_listener(spec: dict[str, Any]) -> dict[str, Any]:
    """Serve a listener, probe the loop and the API until told to stop; report."""
    from copyai_async import CopyAIClient

    if spec.get("open_files"):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec["open_files"], hard))
    ticker = _Ticker()
    api: dict[str, Any] = {"calls": 0, "failed": 0, "latency": []}
    # Failed accepts, as logged: asyncio's own (through the loop's exception handler)
    # and the listener's.
    accept_logs: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: accept_logs.append(context["message"]))
    counter = _Records("cannot accept connections", accept_logs)
    logging.getLogger("copyai_async").addHandler(counter)
    async with CopyAIClient(spec["key"], base_url=spec["url"], timeout=5) as client:
        run = await client.start_run(spec["workflow"], {})
        async with client.listen() as listener:
            tasks = [
                asyncio.ensure_future(ticker.run()),
                asyncio.ensure_future(_probe_api(client, spec["workflow"], run.id, api)),
            ]
            print(json.dumps({"url": str(listener.url)}), flush=True)
            await _line()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stats = listener.stats
    latency = sorted(api["latency"])
    return {
        "loop_blocked_s": round(sum(ticker.late), 3),
        "loop_max_stall_s": round(max(ticker.late, default=0.0), 3),
        "api_calls": api["calls"],
        "api_failed": api["failed"],
        "api_errors": sorted(api.get("errors", ())),
        "api_p99_s": round(latency[int(len(latency) * 0.99)] if latency else 0.0, 3),
        "not_found": stats.not_found,
        "accepted": stats.accepted,
        "accept_errors_logged": len(accept_logs),
    }


async def child_forged(spec: dict[str, Any]) -> dict[str, Any]:
    """The forged-event measurement, whole, in one process (fake server included)."""
    from copyai_async import CopyAIClient
    from copyai_async.testing import FakeCopyAI, Schedule

    runs, rng = spec["runs"], random.Random(7)
    fail_after = [rng.uniform(*spec["fail_after"]) for _ in range(runs)]
    schedules = iter([Schedule.seconds(("PROCESSING", s), final="FAILED") for s in fail_after])
    async with (
        FakeCopyAI(schedule_for=lambda _wf, _vars: next(schedules)) as server,
        CopyAIClient(server.api_key, base_url=server.url, max_retries=2) as client,
        client.listen() as listener,
    ):
        await listener.register(server.workflow_id)
        started: dict[str, float] = {}
        fakes = {}
        for _ in range(runs):
            run = await client.start_run(server.workflow_id, {})
            started[run.id] = time.monotonic()
            fakes[run.id] = next(r for r in server.runs() if r.id == run.id)
        failed_at = {
            run_id: started[run_id] + after
            for run_id, after in zip(started, fail_after, strict=True)
        }

        async def forge(run_id: str) -> None:
            await asyncio.sleep(max(0.0, started[run_id] + spec["forge_after"] - time.monotonic()))
            body = server.event_body(fakes[run_id], "workflowRun.failed", status="FAILED")
            await server.post_event(str(listener.url), body)

        forging = asyncio.gather(*(forge(run_id) for run_id in started))
        gets_before = _run_gets(server)
        seen: dict[str, float] = {}
        async for run in client.wait_for_runs(server.workflow_id, list(started)):
            seen[run.id] = time.monotonic()
        await forging
        gets = _run_gets(server) - gets_before
    delays = sorted(seen[r] - failed_at[r] for r in seen)
    return {
        "runs": runs,
        "seen": len(seen),
        "gets": gets,
        "gets_per_run": round(gets / runs, 2),
        "p50_s": round(statistics.median(delays), 3),
        "p99_s": round(delays[int(len(delays) * 0.99)], 3),
        "max_s": round(delays[-1], 3),
    }


def _run_gets(server: Any) -> int:
    return sum(1 for r in server.requests if r.method == "GET" and "/run/" in r.path)


def child_main(kind: str, spec: dict[str, Any]) -> None:
    main = child_forged if kind == "forged" else child_listener
    print(json.dumps(asyncio.run(main(spec))), flush=True)


# -- the attacker's side (this process) --------------------------------------------------


class Child:
    """A measurement's child process, with one copyai_async on its path."""

    def __init__(self, kind: str, spec: dict[str, Any], root: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the child ended early (exit {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        result = self.read()
        self.proc.wait(timeout=60)
        return result


def _bomb(inflated: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    return b"".join(
        [*(compressor.compress(block) for _ in range(inflated >> 20)), compressor.flush()]
    )


def _split(url: str) -> tuple[str, int, str]:
    from yarl import URL

    parsed = URL(url)
    return str(parsed.host), int(parsed.port or 80), parsed.path


async def _send_bomb(url: str, body: bytes) -> None:
    host, port, path = _split(url)
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body)
        await writer.drain()
        await asyncio.wait_for(reader.read(), 15)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


async def _deliver(url: str, timeout: float) -> tuple[int, float]:
    import aiohttp

    start = time.perf_counter()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url,
                json=EVENT,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp,
        ):
            return resp.status, time.perf_counter() - start
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return 0, time.perf_counter() - start


async def _deliveries(
    url: str, every: float, until: float, timeout: float
) -> list[tuple[int, float]]:
    sent = []
    while time.perf_counter() < until:
        sent.append(asyncio.ensure_future(_deliver(url, timeout)))
        await asyncio.sleep(every)
    return list(await asyncio.gather(*sent))


async def _slow(url: str, stay: float, every: float = 1.0) -> float:
    """A connection that never finishes its request; seconds until the server closed it
    (``stay`` if it did not)."""
    host, port, path = _split(url)
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return 0.0
    try:
        writer.write(f"POST {path}"[:12].encode())
        while time.perf_counter() - start < stay:
            try:
                if await asyncio.wait_for(reader.read(1), every) == b"":
                    return time.perf_counter() - start
            except asyncio.TimeoutError:
                writer.write(b"x")
    except OSError:
        return time.perf_counter() - start
    finally:
        writer.close()
    return stay


def measure_bombs(root: Path, fake: dict[str, str], tiny: bool) -> dict[str, Any]:
    child = Child("listener", fake, root)
    url = child.read()["url"]
    bare = url.split("?", 1)[0]
    body = _bomb((8 if tiny else 1024) << 20)

    async def attack() -> list[tuple[int, float]]:
        await asyncio.sleep(0.5)  # a quiet start, for the ticker
        until = time.perf_counter() + (1 if tiny else 8)
        genuine = asyncio.ensure_future(_deliveries(url, 0.1, until, 10))
        await asyncio.gather(*(_send_bomb(bare, body) for _ in range(2)))
        return await genuine

    delivered = asyncio.run(attack())
    result = child.finish()
    times = sorted(t for status, t in delivered if status == 200)
    result.update(
        bomb_bytes=len(body),
        deliveries=len(delivered),
        deliveries_ok=len(times),
        delivery_max_s=round(times[-1], 3) if times else None,
    )
    return result


def measure_slow(root: Path, fake: dict[str, str], tiny: bool) -> dict[str, Any]:
    child = Child("listener", fake, root)
    url = child.read()["url"]
    watch = 1.5 if tiny else 30.0

    async def attack() -> list[float]:
        return list(await asyncio.gather(*(_slow(url, watch) for _ in range(20))))

    open_for = sorted(asyncio.run(attack()))
    child.finish()
    return {
        "connections": 20,
        "watched_s": watch,
        "closed": sum(t < watch for t in open_for),
        "closed_after_max_s": round(max(t for t in open_for if t < watch), 2)
        if any(t < watch for t in open_for)
        else None,
    }


def measure_flood(root: Path, fake: dict[str, str], tiny: bool) -> dict[str, Any]:
    connections = 150 if tiny else 1_100
    child = Child("listener", {**fake, "open_files": 256 if tiny else 1024}, root)
    url = child.read()["url"]
    seconds = 1.5 if tiny else 15.0

    async def attack() -> list[tuple[int, float]]:
        slow = [asyncio.ensure_future(_slow(url, seconds)) for _ in range(connections)]
        await asyncio.sleep(1.0)
        until = time.perf_counter() + seconds - 1.0
        delivered = await _deliveries(url, 0.5, until, 5.0)
        await asyncio.gather(*slow)
        return delivered

    delivered = asyncio.run(attack())
    result = child.finish()
    times = sorted(t for status, t in delivered if status == 200)
    result.update(
        connections=connections,
        deliveries=len(delivered),
        deliveries_ok=len(times),
        delivery_p50_s=round(statistics.median(times), 3) if times else None,
    )
    return result


def measure_forged(root: Path, tiny: bool) -> dict[str, Any]:
    spec = {
        "runs": 20 if tiny else 300,
        "fail_after": (0.8, 1.5) if tiny else (1.0, 5.0),
        "forge_after": 0.5,
    }
    child = Child("forged", spec, root)
    result = child.read()
    child.proc.wait(timeout=60)
    return result


# -- the whole --------------------------------------------------------------------------


def _baseline_checkout(stack: ExitStack, ref: str) -> Path | None:
    where = Path(tempfile.mkdtemp(prefix="copyai-baseline-"))
    added = subprocess.run(
        ["git", "worktree", "add", "--detach", str(where), ref],  # noqa: S607 - git on PATH
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if added.returncode:
        print(f"no baseline ({ref}): {added.stderr.strip()}")
        return None
    stack.callback(
        subprocess.run,
        ["git", "worktree", "remove", "--force", str(where)],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    return where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (checks the harness)")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the baseline")
    parser.add_argument("--baseline-dir", type=Path, help="a baseline checkout instead")
    parser.add_argument("--no-baseline", action="store_true", help="measure this checkout only")
    parser.add_argument("--only", help="these measurements only, comma-separated")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], json.loads(args.child[1]))
        return 0
    from _harness import KEY, WORKFLOW, fake_server

    results: dict[str, Any] = {}
    with ExitStack() as stack:
        baseline = None
        if not args.no_baseline:
            baseline = args.baseline_dir or _baseline_checkout(stack, args.baseline_ref)
        versions = {"this": ROOT, **({"baseline": baseline} if baseline else {})}
        # Idle connections closed at once: each API call of the listener's process opens
        # a connection, as calls a while apart do against the real API.
        url = stack.enter_context(fake_server("--keepalive-timeout", "0.01"))
        fake = {"url": url, "key": KEY, "workflow": WORKFLOW}
        for name, measure in (
            ("bombs", lambda root: measure_bombs(root, fake, args.tiny)),
            ("slow", lambda root: measure_slow(root, fake, args.tiny)),
            ("flood", lambda root: measure_flood(root, fake, args.tiny)),
            ("forged", lambda root: measure_forged(root, args.tiny)),
        ):
            if args.only and name not in args.only.split(","):
                continue
            results[name] = {}
            for version, root in versions.items():
                results[name][version] = row = measure(root)
                print(f"{name:7} {version:9} {json.dumps(row)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hardening.json").write_text(json.dumps(results, indent=2))
    print(f"results in {args.out / 'hardening.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
