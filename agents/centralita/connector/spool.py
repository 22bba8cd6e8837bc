"""The durable CDR spool: an SQLite journal in WAL mode with ``synchronous=FULL``.

Every CDR is committed here (the commit fsyncs the WAL) before any sink sees it,
and a sink's delivery is recorded per sink, so a crash, a SIGKILL or a reboot at
any moment leaves each CDR either undelivered (it will be sent) or delivered
(it will not be sent again). The unique key (uniqueid, sequence) makes a CDR
that arrives twice (AMI and the CSV back-fill) one row.

SQLite calls are blocking, so they all run on one dedicated thread that owns the
connection; the event loop only awaits them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from centralita.connector.cdr import CdrRecord, wire_json

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cdrs (
    id INTEGER PRIMARY KEY,
    uniqueid TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    payload TEXT NOT NULL,
    source TEXT NOT NULL,
    filtered TEXT,
    received_at REAL NOT NULL,
    UNIQUE (uniqueid, sequence)
);
-- lookups by uniqueid use the UNIQUE index's prefix; a second index only slowed inserts
DROP INDEX IF EXISTS cdrs_uniqueid;
CREATE TABLE IF NOT EXISTS deliveries (
    sink TEXT NOT NULL,
    cdr_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    at REAL NOT NULL,
    error TEXT,
    PRIMARY KEY (sink, cdr_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (sink) WHERE status = 'dead';
CREATE TABLE IF NOT EXISTS backfill_files (
    inode INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS recordings (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    uniqueid TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    error TEXT,
    updated_at REAL NOT NULL
);
"""

# Columns added to ``recordings`` after the first release, added to older spools on open.
RECORDING_COLUMNS = {
    "linkedid": "TEXT",
    "duration": "REAL",
    "uploaded_at": "REAL",
    "deleted_at": "REAL",
    # 0 while the panel's asterisk_recordings row lags behind this one
    "db_synced": "INTEGER NOT NULL DEFAULT 0",
}

_INSERT_CDR = (
    "INSERT OR IGNORE INTO cdrs (uniqueid, sequence, payload, source, filtered, received_at) VALUES (?, ?, ?, ?, ?, ?)"
)

DELIVERED = "delivered"
DEAD = "dead"


class SpoolError(RuntimeError):
    """The spool cannot be opened or written: the connector must not go on without it."""


@dataclass(slots=True)
class SpoolItem:
    """One spooled CDR. ``payload`` is the receiver-facing JSON (see cdr.wire_json), so
    the API sink sends it without decoding; ``record`` decodes it on demand."""

    id: int
    key: str
    payload: str
    received_at: float
    _record: CdrRecord | None = None

    @property
    def record(self) -> CdrRecord:
        if self._record is None:
            self._record = CdrRecord.from_dict(json.loads(self.payload))
        return self._record

    @property
    def wire(self) -> str:
        """The JSON to send; rows spooled before payloads were stored in wire form are converted."""
        if '"idempotency_key"' in self.payload:
            return self.payload
        return wire_json(self.record)


@dataclass(frozen=True, slots=True)
class SinkStats:
    depth: int
    oldest_received_at: float | None
    dead: int


