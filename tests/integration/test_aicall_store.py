"""AI call records in the real MariaDB: every table filled, duplicates refused, the spool replayed."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.record import CallRecord, TranscriptLine, TurnRecord, UsageRecord
from centralita.aicall.store import CallStore, write_record
from centralita.aicall.tools.base import ToolOutcome


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
