"""The SBC's trace loader (Kamailio's spool files -> sip_traces) on real MariaDB."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from centralita.db import DbSettings, connect
from centralita.sbc import traceload


def _line(
    call_id: str,
    message: bytes,
    *,
    method: str = "INVITE",
    code: str = "",
    t: str = "1763900000.123456",
    direction: str = "in",
) -> bytes:
    cseq = f"1 {method}" if method else "1 INVITE"
    fields = [
        t,
        direction,
        "10.0.0.1",
        "5060",
        "10.0.0.2",
        "5060",
        "udp",
        method,
        code,
        cseq,
        call_id,
        base64.b64encode(message).decode(),
    ]
    return ("T" + "\t".join(fields) + "\n").encode()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def loader(migrated_db: DbSettings, spool: Path) -> Iterator[traceload.Loader]:
    settings = traceload.Settings(
        spool_dir=spool,
        db_user=migrated_db.db_user,
        db_password=migrated_db.db_password,
        db_name=migrated_db.db_name,
        db_socket=migrated_db.db_socket,
        origin=f"sbc-{uuid.uuid4().hex[:8]}",
    )
    item = traceload.Loader(settings)
    yield item
    item._drop_connection()
    with connect(migrated_db) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM sip_trace_files WHERE origin = %s", (settings.origin,))


@pytest.fixture
def call_id() -> Iterator[str]:
    value = f"tl-{uuid.uuid4().hex}"
    yield value


def _rows(settings: DbSettings, call_id_prefix: str) -> list[dict]:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT call_id, captured_at, direction, method, status_code, cseq, message FROM sip_traces"
            " WHERE call_id LIKE %s ORDER BY id",
            (call_id_prefix + "%",),
        )
        return list(cur.fetchall())


@pytest.fixture(autouse=True)
def _clean(migrated_db: DbSettings, call_id: str) -> Iterator[None]:
    yield
    with connect(migrated_db) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM sip_traces WHERE call_id LIKE %s", (call_id + "%",))


def test_closed_files_load_with_any_bytes_and_the_newest_file_is_left_to_kamailio(
    loader: traceload.Loader, spool: Path, migrated_db: DbSettings, call_id: str
) -> None:
    message = b"INVITE sip:1@x SIP/2.0\r\nSubject: tab\there\r\n\r\n\xff\x00\n binary body"
    (spool / "traces_100.tsv").write_bytes(
        _line(call_id, message)
        + b"\n"
        + _line(call_id, b"SIP/2.0 100 Trying\r\n\r\n", method="", code="100", direction="out")
    )
    (spool / "traces_101.tsv").write_bytes(_line(call_id + "-open", b"x"))
    assert loader.run_once() == 1
    rows = _rows(migrated_db, call_id)
    assert [(r["call_id"], r["direction"], r["method"], r["status_code"], r["cseq"]) for r in rows] == [
        (call_id, "in", "INVITE", None, "1 INVITE"),
        (call_id, "out", None, 100, "1 INVITE"),
    ]
    assert rows[0]["message"] == message
    assert str(rows[0]["captured_at"]) == "2025-11-23 12:13:20.123456"
    assert not (spool / "traces_100.tsv").exists()
    assert (spool / "traces_101.tsv").exists()
    assert [r["call_id"] for r in _rows(migrated_db, call_id)] == [call_id, call_id]


def test_a_file_of_ticks_only_is_deleted(loader: traceload.Loader, spool: Path) -> None:
    (spool / "traces_100.tsv").write_bytes(b"\n\n\n")
    (spool / "traces_101.tsv").write_bytes(b"")
    assert loader.run_once() == 1
    assert sorted(p.name for p in spool.iterdir()) == ["traces_101.tsv"]


def test_bad_lines_are_quarantined_with_file_and_line_and_the_rest_is_loaded(
    loader: traceload.Loader, spool: Path, migrated_db: DbSettings, call_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = _line(call_id + "-a", b"first")
    wrong_fields = b"T1763900000.1\tin\t10.0.0.1\n"
    not_base64 = _line(call_id + "-b", b"x").replace(base64.b64encode(b"x"), b"!!!!")
    too_long_call_id = _line("c" * 300, b"y")
    cut_short = _line(call_id + "-c", b"last")[:-20]
    (spool / "traces_100.tsv").write_bytes(
        good + wrong_fields + not_base64 + b"\n" + too_long_call_id + _line(call_id + "-d", b"fine") + cut_short
    )
    (spool / "traces_200.tsv").write_bytes(b"")
    with caplog.at_level(logging.ERROR, logger="centralita.sbc.traceload"):
        assert loader.run_once() == 1
    assert [r["call_id"] for r in _rows(migrated_db, call_id)] == [call_id + "-a", call_id + "-d"]
    refused = {
        int(n): why
        for n, why in (
            (r.getMessage().split(" line ")[1].split(" ")[0], r.getMessage())
            for r in caplog.records
            if " line " in r.getMessage()
        )
    }
    assert sorted(refused) == [2, 3, 5, 7]
    assert all("traces_100.tsv" in why for why in refused.values())
    assert "fields" in refused[2] and "base64" in refused[3] and "Call-ID" in refused[5] and "cut short" in refused[7]
    kept = (spool / "quarantine" / "traces_100.tsv").read_bytes().split(b"\n")
    assert kept[0] == b"2\t" + wrong_fields[:-1]
    assert kept[3] == b"7\t" + cut_short
    assert not (spool / "traces_100.tsv").exists()
    with connect(migrated_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT row_count, refused FROM sip_trace_files WHERE origin = %s", (loader.s.origin,))
        assert cur.fetchone() == {"row_count": 2, "refused": 4}


def test_a_loader_stopped_before_its_commit_loads_the_file_again_once(
    loader: traceload.Loader, spool: Path, migrated_db: DbSettings, call_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (spool / "traces_100.tsv").write_bytes(_line(call_id, b"one") + _line(call_id, b"two"))
    (spool / "traces_101.tsv").write_bytes(b"")

    def stop(*args: object) -> None:
        raise pymysql.OperationalError(2013, "Lost connection to server during query")

    with monkeypatch.context() as m:
        m.setattr(traceload.Loader, "_commit", stop)
        with pytest.raises(pymysql.OperationalError):
            loader.run_once()
    loader._drop_connection()  # as a new process would start: the open transaction is gone
    assert _rows(migrated_db, call_id) == []
    assert (spool / "traces_100.tsv").exists()
    assert loader.run_once() == 1
    assert [r["message"] for r in _rows(migrated_db, call_id)] == [b"one", b"two"]


def _stop_before_deleting(loader: traceload.Loader, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run of the loader that stops after committing ``path`` and before deleting it."""
    real_unlink = Path.unlink

    def stop(self: Path, missing_ok: bool = False) -> None:
        if self == path:
            raise OSError("stopped")
        real_unlink(self, missing_ok=missing_ok)

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", stop)
        with pytest.raises(OSError):
            loader.run_once()