class Spool:
    """Open with :meth:`open`, close with :meth:`close`; every method is awaitable."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "cdr-spool.sqlite3"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._db: sqlite3.Connection | None = None
        self._floor: dict[str, int] = {}  # per sink: every CDR with a lower id is settled

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            present = {row[1] for row in db.execute("PRAGMA table_info(recordings)")}
            for column, kind in RECORDING_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE recordings ADD COLUMN {column} {kind}")
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open the CDR spool {self.path}: {exc}") from exc
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        # the spool thread is idle now; shutting it down off the loop keeps the loop free regardless
        await asyncio.to_thread(self._executor.shutdown, True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError("the spool is not open")
        return self._db

    # CDRs -----------------------------------------------------------------

    async def add(
        self, entries: Sequence[tuple[CdrRecord, str | None]], source: str
    ) -> list[tuple[CdrRecord, str | None]]:
        """Commit records (with their filter reason) durably; return the ones not seen before."""
        if not entries:
            return []
        return await self._run(self._add, entries, source)

    def _add(self, entries: Sequence[tuple[CdrRecord, str | None]], source: str) -> list[tuple[CdrRecord, str | None]]:
        db = self.db
        now = time.time()
        rows = [
            (record.uniqueid, record.sequence, wire_json(record), source, filtered, now) for record, filtered in entries
        ]
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            db.executemany(_INSERT_CDR, rows)
            if db.total_changes - before == len(rows):
                new = list(entries)
            else:  # some were here already (AMI and back-fill both saw them): find out which, row by row
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                new = [entry for entry, row in zip(entries, rows, strict=True) if db.execute(_INSERT_CDR, row).rowcount]
            # One commit, one fsync of the WAL, for the whole group: nothing of it is handed
            # to a sink before this returns.
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return new

    async def fetch(self, sink: str, after_id: int, limit: int) -> list[SpoolItem]:
        """Undelivered, unfiltered CDRs for ``sink`` with id > ``after_id``, oldest first."""
        return await self._run(self._fetch, sink, after_id, limit)

    def _fetch(self, sink: str, after_id: int, limit: int) -> list[SpoolItem]:
        rows = self.db.execute(
            "SELECT c.id, c.uniqueid, c.sequence, c.payload, c.received_at FROM cdrs c"
            " WHERE c.id > ? AND c.filtered IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.cdr_id = c.id)"
            " ORDER BY c.id LIMIT ?",
            (after_id, sink, limit),
        ).fetchall()
        return [SpoolItem(row[0], f"{row[1]}:{row[2]}", row[3], row[4]) for row in rows]

    async def mark(self, sink: str, ids: Iterable[int], status: str = DELIVERED, error: str | None = None) -> None:
        """Record the outcome for ``sink``; committed before the caller moves on."""
        ids = list(ids)
        if ids:
            await self._run(self._mark, sink, ids, status, error)

    def _mark(self, sink: str, ids: list[int], status: str, error: str | None) -> None:
        db = self.db
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO deliveries (sink, cdr_id, status, at, error) VALUES (?, ?, ?, ?, ?)",
                [(sink, cdr_id, status, now, error) for cdr_id in ids],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def stats(self, sink: str) -> SinkStats:
        return await self._run(self._stats, sink)

    def _stats(self, sink: str) -> SinkStats:
        # Rows below the floor were all settled at the last look, so the scan covers only
        # the undelivered tail instead of the whole retention period (which can be
        # millions of rows, and this runs every few seconds on the spool's one thread).
        # The floor lives in memory: a requeue from another process is seen after a restart.
        floor = self._floor.get(sink, 0)
        depth, oldest, first = self.db.execute(
            "SELECT COUNT(*), MIN(c.received_at), MIN(c.id) FROM cdrs c WHERE c.id >= ? AND c.filtered IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.cdr_id = c.id)",
            (floor, sink),
        ).fetchone()
        if first is None:
            (last,) = self.db.execute("SELECT MAX(id) FROM cdrs").fetchone()
            first = (last or 0) + 1
        self._floor[sink] = int(first)
        (dead,) = self.db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE sink = ? AND status = 'dead'", (sink,)
        ).fetchone()
        return SinkStats(int(depth), oldest, int(dead))

    async def dead_letters(self, sink: str, limit: int = 100) -> list[tuple[int, CdrRecord, str]]:
        return await self._run(self._dead_letters, sink, limit)

    def _dead_letters(self, sink: str, limit: int) -> list[tuple[int, CdrRecord, str]]:
        rows = self.db.execute(
            "SELECT c.id, c.payload, d.error FROM deliveries d JOIN cdrs c ON c.id = d.cdr_id"
            " WHERE d.sink = ? AND d.status = ? ORDER BY c.id LIMIT ?",
            (sink, DEAD, limit),
        ).fetchall()
        return [(row[0], CdrRecord.from_dict(json.loads(row[1])), row[2] or "") for row in rows]

    async def requeue_dead(self, sink: str) -> int:
        """Give dead-lettered CDRs another try (after the receiver or the data was fixed)."""
        return await self._run(self._requeue_dead, sink)

    def _requeue_dead(self, sink: str) -> int:
        self._floor.pop(sink, None)
        cursor = self.db.execute("DELETE FROM deliveries WHERE sink = ? AND status = ?", (sink, DEAD))
        return cursor.rowcount

    async def count(self) -> int:
        return await self._run(lambda: int(self.db.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0]))

    async def linkedid_of(self, uniqueid: str) -> str | None:
        """The LinkedID of the call a channel's UniqueID belongs to, if its CDR has arrived."""
        row = await self._run(
            lambda: self.db.execute("SELECT payload FROM cdrs WHERE uniqueid = ? LIMIT 1", (uniqueid,)).fetchone()
        )
        return json.loads(row[0]).get("linkedid") if row else None

    async def prune(self, sinks: Sequence[str], older_than: float) -> int:
        """Forget CDRs every sink has settled (or that were filtered) once they are old enough."""
        return await self._run(self._prune, list(sinks), older_than)

    def _prune(self, sinks: list[str], older_than: float) -> int:
        db = self.db
        settled = " AND ".join(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.cdr_id = c.id)" for _ in sinks
        )
        condition = f"(c.filtered IS NOT NULL OR ({settled}))" if sinks else "1"
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = [
                row[0]
                for row in db.execute(
                    f"SELECT c.id FROM cdrs c WHERE c.received_at < ? AND {condition}",  # noqa: S608 - no user text
                    (older_than, *sinks),
                )
            ]
            db.executemany("DELETE FROM deliveries WHERE cdr_id = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM cdrs WHERE id = ?", [(i,) for i in ids])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(ids)

    # Back-fill checkpoints -------------------------------------------------

    async def backfill_offset(self, inode: int) -> int:
        row = await self._run(
            lambda: self.db.execute("SELECT offset FROM backfill_files WHERE inode = ?", (inode,)).fetchone()
        )
        return int(row[0]) if row else 0

    async def set_backfill_offset(self, inode: int, path: str, offset: int) -> None:
        await self._run(
            lambda: self.db.execute(
                "INSERT OR REPLACE INTO backfill_files (inode, path, offset) VALUES (?, ?, ?)", (inode, path, offset)
            )
        )

    # Recordings -----------------------------------------------------------

    async def recording(self, path: str) -> dict[str, Any] | None:
        return await self._run(self._recording, path)

    def _recording(self, path: str) -> dict[str, Any] | None:
        cursor = self.db.execute("SELECT * FROM recordings WHERE path = ?", (path,))
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cursor.description], row))  # noqa: B905

    async def save_recording(self, path: str, **values: Any) -> None:
        await self._run(self._save_recording, path, values)

    def _save_recording(self, path: str, values: dict[str, Any]) -> None:
        current = self._recording(path) or {
            "path": path,
            "size": 0,
            "mtime": 0.0,
            "uniqueid": None,
            "status": "pending",
            "attempts": 0,
            "next_try": 0.0,
            "error": None,
        }
        current.update(values)
        current["updated_at"] = time.time()
        current["db_synced"] = 0
        columns = list(current)
        self.db.execute(
            f"INSERT OR REPLACE INTO recordings ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",  # noqa: S608
            [current[c] for c in columns],
        )

    async def recordings_with_status(self, status: str) -> list[dict[str, Any]]:
        return await self._run(self._recordings_with_status, status)

    async def recordings_to_sync(self, limit: int = 200) -> list[dict[str, Any]]:
        """Recording rows whose latest state has not reached the panel's database yet."""
        return await self._run(self._recordings_to_sync, limit)

    def _recordings_to_sync(self, limit: int) -> list[dict[str, Any]]:
        cursor = self.db.execute(
            "SELECT * FROM recordings WHERE db_synced = 0 AND status != 'pending' ORDER BY updated_at LIMIT ?", (limit,)
        )
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def mark_recordings_synced(self, rows: Sequence[tuple[str, float]]) -> None:
        """Flag (path, updated_at) pairs as synced; a row changed since it was read stays unsynced."""
        if rows:
            await self._run(self._mark_recordings_synced, list(rows))

    def _mark_recordings_synced(self, rows: list[tuple[str, float]]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("UPDATE recordings SET db_synced = 1 WHERE path = ? AND updated_at = ?", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _recordings_with_status(self, status: str) -> list[dict[str, Any]]:
        cursor = self.db.execute("SELECT * FROM recordings WHERE status = ? ORDER BY next_try", (status,))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]  # noqa: B905


def free_bytes(directory: Path) -> int:
    """Free space for the spool (what ``centralita status`` warns about)."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize
