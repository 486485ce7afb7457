"""``copyai-async batch``: a workflow once for each row of a CSV or JSONL file.

The command is :meth:`CopyAIClient.run_batch` with a file on each side:

* **INPUT** is read lazily, twice: a first pass checks every row (and counts them), so
  that a bad row stops the batch before anything is started, or, with
  ``--skip-bad-rows``, goes to a rejects file; the second pass feeds the rows to the
  batch one at a time.
* **OUTPUT** holds one JSON line per row, written and flushed as the row ends. It is the
  truth of what was delivered: at start, the rows it holds (a torn last line cut off)
  are given to the batch as ``skip_rows``, so a line lost in a crash is simply
  delivered again, and no row is ever written twice.
* **The journal** (a SQLite file beside OUTPUT) makes every row run exactly once across
  crashes: the same command run again resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Container, Generator, Iterator
from typing import IO, Any

import anyio
import attrs

from ._batch import REFUSED, Batch, BatchProgress, BatchResult
from ._client import CopyAIClient
from ._errors import BatchJournalError
from ._poll import PollPolicy
from .cli import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    Output,
    UsageError,
    _client,
    _int_at_least,
    _listen_options,
    _listener,
    _one_line,
    _positive_float,
    _severity,
    _sweep_option,
    exit_code,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

if sys.version_info < (3, 11):  # pragma: no cover - the backport on Python 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["RowSet", "add_parser", "cmd_batch"]

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
SHOWN = 20  # bad rows and failed rows listed on stderr, at most
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20
_RICH_REFRESH = 0.25  # seconds between updates of the live view

DESCRIPTION = """\
Run a workflow once for each row of INPUT, and write each row's result to OUTPUT as
its run ends: one JSON line per row, e.g.

  {"row": 17, "line": 19, "input": {...}, "run_id": "WRUN-...", "status": "COMPLETE",
   "output": {...}, "credits": 2, "attempt": 0}

"row" numbers INPUT's rows from 0, bad rows included (so a row keeps its number when a
bad row before it is fixed and the command run again); "line" is where the row starts in
INPUT. A row whose start the API refused (400 or 422) has "status": "REFUSED",
"run_id": null, "output": null and "error": the API's message.

Each row runs exactly once, across crashes and Ctrl-C: run the same command again to
resume. OUTPUT is read back first (a torn last line is cut off) and its rows are not
run again; a journal beside it (OUTPUT.journal) records each row's start before it is
sent, so that no row is started twice.

Every row is checked before anything starts: a bad row (a CSV row with the wrong
number of fields, a JSONL line that is not a JSON object, text that is not UTF-8)
stops the batch with its line number, unless --skip-bad-rows."""

EPILOG = """\
examples:
  copyai-async batch WCFG-123 leads.csv --out results.jsonl
  copyai-async batch WCFG-123 leads.csv --out results.jsonl --retry-failed
  copyai-async batch WCFG-123 - --format jsonl --out results.jsonl < rows.jsonl
  jq -r 'select(.status == "COMPLETE") | .output' results.jsonl

