"""The scripts in examples/ run as a user runs them: unedited, against the fake server.

Each test starts ``copyai-async fake-server`` in its own process, exports the two variables
it prints, and runs the example in another process (the FastAPI app is served by uvicorn,
and the plugin example by pytest), then checks what came out.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from copyai_async.testing.pytest_plugin import _keeps_fixture_scope
from tests.real_servers import uvicorn_thread
from tests.redis_support import BINARY, RedisServer
from tests.timed import done_at

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMED = Path(__file__).with_name("timed.py")
WORKFLOW = "WCFG-fake-workflow"
# Every example script, and the test below that runs it.
COVERED = {
    "start_and_wait.py": "test_start_and_wait",
    "export_runs.py": "test_export_runs",
    "wait_many.py": "test_wait_many",
    "bulk_runs.py": "test_bulk_runs",
    "fastapi_app.py": "test_fastapi_app",
    "summaries.py": "test_the_plugin_example_passes",
    "test_summaries.py": "test_the_plugin_example_passes",
}


def test_every_example_is_run_by_a_test() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(COVERED)
    assert all(name in globals() for name in COVERED.values())


@pytest.fixture
def fake_api() -> Iterator[Any]:
    """Start ``copyai-async fake-server ARGS``; yields a function of the args that
    returns the environment its output says to use."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> dict[str, str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "copyai_async", "fake-server", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        assert proc.stdout is not None
        proc.stdout.readline()
        use = proc.stdout.readline()  # "use it: COPYAI_API_KEY=... COPYAI_BASE_URL=... ..."
        pairs = dict(re.findall(r"(COPYAI_[A-Z_]+)=(\S+)", use))
        assert set(pairs) == {"COPYAI_API_KEY", "COPYAI_BASE_URL"}, use
        env = {k: v for k, v in os.environ.items() if not k.startswith("COPYAI_")}
        return {**env, **pairs, "PYTHONUNBUFFERED": "1"}

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def run_example(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / argv[0]), *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_start_and_wait(fake_api: Any) -> None:
    # Runs that move on one step per read, so that the wait sees every status.
    done = run_example(fake_api("--schedule", "polls"), "start_and_wait.py", WORKFLOW, "sea otters")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["id"].startswith("WRUN-")
    assert result["output"]  # the finished run's output
    assert result["credits"] == 2
    # The statuses seen on the way, in order.
    seen = re.findall(r": ([A-Z]+)$", done.stderr, re.M)
    assert seen == ["NEW", "WAITING", "PROCESSING", "COMPLETE"]


def test_start_and_wait_reports_a_bad_key_in_one_line(fake_api: Any) -> None:
    env = {**fake_api(), "COPYAI_API_KEY": "wrong"}
    done = run_example(env, "start_and_wait.py", WORKFLOW, "sea otters")
    assert done.returncode != 0
    assert "401" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_runs(fake_api: Any, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"runs{suffix}"
    done = run_example(
        fake_api("--runs", "250", "--seed", "5"), "export_runs.py", WORKFLOW, str(out)
    )
    assert done.returncode == 0, done.stderr
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f)) if suffix == ".csv" else [json.loads(line) for line in f]
    assert len(rows) == 250
    assert len({r["id"] for r in rows}) == 250
    assert {r["status"] for r in rows} == {"COMPLETE"}
    stamps = [r["created_at"] for r in rows]
    assert stamps == sorted(stamps, reverse=True)  # newest first, as listed
    if suffix == ".csv":  # nested values are JSON text in their cells
        assert isinstance(json.loads(rows[0]["output"]), dict)
    # stderr is a pipe here, not a terminal: each progress line whole, on a line of its own.
    assert done.stderr.splitlines() == [
        "page 1: 100/250 runs",
        "page 2: 200/250 runs",
        "page 3: 250/250 runs",
        f"wrote 250 runs to {out}",
    ]


def test_export_runs_wants_a_known_suffix(tmp_path: Path) -> None:
    done = run_example(dict(os.environ), "export_runs.py", WORKFLOW, str(tmp_path / "x.txt"))
    assert done.returncode == 1
    assert "usage:" in done.stderr


def test_wait_many(fake_api: Any) -> None:
    topics = ["otters", "seals", "walruses", "puffins"]
    done = run_example(fake_api(), "wait_many.py", WORKFLOW, *topics)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5
    assert sorted(line.split()[-1] for line in lines[:4]) == sorted(topics)
    assert all(" COMPLETE " in line for line in lines[:4])
    assert re.fullmatch(r"4 complete; 8 credits; \d+\.\d s", lines[4])
    assert "started 4 of 4 runs" in done.stderr


