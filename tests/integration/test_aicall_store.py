"""AI call records in the real MariaDB: every table filled, duplicates refused, the spool replayed,
and an agent that stops while MariaDB hangs exits at once with its record spooled."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.record import CallRecord, TranscriptLine, TurnRecord, UsageRecord
from centralita.aicall.store import CallStore, write_record
from centralita.aicall.tools.base import ToolOutcome
from centralita.db import connect


def _record(uid: str) -> CallRecord:
    now = time.time()
    usage = {
        "total_tokens": 120,
        "input_tokens": 100,
        "output_tokens": 20,
        "input_token_details": {"audio_tokens": 90, "text_tokens": 10, "cached_tokens": 64},
        "output_token_details": {"audio_tokens": 15, "text_tokens": 5},
    }
    return CallRecord(
        uid,
        "+573001234567",
        "3241000752",
        channel_name="PJSIP/provider-00000001",
        media_kind="rtp",
        model="gpt-realtime",
        started_at=now - 30,
        answered_at=now - 29.5,
        ended_at=now,
        end_reason="transferred",
        transferred_to="6000",
        recording_path="/var/spool/asterisk/monitor/centralita/x.wav",
        reconnects=1,
        transcript=[
            TranscriptLine("assistant", "Hola, ¿en qué le ayudo?", now - 29, "item_1"),
            TranscriptLine("caller", "Mi internet no funciona, señorita", now - 25, "item_2"),
            TranscriptLine("assistant", "Un momento, por favor.", now - 23, "item_3", progress=True),
        ],
        tools=[
            ToolOutcome("customer_status", {"pppoe_user": "ana.gomez"}, {"online": True}, "ok", now - 24, 3.2),
            ToolOutcome(
                "ping_customer", "{bad json", {"error": "arguments are not valid JSON"}, "error", now - 20, 0.0
            ),
        ],
        turns=[TurnRecord(now - 25, now - 24.4, 600), TurnRecord(now - 10, now - 9.1, 900, True, 1200)],
        usage=[UsageRecord("resp_1", now - 24, usage), UsageRecord("resp_2", now - 9, usage)],
    )


def test_a_call_is_written_with_transcript_tools_turns_and_usage(migrated_db, db_conn) -> None:
    call_id = write_record(migrated_db, _record("1795000001.11"))
    with db_conn.cursor() as cur:
        cur.execute("SELECT * FROM aicall_calls WHERE id = %s", (call_id,))
        call = cur.fetchone()
        cur.execute("SELECT role, text, progress FROM aicall_transcript WHERE call_id = %s ORDER BY seq", (call_id,))
        lines = cur.fetchall()
        cur.execute("SELECT name, arguments, result, outcome, duration_ms FROM aicall_tool_calls WHERE call_id = %s"
                    " ORDER BY seq", (call_id,))  # fmt: skip
        tools = cur.fetchall()
        cur.execute("SELECT latency_ms, interrupted, played_ms FROM aicall_turns WHERE call_id = %s ORDER BY seq",
                    (call_id,))  # fmt: skip
        turns = cur.fetchall()
        cur.execute("SELECT SUM(total_tokens) t, SUM(input_cached_tokens) c FROM aicall_usage WHERE call_id = %s",
                    (call_id,))  # fmt: skip
        usage = cur.fetchone()
    assert call["caller"] == "+573001234567" and call["end_reason"] == "transferred"
    assert call["transferred_to"] == "6000" and call["reconnects"] == 1 and call["total_tokens"] == 240
    assert call["latency_p50_ms"] == 750 and call["latency_max_ms"] == 900
    assert call["recording_path"].endswith("x.wav") and call["media"] == "rtp"
    assert [(r["role"], r["text"], r["progress"]) for r in lines] == [
        ("assistant", "Hola, ¿en qué le ayudo?", 0),
        ("caller", "Mi internet no funciona, señorita", 0),
        ("assistant", "Un momento, por favor.", 1),
    ]
    assert tools[0]["arguments"] == '{"pppoe_user": "ana.gomez"}' and tools[0]["duration_ms"] == 3200
    assert tools[1]["outcome"] == "error" and tools[1]["arguments"] == "{bad json"
    assert [(t["latency_ms"], t["interrupted"], t["played_ms"]) for t in turns] == [(600, 0, None), (900, 1, 1200)]
    assert usage["t"] == 240 and usage["c"] == 128


def test_writing_the_same_call_twice_keeps_one_copy(migrated_db, db_conn) -> None:
    first = write_record(migrated_db, _record("1795000001.12"))
    assert write_record(migrated_db, _record("1795000001.12")) == first
    with db_conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) n FROM aicall_transcript WHERE call_id = %s", (first,))
        assert cur.fetchone()["n"] == 3


def test_records_wait_in_the_spool_while_the_database_is_away_and_are_written_later(
    migrated_db, db_conn, tmp_path
) -> None:
    away = dataclasses.replace(migrated_db, db_socket=str(tmp_path / "no-such.sock"), db_connect_timeout=1)
    metrics = AicallMetrics()
    spool = tmp_path / "spool"
    assert asyncio.run(CallStore(away, spool, metrics).save(_record("1795000001.13"))) is False
    assert [p.name for p in spool.iterdir()] == ["1795000001.13.json"]
    assert metrics.records_spooled.value() == 1
    assert asyncio.run(CallStore(away, spool, metrics).replay()) == 0  # still away: kept
    assert asyncio.run(CallStore(migrated_db, spool, metrics).replay()) == 1
    assert list(spool.iterdir()) == []
    with db_conn.cursor() as cur:
        cur.execute("SELECT end_reason FROM aicall_calls WHERE call_uid = '1795000001.13'")
        assert cur.fetchone()["end_reason"] == "transferred"


def test_a_record_mariadb_refuses_is_moved_aside_and_the_records_behind_it_are_written(
    migrated_db, db_conn, tmp_path
) -> None:
    spool = tmp_path / "spool"
    store = CallStore(migrated_db, spool, AicallMetrics())
    refused = dataclasses.replace(_record("1795000001.21"), transferred_to="6" * 81)  # transferred_to is 80 long
    for record in (refused, _record("1795000001.22"), _record("1795000001.23")):
        store._spool(record)
    assert asyncio.run(store.replay()) == 2
    assert sorted(p.name for p in spool.iterdir()) == ["1795000001.21.bad"]
    with db_conn.cursor() as cur:
        cur.execute("SELECT call_uid FROM aicall_calls WHERE call_uid LIKE '1795000001.2_' ORDER BY call_uid")
        assert [row["call_uid"] for row in cur.fetchall()] == ["1795000001.22", "1795000001.23"]


def test_a_write_that_loses_the_race_for_its_call_keeps_the_copy_written_first(migrated_db, db_conn) -> None:
    """The replay of a spooled record while the write cut short at shutdown is committed after all."""
    first = connect(migrated_db, autocommit=False)
    try:
        with first.cursor() as cur:  # the first write holds the call's row, not committed yet
            cur.execute(
                "INSERT INTO aicall_calls (call_uid, started_at, end_reason)"
                " VALUES ('1795000001.31', UTC_TIMESTAMP(), 'agent_stopped')"
            )
        outcome: dict[str, object] = {}
        second = threading.Thread(
            target=lambda: outcome.setdefault("id", write_record(migrated_db, _record("1795000001.31")))
        )
        second.start()  # its SELECT sees no row; its INSERT waits for the first one's lock
        deadline = time.monotonic() + 30
        while True:
            with db_conn.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) n FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO aicall_calls %'"
                )
                if cur.fetchone()["n"]:
                    break
            assert time.monotonic() < deadline and second.is_alive(), f"the second write never waited: {outcome}"
            time.sleep(0.02)
        first.commit()
        second.join(30)
    finally:
        first.close()
    with db_conn.cursor() as cur:
        cur.execute("SELECT id, end_reason FROM aicall_calls WHERE call_uid = '1795000001.31'")
        rows = cur.fetchall()
        cur.execute("SELECT COUNT(*) n FROM aicall_transcript WHERE call_id = %s", (rows[0]["id"],))
        lines = cur.fetchone()["n"]
    assert [row["end_reason"] for row in rows] == ["agent_stopped"] and outcome["id"] == rows[0]["id"]
    assert lines == 0, "nothing of the second copy was written"


class StallingMariaDb:
    """A unix socket in front of the real MariaDB that stops answering once the client sends ``trigger``.

    What the client sends still reaches the server (a COMMIT is carried out), but from then on the
    server's answers are dropped: the client waits as on a hung MariaDB. When the client goes away
    the server's connection is closed too, as the network would, so an open transaction is rolled back.
    """

    def __init__(self, upstream: str, path: Path, trigger: bytes) -> None:
        self.upstream, self.path, self.trigger = upstream, path, trigger
        self.stalled = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                for sock in (source, target):  # shut down first: a close alone leaves the other pump's recv
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                return
            if from_client and self.trigger in data:
                self.stalled.set()
            elif not from_client and self.stalled.is_set():
                continue  # the hung server: its answer never comes
            try:
                target.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        for sock in self._sockets:  # shut down first: a pump blocked in recv keeps a merely closed socket open
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


_STOPPING_AGENT = """
import asyncio, atexit, json, sys, threading
from pathlib import Path
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.record import CallRecord
from centralita.aicall.store import CallStore
from centralita.db import DbSettings

