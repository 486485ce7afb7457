"""Poller benchmark: ``client.wait_for_runs`` against ``asyncio.gather`` of polling loops.

One command (after ``pip install -e ".[fast]"``)::

    python benchmarks/bench_poll.py            # the full run, about four minutes
    python benchmarks/bench_poll.py --quick    # small sizes, under a minute

The fake Copy.ai server runs in a separate process with runs that finish at random times
(``--finish-between``); each contender runs in a fresh process of its own against a fresh
server, so peak RSS and CPU seconds are its own. Scenarios:

1. 10,000 runs finishing between 1 and 20 s: peak RSS, CPU seconds, requests, and
   detection latency (from the server marking a run terminal to the caller seeing it),
   for ours (default policy and concurrency) and for the common hand-written alternative,
   ``asyncio.gather`` of one polling loop per run with the same intervals (no jitter) on
   one aiohttp session.
2. ``rate_limit=R``: the most requests that start in any one-second window, against R.

Results are printed as a table of ratios and written to ``benchmarks/results/poll.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from _harness import KEY, WORKFLOW, fake_server  # benchmarks/ is on sys.path when run

import copyai_async
from copyai_async import CopyAIClient, PollPolicy
from copyai_async._poll import DEFAULT_CONCURRENCY

RESULTS = Path(__file__).parent / "results"
TERMINAL = ("COMPLETE", "FAILED")


def traced_session(starts: list[float]) -> aiohttp.ClientSession:
    """A session that notes when each request starts (for counts and rate windows)."""

    async def on_start(_session: Any, _ctx: SimpleNamespace, _params: Any) -> None:
        starts.append(time.monotonic())

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    return aiohttp.ClientSession(trace_configs=[trace])


async def ours(url: str, runs: list[dict[str, Any]], rate: float | None) -> dict[str, Any]:
    finishes = {r["id"]: r["finishes_at"] for r in runs}
    starts: list[float] = []
    latencies = []
    async with (
        traced_session(starts) as session,
        CopyAIClient(KEY, base_url=url, session=session, rate_limit=rate) as client,
    ):
        async for run in client.wait_for_runs(WORKFLOW, list(finishes)):
            latencies.append(time.time() - finishes[run.id])
    return {"latencies": latencies, "starts": starts}


async def gather_loops(
    url: str, runs: list[dict[str, Any]], rate: float | None, fixed: float | None = None
) -> dict[str, Any]:
    """The common alternative: one polling loop per run, all gathered; sleeping as our
    default policy does (without jitter), or a fixed ``fixed`` seconds."""
    policy = PollPolicy(jitter=0)
    finishes = {r["id"]: r["finishes_at"] for r in runs}
    starts: list[float] = []
    latencies = []
    async with traced_session(starts) as session:
        headers = {"x-copy-ai-api-key": KEY}

        async def one(run_id: str) -> None:
            attempt = 0
            while True:
                async with session.get(
                    f"{url}/workflow/{WORKFLOW}/run/{run_id}", headers=headers
                ) as resp:
                    resp.raise_for_status()
                    body = await resp.json()
                if body["data"].get("status") in TERMINAL:
                    latencies.append(time.time() - finishes[run_id])
                    return
                await asyncio.sleep(fixed if fixed is not None else policy.interval(attempt))
                attempt += 1

        await asyncio.gather(*(one(run_id) for run_id in finishes))
    return {"latencies": latencies, "starts": starts}


def run_child(mode: str, url: str, runs_file: str, rate: float | None) -> None:
    runs = json.loads(Path(runs_file).read_text())
    start = time.perf_counter()
    if mode == "ours":
        result = asyncio.run(ours(url, runs, rate))
    elif mode == "gather":
        result = asyncio.run(gather_loops(url, runs, rate))
    else:  # "gather-1s": the docs' "repeatedly call the endpoint with a short delay"
        result = asyncio.run(gather_loops(url, runs, rate, fixed=1.0))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    latencies = sorted(result["latencies"])
    starts = sorted(result["starts"])
    windows = 0
    j = 0
    for i, t in enumerate(starts):  # the most requests starting in any 1 s window
        while starts[j] < t - 1.0:
            j += 1
        windows = max(windows, i - j + 1)
    print(
        json.dumps(
            {
                "runs_seen": len(latencies),
                "requests": len(starts),
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "wall_s": time.perf_counter() - start,
                "p50_s": statistics.median(latencies),
                "p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                "max_per_second": windows,
            }
        )
    )


def measure(
    mode: str, runs: int, finish: tuple[float, float], rate: float | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runs_file = os.path.join(tmp, "runs.json")
        with fake_server(
            "--runs",
            str(runs),
            "--finish-between",
            str(finish[0]),
            str(finish[1]),
            "--runs-file",
            runs_file,
        ) as url:
            cmd = [sys.executable, __file__, "--child", mode, url, runs_file]
            if rate is not None:
                cmd += ["--rate", str(rate)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = dict(json.loads(out))
    if result["runs_seen"] != runs:
        raise RuntimeError(f"{mode} saw {result['runs_seen']} of {runs} runs")
    return result


def median_of(samples: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "URL", "RUNS_FILE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(*args.child, args.rate)
        return 0

    quick = args.quick
    n, finish = (500, (0.5, 4.0)) if quick else (10_000, (1.0, 20.0))
    repeats = 1 if quick else 3
    rate_runs, rate, rate_finish = (
        (300, 100.0, (0.5, 3.0)) if quick else (2_000, 200.0, (1.0, 10.0))
    )
    policy = PollPolicy()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine,
        "copyai_async": copyai_async.__version__,
        "aiohttp": aiohttp.__version__,
        "runs": n,
        "finish_between_s": finish,
        "policy": {
            "initial": policy.initial,
            "multiplier": policy.multiplier,
            "max_interval": policy.max_interval,
            "jitter": policy.jitter,
        },
        "concurrency": DEFAULT_CONCURRENCY,
        "quick": quick,
    }
    samples: dict[str, list[dict[str, Any]]] = {"ours": [], "gather": [], "gather-1s": []}
    for _ in range(repeats):
        for mode in samples:
            samples[mode].append(measure(mode, n, finish))
    ours_m, base_m = median_of(samples["ours"]), median_of(samples["gather"])
    fixed_m = median_of(samples["gather-1s"])
    results["wait"] = {"ours": ours_m, "gather": base_m, "gather_1s": fixed_m, "samples": samples}
    # The same comparison where neither side's queue holds it back (fewer runs).
    light_n = 300 if quick else 2_000
    light = {mode: measure(mode, light_n, finish) for mode in ("ours", "gather")}
    results["uncongested"] = {"runs": light_n, **light}
    rate_result = measure("ours", rate_runs, rate_finish, rate)
    results["rate"] = {
        "rate_limit": rate,
        "runs": rate_runs,
        **rate_result,
        "max_over_limit": rate_result["max_per_second"] / rate,
    }

    def row(
        label: str, key: str, fmt: str, target: str = "", ratio: bool = True
    ) -> tuple[str, ...]:
        cells = [fmt.format(m[key]) for m in (ours_m, base_m, fixed_m)]
        ratios = (
            [f"{ours_m[key] / base_m[key]:.2f}x", f"{ours_m[key] / fixed_m[key]:.2f}x"]
            if ratio
            else ["", ""]
        )
        return (label, *cells, *ratios, target)

    rows = [
        row("peak RSS", "peak_rss_mb", "{:.1f} MB", "<= 0.5x"),
        row("CPU seconds", "cpu_s", "{:.2f} s", "<= 1.0x"),
        row("requests", "requests", "{:,.0f}", "<= 1.0x"),
        (
            f"requests, {light_n:,} runs",
            f"{light['ours']['requests']:,}",
            f"{light['gather']['requests']:,}",
            "",
            f"{light['ours']['requests'] / light['gather']['requests']:.2f}x",
            "",
            "uncongested",
        ),
        row("detection p50", "p50_s", "{:.2f} s", "", ratio=False),
        row(
            "detection p99",
            "p99_s",
            "{:.2f} s",
            f"<= {policy.max_interval:g} s + 1 request",
            ratio=False,
        ),
        row("wall", "wall_s", "{:.1f} s", "", ratio=False),
        (
            f"rate_limit={rate:g}: most in 1 s",
            f"{rate_result['max_per_second']}",
            "",
            "",
            f"{rate_result['max_per_second'] / rate:.3f}x of R",
            "",
            "<= 1.05x",
        ),
    ]
    header = (
        "",
        "ours (wait_for_runs)",
        "gather, same intervals",
        "gather, 1 s sleep",
        "ours/same",
        "ours/1 s",
        "target",
    )
    width = [max(len(r[i]) for r in [header, *rows]) for i in range(7)]
    print(
        f"\ncopyai_async {results['copyai_async']} poller benchmark, {results['date']}, "
        f"{results['machine']}, {n:,} runs finishing {finish[0]:g}-{finish[1]:g} s, "
        f"concurrency {DEFAULT_CONCURRENCY}, median of {repeats}{', QUICK' if quick else ''}"
    )
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("poll-quick.json" if quick else "poll.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nall figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