def test_wait_many_reports_runs_it_could_not_start(fake_api: Any) -> None:
    done = run_example(fake_api(), "wait_many.py", "WCFG-no-such-workflow", "otters")
    assert done.returncode == 2
    assert "could not start 'otters'" in done.stderr
    assert "404" in done.stderr


def _no_api(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without COPYAI_ variables: bulk_runs.py then serves its own fake."""
    env = dict(os.environ) if env is None else env
    return {k: v for k, v in env.items() if not k.startswith("COPYAI_")}


def _topics(path: Path, count: int) -> Path:
    path.write_text("topic,tone\n" + "".join(f"topic {i},dry\n" for i in range(count)))
    return path


def _results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bulk_runs(tmp_path: Path) -> None:
    topics, results = _topics(tmp_path / "topics.csv", 12), tmp_path / "results.jsonl"
    done = run_example(_no_api(), "bulk_runs.py", WORKFLOW, str(topics), str(results))
    assert done.returncode == 0, done.stderr
    assert "fake Copy.ai in this process" in done.stderr
    lines = _results(results)
    assert sorted(r["row"] for r in lines) == list(range(12))  # each row once
    assert {r["status"] for r in lines} == {"COMPLETE"}
    assert all(r["input"] == {"topic": f"topic {r['row']}", "tone": "dry"} for r in lines)
    assert all(r["run_id"].startswith("WRUN-") and r["credits"] == 2 for r in lines)
    assert done.stdout == (
        f"12 rows in {results}: 12 complete, 0 failed or refused; this run: 12 rows, 24 credits\n"
    )
    assert not list(tmp_path.glob("*.journal"))  # a fake in the process: nothing to resume

    again = run_example(_no_api(), "bulk_runs.py", WORKFLOW, str(topics), str(results))
    assert again.returncode == 0, again.stderr
    assert "this run: 0 rows, 0 credits" in again.stdout
    assert _results(results) == lines


def test_bulk_runs_resumes_a_killed_batch(fake_api: Any, tmp_path: Path) -> None:
    env = fake_api()
    topics, results = _topics(tmp_path / "topics.csv", 40), tmp_path / "results.jsonl"
    argv = [sys.executable, str(EXAMPLES / "bulk_runs.py"), WORKFLOW, str(topics), str(results)]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (results.exists() and results.read_text().count("\n") >= 5):
            assert first.poll() is None, "the batch ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.kill()  # SIGKILL: no cleanup of any kind
        first.wait(timeout=30)
    written = results.read_text().count("\n")  # (a line a kill cut short runs again)
    assert 5 <= written < 40, written

    done = run_example(env, "bulk_runs.py", WORKFLOW, str(topics), str(results))
    assert done.returncode == 0, done.stderr
    assert f"this run: {40 - written} rows" in done.stdout
    lines = _results(results)
    assert sorted(r["row"] for r in lines) == list(range(40))
    assert {r["status"] for r in lines} == {"COMPLETE"}
    assert (tmp_path / "results.jsonl.journal").exists()
    stats = f"{env['COPYAI_BASE_URL'].removesuffix('/api')}/_fake/stats"
    with urllib.request.urlopen(stats, timeout=30) as resp:  # noqa: S310 - loopback http
        assert json.load(resp)["runs_started"] == 40  # not one row started twice


def test_bulk_runs_retries_failed_rows(tmp_path: Path) -> None:
    topics, results = _topics(tmp_path / "topics.csv", 4), tmp_path / "results.jsonl"
    complete = {"row": 0, "run_id": "WRUN-0", "status": "COMPLETE", "attempt": 0}
    failed = {"row": 1, "run_id": "WRUN-1", "status": "FAILED", "attempt": 0}
    refused = {"row": 2, "run_id": None, "status": "REFUSED", "error": "422", "attempt": 0}
    # ... and row 3's line, cut short by a crash.
    text = "".join(json.dumps(r) + "\n" for r in (complete, failed, refused)) + '{"row": 3, "st'
    results.write_text(text)

    done = run_example(_no_api(), "bulk_runs.py", WORKFLOW, str(topics), str(results))
    assert done.returncode == 1  # the FAILED and REFUSED rows stay as they were
    assert "4 rows in" in done.stdout
    assert "2 failed or refused; this run: 1 rows" in done.stdout
    assert [r["row"] for r in _results(results)] == [0, 1, 2, 3]

    done = run_example(
        _no_api(), "bulk_runs.py", WORKFLOW, str(topics), str(results), "--retry-failed"
    )
    assert done.returncode == 0, done.stderr
    assert "4 complete, 0 failed or refused; this run: 2 rows" in done.stdout
    lines = _results(results)
    assert lines[0] == complete  # kept as it was
    assert sorted(r["row"] for r in lines) == [0, 1, 2, 3]
    assert {r["status"] for r in lines} == {"COMPLETE"}


def test_bulk_runs_names_a_bad_line(tmp_path: Path) -> None:
    topics, results = tmp_path / "topics.csv", tmp_path / "results.jsonl"
    topics.write_text("topic,tone\notters,dry\nseals,dry,extra\n")
    done = run_example(_no_api(), "bulk_runs.py", WORKFLOW, str(topics), str(results))
    assert done.returncode == 2
    assert "error: line 3: not as many fields as the header" in done.stderr
    assert "Traceback" not in done.stderr
    # The row before it is delivered if it was started (rows start in chunks).
    assert {r["row"] for r in _results(results)} <= {0}


def _load_app(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in env.items():
        if key.startswith("COPYAI_"):
            monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(
        "fastapi_app_example", EXAMPLES / "fastapi_app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


@pytest.fixture
def served_app(fake_api: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The FastAPI example served by uvicorn in a thread (its own loop, as in production)."""
    pytest.importorskip("fastapi")
    app = _load_app(fake_api(), monkeypatch)
    with uvicorn_thread(app, lifespan="on") as thread:
        yield f"http://127.0.0.1:{thread.port}"  # type: ignore[attr-defined]
    assert not thread.is_alive()


async def test_fastapi_app(served_app: str) -> None:
    base = f"{served_app}/workflows/{WORKFLOW}/runs"
    async with aiohttp.ClientSession() as http:

        async def start_and_wait(topic: str) -> dict[str, Any]:
            async with http.post(f"{base}?wait=true", json={"topic": topic}) as resp:
                assert resp.status == 200, await resp.text()
                body: dict[str, Any] = await resp.json()
                return body

        waits = [asyncio.ensure_future(start_and_wait(t)) for t in ("otters", "seals", "puffins")]
        # While three requests wait for their runs (seconds), the app answers others at once.
        await asyncio.sleep(0.5)
        async with http.get(f"{served_app}/health") as resp:
            assert resp.status == 200
        assert not any(w.done() for w in waits)
        runs = await asyncio.gather(*waits)
        assert [r["status"] for r in runs] == ["COMPLETE"] * 3
        assert [r["input"] for r in runs] == [{"topic": t} for t in ("otters", "seals", "puffins")]

        async with http.get(f"{base}/{runs[0]['id']}") as resp:
            assert resp.status == 200
            assert (await resp.json())["id"] == runs[0]["id"]
        async with http.post(base, json={"topic": "later"}) as resp:  # no wait: just started
            assert resp.status == 200
            assert (await resp.json())["status"] == "NEW"
        async with http.get(f"{base}/WRUN-missing") as resp:
            assert resp.status == 404
        async with http.post(f"{served_app}/workflows/WCFG-nope/runs", json={}) as resp:
            assert resp.status == 404


def test_the_plugin_example_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=EXAMPLES.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(r"\b5 passed\b", done.stdout), done.stdout[-1000:]


# -- the README's programs ---------------------------------------------------------------

README = EXAMPLES.parent / "README.md"


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_python_blocks_are_complete_programs_or_test_files() -> None:
    blocks = _readme_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        assert "asyncio.run(main())" in block or block.startswith("# test_"), block[:200]


def test_readme_programs_run_against_the_fake_server(fake_api: Any, tmp_path: Path) -> None:
    env = fake_api("--runs", "30")
    redis_server = None
    if BINARY is not None:  # the many-workers program shares limits through it
        redis_server = RedisServer(BINARY).start()
        env["REDIS_URL"] = redis_server.url
    try:
        _run_readme_programs(env, tmp_path)
    finally:
        if redis_server is not None:
            redis_server.close()


def _run_readme_programs(env: dict[str, str], tmp_path: Path) -> None:
    programs = [b for b in _readme_blocks() if "asyncio.run(main())" in b]
    # The webhook program needs an address Copy.ai can reach: its workflow is a placeholder
    # (test_readme_webhook_program_ends_as_its_run_finishes runs it).
    runnable = [b for b in programs if WORKFLOW in b]
    assert len(runnable) == len(programs) - 1
    procs = []
    for i, block in enumerate(runnable):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(block)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "COMPLETE" in out

    tests = [b for b in _readme_blocks() if b.startswith("# test_")]
    for block in tests:
        name = block.split("\n", 1)[0].removeprefix("# ").strip()
        (tmp_path / name).write_text(block)
        # A project with no pytest configuration: no warning either (-W error), where
        # the plugin can spare it pytest-asyncio's.
        warnings = ["-W", "error"] if _keeps_fixture_scope() else []
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", *warnings, "-p", "no:cacheprovider", name],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert " passed" in done.stdout
        assert not warnings or "Warning" not in done.stdout + done.stderr


def test_readme_webhook_program_ends_as_its_run_finishes(fake_api: Any, tmp_path: Path) -> None:
    (block,) = [b for b in _readme_blocks() if "client.listen(" in b]
    # Against the fake on its default schedule: the fake's workflow for the placeholder,
    # and the listener on loopback, where the fake reaches it, instead of a tunnel.
    program = re.sub(r'public_url="[^"]*"', "", block)
    assert program.count('"WCFG-..."') == 2
    program = program.replace('"WCFG-..."', f'"{WORKFLOW}"')
    assert "client.listen()" in program
    script = tmp_path / "readme_webhooks.py"
    script.write_text(program)
    env = fake_api()
    done = subprocess.run(
        [sys.executable, str(TIMED), str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    exited = time.time()
    assert done.returncode == 0, done.stderr
    assert "COMPLETE" in done.stdout
    base = env["COPYAI_BASE_URL"].removesuffix("/api")
    listing = urllib.request.Request(  # noqa: S310 - loopback http
        f"{env['COPYAI_BASE_URL']}/workflow/{WORKFLOW}/run",
        headers={"x-copy-ai-api-key": env["COPYAI_API_KEY"]},
    )
    with urllib.request.urlopen(listing, timeout=30) as resp:  # noqa: S310
        (run,) = json.load(resp)["data"]["data"]
    with urllib.request.urlopen(f"{base}/_fake/runs/{run['id']}", timeout=30) as resp:  # noqa: S310
        info = json.load(resp)
    assert info["unit"] == "seconds"  # the fake's default schedule
    # One read, the one the finished event made (with a listener live, a run just started
    # is not polled at once); and the program was done at once, its listener closed and
    # its webhooks deleted, not on a poll 30 s (the listener's safety interval) later.
    # The interpreter's teardown after that is a matter of the machine's load.
    assert info["polls"] == 1
    late = done_at(done.stderr) - info["finishes_at"]
    assert 0 <= late < 0.5, late
    assert exited - info["finishes_at"] < 3


PLUGIN_USER_TEST = """
import pytest

@pytest.mark.asyncio
async def test_mine(copyai_server, copyai_client):
    run = await copyai_client.start_run(copyai_server.workflow_id, {"topic": "otters"})
    assert (await copyai_client.get_run(copyai_server.workflow_id, run.id)).id == run.id
"""


@pytest.mark.parametrize(
    ("mode", "loop_scope", "shown"),
    [
        ("strict", None, "fixture-scope"),
        ("auto", None, "fixture-scope"),
        ("auto", "function", "function"),
    ],
)
def test_the_plugin_adds_no_warning_to_a_project(
    tmp_path: Path, mode: str, loop_scope: str | None, shown: str
) -> None:
    # A project of one test file that uses the fixtures, no pytest configuration:
    # pytest-asyncio would warn that asyncio_default_fixture_loop_scope is unset (an
    # error under -W error). The plugin sets the value that means what unset means;
    # a project's own value stays.
    if loop_scope is None and not _keeps_fixture_scope():
        pytest.skip("pytest-asyncio < 1.5 has no value for 'unset': the project chooses")
    (tmp_path / "test_mine.py").write_text(PLUGIN_USER_TEST)
    argv = ["-W", "error", "-p", "no:cacheprovider", f"--asyncio-mode={mode}"]
    if loop_scope is not None:
        argv += ["-o", f"asyncio_default_fixture_loop_scope={loop_scope}"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *argv, "test_mine.py"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b1 passed\b", done.stdout)
    assert "Warning" not in done.stdout + done.stderr
    assert f"asyncio_default_fixture_loop_scope={shown}" in done.stdout
