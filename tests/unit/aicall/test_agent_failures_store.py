"""The record store when things go wrong: a record the database refuses for good, a lost
connection, a spool that cannot be written, a write cut short at shutdown.

The database's answers are pymysql's own exceptions; the spool is a real directory.
The same paths against a real MariaDB are in tests/integration/test_aicall_store.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pymysql
import pytest
from aicall_harness import run
from centralita.aicall import store as store_module
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.record import CallRecord
from centralita.aicall.store import CallStore
from centralita.db import DbSettings


def _store(spool: Path) -> CallStore:
    return CallStore(DbSettings(db_user="aicall"), spool, AicallMetrics())


def _spool_three(store: CallStore) -> None:
    for uid in ("1795.1", "1795.2", "1795.3"):
        store._spool(CallRecord(uid, "3001234567", "32", end_reason="caller_hangup", transferred_to="6000"))


def test_a_record_the_database_refuses_is_moved_aside_and_the_ones_behind_it_are_written(
    monkeypatch, tmp_path: Path, caplog
) -> None:
    written: list[str] = []

    def write(settings: DbSettings, record: CallRecord) -> int:
        if record.call_id == "1795.1":
            raise pymysql.err.DataError(1406, "Data too long for column 'transferred_to' at row 1")
        written.append(record.call_id)
        return len(written)

    store = _store(tmp_path)
    _spool_three(store)
    monkeypatch.setattr(store_module, "write_record", write)
    with caplog.at_level("ERROR", logger="centralita.aicall.store"):
        assert run(store.replay()) == 2
    assert written == ["1795.2", "1795.3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1795.1.bad"]
    [error] = [r.getMessage() for r in caplog.records]
    assert "1795.1.json" in error and "1795.1.bad" in error and "Data too long" in error
    assert run(store.replay()) == 0  # the refused record is not tried again


@pytest.mark.parametrize(
    "refusal",
    [
        pymysql.err.IntegrityError(1452, "Cannot add or update a child row: a foreign key constraint fails"),
        pymysql.err.ProgrammingError(1146, "Table 'centralita.aicall_calls' doesn't exist"),
    ],
)
def test_other_refusals_of_the_record_itself_are_moved_aside_too(monkeypatch, tmp_path: Path, refusal) -> None:
    def write(settings: DbSettings, record: CallRecord) -> int:
        if record.call_id == "1795.2":
            raise refusal
        return 1

    store = _store(tmp_path)
    _spool_three(store)
    monkeypatch.setattr(store_module, "write_record", write)
    assert run(store.replay()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1795.2.bad"]


def test_a_lost_connection_keeps_every_record_waiting_in_order(monkeypatch, tmp_path: Path) -> None:
    tried: list[str] = []

    def write(settings: DbSettings, record: CallRecord) -> int:
        tried.append(record.call_id)
        raise pymysql.err.OperationalError(2003, "Can't connect to MySQL server on '10.0.0.5'")

    store = _store(tmp_path)
    _spool_three(store)
    monkeypatch.setattr(store_module, "write_record", write)
    assert run(store.replay()) == 0
    assert tried == ["1795.1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1795.1.json", "1795.2.json", "1795.3.json"]


def test_a_record_that_cannot_be_spooled_either_goes_whole_to_the_journal(tmp_path: Path, caplog) -> None:
    blocked = tmp_path / "spool"
    blocked.write_text("a file where the spool directory should be")
    unreachable = DbSettings(db_user="aicall", db_socket=str(tmp_path / "no-such.sock"), db_connect_timeout=1)
    store = CallStore(unreachable, blocked, AicallMetrics())
    record = CallRecord("1795.4", "3001234567", "32", end_reason="transferred", transferred_to="6000")
    with caplog.at_level("ERROR", logger="centralita.aicall.store"):
        assert run(store.save(record)) is False
    last = caplog.records[-1].getMessage()
    assert "1795.4" in last and "could not be spooled" in last
    assert json.loads(last.split("as JSON: ", 1)[1]) == json.loads(json.dumps(record.to_json()))


def test_a_write_cancelled_while_the_database_hangs_puts_the_record_in_the_spool(monkeypatch, tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def hung_write(settings: DbSettings, record: CallRecord) -> int:
        entered.set()
        release.wait(30)
        raise pymysql.err.OperationalError(2013, "Lost connection to server during query")

    monkeypatch.setattr(store_module, "write_record", hung_write)
    store = _store(tmp_path / "spool")
    record = CallRecord("1795.5", "3001234567", "32", end_reason="agent_stopped")

    async def scenario() -> None:
        saving = asyncio.get_running_loop().create_task(store.save(record))
        await asyncio.to_thread(entered.wait, 10)
        saving.cancel()
        try:
            with pytest.raises(asyncio.CancelledError):
                await saving
        finally:
            release.set()

    run(scenario())
    [spooled] = list((tmp_path / "spool").iterdir())
    assert spooled.name == "1795.5.json"
    assert json.loads(spooled.read_text(encoding="utf-8"))["end_reason"] == "agent_stopped"
    assert store.metrics.records_spooled.value() == 1