args = json.loads(Path(sys.argv[1]).read_text())

def report():  # runs once the interpreter no longer waits for any thread
    hung = [t.name for t in threading.enumerate() if t.name.startswith("aicall-store") and t.is_alive()]
    print(json.dumps({"store_threads_at_exit": hung}), flush=True)

atexit.register(report)

async def main():
    store = CallStore(DbSettings(**args["db"]), Path(args["spool"]), AicallMetrics())
    saving = asyncio.get_running_loop().create_task(store.save(CallRecord.from_json(args["record"])))
    while not Path(args["stalled"]).exists():  # the test says when MariaDB stopped answering
        await asyncio.sleep(0.05)
    saving.cancel()  # what the agent's stop does to a record still waiting for the database
    try:
        await saving
    except asyncio.CancelledError:
        print(json.dumps({"cancelled": True}), flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("trigger", "committed"),
    # COM_QUERY's first byte, then the statement ("SET AUTOCOMMIT = 0" must not match)
    [(b"\x03COMMIT", True), (b"\x03INSERT INTO aicall_calls", False)],
    ids=["hung-after-the-commit", "hung-before-the-commit"],
)
def test_an_agent_stopping_while_mariadb_hangs_exits_at_once_and_its_record_is_written_once(
    mariadb_server, migrated_db, db_conn, tmp_path, trigger, committed
) -> None:
    uid = f"1795000001.4{int(committed)}"
    proxy = StallingMariaDb(mariadb_server.socket, tmp_path / "hung.sock", trigger)
    spool, stalled = tmp_path / "spool", tmp_path / "stalled"
    # the shared DB_* timeouts as long as they go: only the store's own may bound the hung write
    db = dataclasses.asdict(migrated_db) | {"db_socket": str(proxy.path), "db_read_timeout": 3600}
    arguments = tmp_path / "agent.json"
    arguments.write_text(
        json.dumps({"db": db, "spool": str(spool), "stalled": str(stalled), "record": _record(uid).to_json()})
    )
    agent = subprocess.Popen(
        [sys.executable, "-c", _STOPPING_AGENT, str(arguments)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proxy.stalled.wait(30), "the record's write never reached MariaDB"
        stalled.touch()
        try:
            out, err = agent.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the stopping agent did not exit while its record's write hung in MariaDB", pytrace=False)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
        proxy.close()
    assert agent.returncode == 0, err
    report = [json.loads(line) for line in out.splitlines()]
    assert {"cancelled": True} in report
    hung = report[-1]["store_threads_at_exit"]
    assert hung, f"the process waited for the write blocked in MariaDB before exiting: {err[-2000:]}"
    assert [p.name for p in spool.iterdir()] == [f"{uid}.json"], "the record waits in the spool"

    with db_conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) n FROM aicall_calls WHERE call_uid = %s", (uid,))
        assert cur.fetchone()["n"] == (1 if committed else 0), "the server carried out what it was sent"
    # the next start replays the spool once the server has let go of the dead connection (its open
    # transaction rolled back); a replay before that waits for the row's lock, and the record stays spooled
    deadline = time.monotonic() + 30
    while True:
        with db_conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) n FROM information_schema.INNODB_TRX")
            if cur.fetchone()["n"] == 0:
                break
        assert time.monotonic() < deadline, "MariaDB kept the hung connection's transaction open"
        time.sleep(0.05)
    assert asyncio.run(CallStore(migrated_db, spool, AicallMetrics()).replay()) == 1
    assert list(spool.iterdir()) == []
    with db_conn.cursor() as cur:
        cur.execute("SELECT id FROM aicall_calls WHERE call_uid = %s", (uid,))
        [row] = cur.fetchall()
        cur.execute("SELECT COUNT(*) n FROM aicall_transcript WHERE call_id = %s", (row["id"],))
        assert cur.fetchone()["n"] == 3, "one copy of the call, whole"
