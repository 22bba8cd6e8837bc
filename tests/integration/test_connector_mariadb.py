"""The connector's MariaDB sink against the real MariaDB server of the integration session."""

from __future__ import annotations

import asyncio
import uuid

from centralita.connector.cdr import record_from_fields, resolve_timezone
from centralita.connector.metrics import ConnectorMetrics
from centralita.connector.sinks import MariaDbSink
from centralita.connector.spool import Spool
from centralita.db import DbSettings
from centralita.fakes.ami_server import sample_cdr

ZONE = resolve_timezone("America/Bogota")


def connect_args(db: DbSettings) -> dict:
    args = {"user": db.db_user, "password": db.db_password, "database": db.db_name}
    if db.db_socket:
        args["unix_socket"] = db.db_socket
    else:
        args.update(host=db.db_host, port=db.db_port)
    return args


def unique_rows(prefix: str, count: int):
    rows = []
    for n in range(count):
        values = sample_cdr(n, clid='"Ñandú Café 日本" <3001234567>', start="2026-03-10 08:00:00")
        values["uniqueid"] = values["linkedid"] = f"{prefix}.{n}"
        rows.append((record_from_fields(values, ZONE), None))
    return rows


def test_cdrs_land_once_in_asterisk_cdrs_even_when_sent_twice(tmp_path, migrated_db: DbSettings, db_conn):
    prefix = uuid.uuid4().hex[:12]

    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        await spool.add(unique_rows(prefix, 50), "ami")
        sink = MariaDbSink(spool, ConnectorMetrics.create(), connect_args(migrated_db))
        items = await spool.fetch(sink.name, 0, 100)
        await sink.deliver(items)
        await sink.deliver(items[:10])  # a batch re-sent after a crash between insert and mark
        left = await spool.fetch(sink.name, 0, 100)
        sink._close()
        await spool.close()
        return left

    left = asyncio.run(scenario())
    try:
        with db_conn.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) AS n, MIN(clid) AS clid, MIN(start_time) AS start FROM asterisk_cdrs"
                " WHERE uniqueid LIKE %s",
                (prefix + ".%",),
            )
            row = cursor.fetchone()
        assert left == []
        assert row["n"] == 50
        assert row["clid"] == '"Ñandú Café 日本" <3001234567>'
        assert str(row["start"]) == "2026-03-10 13:00:00"  # 08:00 in Bogota, stored as UTC
    finally:
        with db_conn.cursor() as cursor:
            cursor.execute("DELETE FROM asterisk_cdrs WHERE uniqueid LIKE %s", (prefix + ".%",))


def test_database_away_keeps_cdrs_in_the_spool_until_it_is_back(tmp_path, migrated_db: DbSettings, db_conn):
    prefix = uuid.uuid4().hex[:12]

    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        await spool.add(unique_rows(prefix, 5), "ami")
        metrics = ConnectorMetrics.create()
        wrong = {**connect_args(migrated_db), "password": "not-the-password", "user": "nobody"}
        sink = MariaDbSink(spool, metrics, wrong)
        items = await spool.fetch(sink.name, 0, 100)
        attempt = asyncio.create_task(sink.deliver(items))
        await asyncio.sleep(1.5)
        still_pending = len(await spool.fetch(sink.name, 0, 100))
        sink.connect_args.update(connect_args(migrated_db))
        sink.connect_args.update(autocommit=False, charset="utf8mb4")
        await asyncio.wait_for(attempt, 40)
        left = await spool.fetch(sink.name, 0, 100)
        sink._close()
        await spool.close()
        return still_pending, metrics.cdrs_failed.value(sink="mariadb"), left

    still_pending, failures, left = asyncio.run(scenario())
    try:
        with db_conn.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) AS n FROM asterisk_cdrs WHERE uniqueid LIKE %s", (prefix + ".%",))
            assert cursor.fetchone()["n"] == 5
        assert still_pending == 5 and failures >= 5 and left == []
    finally:
        with db_conn.cursor() as cursor:
            cursor.execute("DELETE FROM asterisk_cdrs WHERE uniqueid LIKE %s", (prefix + ".%",))


def test_migration_declares_the_unique_cdr_key(db_conn):
    with db_conn.cursor() as cursor:
        cursor.execute("SHOW INDEX FROM asterisk_cdrs WHERE Key_name = 'uq_asterisk_cdrs_uniqueid_sequence'")
        columns = [row["Column_name"] for row in cursor.fetchall()]
    assert columns == ["uniqueid", "sequence"]


def test_recording_states_reach_asterisk_recordings_and_follow_later_changes(
    tmp_path, migrated_db: DbSettings, db_conn
):
    from centralita.connector.sinks import MariaDbRecordingSink

    uniqueid = f"1763812345.{uuid.uuid4().int % 10**9}"
    path = str(tmp_path / f"{uniqueid}.wav")

    async def scenario():
        spool = Spool(tmp_path)
        await spool.open()
        sink = MariaDbRecordingSink(spool, connect_args(migrated_db), poll_interval=0.1)
        task = asyncio.create_task(sink.run())
        try:
            await spool.save_recording(
                path, size=64044, mtime=1.0, uniqueid=uniqueid, linkedid="1763812300.9", duration=4.0, status="failed",
                error="HTTP 503", attempts=1,
            )  # fmt: skip
            sink.notify()
            first = await _wait_row(db_conn, path, "failed")
            await spool.save_recording(path, status="uploaded", error=None, attempts=2, uploaded_at=1763812400.5)
            sink.notify()
            second = await _wait_row(db_conn, path, "uploaded")
            left = await spool.recordings_to_sync()
        finally:
            task.cancel()
            await asyncio.wait({task}, timeout=10)
            await spool.close()
        return first, second, left

    try:
        first, second, left = asyncio.run(scenario())
        assert (first["error"], first["attempts"]) == ("HTTP 503", 1)
        assert second["uniqueid"] == uniqueid and second["linkedid"] == "1763812300.9"
        assert (second["size_bytes"], float(second["duration_seconds"]), second["attempts"]) == (64044, 4.0, 2)
        assert second["error"] is None
        assert str(second["uploaded_at"]) == "2025-11-22 11:53:20.500000"
        assert left == []
    finally:
        with db_conn.cursor() as cursor:
            cursor.execute("DELETE FROM asterisk_recordings WHERE uniqueid = %s", (uniqueid,))


async def _wait_row(db_conn, path: str, status: str, timeout: float = 10) -> dict:
    import hashlib
    import time

    digest = hashlib.sha256(path.encode()).hexdigest()
    deadline = time.monotonic() + timeout
    while True:
        with db_conn.cursor() as cursor:
            cursor.execute("SELECT * FROM asterisk_recordings WHERE path_sha256 = %s", (digest,))
            row = cursor.fetchone()
        if row and row["status"] == status:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"asterisk_recordings has {row!r}, expected status {status}")
        await asyncio.sleep(0.1)
