"""The benchmark harness: copyai_async side by side with hand-written aiohttp and httpx loops.

One command (after ``pip install -e ".[bench]"``)::

    python benchmarks/run.py            # the full run, about 50 minutes
    python benchmarks/run.py --quick    # smaller sizes, under a minute

The fake Copy.ai server runs in a separate process; every measurement runs in a fresh
process of its own (so peak RSS and CPU seconds are that contender's alone), after a
warm-up, and is repeated; figures are medians with min and max. Scenarios:

1. stream: every run of a workflow of N runs, at 0 ms and 50 ms per request: runs/s,
   wall time, peak RSS, CPU seconds.
2. wait: N runs finishing at random times (1 to 20 s): requests made, CPU seconds, peak
   RSS (of the process, and of the job: CPU inside the job, and how far the peak RSS rose
   above the peak after the imports), detection latency p50/p99 (from the server marking
   a run terminal to the caller seeing it).
   Baselines: gather of polling loops on our default intervals (aiohttp, httpx), and
   aiohttp polling every second (``aiohttp-1s``, the docs' "short delay").
3. single: one ``wait_for_run`` of a run that takes 200 polls: time per poll, and ours
   minus the baseline's (the overhead per poll).
4. rate: ``wait_for_runs`` with ``rate_limit=R``; the server counts the most requests
   that arrive within any one second.
5. import: ``import copyai_async`` against ``import aiohttp`` alone.
6. client: streaming where the client is the bottleneck: the server (in its own
   process) sends each page from its first encoding (``--cache-pages``), and the job
   alone is timed, wall and CPU, medians of repeats after a warm-up in one process;
   plus 1,000 runs in fresh processes (first use included, imports excluded), and 50 ms
   rows against the ideal ``ceil(pages / prefetch) x latency``.
7. events: N runs started through the API, finishing at random (1 to 20 s), waited on
   by polling alone and with a webhook listener (the server delivering events 5-20 ms
   after each change): detection p50/p99/max after each run finishes, polls (GETs of a
   run) per run, and each run yielded once; with webhooks also with 30% of deliveries
   dropped, and with 30% duplicated and 30% reordered.

Output: a table with ratios (ours ÷ baseline), ``benchmarks/results/bench.json`` with
every figure, and a chart (``benchmarks/results/streaming.png``; matplotlib, from the
``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _harness import fake_server  # benchmarks/ is on sys.path when run
from contenders import CONTENDERS

RESULTS = Path(__file__).parent / "results"
PREFETCH = 6  # copyai_async's default, for the ideal streaming time at 50 ms


def plan(mode: str) -> dict[str, Any]:
    """Sizes and repeats for ``full``, ``quick`` and ``tiny`` (the test suite's)."""
    if mode == "tiny":
        return {
            "stream": [(0, 300, 1)],
            "wait": [(20, (0.1, 0.5), 1)],
            "single": (20, 1),
            "rate": (30, (0.1, 0.5), 50.0),
            "import": 2,
            "events": (20, (0.1, 0.5), 1.0),
            "client": {"warm": [(0, 1_000, 2)], "cold": (1_000, 2), "latency": [(50, 1_000, 1)]},
        }
    if mode == "quick":
        return {
            "stream": [(0, 1_000, 3), (0, 10_000, 3), (50, 1_000, 3)],
            "wait": [(100, (0.5, 3.0), 2)],
            "single": (200, 3),
            "rate": (300, (0.5, 3.0), 100.0),
            "import": 5,
            "events": (300, (1.0, 5.0), 5.0),
            "client": {
                "warm": [(0, 10_000, 5)],
                "cold": (1_000, 3),
                "latency": [(50, 1_000, 3), (50, 10_000, 2)],
            },
        }
    return {
        # (latency ms, runs, repeats). 1,000,000 runs at 50 ms is left out: the sequential
        # loops would take 10,000 pages x 50 ms = over 8 minutes a measurement.
        "stream": [
            (0, 1_000, 5),
            (0, 10_000, 5),
            (0, 100_000, 5),
            (0, 1_000_000, 5),
            (50, 1_000, 5),
            (50, 10_000, 5),
            (50, 100_000, 5),
        ],
        "wait": [(100, (1.0, 20.0), 5), (1_000, (1.0, 20.0), 5), (10_000, (1.0, 20.0), 5)],
        "single": (200, 5),
        "rate": (2_000, (1.0, 10.0), 200.0),
        "import": 15,
        # (runs, finish between, safety interval: None for the default, 30 s)
        "events": (2_000, (1.0, 20.0), None),
        # (latency ms, runs, repeats); cold: (runs, fresh processes)
        "client": {
            "warm": [(0, 10_000, 5), (0, 100_000, 5), (0, 1_000_000, 3)],
            "cold": (1_000, 5),
            "latency": [(50, 1_000, 5), (50, 10_000, 5), (50, 100_000, 3)],
        },
    }


def available(contender: str) -> bool:
    return contender != "httpx" or importlib.util.find_spec("httpx") is not None


def contenders_of(scenario: str) -> list[str]:
    return [name for name in CONTENDERS[scenario] if available(name)]


# -- one measurement, in a process of its own -------------------------------------------


def child_main(spec: dict[str, Any]) -> None:
    contender = CONTENDERS[spec["scenario"]][spec["contender"]]
    # The process's figures (imports included) and the job's own: CPU spent in the job,
    # and how far its peak RSS rose above the peak after the imports.
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result: dict[str, Any] = asyncio.run(contender(spec["url"], spec["arg"]))
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    result.update(
        wall_s=wall,
        cpu_s=cpu,
        peak_rss_mb=usage.ru_maxrss / 1024,
        cpu_after_imports_s=cpu - before.ru_utime - before.ru_stime,
        rss_above_imports_mb=(usage.ru_maxrss - before.ru_maxrss) / 1024,
    )
    print(json.dumps(result))


def measure(scenario: str, contender: str, url: str, arg: Any) -> dict[str, Any]:
    spec = {"scenario": scenario, "contender": contender, "url": url, "arg": arg}
    # The spec goes on stdin: 10,000 run ids are too long for one argument.
    out = subprocess.run(
        [sys.executable, __file__, "--child", "-"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"{scenario}/{contender} failed:\n{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout))


def server_requests(url: str) -> int:
    base = url.rsplit("/api", 1)[0]
    with urllib.request.urlopen(f"{base}/_fake/stats", timeout=10) as resp:  # noqa: S310
        return int(json.load(resp)["requests"])


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# -- scenarios --------------------------------------------------------------------------


def run_stream(steps: list[tuple[int, int, int]], log: Any) -> list[dict[str, Any]]:
    rows = []
    for latency, runs, repeats in steps:
        with fake_server("--runs", str(runs), "--latency", str(latency)) as url:
            contenders = contenders_of("stream")
            samples: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
            for name in contenders:  # warm-up: server caches, page cache, imports
                measure("stream", name, url, min(runs, 1_000))
            for _ in range(repeats):
                for name in contenders:
                    result = measure("stream", name, url, runs)
                    if result["runs"] != runs:
                        raise RuntimeError(f"{name} streamed {result['runs']} of {runs}")
                    samples[name].append(result)
        row: dict[str, Any] = {
            "latency_ms": latency,
            "runs": runs,
            "repeats": repeats,
            "contenders": contenders,
        }
        if latency:
            pages = -(-runs // 100)
            row["ideal_s"] = -(-pages // PREFETCH) * latency / 1000
        for name, got in samples.items():
            row[name] = {
                "runs_per_s": summary([runs / s["wall_s"] for s in got]),
                "wall_s": summary([s["wall_s"] for s in got]),
                "cpu_s": summary([s["cpu_s"] for s in got]),
                "peak_rss_mb": summary([s["peak_rss_mb"] for s in got]),
            }
        rows.append(row)
        log(
            f"stream {runs:,} runs @ {latency} ms: "
            + ", ".join(f"{n} {row[n]['runs_per_s']['median']:,.0f} runs/s" for n in samples)
        )
    return rows


def run_wait(steps: list[tuple[int, tuple[float, float], int]], log: Any) -> list[dict[str, Any]]:
    rows = []
    for runs, finish, repeats in steps:
        contenders = contenders_of("wait")
        samples: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        for _ in range(repeats):
            for name in contenders:
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
                        "--seed",
                        str(len(samples[name])),
                    ) as url:
                        listing = json.loads(Path(runs_file).read_text())
                        finishes = {r["id"]: r["finishes_at"] for r in listing}
                        result = measure("wait", name, url, finishes)
                        result["requests"] = server_requests(url)
                if len(result["latencies"]) != runs:
                    raise RuntimeError(f"{name} saw {len(result['latencies'])} of {runs} runs")
                latencies = sorted(result.pop("latencies"))
                result["p50_s"] = statistics.median(latencies)
                result["p99_s"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                samples[name].append(result)
        row: dict[str, Any] = {
            "runs": runs,
            "finish_between_s": finish,
            "repeats": repeats,
            "contenders": contenders,
        }
        for name, got in samples.items():
            row[name] = {
                key: summary([s[key] for s in got])
                for key in (
                    "requests",
                    "cpu_s",
                    "peak_rss_mb",
                    "cpu_after_imports_s",
                    "rss_above_imports_mb",
                    "p50_s",
                    "p99_s",
                    "wall_s",
                )
            }
        rows.append(row)
        log(
            f"wait {runs:,} runs: "
            + ", ".join(
                f"{n} {row[n]['peak_rss_mb']['median']:.0f} MB "
                f"{row[n]['cpu_s']['median']:.2f} s CPU"
                for n in samples
            )
        )
    return rows


def run_rate(runs: int, finish: tuple[float, float], rate: float, log: Any) -> dict[str, Any]:
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
            listing = json.loads(Path(runs_file).read_text())
            finishes = {r["id"]: r["finishes_at"] for r in listing}
            result = measure("rate", "ours", url, {"finishes": finishes, "rate": rate})
            base = url.rsplit("/api", 1)[0]
            with urllib.request.urlopen(f"{base}/_fake/stats", timeout=10) as resp:  # noqa: S310
                stats = json.load(resp)
    row = {
        "rate_limit": rate,
        "runs": runs,
        "requests": stats["requests"],
        "max_per_second": stats["max_per_second"],
        "max_over_limit": stats["max_per_second"] / rate,
        "wall_s": result["wall_s"],
    }
    log(f"rate_limit={rate:g}: at most {row['max_per_second']} requests in any second")
    return row


def run_single(polls: int, repeats: int, log: Any) -> dict[str, Any]:
    contenders = contenders_of("single")
    needed = (repeats + 1) * len(contenders)
    with tempfile.TemporaryDirectory() as tmp:
        runs_file = os.path.join(tmp, "runs.json")
        with fake_server(
            "--runs", str(needed), "--polls-each", str(polls), "--runs-file", runs_file
        ) as url:
            ids = iter(r["id"] for r in json.loads(Path(runs_file).read_text()))
            for name in contenders:
                measure("single", name, url, next(ids))  # warm-up
            per_poll: dict[str, list[float]] = {c: [] for c in contenders}
            for _ in range(repeats):
                for name in contenders:
                    result = measure("single", name, url, next(ids))
                    per_poll[name].append(result["wall_s"] / (polls + 1))
    row: dict[str, Any] = {"polls": polls + 1, "repeats": repeats, "contenders": contenders}
    for name, values in per_poll.items():
        row[name] = {"ms_per_poll": summary([v * 1000 for v in values])}
    for base in contenders[1:]:
        row[f"overhead_vs_{base}_ms"] = (
            row["ours"]["ms_per_poll"]["median"] - row[base]["ms_per_poll"]["median"]
        )
    log(
        "single wait: "
        + ", ".join(f"{n} {row[n]['ms_per_poll']['median']:.3f} ms/poll" for n in contenders)
    )
    return row


def import_ms(module: str) -> float:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    last = [line for line in out.splitlines() if line.rstrip().endswith(f"| {module}")][-1]
    return int(last.split("|")[1]) / 1000.0


def run_import(repeats: int, log: Any) -> dict[str, Any]:
    ours = [import_ms("copyai_async") for _ in range(repeats)]
    aiohttp_ = [import_ms("aiohttp") for _ in range(repeats)]
    row: dict[str, Any] = {
        "copyai_async_ms": summary(ours),
        "aiohttp_ms": summary(aiohttp_),
        "ratio": statistics.median(ours) / statistics.median(aiohttp_),
    }
    log(
        f"import: copyai_async {row['copyai_async_ms']['median']:.0f} ms, "
        f"aiohttp {row['aiohttp_ms']['median']:.0f} ms"
    )
    return row


def run_client(steps: dict[str, Any], log: Any) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []

    def row(latency: int, runs: int, cold: bool, got: dict[str, dict[str, list[float]]]) -> None:
        entry: dict[str, Any] = {"latency_ms": latency, "runs": runs, "cold": cold}
        for name, times in got.items():
            entry[name] = {
                "wall_s": summary(times["job_wall_s"]),
                "cpu_s": summary(times["job_cpu_s"]),
            }
        ours, base = entry["ours"], entry["aiohttp"]
        entry["speed"] = base["wall_s"]["median"] / ours["wall_s"]["median"]
        entry["cpu_ratio"] = ours["cpu_s"]["median"] / base["cpu_s"]["median"]
        entry["cpu_us_per_run"] = {n: entry[n]["cpu_s"]["median"] / runs * 1e6 for n in got}
        if latency:
            pages = -(-runs // 100) + (1 if runs % 100 == 0 else 0)
            entry["ideal_s"] = -(-pages // PREFETCH) * latency / 1000
            entry["over_ideal"] = ours["wall_s"]["median"] / entry["ideal_s"]
        rows.append(entry)
        log(
            f"client-bound {runs:,} runs @ {latency} ms{' (fresh process)' if cold else ''}: "
            f"{entry['speed']:.2f}x the speed, {entry['cpu_ratio']:.2f}x the CPU of the bare loop"
        )

    for latency, runs, repeats in steps["warm"] + steps["latency"]:
        with fake_server("--runs", str(runs), "--latency", str(latency), "--cache-pages") as url:
            measure("stream", "aiohttp", url, min(runs, 1_000))  # the server's cache, warm
            got = {
                name: measure("client", name, url, {"runs": runs, "repeats": repeats})
                for name in ("ours", "aiohttp")
            }
        row(latency, runs, False, got)
    runs, processes = steps["cold"]
    with fake_server("--runs", str(runs), "--cache-pages") as url:
        measure("stream", "aiohttp", url, runs)
        got = {
            "ours": {"job_wall_s": [], "job_cpu_s": []},
            "aiohttp": {"job_wall_s": [], "job_cpu_s": []},
        }
        for _ in range(processes):
            for name in ("ours", "aiohttp"):
                one = measure("client", name, url, {"runs": runs, "repeats": 1, "cold": True})
                for key in ("job_wall_s", "job_cpu_s"):
                    got[name][key] += one[key]
    row(0, runs, True, got)
    return {"rows": rows}


EVENT_VARIANTS: list[tuple[str, str, list[str]]] = [
    ("polling only", "polling", []),
    ("webhooks", "webhooks", []),
    ("webhooks, 30% dropped", "webhooks", ["--webhook-drop-rate", "0.3"]),
    (
        "webhooks, 30% duplicated, 30% reordered",
        "webhooks",
        ["--webhook-duplicate-rate", "0.3", "--webhook-reorder-rate", "0.3"],
    ),
]


def run_events(
    runs: int, finish: tuple[float, float], safety: float | None, log: Any
) -> list[dict[str, Any]]:
    rows = []
    for label, contender, flags in EVENT_VARIANTS:
        with fake_server(
            "--finish-from", "seconds", "--webhook-delay", "0.005", "0.02", *flags
        ) as url:
            arg = {
                "runs": runs,
                "finish": finish,
                "safety": safety,
                "seed": 1,
                "listen": contender == "webhooks",
            }
            result = measure("events", contender, url, arg)
            base = url.rsplit("/api", 1)[0]
            with urllib.request.urlopen(f"{base}/_fake/stats", timeout=10) as resp:  # noqa: S310
                stats = json.load(resp)
        latencies = sorted(result.pop("latencies"))
        if len(latencies) != runs or not result["yielded_once"]:
            raise RuntimeError(f"events/{label}: {len(latencies)} of {runs} runs, not once each")
        row = {
            "variant": label,
            "runs": runs,
            "finish_between_s": finish,
            "safety_interval_s": safety if safety is not None else 30.0,
            "p50_s": statistics.median(latencies),
            "p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "max_s": latencies[-1],
            "polls_per_run": stats["run_gets"] / runs,
            "requests_per_run": stats["requests"] / runs,
            "webhooks_sent": stats["webhooks_sent"],
            "webhooks_dropped": stats["webhooks_dropped"],
            "events_accepted": result["events"],
            "cpu_s": result["cpu_s"],
            "wall_s": result["wall_s"],
        }
        rows.append(row)
        log(
            f"events, {label}: p50 {row['p50_s'] * 1000:.0f} ms, p99 {row['p99_s'] * 1000:.0f} "
            f"ms, {row['polls_per_run']:.2f} polls per run"
        )
    return rows


# -- report -----------------------------------------------------------------------------


def _cell(stats: dict[str, float], fmt: str) -> str:
    return f"{fmt.format(stats['median'])} ({fmt.format(stats['min'])}-{fmt.format(stats['max'])})"


def report(results: dict[str, Any]) -> str:
    lines = [
        f"copyai_async {results['copyai_async']} benchmarks, {results['date']}, "
        f"{results['machine']}; medians (min-max); ratios are ours / baseline"
    ]

    def ratios(row: dict[str, Any], metric: str) -> str:
        ours = row["ours"][metric]["median"]
        return "  ".join(
            f"/{b} {ours / base:.2f}x" if (base := row[b][metric]["median"]) else f"/{b} -"
            for b in row["contenders"][1:]
        )

    if "stream" in results:
        names = results["stream"][0]["contenders"]
        lines.append("\nstreaming every run          " + "  ".join(f"{n:>28}" for n in names))
        for row in results["stream"]:
            for metric, fmt, label in (
                ("runs_per_s", "{:,.0f}", "runs/s"),
                ("peak_rss_mb", "{:.1f}", "peak RSS MB"),
                ("cpu_s", "{:.2f}", "CPU s"),
            ):
                head = f"{row['runs']:>9,} @ {row['latency_ms']:>2} ms {label:<12}"
                cells = "  ".join(f"{_cell(row[n][metric], fmt):>28}" for n in names)
                lines.append(f"{head} {cells}  {ratios(row, metric)}")
            if "ideal_s" in row:
                ours_wall = row["ours"]["wall_s"]["median"]
                lines.append(
                    f"{'':>29} wall {ours_wall:.3f} s = {ours_wall / row['ideal_s']:.2f}x "
                    f"the ideal ceil(pages/{PREFETCH}) x latency = {row['ideal_s']:.3f} s"
                )
    if "wait" in results:
        names = results["wait"][0]["contenders"]
        lines.append("\nwaiting on many runs         " + "  ".join(f"{n:>28}" for n in names))
        for row in results["wait"]:
            for metric, fmt, label in (
                ("peak_rss_mb", "{:.1f}", "peak RSS MB"),
                ("rss_above_imports_mb", "{:.1f}", "RSS - imports"),
                ("cpu_s", "{:.2f}", "CPU s"),
                ("cpu_after_imports_s", "{:.2f}", "CPU - imports"),
                ("requests", "{:,.0f}", "requests"),
                ("p50_s", "{:.2f}", "detect p50 s"),
                ("p99_s", "{:.2f}", "detect p99 s"),
            ):
                head = f"{row['runs']:>9,} runs {label:<15}"
                cells = "  ".join(f"{_cell(row[n][metric], fmt):>28}" for n in names)
                lines.append(f"{head} {cells}  {ratios(row, metric)}")
    if "single" in results:
        single = results["single"]
        names = single["contenders"]
        lines.append(
            f"\none wait_for_run, {single['polls']} polls: "
            + ", ".join(f"{n} {single[n]['ms_per_poll']['median']:.3f} ms/poll" for n in names)
            + "; overhead "
            + ", ".join(f"{single[f'overhead_vs_{b}_ms'] * 1000:+.0f} us vs {b}" for b in names[1:])
        )
    if "rate" in results:
        rate = results["rate"]
        lines.append(
            f"rate_limit={rate['rate_limit']:g} ({rate['runs']:,} runs): at most "
            f"{rate['max_per_second']} requests in any second -> "
            f"{rate['max_over_limit']:.3f}x the limit (target <= 1.05x)"
        )
    if "import" in results:
        imp = results["import"]
        lines.append(
            f"import: copyai_async {imp['copyai_async_ms']['median']:.0f} ms, aiohttp "
            f"{imp['aiohttp_ms']['median']:.0f} ms -> {imp['ratio']:.2f}x (target <= 1.2x)"
        )
    if "client" in results:
        lines.append(
            "\nstreaming, client-bound (pre-encoded pages; the job alone, medians): "
            "ours / the bare aiohttp + json loop"
        )
        for row in results["client"]["rows"]:
            cold = " fresh process" if row["cold"] else ""
            line = (
                f"{row['runs']:>9,} @ {row['latency_ms']:>2} ms{cold:<14} speed "
                f"{row['speed']:.2f}x  CPU {row['cpu_ratio']:.2f}x  CPU/run "
                f"{row['cpu_us_per_run']['ours']:.1f} vs {row['cpu_us_per_run']['aiohttp']:.1f} us"
            )
            if "ideal_s" in row:
                wall = row["ours"]["wall_s"]["median"]
                line += f"  wall {wall:.3f} s = {row['over_ideal']:.2f}x ideal"
            lines.append(line)
    if "events" in results:
        lines.append(
            "\nwaiting with webhook events (polls: GETs of a run; detection: after it finished)"
        )
        for row in results["events"]:
            lines.append(
                f"{row['runs']:>9,} runs  {row['variant']:<40} detect p50 "
                f"{row['p50_s'] * 1000:>7,.0f} ms  p99 {row['p99_s'] * 1000:>7,.0f} ms  max "
                f"{row['max_s']:>6.1f} s  {row['polls_per_run']:.2f} polls/run  "
                f"CPU {row['cpu_s']:.2f} s"
            )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> str:
    if importlib.util.find_spec("matplotlib") is None:
        return "no chart: matplotlib is not installed (pip install -e '.[bench]')"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, rss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"ours": "C0", "aiohttp": "C1", "httpx": "C2"}
    for latency, style in ((0, "-"), (50, "--")):
        rows = [r for r in results["stream"] if r["latency_ms"] == latency]
        if not rows:
            continue
        for name in rows[0]["contenders"]:
            xs = [r["runs"] for r in rows]
            rate_ax.plot(
                xs,
                [r[name]["runs_per_s"]["median"] for r in rows],
                style,
                color=colours.get(name),
                marker="o",
                label=f"{name}, {latency} ms",
            )
            if latency == 0:
                rss_ax.plot(
                    xs,
                    [r[name]["peak_rss_mb"]["median"] for r in rows],
                    style,
                    color=colours.get(name),
                    marker="o",
                    label=name,
                )
    rate_ax.set_yscale("log")
    # Peak RSS on a linear scale from zero: flat in N should look flat.
    rss_ax.set_ylim(bottom=0, top=max(60.0, rss_ax.get_ylim()[1] * 1.2))
    for ax, title, unit in (
        (rate_ax, "Streaming throughput (50 ms dashed)", "runs per second"),
        (rss_ax, "Peak RSS of the whole process while streaming (0 ms)", "MB"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("runs in the workflow")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"copyai_async {results['copyai_async']} vs hand-written loops, "
        f"{results['date']}, {results['machine']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    size.add_argument("--tiny", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    parser.add_argument(
        "--redraw", type=Path, metavar="BENCH_JSON", help="only draw the chart of a saved run"
    )
    parser.add_argument(
        "--only",
        metavar="SCENARIOS",
        help="run only these scenarios, comma-separated (stream,wait,single,rate,import,events)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(sys.stdin.read() if args.child == "-" else args.child))
        return 0
    if args.redraw:
        args.out.mkdir(parents=True, exist_ok=True)
        print(chart(json.loads(args.redraw.read_text()), args.out / "streaming.png"))
        return 0
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    steps = plan(mode)

    def log(text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {text}", flush=True)

    import aiohttp

    import copyai_async

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "mode": mode,
        "copyai_async": copyai_async.__version__,
        "aiohttp": aiohttp.__version__,
        "httpx": _version("httpx"),
        "orjson": _version("orjson"),
    }
    wanted = set(args.only.split(",")) if args.only else set(steps)
    unknown = wanted - set(steps)
    if unknown:
        parser.error(f"--only: no scenario {', '.join(sorted(unknown))}")
    if "stream" in wanted:
        results["stream"] = run_stream(steps["stream"], log)
    if "wait" in wanted:
        results["wait"] = run_wait(steps["wait"], log)
    if "single" in wanted:
        polls, repeats = steps["single"]
        results["single"] = run_single(polls, repeats, log)
    if "rate" in wanted:
        runs, finish, rate = steps["rate"]
        results["rate"] = run_rate(runs, finish, rate, log)
    if "import" in wanted:
        results["import"] = run_import(steps["import"], log)
    if "client" in wanted:
        results["client"] = run_client(steps["client"], log)
    if "events" in wanted:
        results["events"] = run_events(*steps["events"], log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report(results))
    if "stream" in results:
        print(chart(results, args.out / "streaming.png"))
    print(f"all figures: {args.out / 'bench.json'}")
    return 0


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
