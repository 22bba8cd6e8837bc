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
