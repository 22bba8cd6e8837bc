"""Call records to MariaDB, with an on-disk spool so no call is lost while the database is away.

A record is written in one transaction when the call ends. If that fails, it goes
to ``<spool>/<call>.json`` (written to a temporary name, then renamed, so a crash
never leaves half a file) and a background task retries the spool until MariaDB
answers again. Replaying a record that was in fact written is harmless: the call's
UniqueID is unique, and a duplicate is recognised and its spool file removed.

Writes and replays run on daemon threads of their own, never in asyncio's pool: a thread
blocked in a hung MariaDB would keep the process from exiting (the interpreter joins the
pool's threads at exit, past the unit's stop timeout), while the record it holds is already
in the spool. The store's connection also gives up on a silent server sooner than the
shared DB_* timeouts, so such threads do not pile up while the agent runs.

Only a lost connection keeps the spool waiting, in order. A record the database
refuses for what it holds (too long a value, a constraint, the schema) would be
refused forever: it is moved aside as ``<call>.bad`` with an error naming the file
and the reason, and the records behind it go on. When even the spool cannot be
written (a full disk, permissions), the whole record goes to the journal as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pymysql

from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.record import CallRecord
from centralita.db import DbSettings, connect

log = logging.getLogger("centralita.aicall.store")

# Errors that say MariaDB could not be reached or asked for a retry (pymysql files every client-side
# connection error, lock timeouts and deadlocks under OperationalError): the spool waits for these.
# Any other database error is about the record itself and would come back on every try.
WAIT_FOR_DATABASE = (pymysql.err.OperationalError, pymysql.err.InterfaceError, pymysql.err.InternalError)
DUPLICATE_KEY = 1062  # ER_DUP_ENTRY
# A record is a handful of small statements: a server silent this long is hung, and the record goes to
# the spool. The shared DB_CONNECT_TIMEOUT / DB_READ_TIMEOUT still apply when they are shorter.
STORE_CONNECT_TIMEOUT_S = 5
STORE_IO_TIMEOUT_S = 10

T = TypeVar("T")


def _in_daemon_thread(function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``function(*args)`` on a daemon thread of its own, as a future of the running loop.

    Cancelling the future stops the wait, not the thread; the process does not wait for the
    thread at exit either. A thread that finishes after its loop closed just ends.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled: nobody waits for the outcome any more
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (function(*args), None)
        except Exception as exc:  # handed to the waiting coroutine, which logs or spools
            outcome = (None, exc)
        # the agent exited meanwhile (its loop is closed): the record this thread held was spooled
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver, *outcome)

    threading.Thread(target=work, name=f"aicall-store-{getattr(function, '__name__', 'work')}", daemon=True).start()
    return future


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC).replace(tzinfo=None)


def write_record(settings: DbSettings, record: CallRecord) -> int:
    """Insert one call with its lines, tool calls, turns and usage; returns aicall_calls.id (blocking)."""
    latencies = [t.latency_ms for t in record.turns if t.latency_ms is not None]
    conn = connect(settings, autocommit=False, dict_rows=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM aicall_calls WHERE call_uid = %s", (record.call_id,))
            existing = cur.fetchone()
            if existing:
                conn.rollback()
                return int(existing[0])
            try:
                cur.execute(
                    "INSERT INTO aicall_calls (call_uid, channel, caller, did, started_at, answered_at, ended_at,"
                    " end_reason, transferred_to, recording_path, media, model, reconnects, input_tokens,"
                    " output_tokens, total_tokens, latency_p50_ms, latency_max_ms)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        record.call_id,
                        record.channel_name[:255],
                        record.caller[:80],
                        record.did[:80],
                        _ts(record.started_at),
                        _ts(record.answered_at),
                        _ts(record.ended_at),
                        record.end_reason[:40],
                        record.transferred_to,
                        record.recording_path,
                        record.media_kind,
                        record.model[:80],
                        record.reconnects,
                        record.total("input_tokens"),
                        record.total("output_tokens"),
                        record.total("total_tokens"),
                        round(statistics.median(latencies)) if latencies else None,
                        max(latencies) if latencies else None,
                    ),
                )
            except pymysql.err.IntegrityError as exc:
                if exc.args[0] != DUPLICATE_KEY:
                    raise
                # Written meanwhile by another connection: a write cut short at shutdown whose commit
                # reached the server after all, replayed from the spool now. That copy stands.
                conn.rollback()
                cur.execute("SELECT id FROM aicall_calls WHERE call_uid = %s", (record.call_id,))
                return int(cur.fetchone()[0])
            call_id = cur.lastrowid
            cur.executemany(
                "INSERT INTO aicall_transcript (call_id, seq, role, spoken_at, text, progress, item_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (call_id, seq, line.role, _ts(line.at), line.text, int(line.progress), line.item_id[:64])
                    for seq, line in enumerate(record.transcript, start=1)
                ],
            )
            cur.executemany(
                "INSERT INTO aicall_tool_calls (call_id, seq, name, arguments, result, outcome, started_at,"
                " duration_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        call_id,
                        seq,
                        tool.name[:64],
                        tool.arguments if isinstance(tool.arguments, str) else json.dumps(tool.arguments),
                        json.dumps(tool.result, ensure_ascii=False),
                        tool.outcome,
                        _ts(tool.started),
                        round(tool.duration * 1000),
                    )
                    for seq, tool in enumerate(record.tools, start=1)
                ],
            )
            cur.executemany(
                "INSERT INTO aicall_turns (call_id, seq, speech_stopped_at, first_audio_at, latency_ms,"
                " interrupted, played_ms) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        call_id,
                        seq,
                        _ts(turn.speech_stopped_at),
                        _ts(turn.first_audio_at),
                        turn.latency_ms,
                        int(turn.interrupted),
                        turn.played_ms,
                    )
                    for seq, turn in enumerate(record.turns, start=1)
                ],
            )
            cur.executemany(
                "INSERT IGNORE INTO aicall_usage (call_id, response_id, done_at, input_tokens, output_tokens,"
                " total_tokens, input_audio_tokens, input_text_tokens, input_cached_tokens, output_audio_tokens,"
                " output_text_tokens) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        call_id,
                        usage.response_id[:64],
                        _ts(usage.at),
                        usage.tokens("input_tokens"),
                        usage.tokens("output_tokens"),
                        usage.tokens("total_tokens"),
                        usage.detail("input", "audio_tokens"),
                        usage.detail("input", "text_tokens"),
                        usage.detail("input", "cached_tokens"),
                        usage.detail("output", "audio_tokens"),
                        usage.detail("output", "text_tokens"),
                    )
                    for usage in record.usage
                ],
            )
        conn.commit()
        return int(call_id)
    except BaseException:
        # after a lost connection (a read timeout closes it) the rollback fails too: the error that
        # matters, and decides between waiting and moving the record aside, is the first one
        with contextlib.suppress(pymysql.MySQLError):
            conn.rollback()
        raise
    finally:
        conn.close()


class CallStore:
    def __init__(self, settings: DbSettings, spool_dir: Path, metrics: AicallMetrics) -> None:
        self.settings = dataclasses.replace(
            settings,
            db_connect_timeout=min(settings.db_connect_timeout, STORE_CONNECT_TIMEOUT_S),
            db_read_timeout=min(settings.db_read_timeout, STORE_IO_TIMEOUT_S),
        )
        self.spool_dir = spool_dir
        self.metrics = metrics

    async def save(self, record: CallRecord) -> bool:
        """True when the record reached MariaDB; False when it waits in the spool.

        Cancelled (the agent stopping with the database slow), it writes the spool at once
        before it gives way: a write that still finishes in its thread is recognised on replay.
        """
        try:
            await _in_daemon_thread(write_record, self.settings, record)
            return True
        except pymysql.MySQLError as exc:
            log.error("call %s: database write failed (%s); keeping the record in the spool", record.call_id, exc)
        except asyncio.CancelledError:
            self._keep(record)
            raise
        try:
            await asyncio.to_thread(self._spool, record)
        except OSError as exc:
            self._log_whole(record, exc)
            return False
        except asyncio.CancelledError:
            self._keep(record)
            raise
        self.metrics.records_spooled.inc()
        return False

    def _keep(self, record: CallRecord) -> None:
        """The spool written from the event loop itself: the last thing done for a record before the agent exits."""
        log.warning("call %s: record write cut short; writing it to the spool now", record.call_id)
        try:
            self._spool(record)
        except OSError as exc:
            self._log_whole(record, exc)
        else:
            self.metrics.records_spooled.inc()

    @staticmethod
    def _log_whole(record: CallRecord, exc: OSError) -> None:
        """The last resort when the spool cannot be written: the whole record, as JSON, in the journal."""
        log.error(
            "call %s: the record could not be spooled either (%s); the record follows as JSON: %s",
            record.call_id,
            exc,
            json.dumps(record.to_json(), ensure_ascii=False),
        )

    def _spool(self, record: CallRecord) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        final = self.spool_dir / f"{_file_name(record.call_id)}.json"
        # a name of its own: a write cut short at shutdown and its replacement never share a file
        temp = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(record.to_json(), handle, ensure_ascii=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def _replay_blocking(self) -> int:
        written = 0
        if not self.spool_dir.is_dir():
            return 0
        for path in sorted(self.spool_dir.glob("*.json")):
            try:
                record = CallRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, TypeError) as exc:
                _move_aside(path, f"it is unreadable ({exc})")
                continue
            try:
                write_record(self.settings, record)
            except WAIT_FOR_DATABASE:
                raise  # MariaDB is still away: this record and those behind it wait, in order
            except pymysql.MySQLError as exc:
                _move_aside(path, f"the database refuses it: {type(exc).__name__} {exc}")
                continue
            path.unlink()
            written += 1
        return written

    async def replay(self) -> int:
        """Write spooled records; stops at the first connection error (they stay for the next try)."""
        try:
            written = await _in_daemon_thread(self._replay_blocking)
        except pymysql.MySQLError as exc:
            log.warning("spooled call records still waiting for the database: %s", exc)
            return 0
        except OSError as exc:
            log.error("the spool %s cannot be read or cleared: %s", self.spool_dir, exc)
            return 0
        if written:
            log.info("wrote %d spooled call records", written)
        return written

    async def replay_forever(self, interval: float = 30.0) -> None:
        while True:
            await self.replay()
            await asyncio.sleep(interval)


def _file_name(call_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in call_id)


def _move_aside(path: Path, why: str) -> None:
    bad = path.with_suffix(".bad")
    log.error("spool file %s is not written because %s; moved aside as %s", path, why, bad)
    path.rename(bad)
