"""The batch journal: what a batch did with each row, in SQLite (the one seam to it).

A row goes through these states, each a column of its record:

* **intended** (``attempt``, ``key_at``): its start key is recorded, and the record is
  committed with ``synchronous=FULL`` (durable across a crash or a power loss) before
  the start is sent. Intents are committed in chunks, one fsync for many rows.
* **started** (``run_id``): the API answered with the run's id.
* **ended** (``status``): the run was seen ``COMPLETE`` or ``FAILED`` (or the start was
  refused: ``REFUSED``, with ``error``).
* **delivered**: the result was handed to the caller.

Every record after the intent is a hint, committed in the background (a crash may lose
the last of them): a lost ``run_id`` is found again by the start key, a lost ``status``
by reading the run again, a lost ``delivered`` by delivering the result again. Only the
intent must never be lost, and it is fsynced before the start goes out.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from typing import Any

import attrs

from ._errors import BatchJournalError

__all__ = ["Journal", "RowRecord"]

_SCHEMA_VERSION = 1
_FLUSH_EVERY = 0.5  # seconds between background commits of hints
_FLUSH_ROWS = 512  # or this many hints, whichever comes first
_MEMORY = ":memory:"


@attrs.frozen(kw_only=True, slots=True)
class RowRecord:
    """What the journal knows of one row."""

    row: int
    digest: str
    attempt: int
    key_at: float  # when the intent was recorded, on the server's clock (UNIX seconds)
    run_id: str | None
    status: str | None
    error: str | None
    delivered: bool


class Journal:
    """One batch's rows in a SQLite file (or in memory, for a batch without a journal).

    Args:
        path: the journal file (created if missing), or ``None`` for memory only.
        workflow_id: the batch's workflow; a journal of another workflow is refused.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, workflow_id: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.durable = self.path is not None
        self.skew = 0.0  # seconds the server's clock is ahead of this host's
        try:
            # timeout=0: a journal another process holds is refused at once, not awaited
            self._db = sqlite3.connect(self.path or _MEMORY, isolation_level=None, timeout=0)
        except sqlite3.Error as exc:
            raise BatchJournalError(f"cannot open the batch journal {self.path}: {exc}") from exc
        self._hints: list[tuple[str, tuple[Any, ...]]] = []
        self._flushed_at = time.monotonic()
        try:
            self._lock()
            self._setup(workflow_id)
        except sqlite3.OperationalError as exc:
            self._db.close()
            raise BatchJournalError(self._open_error(exc)) from exc
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise BatchJournalError(
                f"{self.path} is not a batch journal ({exc}); give another journal path"
            ) from exc
        except BaseException:
            self._db.close()
            raise

    def _lock(self) -> None:
        """Hold the file for this pass alone: two passes of one batch at once would both
        start the same rows. (SQLite's exclusive locking mode keeps the lock until the
        connection closes; WAL then needs no shared memory.)"""
        if not self.durable:
            return
        db = self._db
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("COMMIT")

    def _open_error(self, exc: sqlite3.OperationalError) -> str:
        if "locked" in str(exc) or "busy" in str(exc):
            return (
                f"the batch journal {self.path} is in use by another pass of the batch (a "
                "process running it now): wait for it to end, or stop it, then run again"
            )
        return f"cannot use the batch journal {self.path}: {exc}"

    def _setup(self, workflow_id: str) -> None:
        db = self._db
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS rows ("
            " row INTEGER PRIMARY KEY, digest TEXT NOT NULL, attempt INTEGER NOT NULL,"
            " key_at REAL NOT NULL, run_id TEXT, status TEXT, error TEXT,"
            " delivered INTEGER NOT NULL DEFAULT 0)"
        )
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if not meta:
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema", str(_SCHEMA_VERSION)),
                    ("workflow_id", workflow_id),
                    ("batch_id", uuid.uuid4().hex[:16]),
                    ("created_at", str(time.time())),
                ],
            )
            db.execute("COMMIT")
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if meta.get("schema") != str(_SCHEMA_VERSION):
            raise BatchJournalError(
                f"{self.path} is a batch journal of another version ({meta.get('schema')})"
            )
        if meta["workflow_id"] != workflow_id:
            raise BatchJournalError(
                f"{self.path} is the journal of a batch of workflow {meta['workflow_id']}, "
                f"not {workflow_id}; give another journal path for another workflow"
            )
        self.batch_id: str = meta["batch_id"]

    # -- reading -------------------------------------------------------------------------

    def get(self, row: int) -> RowRecord | None:
        """The row's record, or ``None`` if the batch never reached it (hints not yet
        committed are not seen: read a row before its own hints are recorded)."""
        found = self._db.execute(
            "SELECT row, digest, attempt, key_at, run_id, status, error, delivered"
            " FROM rows WHERE row = ?",
            (row,),
        ).fetchone()
        return None if found is None else _record(found)

    def unsettled(self) -> list[RowRecord]:
        """Rows whose start may or may not have reached the API (no run id, no end)."""
        self._flush_if_pending()
        return [
            _record(found)
            for found in self._db.execute(
                "SELECT row, digest, attempt, key_at, run_id, status, error, delivered"
                " FROM rows WHERE run_id IS NULL AND status IS NULL ORDER BY row"
            )
        ]

    def counts(self) -> dict[str, int]:
        """How many rows are in each state: ``status`` values, plus ``running`` and
        ``unsettled`` (no status yet, with and without a run id)."""
        self._flush_if_pending()
        counts: dict[str, int] = {}
        for status, no_run, n in self._db.execute(
            "SELECT status, run_id IS NULL, COUNT(*) FROM rows GROUP BY 1, 2"
        ):
            name = status if status is not None else ("unsettled" if no_run else "running")
            counts[name] = counts.get(name, 0) + n
        return counts

    def last_row(self) -> int:
        """The highest row number recorded (-1: none)."""
        self._flush_if_pending()
        (found,) = self._db.execute("SELECT COALESCE(MAX(row), -1) FROM rows").fetchone()
        return int(found)

    def start_key(self, row: int, attempt: int) -> str:
        """The start key of a row's attempt: the same in every process, so it can be
        looked for even if its record were lost."""
        return f"cab-{self.batch_id}-{row}-{attempt}"

    # -- writing -------------------------------------------------------------------------

    def intend(self, rows: Iterable[tuple[int, str, int]]) -> None:
        """Record that these rows (row, digest, attempt) are about to be started, durably:
        when this returns, a crash cannot lose them."""
        now = self.now()
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                self._write_hints()
                db.executemany(
                    "INSERT INTO rows (row, digest, attempt, key_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(row) DO UPDATE SET attempt = excluded.attempt,"
                    " key_at = excluded.key_at, run_id = NULL, status = NULL, error = NULL,"
                    " delivered = 0",
                    [(row, dig, attempt, now) for row, dig, attempt in rows],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc
        self._flushed_at = time.monotonic()

    def started(self, row: int, run_id: str) -> None:
        self._hint("UPDATE rows SET run_id = ? WHERE row = ?", (run_id, row))

    def ended(self, row: int, status: str, error: str | None = None) -> None:
        self._hint("UPDATE rows SET status = ?, error = ? WHERE row = ?", (status, error, row))

    def delivered(self, row: int) -> None:
        if self.durable:
            self._hint("UPDATE rows SET delivered = 1 WHERE row = ?", (row,))
        else:  # nothing to resume from memory: keep only the rows in flight
            self._hint("DELETE FROM rows WHERE row = ?", (row,))

    def not_started(self, row: int) -> None:
        """The row's start was proved never to have created a run: start it afresh."""
        self._hint("UPDATE rows SET key_at = ? WHERE row = ?", (self.now(), row))

    def now(self) -> float:
        """The server's time now (UNIX seconds), as far as this host can tell."""
        return time.time() + self.skew

    def _hint(self, sql: str, params: tuple[Any, ...]) -> None:
        self._hints.append((sql, params))
        if len(self._hints) >= _FLUSH_ROWS or time.monotonic() - self._flushed_at >= _FLUSH_EVERY:
            self.flush()

    def _write_hints(self) -> None:
        hints, self._hints = self._hints, []
        execute = self._db.execute
        for sql, params in hints:
            execute(sql, params)

    def _flush_if_pending(self) -> None:
        if self._hints:
            self.flush()

    def flush(self) -> None:
        """Commit the hints recorded so far (without waiting for the disk)."""
        self._flushed_at = time.monotonic()
        if not self._hints:
            return
        db = self._db
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN")
            try:
                self._write_hints()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc

    def _write_error(self, exc: sqlite3.Error) -> BatchJournalError:
        return BatchJournalError(
            f"cannot write the batch journal {self.path or '(in memory)'}: {exc}; nothing "
            "more is started (run again to resume once it can be written)"
        )

    def close(self) -> None:
        """Commit what is left and close the file."""
        try:
            self.flush()
        finally:
            self._db.close()


def _record(found: tuple[Any, ...]) -> RowRecord:
    row, dig, attempt, key_at, run_id, status, error, delivered = found
    return RowRecord(
        row=row,
        digest=dig,
        attempt=attempt,
        key_at=key_at,
        run_id=run_id,
        status=status,
        error=error,
        delivered=bool(delivered),
    )