def test_a_loader_stopped_after_its_commit_deletes_the_file_without_loading_it_again(
    loader: traceload.Loader, spool: Path, migrated_db: DbSettings, call_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = spool / "traces_100.tsv"
    path.write_bytes(_line(call_id, b"one"))
    (spool / "traces_101.tsv").write_bytes(b"")
    _stop_before_deleting(loader, path, monkeypatch)
    assert path.exists()
    assert len(_rows(migrated_db, call_id)) == 1
    assert loader.run_once() == 1
    assert not path.exists()
    assert len(_rows(migrated_db, call_id)) == 1


def test_the_file_stays_while_the_database_is_away(spool: Path, call_id: str) -> None:
    settings = traceload.Settings(
        spool_dir=spool, db_user="nobody", db_password="", db_name="centralita", db_socket=str(spool / "no.sock")
    )
    path = spool / "traces_100.tsv"
    path.write_bytes(_line(call_id, b"one"))
    (spool / "traces_101.tsv").write_bytes(b"")
    with pytest.raises(pymysql.Error):
        traceload.Loader(settings).run_once()
    assert path.exists()


# -- statements the database did not take (sql_<time>.sql) ------------------------------------------


def _statement(sql: str | bytes) -> bytes:
    raw = sql.encode() if isinstance(sql, str) else sql
    return b"S" + base64.b64encode(raw) + b"\n"


def _intake(call_id: str, caller: bytes = b"5711") -> bytes:
    """The writer's CDR INSERT for one refused call, as Kamailio builds it."""
    return (
        b"INSERT INTO sbc_cdr_intake (call_id, customer_id, source_ip, source_port, caller, callee_original,"
        b" invite_at, sip_code, sip_reason, disposition, reject_reason, end_at) VALUES ('" + call_id.encode() + b"',"
        b" NULL, '192.0.2.9', 5060, '" + caller + b"', '34911000000',"
        b" '1970-01-01' + INTERVAL '1763900000.250000' SECOND_MICROSECOND, 403, 'Forbidden', 'rejected',"
        b" 'unknown_source', '1970-01-01' + INTERVAL '1763900000.251000' SECOND_MICROSECOND)"
        b" ON DUPLICATE KEY UPDATE id = id"
    )


def _event(call_id: str) -> str:
    return (
        "INSERT INTO events (created_at, type, severity, source, customer_id, carrier_id, message, payload) VALUES"
        " ('1970-01-01' + INTERVAL '1763900000.500000' SECOND_MICROSECOND, 'security_flood_detected', 'critical',"
        f" 'kamailio', NULL, NULL, '{call_id}', JSON_OBJECT('ip', '192.0.2.9'))"
    )


@pytest.fixture
def replayed(migrated_db: DbSettings, call_id: str) -> Iterator[None]:
    yield
    with connect(migrated_db) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM sbc_cdrs WHERE call_id LIKE %s", (call_id + "%",))
        cur.execute("DELETE FROM sbc_cdr_intake WHERE call_id LIKE %s", (call_id + "%",))
        cur.execute("DELETE FROM events WHERE message LIKE %s", (call_id + "%",))


def _cdrs_and_events(settings: DbSettings, call_id: str) -> tuple[list[dict], list[dict], int]:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT call_id, caller, invite_at, reject_reason, sip_code FROM sbc_cdrs WHERE call_id LIKE %s"
            " ORDER BY call_id",
            (call_id + "%",),
        )
        cdrs = list(cur.fetchall())
        cur.execute("SELECT type, created_at FROM events WHERE message LIKE %s", (call_id + "%",))
        events = list(cur.fetchall())
        cur.execute("SELECT COUNT(*) AS n FROM sbc_cdr_intake WHERE call_id LIKE %s", (call_id + "%",))
        return cdrs, events, cur.fetchone()["n"]


