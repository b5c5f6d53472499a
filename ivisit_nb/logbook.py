"""The logbook: a session's logs appended to SQLite as they happen, so they survive a restart.

Each user has one logbook, ``CONFIG_DIR/<user folder>/logs.sqlite`` (WAL mode), with a
table per log: ``transfers``, ``progress_log``, ``policy_log``, ``messages`` and ``items``
(the columns of :data:`ivisit_nb.frames.SCHEMAS`). A session attaches its logbook when it
joins (:meth:`Logbook.follow`). On every session event the logbook takes the rows the
in-memory logs gained since the previous event, the transfer that ended and the item that
arrived, and a thread of its own appends them in one transaction (the engine never waits
for the disk); so a crash loses at most what happened since the last event or two
(:meth:`Logbook.flush` waits for the thread, and :meth:`Logbook.close` at ``leave()``
writes the rest). Transfers are written once, when
they end. The file is created on the first row, so a session that logs nothing leaves none.

When the session joins again with the same config dir, :attr:`Logbook.earlier` holds the
newest rows of the earlier runs, and the session's logs show them first.

Read a logbook without a session with :func:`load` (DataFrames) and write it out with
:func:`export`; ``ivisit-nb logs --config-dir DIR --user NAME --csv OUT`` does both.
This module imports pandas only for :func:`load` and :func:`export`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import unicodedata
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import events as ev
from .frames import SCHEMAS, frame
from .protocol.text import clean_text
from .sharing.names import safe_user_dir

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("ivisit_nb.logbook")

FILE_NAME = "logs.sqlite"
#: The persisted logs, as tables of the same name.
LOGS = ("transfers", "progress_log", "policy_log", "messages", "items")
#: Rows of earlier runs read back at join, per log (the same bounds as the in-memory logs).
EARLIER_ROWS = {"transfers": 20_000, "progress_log": 100_000, "policy_log": 100_000, "messages": 100_000, "items": 20_000}
#: Rows kept on disk per log; older ones are removed when a session opens the file to write.
KEPT_ROWS = {name: 10 * n for name, n in EARLIER_ROWS.items()}
MAX_CELL_CHARS = 1 << 20


def logbook_path(config_dir: str | Path, user: str) -> Path:
    """Where ``user``'s logbook lives under ``config_dir`` (the session's ``config_dir``)."""
    return Path(config_dir) / safe_user_dir(user) / FILE_NAME


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cell(value: Any) -> Any:
    """A value SQLite stores as it is: text cleaned, numbers and None unchanged, anything else as text."""
    if value is None or isinstance(value, (int, float)):
        return value
    return clean_text(value if isinstance(value, str) else str(value), MAX_CELL_CHARS)


class _Tail:
    """The rows appended to a list since the previous call; the list may lose rows at its front."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.last: dict[str, Any] | None = None

    def take(self) -> list[dict[str, Any]]:
        rows = self.rows
        i = len(rows)
        while i > 0 and rows[i - 1] is not self.last:
            i -= 1
        new = rows[i:]  # everything if the last row we wrote was pruned away (or none was)
        if new:
            self.last = new[-1]
        return new


class Logbook:
    """One user's logs in SQLite: :attr:`earlier` rows read at open, new rows appended as they happen.

    Thread-safe. Writing problems (a full disk, say) are logged once and never reach the
    session; the in-memory logs stay complete.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # batches queued, or all written
        self._queued: list[dict[str, list[dict[str, Any]]]] = []
        self._writing = False
        self._writer: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._tails: dict[str, _Tail] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._failed = False
        self.closed = False
        #: When this logbook was opened (Unix seconds): rows of earlier runs are older.
        self.opened_at = time.time()
        #: log name -> rows (dicts) of earlier runs, oldest first.
        self.earlier: dict[str, list[dict[str, Any]]] = read_rows(self.path, EARLIER_ROWS)

    def __repr__(self) -> str:
        n = sum(len(rows) for rows in self.earlier.values())
        return f"<Logbook {self.path}: {n} earlier rows{' closed' if self.closed else ''}>"

    # -- following a session ----------------------------------------------------------
    def follow(self, on: Callable[[Callable[[ev.Event], None]], Callable[[], None]], **logs: list[dict[str, Any]]) -> None:
        """Record a session: ``on`` is its ``session.on``; ``logs`` maps log names (``progress_log``,
        ``policy_log``, ``messages``) to the lists of row dicts the session appends to."""
        unknown = set(logs) - set(LOGS)
        if unknown:
            raise ValueError(f"unknown logs {sorted(unknown)}; the logs are {', '.join(LOGS)}")
        self._tails = {name: _Tail(rows) for name, rows in logs.items()}
        self._unsubscribe = on(self._on_event)

    def _on_event(self, event: ev.Event) -> None:
        extra: dict[str, list[dict[str, Any]]] = {}
        if isinstance(event, ev.TransferEnded):
            extra["transfers"] = [event.transfer.as_row()]
        elif isinstance(event, ev.ItemReceived):
            extra["items"] = [asdict(event.item)]
        self.sync(extra)

    def sync(self, extra: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        """Queue the rows the followed logs gained since the last sync, and ``extra`` rows by
        log name, for the writer thread. Returns at once."""
        with self._lock:
            if self.closed:
                return
            batch = {name: tail.take() for name, tail in self._tails.items()}
            for name, rows in (extra or {}).items():
                batch[name] = batch.get(name, []) + list(rows)
            batch = {name: rows for name, rows in batch.items() if rows}
            if not batch:
                return
            self._queued.append(batch)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queued, name="ivisit-logbook", daemon=True)
                self._writer.start()
            self._changed.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued row is in the file (True), or ``timeout`` s passed (False)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queued or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def close(self) -> None:
        """Write what is left, stop following and close the file. Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.sync()
        if not self.flush():
            log.warning("the logbook %s is still writing; the newest rows may be lost", self.path)
        with self._lock:
            self.closed = True
            self._changed.notify_all()  # the writer thread ends
            if self._db is not None and not self._writing:
                self._db.close()
                self._db = None

    # -- the writer thread ---------------------------------------------------------------
    def _write_queued(self) -> None:
        while True:
            with self._lock:
                while not self._queued and not self.closed:
                    self._changed.wait()
                if not self._queued:
                    return  # closed, and everything is written
                batches, self._queued = self._queued, []
                self._writing = True
            merged: dict[str, list[dict[str, Any]]] = {}
            for batch in batches:  # several events' rows in one transaction
                for name, rows in batch.items():
                    merged.setdefault(name, []).extend(rows)
            try:
                self._write(merged)
            finally:
                with self._lock:
                    self._writing = False
                    self._changed.notify_all()

    # -- writing -------------------------------------------------------------------------
    def _write(self, batch: dict[str, list[dict[str, Any]]]) -> None:
        if self._failed:
            return
        try:
            db = self._open()
            with db:  # one transaction
                for name, rows in batch.items():
                    cols = SCHEMAS[name]
                    sql = f"INSERT INTO {_q(name)} ({', '.join(map(_q, cols))}) VALUES ({', '.join('?' * len(cols))})"
                    db.executemany(sql, [[_cell(row.get(c)) for c in cols] for row in rows])
        except (sqlite3.Error, OSError) as exc:
            self._failed = True
            log.warning("could not write the logbook %s (%s); logs stay in memory only until the session leaves", self.path, exc)

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crashed process loses no committed row
            _create_tables(db)
            with db:
                for name, keep in KEPT_ROWS.items():
                    db.execute(f"DELETE FROM {_q(name)} WHERE rowid <= (SELECT MAX(rowid) FROM {_q(name)}) - ?", (keep,))
            db.isolation_level = ""  # back to transactions opened by `with db:`
            self._db = db
        return self._db