exit codes: 0 every row COMPLETE, 1 some row FAILED or REFUSED (listed on stderr) or
an API or network error, 2 usage (bad arguments, bad rows, a journal of another input),
3 authentication, 4 not found, 130 interrupted (resume with the same command).
"""


# -- INPUT ----------------------------------------------------------------------------


@attrs.frozen
class Record:
    """One row of INPUT: its variables, or why it is bad (``row`` is then ``None``).

    Attributes:
        line: the line of INPUT the row starts on (1 is the first).
        row: the start variables, or ``None`` for a bad row.
        error: why the row is bad.
        text: the row's raw text (for the rejects file), for a bad row only.
    """

    line: int
    row: dict[str, Any] | None
    error: str = ""
    text: str = ""


class Source:
    """INPUT, and its format: a file read afresh for each pass, or stdin (copied to a
    temporary file first, so that it can be read twice without being held in memory).

    Raises:
        UsageError: the format cannot be told, or stdin without ``--format``.
        OSError: the file cannot be opened.
    """

    def __init__(self, path: str, fmt: str | None) -> None:
        self.name = "stdin" if path == "-" else path
        self._path = path
        self._spool: IO[bytes] | None = None
        if fmt is None:
            if path == "-":
                raise UsageError("reading rows from stdin (-) needs --format csv or jsonl")
            fmt = FORMATS.get(os.path.splitext(path)[1].lower())
            if fmt is None:
                raise UsageError(
                    f"cannot tell the format of {path} from its name (.csv, .jsonl or "
                    ".ndjson); give --format csv or --format jsonl"
                )
        self.format: str = fmt
        if path == "-":
            spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            while chunk := sys.stdin.buffer.read(_CHUNK):
                spool.write(chunk)
            self._spool = spool
        else:
            with open(path, "rb"):  # fail now, with the OS's word for why
                pass

    def same_file(self, path: str) -> bool:
        """True when ``path`` names INPUT itself."""
        if self._spool is not None or not os.path.exists(path):
            return False
        return os.path.samefile(self._path, path)

    def records(self) -> Iterator[Record]:
        """Every row of INPUT, good and bad, read one at a time.

        Raises:
            UsageError: a CSV file without a usable header row.
        """
        if self._spool is not None:
            self._spool.seek(0)
            yield from self._parse(self._spool)
            return
        with open(self._path, "rb") as binary:
            yield from self._parse(binary)

    def _parse(self, binary: IO[bytes]) -> Iterator[Record]:
        if self.format == "csv":
            return _csv_records(binary, self.name)
        return _jsonl_records(binary)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


class _Lines:
    """The lines of a binary file as text for the csv reader, counting them, and keeping
    those of the record being read (its raw text, for the rejects file)."""

    def __init__(self, binary: IO[bytes]) -> None:
        self._lines = iter(binary)
        self.number = 0
        self.taken: list[bytes] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        self.number += 1
        if self.number == 1:
            raw = raw.removeprefix(_BOM)
        self.taken.append(raw)
        # Bytes that are not UTF-8 ride through the csv reader as surrogates; the
        # record is then checked strictly, and reported with its line.
        return raw.decode("utf-8", "surrogateescape")


def _raw_text(raw: bytes) -> str:
    text = raw.decode("utf-8", "backslashreplace")
    return text.removesuffix("\n").removesuffix("\r")


def _not_utf8(raw: bytes) -> str | None:
    """Why ``raw`` is not UTF-8 text, or ``None`` when it is."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
    return None


def _csv_records(binary: IO[bytes], name: str) -> Iterator[Record]:
    lines = _Lines(binary)
    reader = csv.reader(lines)
    header: list[str] = []
    while not header:  # (blank lines before the header are passed over)
        try:
            header = next(reader)
        except StopIteration:
            raise UsageError(
                f"{name} has no header row: a CSV input starts with a row of start variable names"
            ) from None
        except csv.Error as exc:
            raise UsageError(f"{name} line {lines.number}: the header is not CSV ({exc})") from None
    where = f"{name} line {lines.number}: the header"
    bad = _not_utf8(b"".join(lines.taken))
    if bad:
        raise UsageError(f"{where} is {bad}")
    for index, column in enumerate(header, 1):
        if not column.strip():
            raise UsageError(f"{where}'s column {index} has no name")
    if len(set(header)) != len(header):
        twice = next(c for c in header if header.count(c) > 1)
        raise UsageError(f"{where} names the column {twice!r} twice")
    while True:
        start = lines.number + 1
        lines.taken.clear()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(start, None, f"not CSV ({exc})", _raw_text(b"".join(lines.taken)))
            continue
        if not fields:
            continue  # a blank line
        raw = b"".join(lines.taken)
        why = _not_utf8(raw)
        if why is None and len(fields) != len(header):
            why = f"{len(fields)} fields, but the header has {len(header)}"
        if why is not None:
            yield Record(start, None, why, _raw_text(raw))
            continue
        yield Record(start, dict(zip(header, fields, strict=True)))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _jsonl_records(binary: IO[bytes]) -> Iterator[Record]:
    for number, line in enumerate(binary, 1):
        raw = line.removeprefix(_BOM) if number == 1 else line
        if not raw.strip():
            continue
        why = _not_utf8(raw)
        value: Any = None
        if why is None:
            try:
                value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
            except ValueError as exc:
                why = f"not JSON ({exc})"
            except RecursionError:
                why = "not JSON (nested too deeply)"
        if why is None and not isinstance(value, dict):
            kind = "null" if value is None else _KINDS.get(type(value), type(value).__name__)
            why = f"not a JSON object, but {kind}"
        if why is not None:
            yield Record(number, None, why, _raw_text(raw))
            continue
        yield Record(number, value)


