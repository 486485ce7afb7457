"""Reliability experiments against servers in processes of their own (README: Reliability).

    python benchmarks/reliability.py            # the full experiments (about 15 minutes)
    python benchmarks/reliability.py --quick    # 1 s idle timeout only, fewer starts
    python benchmarks/reliability.py --tiny     # seconds: checks the harness works

1. The keep-alive edge. A server closes connections idle for its timeout; clients send
   pairs of starts, each pair about one idle timeout after the last answer, the delays
   swept across the edge (timeout - 10 ms to + 10 ms, scattered). Counted: starts that
   failed, starts reported, runs the server created (equal when none is lost or doubled).
   Stacks: aiohttp.web (the fake server), uvicorn and Hypercorn (a small ASGI Copy.ai).
2. The chaos wait. Runs that finish at random times; 18% of requests get a fault
   (5xx with JSON or HTML, 429 with and without Retry-After, dropped connections, bodies
   cut short mid-stream, 200 answers cut short or HTML). Every run is waited on with its
   own ``wait_for_run``, all at once, with default client settings. Counted: waits that
   ended with an error, and runs whose status came back wrong.

Whichever copyai_async is importable is measured (``PYTHONPATH`` can point at another
checkout, to measure it side by side); results go to ``results/reliability.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# For _harness. (The ASGI servers run as ``python -m tests.real_servers`` from ROOT; this
# process imports whichever copyai_async is importable, so PYTHONPATH can pick another.)
sys.path.insert(0, str(HERE))

from _harness import KEY, WORKFLOW, fake_server, served  # noqa: E402

import copyai_async  # noqa: E402 - after the path is set
from copyai_async import CopyAIClient, CopyAIError, PollPolicy  # noqa: E402

ASGI_KEY, ASGI_WORKFLOW = "test-key", "WCFG-real-server"


def asgi_server(stack: str, idle: float) -> AbstractContextManager[str]:
    """uvicorn or Hypercorn in a process of its own, serving the small ASGI Copy.ai."""
    return served([sys.executable, "-m", "tests.real_servers", stack, str(idle)], cwd=ROOT)


def _stats(url: str) -> dict[str, Any]:
    root = url.rsplit("/api", 1)[0]
    for candidate in (f"{root}/_fake/stats", f"{root}/_stats"):  # the fake's, the ASGI app's
        try:
            with urllib.request.urlopen(candidate, timeout=10) as resp:  # noqa: S310 - loopback
                stats: dict[str, Any] = json.load(resp)
        except OSError:
            continue
        return stats
    raise RuntimeError(f"no stats at {root}")


async def _edge(
    url: str, key: str, workflow: str, *, idle: float, clients: int, pairs: int
) -> dict[str, Any]:
    failures: Counter[str] = Counter()
    reported = 0
    n = clients * pairs

    async def one(i: int) -> None:
        nonlocal reported
        async with CopyAIClient(key, base_url=url) as client:
            for p in range(pairs):
                for _ in range(2):
                    try:
                        await client.start_run(workflow, {"client": i, "pair": p})
                    except CopyAIError as exc:
                        cause = exc.__cause__
                        failures[type(cause).__name__ if cause else type(exc).__name__] += 1
                    else:
                        reported += 1
                k = (i * pairs + p) * 7919 % n
                await asyncio.sleep(idle - 0.010 + 0.020 * k / n)

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return {
        "starts": 2 * n,
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "reported": reported,
        "wall_s": round(time.monotonic() - began, 1),
    }


def keepalive(idles: list[float], clients: int, pairs: int) -> list[dict[str, Any]]:
    rows = []
    for idle in idles:
        for stack in ("aiohttp.web", "uvicorn", "hypercorn"):
            if stack == "aiohttp.web":
                server = fake_server("--keepalive-timeout", str(idle))
                key, workflow = KEY, WORKFLOW
            else:
                server = asgi_server(stack, idle)
                key, workflow = ASGI_KEY, ASGI_WORKFLOW
            with server as url:
                row = asyncio.run(
                    _edge(url, key, workflow, idle=idle, clients=clients, pairs=pairs)
                )
                stats = _stats(url)
            row.update(
                stack=stack,
                idle_s=idle,
                created=stats.get("runs_started", stats.get("starts")),
            )
            row["lost"] = row["starts"] - row["reported"]
            row["doubled"] = row["created"] - row["reported"]
            rows.append(row)
            print(
                f"  keep-alive {idle:g} s {stack:<12} starts {row['starts']:>5}  "
                f"failed {row['failed']:>3}  created {row['created']:>5}  "
                f"(runs created but reported failed: {row['doubled']})  {row['wall_s']} s",
                flush=True,
            )
    return rows


async def _chaos(url: str, ids: list[str]) -> dict[str, Any]:
    # Polls every 0.2-0.5 s: many polls per run, so the faults are met often.
    policy = PollPolicy(initial=0.2, multiplier=1.3, max_interval=0.5)
    began = time.monotonic()
    async with CopyAIClient(KEY, base_url=url) as client:
        results = await asyncio.gather(
            *(
                client.wait_for_run(WORKFLOW, run_id, policy=policy, raise_on_failure=False)
                for run_id in ids
            ),
            return_exceptions=True,
        )
    errors = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    finished = [r for r in results if not isinstance(r, BaseException)]
    return {
        "runs": len(ids),
        "waits_ended_by_error": sum(errors.values()),
        "errors": dict(errors),
        "finished": len(finished),
        "complete": sum(r.status.value == "COMPLETE" for r in finished),
        "wall_s": round(time.monotonic() - began, 1),
    }


def chaos(
    runs: int, fault_rate: float, out_dir: Path, finish: tuple[float, float] = (1.0, 8.0)
) -> dict[str, Any]:
    runs_file = str(out_dir / "chaos-runs.json")
    options = ["--runs", str(runs), "--finish-between", *map(str, finish)]
    options += ["--runs-file", runs_file]
    options += ["--fault-rate", str(fault_rate), "--seed", "14"]
    with fake_server(*options) as url:
        ids = [entry["id"] for entry in json.loads(Path(runs_file).read_text())]
        row = asyncio.run(_chaos(url, ids))
        stats = _stats(url)
    row.update(
        requests=stats["requests"],
        faults=stats["faults"],
        fault_share=round(stats["faults"] / max(1, stats["requests"]), 3),
    )
    print(
        f"  chaos wait: {row['runs']} runs, {row['faults']} faults in {row['requests']} "
        f"requests ({row['fault_share']:.1%}): waits ended by an error "
        f"{row['waits_ended_by_error']} {row['errors']}, finished {row['finished']} "
        f"(COMPLETE {row['complete']}), {row['wall_s']} s",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1 s idle timeout only, fewer starts")
    size.add_argument("--tiny", action="store_true", help="seconds: checks the harness works")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where results go")
    parser.add_argument(
        "--idle",
        type=float,
        action="append",
        metavar="S",
        help="only the keep-alive experiment, at this idle timeout (repeatable)",
    )
    parser.add_argument("--pairs", type=int, default=20, help="pairs of starts per client")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"copyai_async from {Path(copyai_async.__file__).parent}", flush=True)
    if args.idle:
        edge = keepalive(args.idle, clients=25, pairs=args.pairs)
        (args.out / "reliability-keepalive.json").write_text(json.dumps(edge, indent=2))
        return 0
    if args.tiny:
        edge = keepalive([0.3], clients=2, pairs=2)
        wait = chaos(20, 0.18, args.out, finish=(0.2, 1.0))
    elif args.quick:
        edge = keepalive([1.0], clients=25, pairs=8)
        wait = chaos(300, 0.18, args.out)
    else:
        edge = keepalive([1.0, 5.0], clients=25, pairs=20)
        wait = chaos(300, 0.18, args.out)
    result = {"client": str(Path(copyai_async.__file__).parent), "keepalive": edge, "chaos": wait}
    (args.out / "reliability.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
