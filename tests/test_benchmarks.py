"""The benchmark harness runs (on tiny sizes: this checks that it works, not its figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).parent.parent / "benchmarks" / "run.py"


def test_harness_runs_on_tiny_sizes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert set(results) >= {"stream", "wait", "single", "rate", "import", "date", "machine"}
    (stream,) = results["stream"]
    assert stream["contenders"][:2] == ["ours", "aiohttp"]
    assert stream["ours"]["runs_per_s"]["median"] > 0
    (wait,) = results["wait"]
    assert {"ours", "aiohttp", "aiohttp-1s"} <= set(wait["contenders"])
    assert wait["ours"]["requests"]["median"] >= 20  # at least one poll per run
    assert results["rate"]["max_per_second"] <= results["rate"]["rate_limit"] * 1.05 + 1
    assert results["import"]["ratio"] > 0
    assert "ratios are ours / baseline" in done.stdout
    assert "chart" in done.stdout  # drawn, or why not
