"""Paginator benchmark: ``client.iter_runs`` against a hand-written aiohttp page loop.

One command (after ``pip install -e ".[fast]"``)::

    python benchmarks/bench_paginate.py            # the full run, a few minutes
    python benchmarks/bench_paginate.py --quick    # small sizes, seconds (checks it works)

The fake Copy.ai server runs in a separate process (``python -m copyai_async.testing``).
Ours and the baseline run alternately in the same process against the same server, and
every figure is the median of the repeats. Scenarios:

1. 10,000 runs at 50 ms per request: wall time against the ideal
   ``ceil(pages / prefetch) * latency`` and against the sequential aiohttp loop.
2. No added latency: runs per second against the aiohttp loop that only decodes JSON
   (ours also builds typed models and checks for repeats). Measured with orjson when
   installed, and again with the standard library's json.
3. Memory: peak RSS of a fresh process streaming 10,000 runs and 1,000,000 runs.

Results are printed as a table of ratios and written to ``benchmarks/results/paginate.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from _harness import KEY, WORKFLOW, fake_server  # benchmarks/ is on sys.path when run

import copyai_async
from copyai_async import CopyAIClient
from copyai_async._paginate import DEFAULT_PREFETCH

PAGE = 100
RESULTS = Path(__file__).parent / "results"


async def aiohttp_loop(url: str, limit: int | None = None) -> int:
    """The baseline: the page loop a user would write by hand, decoding JSON only."""
    count = 0
    async with aiohttp.ClientSession(headers={"x-copy-ai-api-key": KEY}) as session:
        page = 1
        while True:
            async with session.get(
                f"{url}/workflow/{WORKFLOW}/run", params={"page": page, "size": PAGE}
            ) as resp:
                resp.raise_for_status()
                body = await resp.json()
            runs = body["data"]["data"]
            count += len(runs)
            if len(runs) < PAGE or (limit is not None and count >= limit):
                return count
            page += 1


async def ours(url: str, limit: int | None = None, prefetch: int = DEFAULT_PREFETCH) -> int:
    count = 0
    async with CopyAIClient(KEY, base_url=url) as client:
        async for _ in client.iter_runs(WORKFLOW, max_items=limit, prefetch=prefetch):
            count += 1
    return count


def timed(make: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    start = time.perf_counter()
    count = asyncio.run(make())  # type: ignore[arg-type]
    return time.perf_counter() - start, count


def alternate(
    contenders: dict[str, Callable[[], Awaitable[int]]], repeats: int, expect: int
) -> dict[str, list[float]]:
    """Run each contender ``repeats`` times, interleaved; check each saw every run."""
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    for make in contenders.values():  # warm-up
        timed(make)
    for _ in range(repeats):
        for name, make in contenders.items():
            wall, count = timed(make)
            if count != expect:
                raise RuntimeError(f"{name} saw {count} runs, expected {expect}")
            walls[name].append(wall)
    return walls


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@contextmanager
def stdlib_json() -> Iterator[None]:
    import copyai_async._http as http

    saved = http._fast_loads
    http._fast_loads = None
    try:
        yield
    finally:
        http._fast_loads = saved


def child_rss(url: str, limit: int) -> dict[str, Any]:
    """Stream ``limit`` runs in a fresh process; report its peak RSS."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", url, str(limit)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def run_child(url: str, limit: int) -> None:
    start = time.perf_counter()
    count = asyncio.run(ours(url, limit))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"runs": count, "peak_rss_mb": peak_kb / 1024, "seconds": time.perf_counter() - start}
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--child", nargs=2, metavar=("URL", "RUNS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], int(args.child[1]))
        return 0

    quick = args.quick
    repeats = 2 if quick else 5
    n_latency = 1_000 if quick else 10_000
    n_fast = 2_000 if quick else 100_000
    n_small, n_big = (1_000, 20_000) if quick else (10_000, 1_000_000)
    latency = 50.0
    fast_decoder = copyai_async._http._fast_loads is not None
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine,
        "copyai_async": copyai_async.__version__,
        "aiohttp": aiohttp.__version__,
        "orjson": fast_decoder,
        "prefetch": DEFAULT_PREFETCH,
        "quick": quick,
    }
    rows: list[tuple[str, str, str, str]] = []

    # 1. Latency-bound: prefetch against the sequential loop and against the ideal.
    with fake_server("--runs", str(n_latency), "--latency", str(latency)) as url:
        walls = alternate(
            {"ours": lambda: ours(url), "aiohttp loop": lambda: aiohttp_loop(url)},
            repeats,
            n_latency,
        )
    pages = math.ceil(n_latency / PAGE)
    ideal = math.ceil(pages / DEFAULT_PREFETCH) * latency / 1000
    ours_wall = statistics.median(walls["ours"])
    loop_wall = statistics.median(walls["aiohttp loop"])
    results["latency"] = {
        "runs": n_latency,
        "latency_ms": latency,
        "ideal_s": ideal,
        "ours_s": summary(walls["ours"]),
        "aiohttp_loop_s": summary(walls["aiohttp loop"]),
        "ours_over_ideal": ours_wall / ideal,
        "speedup_over_loop": loop_wall / ours_wall,
    }
    rows.append(
        (
            f"{n_latency:,} runs @ {latency:g} ms: wall",
            f"{ours_wall:.3f} s",
            f"ideal {ideal:.3f} s -> {ours_wall / ideal:.2f}x",
            "target <= 1.3x",
        )
    )
    rows.append(
        ("", "", f"loop {loop_wall:.3f} s -> {loop_wall / ours_wall:.1f}x faster", "target >= 4x")
    )

    # 2. CPU-bound: no added latency.
    with fake_server("--runs", str(n_fast)) as url:
        contenders: dict[str, Callable[[], Awaitable[int]]] = {
            "ours": lambda: ours(url),
            "aiohttp loop": lambda: aiohttp_loop(url),
        }
        walls = alternate(contenders, repeats, n_fast)
        with stdlib_json():
            walls_std = alternate({"ours (stdlib json)": lambda: ours(url)}, repeats, n_fast)
    rate = {name: n_fast / statistics.median(w) for name, w in (walls | walls_std).items()}
    results["throughput"] = {
        "runs": n_fast,
        "runs_per_s": rate,
        "seconds": {name: summary(w) for name, w in (walls | walls_std).items()},
        "ours_over_loop": rate["ours"] / rate["aiohttp loop"],
        "ours_stdlib_over_loop": rate["ours (stdlib json)"] / rate["aiohttp loop"],
    }
    label = "orjson" if fast_decoder else "stdlib json"
    rows.append(
        (
            f"{n_fast:,} runs @ 0 ms: runs/s",
            f"{rate['ours']:,.0f} ({label})",
            f"loop {rate['aiohttp loop']:,.0f} -> {rate['ours'] / rate['aiohttp loop']:.2f}x",
            "target >= 1.0x",
        )
    )
    rows.append(
        (
            "",
            f"{rate['ours (stdlib json)']:,.0f} (stdlib json)",
            f"-> {rate['ours (stdlib json)'] / rate['aiohttp loop']:.2f}x",
            "",
        )
    )

    # 3. Memory: peak RSS does not grow with the workflow's size.
    with fake_server("--runs", str(n_big)) as url:
        small = [child_rss(url, n_small) for _ in range(3 if not quick else 1)]
        big = [child_rss(url, n_big) for _ in range(2 if not quick else 1)]
    for sample, n in ((small, n_small), (big, n_big)):
        if any(s["runs"] != n for s in sample):
            raise RuntimeError(f"memory run saw {sample}, expected {n} runs")
    small_rss = statistics.median(s["peak_rss_mb"] for s in small)
    big_rss = statistics.median(s["peak_rss_mb"] for s in big)
    results["memory"] = {
        "small_runs": n_small,
        "big_runs": n_big,
        "small_peak_rss_mb": small_rss,
        "big_peak_rss_mb": big_rss,
        "growth_mb": big_rss - small_rss,
        "big_seconds": statistics.median(s["seconds"] for s in big),
    }
    rows.append(
        (
            f"peak RSS {n_small:,} -> {n_big:,} runs",
            f"{small_rss:.1f} -> {big_rss:.1f} MB",
            f"growth {big_rss - small_rss:+.1f} MB",
            "target < 50 MB",
        )
    )

    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print(
        f"\ncopyai_async {results['copyai_async']} paginator benchmark, {results['date']}, "
        f"{results['machine']}, aiohttp {results['aiohttp']}, prefetch {DEFAULT_PREFETCH}"
        f"{', QUICK' if quick else ''}"
    )
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("paginate-quick.json" if quick else "paginate.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nall figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
