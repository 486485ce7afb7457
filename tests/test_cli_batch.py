"""``copyai-async batch``, against the fake server over loopback.

The command runs its own event loop (asyncio.run), so these tests are synchronous: the
fake server serves from a loop in a thread of its own, or from a process of its own
(the crash test, which kills the command with SIGKILL again and again).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from copyai_async import START_KEY, CopyAIClient
from copyai_async._cli_batch import RowSet, _Lock
from copyai_async.cli import main
from copyai_async.testing import DEFAULT_RANDOM_FAULTS, FakeCopyAI, FakeRun, Fault, Schedule

T = TypeVar("T")


class ThreadedServer:
    """A FakeCopyAI (built with ``options``) serving from a loop in another thread;
    ``call`` runs code on that loop."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = FakeCopyAI(**options)
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

    def posts(self) -> int:
        """Starts the server was asked for (POSTs, refused or not)."""
        return self.call(lambda: sum(r.method == "POST" for r in self.server.requests))

    def runs(self) -> list[FakeRun]:
        return self.call(lambda: list(self.server.runs()))


def _done(_workflow: str, variables: Any) -> Schedule:
    """Each run COMPLETE at its first reading, its output naming its row; a row with
    ``"fail"`` set ends FAILED instead."""
    if variables.get("fail"):
        return Schedule.immediate("FAILED", credits=1)
    return Schedule.immediate(output={"text": f"for {variables.get('topic')}"}, credits=3)


@pytest.fixture
def api() -> Iterator[ThreadedServer]:
    threaded = ThreadedServer(schedule_for=_done)
    yield threaded
    threaded.close()


def batch(api: ThreadedServer, *argv: str) -> int:
    srv = api.server
    return main(["--api-key", srv.api_key, "--base-url", srv.url, "batch", srv.workflow_id, *argv])


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_row(path: Path) -> dict[int, dict[str, Any]]:
    results = _lines(path)
    by_row = {r["row"]: r for r in results}
    assert len(by_row) == len(results), "a row written twice"
    return by_row


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _topics(path: Path, count: int, **extra: dict[int, str]) -> Path:
    """A CSV of ``count`` rows, ``topic`` t0, t1, ...; ``extra`` sets a column's value
    in some rows (``fail={2: "yes"}``)."""
    names = sorted(extra)
    rows = [[f"t{i}", *(extra[name].get(i, "") for name in names)] for i in range(count)]
    return _csv(path, ["topic", *names], rows)


# -- the happy paths ---------------------------------------------------------------------


def test_csv_rows_each_end_as_one_line(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "leads.csv"
    # Row 1's quoted field spans two lines: row 2 starts on line 5.
    source.write_text('topic,tone\notters,calm\n"sea\nlions",loud\npuffins,""\n')
    out = tmp_path / "results.jsonl"
    assert batch(api, str(source), "--out", str(out)) == 0
    runs = {run.input["topic"]: run for run in api.runs()}
    assert len(runs) == 3
    results = _lines(out)
    assert len(results) == 3
    for result in results:
        assert list(result) == [
            "row",
            "line",
            "input",
            "run_id",
            "status",
            "output",
            "credits",
            "attempt",
        ]
    by_row = _by_row(out)
    expected = [("otters", "calm", 2), ("sea\nlions", "loud", 3), ("puffins", "", 5)]
    for row, (topic, tone, line) in enumerate(expected):
        run = runs[topic]
        assert by_row[row] == {
            "row": row,
            "line": line,
            "input": {"topic": topic, "tone": tone},
            "run_id": run.id,
            "status": "COMPLETE",
            "output": {"text": f"for {topic}"},
            "credits": 3,
            "attempt": 0,
        }
        assert run.metadata is not None
        assert run.metadata[START_KEY].endswith(f"-{row}-0")  # the journal's start key
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(
        f"done: 3/3 rows in {out} (complete 3, failed 0, refused 0; 9 credits); "
        "3 rows this run, in "
    )
    assert (tmp_path / "results.jsonl.journal").exists()  # the journal, beside OUTPUT


@pytest.mark.parametrize(
    ("name", "fmt"), [("rows.jsonl", None), ("rows.NDJSON", None), ("rows.txt", "jsonl")]
)
def test_jsonl_rows_by_extension_or_format(
    api: ThreadedServer, tmp_path: Path, name: str, fmt: str | None
) -> None:
    source = tmp_path / name
    rows = [
        {"topic": "otters", "n": 1, "tags": ["a", "b"]},
        {"topic": "seals", "deep": {"x": None}},
    ]
    # Blank lines are passed over; a row's line is its line in the file; a BOM is no row.
    source.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(rows[0]).encode()
        + b"\n\n  \r\n"
        + json.dumps(rows[1]).encode()
    )
    out = tmp_path / "out.jsonl"
    argv = [str(source), "--out", str(out), *(["--format", fmt] if fmt else [])]
    assert batch(api, *argv) == 0
    by_row = _by_row(out)
    assert [(by_row[i]["line"], by_row[i]["input"]) for i in (0, 1)] == [(1, rows[0]), (4, rows[1])]
    assert {r.input["topic"] for r in api.runs()} == {"otters", "seals"}