@attrs.define
class Checked:
    """What the first pass over INPUT found: its rows, and which are bad."""

    rows: int = 0  # every row, good or bad
    bad: int = 0
    bad_rows: RowSet = attrs.Factory(lambda: RowSet())
    shown: list[str] = attrs.Factory(list)

    @property
    def good(self) -> int:
        return self.rows - self.bad


def check_input(source: Source, rejects: str | None) -> Checked:
    """Read every row of INPUT once: count the good ones, list the bad ones, and write
    each bad one to ``rejects`` (rewritten) when given."""
    checked = Checked()
    with contextlib.ExitStack() as stack:
        out = None if rejects is None else stack.enter_context(open(rejects, "w", encoding="utf-8"))
        for record in source.records():
            checked.rows += 1
            if record.row is not None:
                continue
            checked.bad_rows.add(checked.rows - 1)
            checked.bad += 1
            if len(checked.shown) < SHOWN:
                checked.shown.append(f"line {record.line}: {record.error}")
            if out is not None:
                bad = {"line": record.line, "error": record.error, "text": record.text}
                out.write(json.dumps(bad, ensure_ascii=False) + "\n")
    return checked


def _rows(
    source: Source, skip: Container[int], lines_of: dict[int, int], skip_bad: bool
) -> Generator[dict[str, Any], None, None]:
    """Every row of INPUT, for the batch, numbered as they come, bad rows too (so that a
    row keeps its number when a bad row before it is fixed): a bad row is an empty
    placeholder, and ``skip`` holds its number. Notes the line of each row to be run."""
    for row, record in enumerate(source.records()):
        if record.row is None:
            if skip_bad:
                yield {}  # (in skip: neither run nor checked)
                continue
            raise UsageError(
                f"{source.name} changed while the batch ran: line {record.line} is bad now "
                f"({record.error})"
            )
        if row not in skip:
            lines_of[row] = record.line
        yield record.row


class _Either(Container[int]):
    """Rows in either of two containers."""

    def __init__(self, first: Container[int], second: Container[int]) -> None:
        self._first, self._second = first, second

    def __contains__(self, row: object) -> bool:
        return row in self._first or row in self._second


# -- OUTPUT ---------------------------------------------------------------------------


class RowSet(Container[int]):
    """A set of row numbers, one bit each (a million rows in 125 KB)."""

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, row: int) -> None:
        """Add ``row`` (>= 0)."""
        byte = row >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        self._bits[byte] |= 1 << (row & 7)

    def __contains__(self, row: object) -> bool:
        if not isinstance(row, int) or row < 0:
            return False
        byte = row >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (row & 7)))


@attrs.define
class Delivered:
    """The rows OUTPUT holds, and their counts by status."""

    rows: RowSet = attrs.Factory(RowSet)
    count: int = 0
    complete: int = 0
    failed: int = 0
    refused: int = 0
    credits: int = 0
    last_row: int = -1
    shown: list[str] = attrs.Factory(list)  # the first failures, as listed on stderr

    @property
    def not_ok(self) -> int:
        return self.failed + self.refused

    def note(self, result: dict[str, Any]) -> None:
        """Count one line of OUTPUT."""
        row, status = result["row"], result["status"]
        self.rows.add(row)
        self.count += 1
        self.last_row = max(self.last_row, row)
        credits = result.get("credits")
        if isinstance(credits, int):
            self.credits += credits
        if status == "COMPLETE":
            self.complete += 1
            return
        if status == REFUSED:
            self.refused += 1
            said = f": {result.get('error')}"
        else:
            self.failed += 1
            said = f", run {result.get('run_id')}"
        if len(self.shown) < SHOWN:
            self.shown.append(f"row {row} (line {result.get('line')}): {status}{said}")