def _create_tables(db: sqlite3.Connection) -> None:
    """Make every log's table, adding columns a newer version has to an older file."""
    for name in LOGS:
        cols = SCHEMAS[name]
        db.execute(f"CREATE TABLE IF NOT EXISTS {_q(name)} ({', '.join(map(_q, cols))})")
        have = {row[1] for row in db.execute(f"PRAGMA table_info({_q(name)})")}
        for c in cols:
            if c not in have:
                db.execute(f"ALTER TABLE {_q(name)} ADD COLUMN {_q(c)}")


def read_rows(path: str | Path, limits: Mapping[str, int | None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every log's rows in the logbook at ``path``, oldest first (empty lists if there is none).

    ``limits`` caps the rows read per log (the newest are kept); None reads all. A file that
    is not a readable logbook is moved aside (``logs.sqlite.corrupt-TIME``) with a warning.
    """
    path = Path(path)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in LOGS}
    if not path.exists():
        return out
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for name in LOGS:
                if name not in tables:
                    continue
                have = [row[1] for row in db.execute(f"PRAGMA table_info({_q(name)})")]
                cols = [c for c in SCHEMAS[name] if c in have]
                limit = (limits or {}).get(name)
                sql = f"SELECT {', '.join(map(_q, cols))} FROM {_q(name)} ORDER BY rowid DESC"
                cursor = db.execute(sql + " LIMIT ?", (limit,)) if limit is not None else db.execute(sql)
                out[name] = [dict(zip(cols, values)) for values in cursor][::-1]
        finally:
            db.close()
    except sqlite3.OperationalError as exc:  # locked for longer than the timeout, or not readable by us
        msg = f"could not read the logbook {path} ({exc}); earlier logs are left out this time"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
        return {name: [] for name in LOGS}
    except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        os.replace(path, aside)
        msg = f"the logbook {path} was unreadable ({exc}); moved it to {aside} and started a new one"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
        return {name: [] for name in LOGS}
    return out


def load(config_dir: str | Path, user: str) -> dict[str, "pd.DataFrame"]:
    """Every persisted log of ``user`` under ``config_dir``, as typed DataFrames by log name.

    ``FileNotFoundError`` if that user has no logbook there.
    """
    path = logbook_path(config_dir, unicodedata.normalize("NFC", user))  # the form sessions use
    if not path.exists():
        raise FileNotFoundError(
            f"no logbook for {user!r} in {config_dir} (looked for {path}); "
            "give the config_dir the session used and the exact user name"
        )
    return {name: frame(rows, name) for name, rows in read_rows(path).items()}


def export(frames: Mapping[str, "pd.DataFrame"], out_dir: str | Path, fmt: str = "csv") -> list[Path]:
    """Write each frame to ``out_dir/NAME.csv`` (or ``.parquet``); returns the files written."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be 'csv' or 'parquet', not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in frames.items():
        target = out / f"{name}.{fmt}"
        if fmt == "csv":
            df.to_csv(target, index=False)
        else:
            df.to_parquet(target, index=False)
        written.append(target)
    return written


__all__ = ["Logbook", "logbook_path", "read_rows", "load", "export", "LOGS"]