def test_format_must_be_told(
    api: ThreadedServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = _topics(tmp_path / "rows.txt", 2)
    out = tmp_path / "out.jsonl"
    assert batch(api, str(source), "--out", str(out)) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert batch(api, "-", "--out", str(out)) == 2
    assert "needs --format" in capsys.readouterr().err
    assert api.posts() == 0
    # A .txt of CSV, told so.
    assert batch(api, str(source), "--out", str(out), "--format", "csv") == 0
    assert [r["input"] for r in _lines(out)] != []
    # stdin, told its format, is read twice (checked, then run) from a copy on disk.
    stdin = io.TextIOWrapper(io.BytesIO(b'{"topic": "from stdin"}\n'))
    monkeypatch.setattr(sys, "stdin", stdin)
    piped = tmp_path / "piped.jsonl"
    assert batch(api, "-", "--format", "jsonl", "--out", str(piped)) == 0
    assert [(r["line"], r["input"]) for r in _lines(piped)] == [(1, {"topic": "from stdin"})]


# -- bad rows ----------------------------------------------------------------------------


def test_bad_csv_rows_stop_the_batch_before_any_start(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "rows.csv"
    source.write_bytes(
        b"topic,tone\n"
        b"otters,calm\n"
        b"seals\n"  # line 3: one field
        b'"multi\nline",calm,extra\n'  # line 4 (to 5): three fields
        b"caf\xe9,calm\n"  # line 6: Latin-1, not UTF-8
        b"puffins,calm\n"
    )
    out = tmp_path / "out.jsonl"
    assert batch(api, str(source), "--out", str(out)) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: 3 bad rows in {source}; nothing was started (fix them, or pass "
        "--skip-bad-rows to skip them into a rejects file):",
        "  line 3: 1 fields, but the header has 2",
        "  line 4: 3 fields, but the header has 2",
        "  line 6: not UTF-8 text (byte 0xe9 at offset 3)",
    ]
    assert api.call(lambda: api.server.stats.requests) == 0  # nothing at all was sent
    assert not out.exists()


def test_bad_jsonl_rows_are_listed_up_to_20(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "rows.jsonl"
    lines = ['{"topic": "ok"}', "[1, 2]", "not json", '{"x": NaN}', '"text"', "null"]
    lines += ["{"] * 30  # lines 7 to 36
    source.write_text("\n".join(lines) + "\n")
    assert batch(api, str(source), "--out", str(tmp_path / "out.jsonl")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: 35 bad rows in {source}; nothing was started")
    assert err[1:5] == [
        "  line 2: not a JSON object, but an array",
        "  line 3: not JSON (Expecting value: line 1 column 1 (char 0))",
        "  line 4: not JSON (NaN is not JSON)",
        "  line 5: not a JSON object, but a string",
    ]
    assert err[5] == "  line 6: not a JSON object, but null"
    assert len(err) == 1 + 20 + 1
    assert err[20].startswith("  line 21: not JSON")
    assert err[-1] == "  and 15 more"
    assert api.posts() == 0


def test_skip_bad_rows_into_the_rejects_file(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "rows.csv"
    source.write_bytes(b"topic\r\nt0\r\nt1,x\r\nt2\r\n\xff\r\nt3\r\n")
    out = tmp_path / "out.jsonl"
    rejects = tmp_path / "out.jsonl.rejects.jsonl"
    expected = [
        {"line": 3, "error": "2 fields, but the header has 1", "text": "t1,x"},
        {"line": 5, "error": "not UTF-8 text (byte 0xff at offset 0)", "text": "\\xff"},
    ]
    assert batch(api, str(source), "--out", str(out), "--skip-bad-rows") == 0
    assert _lines(rejects) == expected
    assert f"skipped 2 bad rows of {source}: see {rejects}" in capsys.readouterr().err
    # Rows are numbered as they come in INPUT, bad rows too (a row keeps its number
    # when a bad row before it is fixed); each has its line.
    by_row = _by_row(out)
    assert [(r, by_row[r]["line"], by_row[r]["input"]["topic"]) for r in sorted(by_row)] == [
        (0, 2, "t0"),
        (2, 4, "t2"),
        (4, 6, "t3"),
    ]
    # Run again: nothing starts, and the rejects file is written afresh, not added to.
    posts = api.posts()
    assert batch(api, str(source), "--out", str(out), "--skip-bad-rows") == 0
    assert _lines(rejects) == expected
    assert api.posts() == posts
    # --rejects chooses the file.
    elsewhere = tmp_path / "bad.jsonl"
    assert (
        batch(api, str(source), "--out", str(out), "--skip-bad-rows", "--rejects", str(elsewhere))
        == 0
    )
    assert _lines(elsewhere) == expected


# -- resuming ----------------------------------------------------------------------------


def test_a_rerun_after_completion_starts_nothing(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _topics(tmp_path / "rows.csv", 5)
    out = tmp_path / "out.jsonl"
    assert batch(api, str(source), "--out", str(out)) == 0
    written = out.read_bytes()
    requests = api.call(lambda: api.server.stats.requests)
    capsys.readouterr()
    assert batch(api, str(source), "--out", str(out)) == 0
    assert api.call(lambda: api.server.stats.requests) == requests  # not one request
    assert out.read_bytes() == written
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"done: 5/5 rows in {out} (complete 5, failed 0, refused 0; 15 credits); no row left to run"
    )


def test_a_torn_last_line_is_cut_off_and_its_row_delivered_again(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _topics(tmp_path / "rows.csv", 4)
    out = tmp_path / "out.jsonl"
    assert batch(api, str(source), "--out", str(out)) == 0
    whole = out.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    torn_row = json.loads(last)["row"]
    out.write_bytes(whole[: len(whole) - len(last) // 2])  # a crash mid-write
    posts = api.posts()
    capsys.readouterr()
    assert batch(api, str(source), "--out", str(out)) == 0
    assert f"note: cut a torn last line off {out}" in capsys.readouterr().err
    # The row's run is read again (the journal knows it), not started again.
    assert api.posts() == posts
    by_row = _by_row(out)
    assert sorted(by_row) == [0, 1, 2, 3]
    assert json.loads(last[: len(last)]) == by_row[torn_row]


def test_retry_failed_runs_exactly_the_failed_rows_again(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _topics(tmp_path / "rows.csv", 6, fail={1: "yes", 4: "yes"})
    out = tmp_path / "out.jsonl"
    assert batch(api, str(source), "--out", str(out)) == 1
    first = _by_row(out)
    assert {r for r, v in first.items() if v["status"] == "FAILED"} == {1, 4}
    err = capsys.readouterr().err.splitlines()
    assert sorted(err[-3:-1]) == [  # in the order they ended
        f"failed: row 1 (line 3): FAILED, run {first[1]['run_id']}",
        f"failed: row 4 (line 6): FAILED, run {first[4]['run_id']}",
    ]
    assert err[-1].startswith(
        f"done: 6/6 rows in {out} (complete 4, failed 2, refused 0; 14 credits); "
        "6 rows this run, in "
    )
    assert err[-1].endswith("; --retry-failed runs the 2 not COMPLETE again")
    # A plain rerun changes nothing, and says so again with exit 1.
    assert batch(api, str(source), "--out", str(out)) == 1
    posts = api.posts()
    api.server.schedule_for = lambda _wf, v: Schedule.immediate(output={"text": "2nd"})
    assert batch(api, str(source), "--out", str(out), "--retry-failed") == 0
    assert api.posts() == posts + 2  # rows 1 and 4, nothing else
    assert "retrying 2 FAILED or REFUSED rows" in capsys.readouterr().err
    second = _by_row(out)
    assert sorted(second) == list(range(6))
    for row in (0, 2, 3, 5):
        assert second[row] == first[row]
    for row in (1, 4):
        assert (second[row]["status"], second[row]["attempt"]) == ("COMPLETE", 1)
        assert second[row]["run_id"] != first[row]["run_id"]
    retried = [r for r in api.runs() if r.metadata and r.metadata[START_KEY].endswith("-1")]
    assert sorted(r.input["topic"] for r in retried) == ["t1", "t4"]


def test_a_refused_row_and_its_retry(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _topics(tmp_path / "rows.csv", 3)
    out = tmp_path / "out.jsonl"
    api.call(
        lambda: api.server.inject(
            Fault.status_code(422, error_code="REQUEST_INVALID"), method="POST"
        )
    )
    # One row at a time: the first start meets the 422.
    assert batch(api, str(source), "--out", str(out), "--max-running", "1") == 1
    refused = _by_row(out)[0]
    message = "POST /api/workflow/WCFG-fake-workflow/run -> 422 REQUEST_INVALID"
    assert refused == {
        "row": 0,
        "line": 2,
        "input": {"topic": "t0"},
        "run_id": None,
        "status": "REFUSED",
        "output": None,
        "credits": None,
        "attempt": 0,
        "error": message,
    }
    assert f"failed: row 0 (line 2): REFUSED: {message}" in capsys.readouterr().err
    assert len(api.runs()) == 2
    assert batch(api, str(source), "--out", str(out), "--retry-failed") == 0
    assert _by_row(out)[0]["status"] == "COMPLETE"
    assert len(api.runs()) == 3


def test_a_changed_input_is_refused_by_the_journal(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _topics(tmp_path / "rows.csv", 3)
    out = tmp_path / "out.jsonl"
    assert batch(api, str(source), "--out", str(out)) == 0
    kept = [line for line in out.read_text().splitlines() if json.loads(line)["row"] != 1]
    out.write_text("\n".join(kept) + "\n")  # row 1's line lost
    _csv(source, ["topic"], [["t0"], ["changed"], ["t2"]])
    posts = api.posts()
    capsys.readouterr()
    assert batch(api, str(source), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "row 1 differs from the row the journal" in err
    assert "resume with the same command" not in err
    assert api.posts() == posts


def test_an_output_of_another_input_is_refused(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _topics(tmp_path / "rows.csv", 3)
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"row": 7, "status": "COMPLETE"}) + "\n")
    assert batch(api, str(source), "--out", str(out)) == 2
    assert "holds row 7, but" in capsys.readouterr().err
    out.write_text("not a result\n" + json.dumps({"row": 0, "status": "COMPLETE"}) + "\n")
    assert batch(api, str(source), "--out", str(out)) == 2
    assert f"{out} line 1 is not a result line of a batch" in capsys.readouterr().err
    assert batch(api, str(source), "--out", str(source)) == 2
    assert "--out must not be INPUT itself" in capsys.readouterr().err
    assert api.posts() == 0


# -- exit codes, progress, Ctrl-C, webhooks ----------------------------------------------


@pytest.mark.parametrize(("key", "workflow", "code"), [("wrong", None, 3), (None, "WCFG-nope", 4)])
def test_api_errors_exit_with_their_code(
    api: ThreadedServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key: str | None,
    workflow: str | None,
    code: int,
) -> None:
    source = _topics(tmp_path / "rows.csv", 2)
    srv = api.server
    argv = ["--api-key", key or srv.api_key, "--base-url", srv.url, "batch"]
    argv += [workflow or srv.workflow_id, str(source), "--out", str(tmp_path / "out.jsonl")]
    assert main(argv) == code
    err = capsys.readouterr().err.splitlines()
    stopped = (
        f"stopped: 0/2 rows in {tmp_path / 'out.jsonl'} (complete 0, failed 0, refused 0; "
        "0 credits)"
    )
    # A key fixed, the same command goes on; a workflow that does not exist, it cannot.
    assert err[-2] == stopped + ("; resume with the same command" if code == 3 else "")
    assert err[-1].startswith("error: ")


def test_progress_lines_when_not_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ThreadedServer(default_schedule=Schedule.seconds(("PROCESSING", 0.6)))
    try:
        source = _topics(tmp_path / "rows.csv", 4)
        out = tmp_path / "out.jsonl"
        assert batch(api, str(source), "--out", str(out), "--progress-every", "0.2") == 0
    finally:
        api.close()
    err = capsys.readouterr().err.splitlines()
    line = re.compile(
        r"^ +\d+\.\d s  (\d)/4 rows  running (\d)  complete (\d)  failed 0  refused 0  "
        r"\d+\.\d rows/s  (?:ETA \d+ s  )?credits \d+$"
    )
    progress = [line.match(text) for text in err[:-1]]
    assert all(progress), err
    assert len(progress) >= 3  # runs take 0.6 s, and are read at 0 and about 1 s
    counts = [(int(m[1]), int(m[2]), int(m[3])) for m in progress if m]
    assert (0, 4, 0) in counts  # all four running at first
    assert all(done == complete for done, _, complete in counts)
    assert err[-1].startswith(f"done: 4/4 rows in {out}")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_live_view_on_a_terminal(
    api: ThreadedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rich")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    source = _topics(tmp_path / "rows.csv", 3)
    assert batch(api, str(source), "--out", str(tmp_path / "out.jsonl")) == 0
    shown = terminal.getvalue()
    assert "Batch" in shown
    assert "3/3" in shown
    assert "complete 3" in shown
    assert "credits 9" in shown


def _spawn(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "copyai_async", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_ctrl_c_exits_130_and_the_same_command_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ThreadedServer(default_schedule=Schedule.seconds(("PROCESSING", 600)))
    try:
        srv = api.server
        source = _topics(tmp_path / "rows.csv", 4)
        out = tmp_path / "out.jsonl"
        argv = ["--api-key", srv.api_key, "--base-url", srv.url, "batch", srv.workflow_id]
        argv += [str(source), "--out", str(out)]
        proc = _spawn(*argv)
        try:
            deadline = time.monotonic() + 30
            while len(api.runs()) < 4:  # a real process: no clock to inject
                assert time.monotonic() < deadline, "the command never started its rows"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)  # the CLI's own grace period is 5 s
        finally:  # never leave the process running, whatever failed
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-2:] == [
            f"stopped: 0/4 rows in {out} (complete 0, failed 0, refused 0; 0 credits); "
            "resume with the same command",
            "interrupted",
        ]
        # The runs go on meanwhile; the same command picks them up, and starts nothing.
        api.call(lambda: [srv.reschedule(run, Schedule.immediate()) for run in srv.runs()])
        assert main(argv) == 0
        assert len(api.runs()) == 4
        assert sorted(_by_row(out)) == [0, 1, 2, 3]
    finally:
        api.close()


def test_listen_finishes_rows_with_few_gets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Runs end 2.5 s after they start: polling alone reads each at about 0, 1, 2.5 and
    # 4.75 s; with a listener, at 0, then once more when its event lands.
    api = ThreadedServer(default_schedule=Schedule.seconds(("PROCESSING", 2.5)))
    try:
        srv = api.server
        source = _topics(tmp_path / "rows.csv", 5)
        out = tmp_path / "out.jsonl"
        assert batch(api, str(source), "--out", str(out), "--listen") == 0
        gets = api.call(
            lambda: Counter(
                r.path.rsplit("/", 1)[1]
                for r in srv.requests
                if r.method == "GET" and "/run/" in r.path
            )
        )
        pages = api.call(lambda: srv.stats.by_kind["list"])
        # Each run read at most twice, on its own or on a page (sweeps: one for all).
        assert max(gets.values(), default=0) <= 2, gets
        assert sum(gets.values()) + pages <= 2 * 5
        assert api.call(lambda: srv.webhooks) == []  # deleted on exit
        assert sorted(_by_row(out)) == list(range(5))
    finally:
        api.close()


def test_rate_limit_spaces_the_requests(api: ThreadedServer, tmp_path: Path) -> None:
    source = _topics(tmp_path / "rows.csv", 10)
    began = time.monotonic()
    assert batch(api, str(source), "--out", str(tmp_path / "out.jsonl"), "--rate-limit", "20") == 0
    # A look at the workflow's clock, then a start per row and its reads (a sweep reads
    # many at once), 1/20 s apart at least.
    took = time.monotonic() - began
    stats = api.call(lambda: api.server.stats)
    assert stats.by_kind["start"] == 10
    assert took >= (stats.requests - 1) / 20
    assert stats.max_per_second <= 21


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--out", "-"], "--out must be a file"),
        (["--out", "o.jsonl", "--rejects", "r.jsonl"], "--rejects goes with --skip-bad-rows"),
        (
            ["--out", "o.jsonl", "--journal", "o.jsonl"],
            "--journal must not be the same file as --out",
        ),
        (
            ["--out", "o.jsonl", "--skip-bad-rows", "--rejects", "o.jsonl.journal"],
            "--rejects must not be the same file as --journal",
        ),
        (
            ["--out", "o.jsonl", "--skip-bad-rows", "--rejects", "./o.jsonl"],
            "--rejects must not be the same file as --out",
        ),
    ],
)
def test_usage_errors(
    api: ThreadedServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    says: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    _topics(tmp_path / "rows.csv", 2)
    assert batch(api, "rows.csv", *argv) == 2
    assert says in capsys.readouterr().err
    assert api.posts() == 0


@pytest.mark.parametrize("argv", [["--max-running", "0"], ["--max-running", "10001"]])
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["batch", "W", "rows.csv", "--out", "o.jsonl", *argv])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# -- parts -------------------------------------------------------------------------------


def test_input_and_output_are_read_a_row_at_a_time(tmp_path: Path) -> None:
    from copyai_async._cli_batch import Source, _rows, check_input, read_output

    count = 20_000
    source_path = _topics(tmp_path / "rows.csv", count)
    out = tmp_path / "out.jsonl"
    with out.open("w") as f:  # 1.5 MB of results, every other row
        for row in range(0, count, 2):
            result = {"row": row, "line": row + 2, "input": {"topic": f"t{row}"}}
            f.write(json.dumps({**result, "status": "COMPLETE", "output": {"x": "y" * 80}}) + "\n")
    tracemalloc.start()
    try:
        source = Source(str(source_path), None)
        assert check_input(source, None).rows == count
        delivered = read_output(str(out), rows=count, drop_failed=False, say=print)
        assert delivered.count == count // 2
        lines_of: dict[int, int] = {}
        read = 0
        for _ in _rows(source, delivered.rows, lines_of, skip_bad=False):
            read += 1
            lines_of.clear()  # (the batch takes each row's line as its result is written)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == count
    assert peak < 500_000, peak  # neither file is held in memory


def test_row_set_is_a_bitmap() -> None:
    rows = RowSet()
    for row in (0, 7, 8, 999_999):
        rows.add(row)
    assert [r for r in range(-1, 20) if r in rows] == [0, 7, 8]
    assert 999_999 in rows
    assert 1_000_000 not in rows
    assert "7" not in rows
    assert len(rows._bits) <= 2 * 125_000  # a bit a row, and the growth's slack


def test_fake_server_fault_kinds() -> None:
    from copyai_async.testing.__main__ import DEFAULT_FAULT_KINDS, FAULT_KINDS, _build, _parser

    assert [FAULT_KINDS[name] for name in DEFAULT_FAULT_KINDS] == list(DEFAULT_RANDOM_FAULTS)
    server = _build(_parser().parse_args([]))
    assert server.random_faults == DEFAULT_RANDOM_FAULTS
    assert server.fault_methods is None
    args = ["--fault-kinds", "lost-500", "lost-disconnect", "--fault-methods", "POST"]
    server = _build(_parser().parse_args(args))
    assert server.random_faults == (
        Fault.server_error(500, after=True),
        Fault.disconnect(after=True),
    )
    assert server.fault_methods == frozenset({"POST"})


# -- the crash test ----------------------------------------------------------------------

CRASH_ROWS = 300
CRASH_KILLS = 5


def _stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/_fake/stats", timeout=30) as resp:  # noqa: S310 - loopback
        stats: dict[str, Any] = json.load(resp)
    return stats


async def _server_runs(env: dict[str, str]) -> list[Any]:
    async with CopyAIClient(
        env["COPYAI_API_KEY"], base_url=env["COPYAI_BASE_URL"], max_retries=20
    ) as client:
        return [run async for run in client.iter_runs("WCFG-fake-workflow")]


def _resumable(code: int, err: str, seed: int) -> None:
    """A pass of the crash test ended well, was killed, or stopped on an error after
    which the same command resumes (the fake's faults, unlucky enough, can exhaust a
    request's retries)."""
    if code not in (0, -signal.SIGKILL):
        assert code == 1, f"seed {seed}: exit {code}: {err}"
        assert "resume with the same command" in err, f"seed {seed}: {err}"


def test_killed_again_and_again_each_row_runs_and_is_written_once(tmp_path: Path) -> None:
    """SIGKILL the command at random moments, under lost answers and 5xx, then run it
    to the end: the server made one run per row, and OUTPUT holds each row once."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 32)))
    print(f"crash test seed {seed} (rerun it with CRASH_SEED={seed})")
    rng = random.Random(seed)
    server = _spawn(
        "fake-server",
        "--seed",
        str(seed),
        "--finish-from",
        "secs",
        "--fault-rate",
        "0.1",
        "--fault-kinds",
        "500",
        "503-html",
        "lost-500",
        "lost-disconnect",
        "garbled",
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        pairs = dict(re.findall(r"(COPYAI_[A-Z_]+)=(\S+)", server.stdout.readline()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("COPYAI_")}
        env.update(pairs, PYTHONUNBUFFERED="1")
        base = env["COPYAI_BASE_URL"].removesuffix("/api")
        # Each run ends 0.1 to 1.5 s after it starts (its "secs" column).
        secs = {n: f"{rng.uniform(0.1, 1.5):.2f}" for n in range(CRASH_ROWS)}
        source = _csv(tmp_path / "rows.csv", ["n", "secs"], [[n, secs[n]] for n in secs])
        out = tmp_path / "out.jsonl"
        command = [sys.executable, "-m", "copyai_async", "batch", "WCFG-fake-workflow"]
        command += [str(source), "--out", str(out), "--max-running", "30"]
        killed = 0
        for kill in range(CRASH_KILLS):
            before = _stats(base)["requests"]
            proc = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            try:
                deadline = time.monotonic() + 60
                while _stats(base)["requests"] == before and proc.poll() is None:
                    assert time.monotonic() < deadline, f"seed {seed}: pass {kill} sent nothing"
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 1.5))  # into its work, at a random moment
                proc.send_signal(signal.SIGKILL)
                _, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            killed += proc.returncode == -signal.SIGKILL
            _resumable(proc.returncode, err, seed)
        assert killed >= 3, f"seed {seed}: the batch ended before it was killed"
        for _ in range(3):  # to the end (a pass may give up on a fault: it says resume)
            last = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=300, check=False
            )
            _resumable(last.returncode, last.stderr, seed)
            if last.returncode == 0:
                break
        assert last.returncode == 0, f"seed {seed}: {last.stderr}"
        stats = _stats(base)
        runs = asyncio.run(_server_runs(env))
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    # The server made exactly one run per row: each row's input is in exactly one run.
    made = Counter(run.input["n"] for run in runs if run.input is not None)
    assert made == Counter(str(n) for n in range(CRASH_ROWS)), f"seed {seed}"
    assert stats["runs_started"] == CRASH_ROWS, f"seed {seed}: {stats}"
    assert stats["faults"] > 0
    # OUTPUT holds each row exactly once, COMPLETE, with the run the server made for it.
    results = _lines(out)
    assert len(results) == CRASH_ROWS, f"seed {seed}"
    run_of = {run.input["n"]: run.id for run in runs if run.input is not None}
    for result in results:
        row = result["row"]
        assert result["status"] == "COMPLETE", f"seed {seed}: {result}"
        assert result["input"] == {"n": str(row), "secs": secs[row]}, f"seed {seed}"
        assert result["line"] == row + 2
        assert result["run_id"] == run_of[str(row)], f"seed {seed}: {result}"
    assert sorted(r["row"] for r in results) == list(range(CRASH_ROWS))


def test_a_bad_row_fixed_later_runs_and_the_others_keep_their_numbers(
    api: ThreadedServer, tmp_path: Path
) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("topic\nt0\nt1,oops\nt2\nt3\n")
    out = tmp_path / "out.jsonl"
    assert batch(api, str(source), "--out", str(out), "--skip-bad-rows") == 0
    source.write_text("topic\nt0\nt1\nt2\nt3\n")  # the bad row fixed
    assert batch(api, str(source), "--out", str(out), "--skip-bad-rows") == 0
    by_row = _by_row(out)
    assert {r: by_row[r]["input"]["topic"] for r in by_row} == {0: "t0", 1: "t1", 2: "t2", 3: "t3"}
    topics = sorted((run.input or {})["topic"] for run in api.runs())
    assert topics == ["t0", "t1", "t2", "t3"]  # each row once: none ran again


def test_an_inserted_row_is_refused_not_taken_as_done(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _csv(tmp_path / "rows.csv", ["topic"], [["a"], ["c"], ["d"]])
    out = tmp_path / "out.jsonl"
    assert batch(api, str(source), "--out", str(out)) == 0
    _csv(source, ["topic"], [["a"], ["b"], ["c"], ["d"]])
    assert batch(api, str(source), "--out", str(out)) == 2
    assert "row 1 differs" in capsys.readouterr().err
    assert sorted((run.input or {})["topic"] for run in api.runs()) == ["a", "c", "d"]


def test_a_second_run_of_the_same_command_at_once_is_refused(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _topics(tmp_path / "rows.csv", 3)
    out = tmp_path / "out.jsonl"
    out.write_text('{"row": 0, "status": "COMPLETE"}\n{"row": 1, "sta')  # being written
    held = _Lock(f"{out}.journal", str(out))  # another run of the command holds the batch
    try:
        assert batch(api, str(source), "--out", str(out)) == 2
    finally:
        held.close()
    assert "being written by another run of this batch" in capsys.readouterr().err
    assert out.read_text().endswith('"sta')  # its line in progress was left alone
    assert api.posts() == 0


def test_an_output_row_past_the_input_is_refused_without_allocating_it(
    api: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _topics(tmp_path / "rows.csv", 3)
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"row": 10**11, "status": "COMPLETE"}) + "\n")
    assert batch(api, str(source), "--out", str(out)) == 2
    assert f"holds row {10**11}, but INPUT has only 3 rows" in capsys.readouterr().err