def _result_of(raw: bytes, path: str, number: int, rows: int) -> dict[str, Any]:
    try:
        result = json.loads(raw)
    except ValueError:
        result = None
    if (
        not isinstance(result, dict)
        or not isinstance(result.get("row"), int)
        or isinstance(result["row"], bool)
        or result["row"] < 0
        or not isinstance(result.get("status"), str)
    ):
        raise UsageError(
            f"{path} line {number} is not a result line of a batch; give another --out "
            "(or move that file away)"
        )
    if result["row"] >= rows:
        raise UsageError(
            f"{path} line {number} holds row {result['row']}, but INPUT has only {rows} "
            "rows: is it the output of another input? give another --out"
        )
    return result


def read_output(
    path: str, *, rows: int, drop_failed: bool, say: Callable[[str], None]
) -> Delivered:
    """The rows OUTPUT holds. A last line without its newline (a write cut short by a
    crash) is cut off; with ``drop_failed``, OUTPUT is rewritten without its FAILED and
    REFUSED lines (a new file beside it, synced, then renamed over it).

    Raises:
        UsageError: a line that is not a batch's result, or of a row past ``rows``.
    """
    delivered = Delivered()
    try:
        file = open(path, "r+b")  # noqa: SIM115 - closed below, or renamed over
    except FileNotFoundError:
        return delivered
    with contextlib.ExitStack() as stack:
        stack.enter_context(file)
        kept: IO[bytes] | None = None
        if drop_failed:
            folder, base = os.path.split(os.path.abspath(path))
            kept = tempfile.NamedTemporaryFile(  # noqa: SIM115 - renamed, or removed
                dir=folder, prefix=f".{base}.", suffix=".tmp", delete=False
            )
            stack.callback(_remove_quietly, kept.name)
            stack.enter_context(kept)
        whole = dropped = 0
        for number, raw in enumerate(file, 1):
            if not raw.endswith(b"\n"):
                break  # torn: cut off below
            result = _result_of(raw, path, number, rows)
            whole += len(raw)
            if kept is not None:
                if result["status"] != "COMPLETE":
                    dropped += 1
                    continue
                kept.write(raw)
            delivered.note(result)
        torn = whole < os.fstat(file.fileno()).st_size
        if torn:
            say(f"note: cut a torn last line off {path} (a write a crash cut short)")
        if kept is not None and dropped:
            kept.flush()
            os.fsync(kept.fileno())
            kept.close()
            os.replace(kept.name, path)
            _sync_folder(path)
            say(f"retrying {dropped} FAILED or REFUSED rows (their lines removed from {path})")
        elif torn:
            file.truncate(whole)
    return delivered


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _sync_folder(path: str) -> None:
    """Make a rename in ``path``'s folder durable (where the OS allows opening one)."""
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def result_json(result: BatchResult, line: int) -> dict[str, Any]:
    """One row's result, as its line in OUTPUT."""
    run = result.run
    out: dict[str, Any] = {
        "row": result.row,
        "line": line,
        "input": dict(result.input),
        "run_id": None if run is None else run.id,
        "status": result.status,
        "output": None if run is None else run.output,
        "credits": None if run is None else run.credits,
        "attempt": result.attempt,
    }
    if run is None:
        out["error"] = result.error
    return out


