"""The benchmark harness runs (on tiny sizes: this checks that it works, not its figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_support import require_redis

# Each starts servers and workers in processes of their own: half a minute or more in all.
pytestmark = pytest.mark.slow

HARNESS = Path(__file__).parent.parent / "benchmarks" / "run.py"
RELIABILITY = HARNESS.with_name("reliability.py")
COORDINATION = HARNESS.with_name("coordination.py")
HARDENING = HARNESS.with_name("hardening.py")


def _tiny(script: Path, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(script), "--tiny", "--out", str(out), *options],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_harness_runs_on_tiny_sizes(tmp_path: Path) -> None:
    done = _tiny(HARNESS, tmp_path)
    results = json.loads((tmp_path / "bench.json").read_text())
    assert set(results) >= {
        "stream",
        "wait",
        "single",
        "rate",
        "import",
        "events",
        "batch",
        "sweep",
        "machine",
    }
    (stream,) = results["stream"]
    assert stream["contenders"][:2] == ["ours", "aiohttp"]
    assert stream["ours"]["runs_per_s"]["median"] > 0
    (wait,) = results["wait"]
    assert {"ours", "aiohttp", "aiohttp-1s"} <= set(wait["contenders"])
    # Sweeps: a page of the listing reads up to 100 runs; the gather loops read each.
    assert wait["ours"]["requests"]["median"] >= 1
    assert wait["aiohttp"]["requests"]["median"] >= 20  # at least one poll per run
    assert wait["ours"]["requests"]["median"] < wait["aiohttp"]["requests"]["median"]
    assert results["rate"]["max_per_second"] <= results["rate"]["rate_limit"] * 1.05 + 1
    assert results["import"]["ratio"] > 0
    assert "ratios are ours / baseline" in done.stdout
    assert "chart" in done.stdout  # drawn, or why not
    polling, webhooks, dropped, repeated = results["events"]
    assert polling["variant"] == "polling only"
    assert webhooks["polls_per_run"] < polling["polls_per_run"]
    assert webhooks["events_accepted"] > 0
    assert dropped["webhooks_dropped"] > 0
    assert repeated["runs"] == 20  # every run ended, each yielded once (or the harness fails)
    # Bulk runs: every row yielded once (or the harness fails), started once, read once at
    # least; the listener needs no more GETs than polling.
    batch = results["batch"]
    rate_bound, window = batch["steps"]
    assert rate_bound["contenders"] == ["ours", "ours-nojournal", "ours-listen", "gather"]
    for step in (rate_bound, window):
        for name in step["contenders"]:
            assert step[name]["starts_per_row"]["median"] == 1.0
            # a start, and reads (a sweep's page reads many rows' runs at once)
            assert step[name]["requests_per_row"]["median"] > 1.0
            assert step[name]["over_floor"]["median"] >= 1.0
    gets = {name: window[name]["gets_per_row"]["median"] for name in window["contenders"]}
    assert gets["ours-listen"] <= gets["ours"]
    assert rate_bound["ours"]["journal_bytes_per_row"]["median"] > 0
    assert set(rate_bound["ratios"]) == {"ours/gather"}
    assert set(window["ratios"]) == {"ours/gather", "ours-listen/gather-listen"}
    patterns = batch["journal"]["patterns"]
    assert [(p["file"], p["chunk"]) for p in patterns] == [
        (True, 1),
        (True, 64),
        (False, 1),
        (False, 64),
    ]
    if patterns[0]["fsyncs"] is not None:  # strace was there to count them
        assert patterns[0]["fsyncs"] >= batch["journal"]["rows"]  # one intent a commit
        assert patterns[1]["fsyncs"] < patterns[0]["fsyncs"]
    assert "bulk runs (run_batch)" in done.stdout
    # Listing sweeps against reading each run: every run yielded once (or the harness
    # fails), each variant's requests counted by kind, with and without status in the
    # listing.
    with_status, bare = results["sweep"]
    assert (with_status["listing"], bare["listing"]) == ("status", "bare")
    for row in (with_status, bare):
        assert row["variants"] == ["sweep", "get_only"]
        assert row["get_only"]["lists_per_run"]["median"] == 0.0  # never a page
        for name in row["variants"]:
            got = row[name]
            # A wait reads runs and pages, nothing else (one repeat: medians add up).
            assert got["requests_per_run"]["median"] == pytest.approx(
                got["gets_per_run"]["median"] + got["lists_per_run"]["median"]
            )
            assert got["requests_per_run"]["median"] > 0
            assert got["p99_s"]["median"] >= got["p50_s"]["median"]
        assert set(row["ratios"]) >= {"requests_per_run", "p99_s", "wall_s", "cpu_s"}
        assert isinstance(row["target_met"], bool)
    assert "waiting by listing sweeps" in done.stdout


def test_reliability_experiments_run_on_tiny_sizes(tmp_path: Path) -> None:
    _tiny(RELIABILITY, tmp_path)
    results = json.loads((tmp_path / "reliability.json").read_text())
    assert [row["stack"] for row in results["keepalive"]] == ["aiohttp.web", "uvicorn", "hypercorn"]
    for row in results["keepalive"]:  # servers in processes of their own
        assert row["starts"] == row["reported"] == row["created"] == 8
    chaos = results["chaos"]
    assert chaos["faults"] > 0
    assert chaos["waits_ended_by_error"] == 0
    assert chaos["finished"] == chaos["runs"] == 20


def test_coordination_measurements_run_on_tiny_sizes(tmp_path: Path) -> None:
    require_redis()
    done = _tiny(COORDINATION, tmp_path)
    results = json.loads((tmp_path / "coordination.json").read_text())
    rate = results["rate"]
    assert rate["shared"]["max_per_second"] <= 52
    assert rate["baseline"]["max_per_second"] > rate["shared"]["max_per_second"]
    assert results["pause"]["shared"]["sent_within_2s"] == 0
    assert results["pause"]["baseline"]["sent_within_2s"] > 0
    assert results["events"]["shared"]["ended"] == results["events"]["shared"]["runs"] == 20
    assert results["outage"]["failed_calls"] == 0
    flush = results["flush"]
    assert max(flush["rebuilt"]["max_per_second"]) <= 21  # limit 20
    assert flush["rebuilt"]["errors"] == flush["baseline"]["errors"] == 0
    assert "ratios are shared / baseline" in done.stdout


def test_hardening_measurements_run_on_tiny_sizes(tmp_path: Path) -> None:
    _tiny(HARDENING, tmp_path, "--no-baseline")  # the baseline is a checkout of its own
    results = json.loads((tmp_path / "hardening.json").read_text())
    assert set(results) == {"bombs", "slow", "flood", "forged"}
    bombs = results["bombs"]["this"]
    assert bombs["not_found"] == 2  # both bombs refused
    assert bombs["deliveries_ok"] == bombs["deliveries"] > 0
    assert results["slow"]["this"]["connections"] == 20
    assert results["flood"]["this"]["api_failed"] == 0
    forged = results["forged"]["this"]
    assert forged["seen"] == forged["runs"] == 20