def test_statements_kept_while_the_database_was_away_are_replayed_and_their_cdrs_filed(
    loader: traceload.Loader, spool: Path, migrated_db: DbSettings, call_id: str, replayed: None
) -> None:
    (spool / "sql_100.sql").write_bytes(
        _statement(_intake(call_id + "-a")) + b"\n" + _statement(_event(call_id)) + _statement(_intake(call_id + "-b"))
    )
    (spool / "sql_101.sql").write_bytes(b"")

    assert loader.run_once() == 1

    cdrs, events, waiting = _cdrs_and_events(migrated_db, call_id)
    assert [c["call_id"] for c in cdrs] == [call_id + "-a", call_id + "-b"]
    assert cdrs[0]["invite_at"] == dt.datetime(2025, 11, 23, 12, 13, 20, 250000)
    assert cdrs[0]["reject_reason"] == "unknown_source" and cdrs[0]["sip_code"] == 403
    assert waiting == 0, "the replayed CDRs were filed"
    assert events == [{"type": "security_flood_detected", "created_at": dt.datetime(2025, 11, 23, 12, 13, 20, 500000)}]
    assert sorted(p.name for p in spool.iterdir()) == ["sql_101.sql"]
    with connect(migrated_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT row_count, refused FROM sip_trace_files WHERE origin = %s", (loader.s.origin,))
        assert cur.fetchone() == {"row_count": 3, "refused": 0}


def test_a_statement_the_database_refuses_is_quarantined_with_its_reason_and_the_rest_go_in(
    loader: traceload.Loader,
    spool: Path,
    migrated_db: DbSettings,
    call_id: str,
    replayed: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = "INSERT INTO events (no_such_column) VALUES (1)"
    (spool / "sql_100.sql").write_bytes(
        _statement(refused)
        + b"Snot base64!\n"
        + _statement(_intake(call_id + "-x", caller=b"57\xe9"))
        + _statement(_intake(call_id + "-a"))
        + _statement(_event(call_id))[:20]
    )
    (spool / "sql_101.sql").write_bytes(b"")

    with caplog.at_level(logging.ERROR, logger="centralita.sbc.traceload"):
        assert loader.run_once() == 1

    cdrs, events, _ = _cdrs_and_events(migrated_db, call_id)
    assert [c["call_id"] for c in cdrs] == [call_id + "-a"]
    assert events == []
    kept = (spool / "quarantine" / "sql_100.sql").read_bytes().split(b"\n")
    assert [line.split(b"\t")[0] for line in kept if line] == [b"1", b"2", b"3", b"5"]
    assert base64.b64decode(kept[0].split(b"\t")[1][1:]) == refused.encode()
    logged = [r.getMessage() for r in caplog.records]
    assert any("line 1 refused: refused by the database" in m and "no_such_column" in m for m in logged), logged
    assert any("line 2 refused: statement is not base64" in m for m in logged), logged
    assert any("line 3 refused: refused by the database: Incorrect string value" in m for m in logged), logged
    assert any("line 5 refused: cut short" in m for m in logged), logged
    with connect(migrated_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT row_count, refused FROM sip_trace_files WHERE origin = %s", (loader.s.origin,))
        assert cur.fetchone() == {"row_count": 1, "refused": 4}


def test_a_replay_cut_by_a_lost_connection_leaves_nothing_and_runs_again_whole(
    loader: traceload.Loader,
    spool: Path,
    migrated_db: DbSettings,
    call_id: str,
    replayed: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = spool / "sql_100.sql"
    path.write_bytes(_statement(_event(call_id)) + _statement(_intake(call_id + "-a")))
    (spool / "sql_101.sql").write_bytes(b"")
    real_execute = pymysql.cursors.Cursor.execute

    def lose_connection_at_the_cdr(self: pymysql.cursors.Cursor, query: object, args: object = None) -> int:
        if isinstance(query, bytes) and query.startswith(b"INSERT INTO sbc_cdr_intake"):
            raise pymysql.OperationalError(2013, "Lost connection to server during query")
        return real_execute(self, query, args)

    with monkeypatch.context() as m:
        m.setattr(pymysql.cursors.Cursor, "execute", lose_connection_at_the_cdr)
        with pytest.raises(pymysql.OperationalError):
            loader.run_once()
    loader._drop_connection()
    assert path.exists()
    assert _cdrs_and_events(migrated_db, call_id) == ([], [], 0), "the event went with the transaction"

    assert loader.run_once() == 1
    cdrs, events, _ = _cdrs_and_events(migrated_db, call_id)
    assert len(cdrs) == 1 and len(events) == 1
    assert not path.exists()


def test_a_statements_file_loaded_before_its_deletion_is_not_replayed_twice(
    loader: traceload.Loader,
    spool: Path,
    migrated_db: DbSettings,
    call_id: str,
    replayed: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = spool / "sql_100.sql"
    path.write_bytes(_statement(_event(call_id)))
    (spool / "sql_101.sql").write_bytes(b"")
    _stop_before_deleting(loader, path, monkeypatch)
    assert loader.run_once() == 1
    assert not path.exists()
    assert len(_cdrs_and_events(migrated_db, call_id)[1]) == 1