def _encode(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        return (text + "\n").encode()
    except UnicodeEncodeError:  # a lone surrogate the API sent: keep it, escaped
        return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


# -- progress -------------------------------------------------------------------------


class BatchBoard:
    """The batch's progress on stderr: a live view with rich on a terminal, else a plain
    line every ``every`` seconds; and a summary at the end."""

    def __init__(
        self, out: Output, *, total: int, delivered: Delivered, output: str, every: float
    ) -> None:
        self.out = out
        self.total = total
        self.delivered = delivered
        self.output = output
        self.every = _RICH_REFRESH if out.rich else every
        self.began = time.monotonic()
        self.first = delivered.count
        self.running = 0
        self.settling = 0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> BatchBoard:
        if self.out.rich:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]Batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[counts]}"),
                console=self.out.console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "Batch", total=self.total, completed=self.delivered.count, counts=""
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self.show(None)
            self._progress.__exit__(None, None, None)

    def counts(self) -> str:
        """Rows by status, the rate of this run, its ETA and the credits, on one line."""
        d = self.delivered
        if self.settling:
            return (
                f"looking up {self.settling} starts of the last run (a start sent just "
                f"before it stopped is given {PollPolicy().not_found_grace:g} s to appear)"
            )
        elapsed = max(time.monotonic() - self.began, 1e-9)
        rate = (d.count - self.first) / elapsed
        parts = [
            f"running {self.running}",
            f"complete {d.complete}",
            f"failed {d.failed}",
            f"refused {d.refused}",
            f"{rate:.1f} rows/s",
        ]
        if rate > 0 and d.count < self.total:
            parts.append(f"ETA {_duration((self.total - d.count) / rate)}")
        parts.append(f"credits {d.credits}")
        return "  ".join(parts)

    def show(self, progress: BatchProgress | None) -> None:
        """Update the view (``progress``: the batch's counters now, if it runs)."""
        self.running = 0 if progress is None else progress.running
        self.settling = 0 if progress is None else progress.settling
        if self._progress is not None:
            self._progress.update(self._task, completed=self.delivered.count, counts=self.counts())
        else:
            elapsed = time.monotonic() - self.began
            self.out.line(
                f"{elapsed:6.1f} s  {self.delivered.count}/{self.total} rows  {self.counts()}"
            )

    async def tick(self, batch: Batch) -> None:
        """Show the batch's progress every ``every`` seconds, until cancelled."""
        while True:
            await anyio.sleep(self.every)
            self.show(batch.progress)

    def summary(self, *, finished: bool, hint: bool = True) -> str:
        """The last line: where the batch got to, and what to do next."""
        d = self.delivered
        tally = (
            f"complete {d.complete}, failed {d.failed}, refused {d.refused}; {d.credits} credits"
        )
        head = f"{d.count}/{self.total} rows in {self.output} ({tally})"
        if not finished:
            return f"stopped: {head}" + ("; resume with the same command" if hint else "")
        ran = d.count - self.first
        if ran:
            head += f"; {ran} rows this run, in {time.monotonic() - self.began:.1f} s"
        else:
            head += "; no row left to run"
        if d.not_ok:
            head += f"; --retry-failed runs the {d.not_ok} not COMPLETE again"
        return f"done: {head}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


# -- the command ----------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@attrs.define
class _Plan:
    """A batch ready to run: INPUT checked, OUTPUT read back, and where each file is."""

    source: Source
    output: str
    journal: str
    checked: Checked
    delivered: Delivered


def _paths(args: argparse.Namespace) -> tuple[str, str, str]:
    """OUTPUT, the journal and the rejects file."""
    output = args.out
    return output, args.journal or f"{output}.journal", args.rejects or f"{output}.rejects.jsonl"


class _Lock:
    """This batch, held by this process alone while it runs: an advisory lock on a file
    beside the journal (``JOURNAL.lock``), taken before OUTPUT is read or cut. Two runs
    of one command at once would each cut the other's lines. (Where the OS has no
    ``flock``, the journal's own lock still keeps rows from starting twice.)"""

    def __init__(self, journal: str, output: str) -> None:
        self.path = f"{journal}.lock"
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        if fcntl is None:  # pragma: no cover - Windows
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise UsageError(
                f"{output} is being written by another run of this batch now (it holds "
                f"{self.path}): wait for it to end, or stop it"
            ) from None

    def close(self) -> None:
        self._file.close()  # (releases the lock)


