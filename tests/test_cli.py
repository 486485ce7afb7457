"""The copyai-async command line, against a fake server over loopback.

The CLI runs its own event loop (asyncio.run), so these tests are synchronous and the
fake server runs on a loop in a thread of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import copyai_async
from copyai_async import START_KEY
from copyai_async.aitasker import AITaskerClient, AITaskerRun
from copyai_async.cli import build_parser, main
from copyai_async.testing import (
    AITASKER_WORKFLOW_ID,
    AITASKER_WORKSPACE_ID,
    FakeCopyAI,
    Fault,
    Schedule,
)
from tests.timed import done_at

TIMED = Path(__file__).with_name("timed.py")

T = TypeVar("T")


class ThreadedServer:
    """A FakeCopyAI serving from a loop in another thread; ``call`` runs code on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = FakeCopyAI()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.aclose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def api() -> Iterator[ThreadedServer]:
    threaded = ThreadedServer()
    yield threaded
    threaded.close()


def cli(api: ThreadedServer, *argv: str) -> int:
    srv = api.server
    return main(["--api-key", srv.api_key, "--base-url", srv.url, *argv])


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- global options ---------------------------------------------------------------------


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"copyai-async {copyai_async.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text
    assert "copyai-async demo" in text
    assert "130 interrupted" in text