def _plan(args: argparse.Namespace, source: Source) -> _Plan | None:
    """Check INPUT and read OUTPUT back (cut a torn line, drop failed lines); ``None``
    when INPUT has bad rows (listed on stderr)."""
    output, journal, rejects = _paths(args)
    for other, what in ((output, "--out"), (journal, "--journal"), (rejects, "--rejects")):
        if source.same_file(other):
            raise UsageError(f"{what} must not be INPUT itself")
    paths = {"--out": output, "--journal": journal}
    if args.skip_bad_rows:
        paths["--rejects"] = rejects
    seen: dict[str, str] = {}
    for what, path in paths.items():
        other = seen.setdefault(os.path.abspath(path), what)
        if other != what:
            raise UsageError(f"{what} must not be the same file as {other}")
    checked = check_input(source, rejects if args.skip_bad_rows else None)
    if checked.bad and not args.skip_bad_rows:
        _say(
            f"error: {checked.bad} bad rows in {source.name}; nothing was started (fix "
            "them, or pass --skip-bad-rows to skip them into a rejects file):"
        )
        for shown in checked.shown:
            _say(f"  {shown}")
        if checked.bad > len(checked.shown):
            _say(f"  and {checked.bad - len(checked.shown)} more")
        return None
    if checked.bad:
        _say(f"skipped {checked.bad} bad rows of {source.name}: see {rejects}")
    delivered = read_output(output, rows=checked.rows, drop_failed=args.retry_failed, say=_say)
    return _Plan(source, output, journal, checked, delivered)


async def cmd_batch(args: argparse.Namespace, out: Output) -> int:
    """``batch``: run a workflow once for each row of INPUT, into OUTPUT."""
    # (``out`` is stdout, left free: results go to OUTPUT, progress to stderr.)
    if args.out == "-":
        raise UsageError("--out must be a file: it is read back to resume")
    if args.rejects and not args.skip_bad_rows:
        raise UsageError("--rejects goes with --skip-bad-rows")
    source = Source(args.input, args.format)
    output, journal, _ = _paths(args)
    with contextlib.closing(source), contextlib.closing(_Lock(journal, output)):
        plan = _plan(args, source)
        if plan is None:
            return EXIT_USAGE
        delivered, total = plan.delivered, plan.checked.good
        board = BatchBoard(
            Output(as_json=False, stream=sys.stderr),
            total=total,
            delivered=delivered,
            output=plan.output,
            every=args.progress_every,
        )
        if delivered.count < total:
            async with _client(args, rate_limit=args.rate_limit) as client:
                if not args.listen:
                    code = await _run(client, args, plan, board)
                else:
                    async with _listener(client, args) as listener:
                        await listener.register(args.workflow_id)
                        code = await _run(client, args, plan, board)
            if code is not None:
                return code
    for shown in delivered.shown:
        _say(f"failed: {shown}")
    if delivered.not_ok > len(delivered.shown):
        _say(f"failed: and {delivered.not_ok - len(delivered.shown)} more")
    if delivered.count < total:  # the batch ended with rows left: never expected
        _say(board.summary(finished=False))
        return EXIT_ERROR
    _say(board.summary(finished=True))
    return EXIT_ERROR if delivered.not_ok else EXIT_OK


class _OutputFile:
    """OUTPUT, appended to: each line written and flushed to the OS (a crash of the
    process keeps it) before the next; synced to disk when closed."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed in close()

    def write(self, result: dict[str, Any]) -> None:
        self._file.write(_encode(result))
        self._file.flush()

    def close(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()


async def _run(
    client: CopyAIClient, args: argparse.Namespace, plan: _Plan, board: BatchBoard
) -> int | None:
    """Run the batch, each result written to OUTPUT as it comes. On an error or Ctrl-C,
    say where it got to, and raise on; several errors at once are reported here, and
    their exit status returned."""
    delivered = plan.delivered
    lines_of: dict[int, int] = {}
    skip = _Either(delivered.rows, plan.checked.bad_rows)
    rows = _rows(plan.source, skip, lines_of, args.skip_bad_rows)
    batch = client.run_batch(
        args.workflow_id,
        rows,
        journal=plan.journal,
        max_running=args.max_running,
        retry_failed=args.retry_failed,
        skip_rows=skip,
        policy=PollPolicy(sweep=args.sweep),
    )
    try:
        with board, contextlib.closing(_OutputFile(plan.output)) as output:
            async with anyio.create_task_group() as group:
                group.start_soon(board.tick, batch)
                async with batch:
                    async for result in batch:
                        if result.row in delivered.rows:
                            continue  # delivered again after a crash: written already
                        data = result_json(result, lines_of.pop(result.row))
                        output.write(data)
                        delivered.note(data)
                group.cancel_scope.cancel()
    except asyncio.CancelledError:
        _say(board.summary(finished=False))
        raise
    except BaseExceptionGroup as group:
        # Several rows' requests may fail alike at once (a missing workflow): each
        # different error is told once.
        errors = list({_one_line(e): e for e in _leaves(group)}.items())
        if len(errors) == 1:
            _say(board.summary(finished=False, hint=_resumable(errors[0][1])))
            raise errors[0][1] from None
        _say(board.summary(finished=False, hint=all(_resumable(e) for _, e in errors)))
        for text, _ in errors:
            _say(f"error: {text}")
        return max((exit_code(e) for _, e in errors), key=_severity)
    except Exception as error:
        _say(board.summary(finished=False, hint=_resumable(error)))
        raise
    finally:
        rows.close()
    return None


def _resumable(error: BaseException) -> bool:
    """Whether running the same command again may go on (not a usage error, nor a
    workflow that does not exist)."""
    if isinstance(error, BatchJournalError):
        return False
    return exit_code(error) not in (EXIT_USAGE, EXIT_NOT_FOUND)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            found.extend(_leaves(error))
        else:
            found.append(error)
    return found


def _max_running(text: str) -> int:
    value = _int_at_least(1)(text)
    if value > 10_000:
        raise argparse.ArgumentTypeError(f"must be at most 10000, got {value}")
    return value


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """Add the ``batch`` command to the command line's commands."""
    batch = commands.add_parser(
        "batch",
        help="run a workflow once for each row of a CSV or JSONL file (resumable)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("workflow_id", help="the workflow to run (WCFG-...)")
    batch.add_argument(
        "input",
        metavar="INPUT",
        help="the rows: CSV (a header row of start variable names, then one row per run) "
        "or JSONL (one JSON object per line), told by the extension (.csv, .jsonl, "
        ".ndjson) or --format; - reads stdin (with --format)",
    )
    batch.add_argument(
        "--out",
        required=True,
        metavar="OUTPUT",
        help="where each row's result goes, one JSON line per row (created, or read back "
        "to resume)",
    )
    batch.add_argument(
        "--format", choices=("csv", "jsonl"), help="INPUT's format (default: by its extension)"
    )
    batch.add_argument(
        "--journal",
        metavar="PATH",
        help="the journal that makes each row run once across crashes (default: OUTPUT.journal)",
    )
    batch.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="skip bad rows into the rejects file, one JSON object each (line, error, "
        "text), instead of stopping before anything starts",
    )
    batch.add_argument(
        "--rejects",
        metavar="PATH",
        help="the rejects file of --skip-bad-rows, rewritten each time (default: "
        "OUTPUT.rejects.jsonl)",
    )
    batch.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the rows OUTPUT holds as FAILED or REFUSED (their lines are "
        "removed from it first)",
    )
    batch.add_argument(
        "--max-running",
        type=_max_running,
        default=100,
        metavar="N",
        help="rows started and not yet ended, at most, 1 to 10000 (default %(default)s)",
    )
    batch.add_argument(
        "--rate-limit",
        type=_positive_float,
        metavar="N",
        help="requests per second, at most, starts and polls together (default: no limit)",
    )
    batch.add_argument(
        "--progress-every",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default %(default)g)",
    )
    batch.add_argument(
        "--listen",
        action="store_true",
        help="receive webhook events meanwhile: a row's run is seen finished the moment its "
        "event lands (checked with one GET); webhooks are deleted on exit",
    )
    _listen_options(batch)
    _sweep_option(batch)
    batch.set_defaults(handler=cmd_batch)