def _parsers(
    parser: argparse.ArgumentParser, name: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``parser`` and every subcommand's parser under it, each with its command line."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_argument_says_what_it_is() -> None:
    parsers = dict(_parsers(build_parser(), "copyai-async"))
    assert {"copyai-async runs wait", "copyai-async webhooks get", "copyai-async demo"} <= set(
        parsers
    )
    silent = [
        f"{name}: {action.dest if not action.option_strings else action.option_strings[0]}"
        for name, parser in parsers.items()
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or not action.help.strip())
    ]
    assert silent == []
    # The positionals show their help in --help, as the user reads it.
    usage = parsers["copyai-async runs get"].format_help()
    assert re.search(r"^\s+workflow_id\s+\S", usage, re.MULTILINE), usage
    assert re.search(r"^\s+run_id\s+\S", usage, re.MULTILINE), usage


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["runs"],
        ["runs", "list"],
        ["runs", "list", "W", "--size", "0"],
        ["runs", "list", "W", "--page", "x"],
        ["runs", "wait", "W"],
        ["runs", "start", "W", "--timeout", "-1"],
        ["demo", "--fault-rate", "2"],
        ["demo", "--runs", "0"],
        ["nope"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "get", "W", "R"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "COPYAI_API_KEY" in err
    assert "--api-key" in err  # the command line's own flag, not the library's advice
    assert "CopyAIClient(" not in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_plain_http_names_the_allow_http_flag(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    far = "http://example.invalid/api"
    assert main(["--api-key", "k", "--base-url", far, "runs", "get", "W", "R"]) == 2
    err = capsys.readouterr().err
    assert "--allow-http" in err
    assert "allow_http=True" not in err
    # With the flag the client is built (and then fails on the network, exit 1, not 2):
    # here, point it at the fake server through a base URL that is loopback anyway.
    srv = api.server
    api.call(lambda: srv.add_run(run_id="WRUN-1"))
    assert (
        main(
            [
                "--allow-http",
                "--api-key",
                srv.api_key,
                "--base-url",
                srv.url,
                "runs",
                "get",
                srv.workflow_id,
                "WRUN-1",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["id"] == "WRUN-1"


def test_global_options_after_the_command(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    srv = api.server
    api.call(lambda: srv.add_run(run_id="WRUN-1"))
    argv = ["runs", "get", srv.workflow_id, "WRUN-1", "--json"]
    assert main([*argv, "--api-key", srv.api_key, "--base-url", srv.url, "-v"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "WRUN-1"
    assert "GET /api/workflow" in capsys.readouterr().err + caplog.text
    # Given before, and not after: the value before holds.
    assert main(["--api-key", srv.api_key, "--base-url", srv.url, *argv]) == 0
    # Given after, it wins over the one before.
    assert main(["--api-key", "wrong", "--base-url", srv.url, *argv, "--api-key", srv.api_key]) == 0
    assert main(["--api-key", srv.api_key, "--base-url", srv.url, *argv, "--api-key", "wrong"]) == 3


def test_base_url_from_the_environment(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = api.server
    api.call(lambda: srv.add_run(run_id="WRUN-1"))
    monkeypatch.setenv("COPYAI_API_KEY", srv.api_key)
    monkeypatch.setenv("COPYAI_BASE_URL", srv.url)
    assert main(["runs", "get", srv.workflow_id, "WRUN-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "WRUN-1"
    client = copyai_async.CopyAIClient()
    assert str(client.base_url) == srv.url
    monkeypatch.setenv("COPYAI_BASE_URL", "  ")  # blank: the default
    assert str(copyai_async.CopyAIClient().base_url) == copyai_async.DEFAULT_BASE_URL
    # An argument wins over the variable.
    monkeypatch.setenv("COPYAI_BASE_URL", "http://127.0.0.1:1/api")
    assert str(copyai_async.CopyAIClient(base_url=srv.url).base_url) == srv.url


def test_output_to_a_closed_pipe_is_quiet() -> None:
    # `copyai-async runs list W --all | head -1`: no traceback, exit 1 (the Python docs'
    # advice on SIGPIPE), whatever the reader does.
    server = _spawn("fake-server", "--runs", "2000")
    try:
        assert server.stdout is not None
        url = re.search(r"(http://127\.0\.0\.1:\d+/api)", server.stdout.readline())
        assert url
        env = {**os.environ, "COPYAI_API_KEY": "test-key", "COPYAI_BASE_URL": url.group(1)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "copyai_async", "runs", "list", "WCFG-fake-workflow", "--all"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"RUN")
        proc.stdout.close()  # the reader goes away
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert b"Traceback" not in err
        assert b"BrokenPipe" not in err
        if os.path.exists("/dev/full"):  # a full disk: one line
            with open("/dev/full", "w") as full:
                wrote = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "copyai_async",
                        "runs",
                        "list",
                        "WCFG-fake-workflow",
                        "--all",
                    ],
                    stdout=full,
                    stderr=subprocess.PIPE,
                    env=env,
                    timeout=60,
                    check=False,
                )
            assert wrote.returncode == 1
            lines = wrote.stderr.decode().strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith("error: ")
            assert "No space left" in lines[0]
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)


# -- runs list / get --------------------------------------------------------------------


def test_list_human(api: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    fakes = api.call(lambda: api.server.add_runs(12, schedule=Schedule.immediate()))
    assert cli(api, "runs", "list", api.server.workflow_id) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "STATUS", "CREATED", "CREDITS"]
    assert [line.split()[0] for line in lines[1:11]] == [f.id for f in reversed(fakes)][:10]
    assert all(line.split()[1] == "COMPLETE" for line in lines[1:11])
    assert lines[-1] == "page 1, 10 runs of 12; more with --page"


def test_list_json_and_all(api: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    api.call(lambda: api.server.add_runs(250, schedule=Schedule.immediate(), metadata={"k": 1}))
    assert cli(api, "runs", "list", api.server.workflow_id, "--all", "--json") == 0
    rows = _json_lines(capsys.readouterr().out)
    assert len(rows) == 250
    assert len({r["id"] for r in rows}) == 250
    first = rows[0]
    assert set(first) == {
        "id",
        "workflow_id",
        "status",
        "raw_status",
        "created_at",
        "credits",
        "metadata",
        "input",
        "output",
    }
    assert first["status"] == "COMPLETE"
    assert first["metadata"] == {"k": 1}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", first["created_at"])
    assert cli(api, "runs", "list", api.server.workflow_id, "--page", "3", "--size", "100") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "page 3, 50 runs of 250"


def test_get_human_and_json(api: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake = api.call(
        lambda: api.server.add_run(schedule=Schedule.immediate(), input={"topic": "otters"})
    )
    assert cli(api, "runs", "get", api.server.workflow_id, fake.id) == 0
    out = capsys.readouterr().out
    assert f"Run:       {fake.id}" in out
    assert "Status:    COMPLETE" in out
    assert '"topic": "otters"' in out
    assert cli(api, "runs", "get", api.server.workflow_id, fake.id, "--json") == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert row["id"] == fake.id
    assert row["input"] == {"topic": "otters"}


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["runs", "get", "WCFG-fake-workflow", "WRUN-nope"], 4, "404 NOT_FOUND"),
        (["runs", "list", "WCFG-missing"], 4, "404 NOT_FOUND; no such workflow,"),
        (["webhooks", "get", "WHK-nope"], 4, "404 NOT_FOUND; no such webhook,"),
        (["webhooks", "delete", "WHK-nope"], 4, "404 NOT_FOUND; no such webhook,"),
        (["runs", "get", "WCFG-fake-workflow", ""], 2, "run_id"),
    ],
)
def test_errors_are_one_line(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, words: str
) -> None:
    assert cli(api, *argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert words in err
    assert len(err.strip().splitlines()) == 1


def test_a_base_url_without_api_says_so(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = api.server
    root = srv.url.removesuffix("/api")
    assert main(["--api-key", srv.api_key, "--base-url", root, "webhooks", "get", "WHK-1"]) == 4
    assert capsys.readouterr().err == (
        "error: GET /webhook/WHK-1 -> 404 (non-JSON body); not the API's own error: the base "
        f"URL {root} may be wrong (Copy.ai's API root is https://api.copy.ai/api)\n"
    )


def test_wrong_key_exits_3(api: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--api-key", "wrong", "--base-url", api.server.url, "runs", "list", "W"]
    assert main(argv) == 3
    assert "401" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["k", "o", "e", "cpk-3f9c2b7e4a1d8c6f0b5e2a9d"])
def test_the_key_is_masked_as_a_token_in_error_output(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    srv = api.server
    # The server echoes the key back in its error's details (and its words around it).
    echo = {
        "status": "error",
        "errorCode": "BAD_REQUEST",
        "details": {"x-copy-ai-api-key": [f"the key '{key}' is not known"]},
    }

    def arrange() -> None:
        srv.api_key = key
        srv.inject(Fault.raw(echo, status=400))

    api.call(arrange)
    assert main(["--api-key", key, "--base-url", srv.url, "runs", "list", srv.workflow_id]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: GET /api/workflow/{srv.workflow_id}/run?page=1&size=10 -> 400 BAD_REQUEST: "
        "x-copy-ai-api-key: the key '***' is not known\n"
    )


def test_verbose_logs_requests_without_the_key(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(api, "-v", "runs", "list", api.server.workflow_id) == 0
    err = capsys.readouterr().err
    assert "GET /api/workflow/" in err
    assert "-> 200" in err
    assert api.server.api_key not in err


# -- runs start / wait ------------------------------------------------------------------


def test_start(api: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "runs",
        "start",
        api.server.workflow_id,
        "--var",
        "topic=sea otters",
        "--var",
        "n=2",
        "--metadata",
        "job=7",
        "--json",
    ]
    assert cli(api, *argv) == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert row["status"] == "NEW"
    body = api.server.requests[-1].json()
    key = body["metadata"].pop(START_KEY)
    assert re.fullmatch("[0-9a-f]{32}", key)  # a fresh start key, so the start is sent once
    assert body == {"startVariables": {"topic": "sea otters", "n": "2"}, "metadata": {"job": "7"}}
    assert cli(api, "runs", "start", api.server.workflow_id, "--var", "oops") == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_start_keys_and_find(api: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    wf = api.server.workflow_id
    assert cli(api, "runs", "start", wf, "--start-key", "job-7", "--json") == 0
    (started,) = _json_lines(capsys.readouterr().out)
    assert api.server.requests[-1].json()["metadata"] == {START_KEY: "job-7"}
    assert cli(api, "runs", "find", wf, "job-7", "--json") == 0
    (found,) = _json_lines(capsys.readouterr().out)
    assert found["id"] == started["id"]
    assert cli(api, "runs", "find", wf, "job-8") == 4
    assert "carries start key 'job-8'" in capsys.readouterr().err
    assert cli(api, "runs", "start", wf, "--no-start-key") == 0
    assert "metadata" not in api.server.requests[-1].json()
    with pytest.raises(SystemExit) as usage:
        cli(api, "runs", "start", wf, "--no-start-key", "--start-key", "k")
    assert usage.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_a_lost_start_says_how_to_find_it(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from copyai_async.testing import Fault

    wf = api.server.workflow_id
    # The start lands, its answer is lost, and so is every lookup: the CLI cannot tell.
    api.call(lambda: api.server.inject(Fault.disconnect(after=True), method="POST"))
    api.call(lambda: api.server.inject(*[Fault.server_error(503)] * 4, method="GET"))
    assert cli(api, "runs", "start", wf, "--start-key", "job-9") == 1
    err = capsys.readouterr().err
    assert "may or may not have started" in err
    assert f"hint: before starting it again, look for it: copyai-async runs find {wf} job-9" in err
    assert "Traceback" not in err
    assert cli(api, "runs", "find", wf, "job-9") == 0  # it had started


@pytest.mark.parametrize(("final", "code"), [("COMPLETE", 0), ("FAILED", 5)])
def test_start_and_wait(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str], final: str, code: int
) -> None:
    api.server.default_schedule = Schedule.seconds(("PROCESSING", 0.3), final=final)
    assert cli(api, "runs", "start", api.server.workflow_id, "--wait") == code
    out = capsys.readouterr().out
    assert "started WRUN-" in out
    assert "PROCESSING" in out
    assert f"Status:    {final}" in out


def test_start_wait_timeout_exits_6(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    api.server.default_schedule = Schedule.seconds(("PROCESSING", 60))
    argv = ["runs", "start", api.server.workflow_id, "--wait", "--timeout", "0.3"]
    assert cli(api, *argv) == 6
    assert "timeout" in capsys.readouterr().err


def test_wait_many(api: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    fakes = api.call(
        lambda: [
            api.server.add_run(schedule=Schedule.seconds(("PROCESSING", 0.2 * i))) for i in range(4)
        ]
    )
    ids = [f.id for f in fakes]
    assert cli(api, "runs", "wait", api.server.workflow_id, *ids, "--json") == 0
    rows = _json_lines(capsys.readouterr().out)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert {r["status"] for r in rows} == {"COMPLETE"}
    assert cli(api, "runs", "wait", api.server.workflow_id, *ids) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[2:5] == ["4/4", "done", "complete"]


def test_wait_many_reads_pages_unless_told_not_to(api: ThreadedServer) -> None:
    ids = api.call(lambda: [api.server.add_run().id for _ in range(5)])
    counts = []
    for flag in ([], ["--no-sweep"]):
        api.call(api.server.reset_stats)
        assert cli(api, "runs", "wait", api.server.workflow_id, *ids, "--json", *flag) == 0
        counts.append(api.call(lambda: Counter(api.server.stats.by_kind)))
    swept, alone = counts
    assert swept["list"] >= 1
    assert swept["get"] == 0
    assert alone["list"] == 0
    assert alone["get"] >= 5


_PROGRESS = re.compile(r"\s*\d+\.\d s  (\d+)/(\d+) done  (.*)")


def _progress_lines(out: str) -> list[tuple[int, int, dict[str, int]]]:
    """The progress lines of a wait: ``(done, total, count by status)`` each."""
    lines = []
    for line in out.splitlines():
        match = _PROGRESS.fullmatch(line)
        if match:
            words = match[3].split()
            counts = {status: int(n) for status, n in zip(words[::2], words[1::2], strict=True)}
            lines.append((int(match[1]), int(match[2]), counts))
    return lines


def _consistent(lines: list[tuple[int, int, dict[str, int]]]) -> None:
    """Each line is one snapshot: done counts exactly the runs in a final status."""
    assert lines
    for done, total, counts in lines:
        assert done == counts.get("complete", 0) + counts.get("failed", 0), lines
        assert sum(counts.values()) <= total


def test_wait_progress_lines_are_consistent(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its first reading is final: the line it prints counts it done, as it counts it failed.
    failed = api.call(lambda: api.server.add_run(schedule=Schedule.immediate("FAILED"))).id
    assert cli(api, "runs", "wait", api.server.workflow_id, failed) == 5
    lines = _progress_lines(capsys.readouterr().out)
    _consistent(lines)
    assert lines == [(1, 1, {"failed": 1})]  # said once, not again at the end


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [("FAILED", 5, ""), ("missing", 4, "404"), ("slow", 6, "timeout")],
)
def test_wait_exit_status(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str], extra: str, code: int, words: str
) -> None:
    ok = api.call(lambda: api.server.add_run(schedule=Schedule.immediate())).id
    if extra == "missing":
        other = "WRUN-missing"
    else:
        schedule = (
            Schedule.immediate("FAILED")
            if extra == "FAILED"
            else Schedule.seconds(("PROCESSING", 60))
        )
        other = api.call(lambda: api.server.add_run(schedule=schedule)).id
    assert cli(api, "runs", "wait", api.server.workflow_id, ok, other, "--timeout", "1") == code
    err = capsys.readouterr().err
    assert words in err
    if extra == "FAILED":  # the failed run is named, not only counted
        assert err.splitlines() == [
            f"failed: run {other} of workflow {api.server.workflow_id} (FAILED)"
        ]


# -- webhooks ----------------------------------------------------------------------------


def test_webhooks_commands(api: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    wf = api.server.workflow_id
    assert (
        cli(
            api,
            "webhooks",
            "create",
            "https://h.example/in",
            "workflowRun.completed",
            "--workflow",
            wf,
            "--json",
        )
        == 0
    )
    made = json.loads(capsys.readouterr().out)
    assert (made["url"], made["event_type"], made["workflow_id"]) == (
        "https://h.example/in",
        "workflowRun.completed",
        wf,
    )
    assert cli(api, "webhooks", "list", "--json") == 0
    assert [row["id"] for row in _json_lines(capsys.readouterr().out)] == [made["id"]]
    assert cli(api, "webhooks", "get", made["id"]) == 0
    assert made["id"] in capsys.readouterr().out
    assert cli(api, "webhooks", "delete", made["id"]) == 0
    assert cli(api, "webhooks", "delete", made["id"]) == 4
    assert cli(api, "webhooks", "delete", made["id"], "--missing-ok") == 0
    assert cli(api, "webhooks", "create", "ftp://h.example/in", "workflowRun.completed") == 2
    assert "http" in capsys.readouterr().err
    assert api.call(lambda: api.server.webhooks) == []


def _in_thread(fn: Callable[[], T]) -> tuple[threading.Thread, list[T]]:
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    return thread, result


def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_listen_prints_events_and_cleans_up(
    api: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    thread, code = _in_thread(lambda: cli(api, "listen", "--count", "2", "--json"))
    _until(lambda: len(api.call(lambda: api.server.webhooks)) == 3)
    # Finished a moment after it started: with both events at once, their deliveries
    # (5-20 ms each, at random) may cross, and a "started" after the run's "completed"
    # is dropped as stale, by design.
    run = api.call(lambda: api.server.add_run(schedule=Schedule.seconds(("PROCESSING", 0.3))))
    thread.join(10)
    assert code == [0]
    events = _json_lines(capsys.readouterr().out)
    assert [e["type"] for e in events] == ["workflowRun.started", "workflowRun.completed"]
    assert {e["run_id"] for e in events} == {run.id}
    assert {e["verified"] for e in events} == {False}
    assert api.call(lambda: api.server.webhooks) == []


def test_runs_wait_listen(api: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake = api.call(lambda: api.server.add_run(schedule=Schedule.seconds(("PROCESSING", 0.5))))
    began = time.monotonic()
    assert cli(api, "runs", "wait", api.server.workflow_id, fake.id, "--listen", "--json") == 0
    assert time.monotonic() - began < 5  # not the 10 s max interval, nor the 30 s safety one
    assert _json_lines(capsys.readouterr().out)[0]["status"] == "COMPLETE"
    gets = api.call(
        lambda: [r for r in api.server.requests if r.method == "GET" and fake.id in r.path]
    )
    assert len(gets) == 2  # the first look, then the event's verification
    assert api.call(lambda: api.server.webhooks) == []


def _use_it(server: subprocess.Popen[str]) -> dict[str, str]:
    """The environment `copyai-async fake-server` says to use (its second line)."""
    assert server.stdout is not None
    server.stdout.readline()
    pairs = dict(re.findall(r"(COPYAI_[A-Z_]+)=(\S+)", server.stdout.readline()))
    assert set(pairs) == {"COPYAI_API_KEY", "COPYAI_BASE_URL"}, pairs
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYAI_")}
    return {**env, **pairs, "PYTHONUNBUFFERED": "1"}


def fake_run(env: dict[str, str], run_id: str) -> dict[str, Any]:
    """What a fake server in another process says about a run (``GET /_fake/runs/ID``)."""
    url = f"{env['COPYAI_BASE_URL'].removesuffix('/api')}/_fake/runs/{run_id}"
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback http
        info: dict[str, Any] = json.load(resp)
    return info


def test_runs_wait_listen_ends_as_the_run_finishes() -> None:
    # As a user types it: the fake server on its default schedule, a run, and a wait
    # with a listener (through tests/timed.py, which notes when the command was done).
    # Seed 28 makes the first run take 3.7 s, time enough for the wait to be listening
    # before it finishes, even on a busy machine.
    server = _spawn("fake-server", "--seed", "28")
    try:
        env = _use_it(server)
        copyai = [sys.executable, "-m", "copyai_async"]
        started = subprocess.run(
            [*copyai, "runs", "start", "WCFG-fake-workflow", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        run_id = json.loads(started.stdout)["id"]
        command = ["runs", "wait", "WCFG-fake-workflow", run_id, "--listen", "--json"]
        wait = subprocess.Popen(
            [sys.executable, str(TIMED), "-m", "copyai_async", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = wait.communicate(timeout=60)
        exited = time.time()
        info = fake_run(env, run_id)
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    assert wait.returncode == 0, err
    assert _json_lines(out)[-1]["status"] == "COMPLETE"
    assert (info["unit"], info["status"]) == ("seconds", "COMPLETE")  # the default schedule
    assert sum(d for _, d in info["steps"]) == pytest.approx(3.7, abs=0.01)
    # Two reads: the wait's first look (the run unfinished, the listener live), then the
    # one the finished event made; and the command was done at once (its listener
    # closed, its webhooks deleted), not on a poll 10 or 30 s later. The interpreter's
    # teardown after that is a matter of the machine's load.
    assert info["polls"] == 2
    late = done_at(err) - info["finishes_at"]
    assert 0 <= late < 0.5, late
    assert exited - info["finishes_at"] < 3


# -- demo, fake-server, Ctrl-C ----------------------------------------------------------


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--runs", "40", "--latency", "0", "--time-scale", "0.05", "--seed", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "started 40 runs" in out
    assert "streamed 40 runs with iter_runs" in out
    summary = dict(line.rsplit(None, 1) for line in out.splitlines()[-13:])
    assert summary["runs"] == "40"
    # The same wait by sweeps: fewer requests; with a webhook listener: seen sooner.
    assert float(summary["sweeps requests per run"]) < float(summary["one by one requests per run"])
    assert float(summary["webhooks detection p50 s"]) < float(summary["one by one detection p50 s"])
    assert "each run read on its own, sweeps of the listing" in out
    assert int(summary["complete"]) + int(summary["failed"]) == 40
    assert int(summary["faults injected"]) > 0  # retried: every run still came back
    progress = _progress_lines(out)
    _consistent(progress)
    assert progress[-1][:2] == (40, 40)
    assert main([*argv, "--json"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert len(rows) == 41
    assert rows[-1]["summary"]["runs"] == 40


def _spawn(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "copyai_async", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_fake_server_command() -> None:
    proc = _spawn(
        "fake-server", "--runs", "3", "--aitasker-runs", "2", "--api-key", "k2", "--seed", "4"
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/api)", line)
        assert url, line
        assert "API key k2" in line  # it says which key to use
        usage = proc.stdout.readline()
        assert f"COPYAI_API_KEY=k2 COPYAI_BASE_URL={url.group(1)}" in usage
        aitasker = proc.stdout.readline()
        assert f"AITASKER_BASE_URL={url.group(1).removesuffix('/api')}" in aitasker
        assert f"workspace {AITASKER_WORKSPACE_ID}, workflow {AITASKER_WORKFLOW_ID}" in aitasker

        async def aitasker_runs() -> list[AITaskerRun]:
            base = url.group(1).removesuffix("/api")
            async with AITaskerClient("k2", base_url=base) as at:
                return await at.list_runs(AITASKER_WORKSPACE_ID, AITASKER_WORKFLOW_ID)

        seeded = asyncio.run(aitasker_runs())
        assert [r.status for r in seeded] == ["completed", "completed"]
        listing = subprocess.run(
            [
                sys.executable,
                "-m",
                "copyai_async",
                "--api-key",
                "k2",
                "--base-url",
                url.group(1),
                "runs",
                "list",
                "WCFG-fake-workflow",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listing.returncode == 0
        assert len(_json_lines(listing.stdout)) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)  # reads and closes the pipes
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--port", "99999"], "must be 0..65535"),
        (["--port", "-1"], "must be 0..65535"),
        (["--port", "x"], "not an integer"),
    ],
)
def test_fake_server_bad_port_is_one_usage_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fake-server", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_fake_server_has_the_module_s_options() -> None:
    from copyai_async.cli import build_parser
    from copyai_async.testing.__main__ import _parser

    def flags(parser: Any) -> set[str]:
        return {f for a in parser._actions for f in a.option_strings}

    fake = build_parser()._subparsers._group_actions[0].choices["fake-server"]  # type: ignore[union-attr]
    module = flags(_parser())
    assert {"--api-key", "--workflow", "--seed", "--finish-between", "--runs-file"} <= module
    assert module <= flags(fake)


def test_ctrl_c_exits_130(api: ThreadedServer) -> None:
    slow = api.call(lambda: api.server.add_run(schedule=Schedule.seconds(("PROCESSING", 600)))).id
    proc = _spawn(
        "--api-key",
        api.server.api_key,
        "--base-url",
        api.server.url,
        "runs",
        "wait",
        api.server.workflow_id,
        slow,
    )
    try:
        deadline = time.monotonic() + 30
        while api.server.stats.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # a real process polling a real server: no clock to inject
        assert api.server.stats.requests > 0, "the command never polled"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # the CLI's own grace period is 5 s
    finally:  # never leave the process running, whatever failed
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in err


# -- the pytest plugin ------------------------------------------------------------------


async def test_pytest_plugin_fixtures(copyai_client: Any, copyai_server: Any) -> None:
    run = await copyai_client.start_run(copyai_server.workflow_id, {"topic": "otters"})
    assert (await copyai_client.get_run(copyai_server.workflow_id, run.id)).id == run.id
