"""Set-based CDR filing (sbc_cdr_intake + sbc_file_cdrs()) against the row triggers, on real MariaDB.

Each test builds the same world (customers, carriers, rate decks) in two databases migrated the
same way, files the same CDRs into one with a direct INSERT into sbc_cdrs (the triggers bill and
account them one row at a time) and into the other through the intake and the procedure, and
compares what both hold afterwards: the CDRs column by column, the customers' minutes and alert
state, the carriers' counters, carrier_daily_stats and the events.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pymysql
import pytest
from centralita.db import DbSettings, connect
from centralita.db.migrate import discover, upgrade

# What Kamailio's writer sends, in its order.
COLUMNS = (
    "call_id, customer_id, carrier_id, carriers_tried, attempts, source_ip, source_port, caller, callee_original,"
    " callee_normalized, tech_prefix, user_agent, sip_code, sip_reason, disposition, reject_reason, invite_at,"
    " progress_at, answer_at, caller_normalized, carriers_skipped, created_at, hangup_side, end_at"
)
NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
T0 = NOW - dt.timedelta(hours=3)

# ids as the world below creates them (fresh databases: auto-increment from 1)
CUST_A, CUST_B, CUST_C, CUST_D = 1, 2, 3, 4
CAR_1, CAR_2, CAR_3 = 1, 2, 3


@pytest.fixture
def two_dbs(mariadb_server) -> Iterator[tuple[DbSettings, DbSettings]]:
    """(triggers, procedure): two databases with every migration applied and the same world."""
    names = [mariadb_server.create_database("filing") for _ in range(2)]
    try:
        dbs = tuple(mariadb_server.root_settings(name) for name in names)
        for db in dbs:
            with connect(db) as conn:
                upgrade(conn, discover())
                _world(conn)
        yield dbs  # type: ignore[misc]
    finally:
        for name in names:
            mariadb_server.drop_database(name)


def _exec(conn: pymysql.Connection, sql: str, params: Sequence[Any] | None = None) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def _world(conn: pymysql.Connection) -> None:
    """Customers on both sides of their alert lines, carriers with yesterday's and today's counters, decks
    with overlapping prefixes and effective dates."""
    month = "DATE_FORMAT(UTC_DATE(), '%Y-%m-01')"
    for sql in (
        # A: 10 min a month, 7.5 used: this batch crosses 80 % and then 100 %
        "INSERT INTO customers (name, monthly_minutes_limit, minutes_used, minutes_period_start, currency)"
        f" VALUES ('a', 10, 7.5, {month}, 'EUR')",
        # B: last month's minutes and alerts, rolled over by the first CDR of this month
        "INSERT INTO customers (name, monthly_minutes_limit, minutes_used, minutes_period_start,"
        " minutes_warning_sent_at, minutes_exhausted_sent_at, minutes_warning_pct)"
        f" VALUES ('b', 5, 5.2, {month} - INTERVAL 1 MONTH, UTC_TIMESTAMP(3) - INTERVAL 40 DAY,"
        " UTC_TIMESTAMP(3) - INTERVAL 35 DAY, 50)",
        # C: no cap
        "INSERT INTO customers (name, minutes_used, minutes_period_start) VALUES ('c', 3, NULL)",
        # D: 2 min, 1.9 used: one CDR jumps past both lines at once
        "INSERT INTO customers (name, monthly_minutes_limit, minutes_used, minutes_period_start)"
        f" VALUES ('d', 2, 1.9, {month})",
        "INSERT INTO carriers (name, host, daily_stats_date, daily_calls, daily_answered, daily_failed, daily_minutes)"
        " VALUES ('one', '192.0.2.1', UTC_DATE() - INTERVAL 1 DAY, 40, 30, 5, 61.5)",
        "INSERT INTO carriers (name, host, daily_stats_date, daily_calls, daily_answered, daily_failed, daily_minutes)"
        " VALUES ('two', '192.0.2.2', UTC_DATE(), 7, 3, 2, 4.25)",
        "INSERT INTO carriers (name, host) VALUES ('three', '192.0.2.3')",
        "INSERT INTO carrier_daily_stats (carrier_id, stat_date, calls, answered, failed, billable_ms, pdd_ms_sum,"
        " pdd_count, cost) VALUES (2, UTC_DATE(), 7, 3, 2, 255000, 900, 3, 0.5)",
    ):
        _exec(conn, sql)
    for table, key, rows in (
        ("carrier_rates", "carrier_id", CARRIER_RATES),
        ("customer_rates", "customer_id", CUSTOMER_RATES),
    ):
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} ({key}, prefix, rate_per_minute, connection_fee, billing_initial,"
                " billing_increment, effective_from, effective_to) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )


# Rate decks with overlapping prefixes and effective dates; a row's id is its place in its list (from 1).
CARRIER_RATES = [
    # carrier, prefix, rate, fee, initial, increment, from, to
    (CAR_1, "57", "0.010000", "0", 60, 60, "2020-01-01", None),
    (CAR_1, "573", "0.020000", "0", 30, 6, "2020-01-01", None),
    (CAR_1, "573", "0.025000", "0", 30, 6, "2025-06-01", None),
    (CAR_1, "5730", "0.090000", "0", 1, 1, "2020-01-01", "2021-01-01"),
    (CAR_1, "5731", "0.012345", "0.001", 1, 1, "2020-01-01", None),
    (CAR_2, "57", "0.015000", "0.010000", 60, 60, "2020-01-01", None),
    (CAR_2, "5730", "0.017777", "0", 6, 6, "2020-01-01", None),
    (CAR_3, "57", "0.011000", "0", 1, 1, "2020-01-01", None),
]
CUSTOMER_RATES = [
    (CUST_A, "57", "0.030000", "0", 1, 1, "2020-01-01", None),
    (CUST_A, "5730", "0.050000", "0.002", 6, 6, "2020-01-01", None),
    (CUST_A, "57301", "0.070000", "0", 6, 6, T0.strftime("%Y-%m-%d %H:%M:%S"), None),
    (CUST_B, "57", "0.040000", "0", 60, 60, "2020-01-01", None),
    (CUST_C, "573", "0.033333", "0", 30, 6, "2020-01-01", None),
    (CUST_D, "57", "0.030000", "0", 1, 1, "2020-01-01", None),
]


def _at(seconds: float, base: dt.datetime = T0) -> dt.datetime | None:
    return base + dt.timedelta(seconds=seconds)


def _cdr(
    n: int,
    customer: int | None,
    *,
    callee: str = "573001234567",
    normalized: str | None = "",
    tried: Sequence[tuple[int, int]] | None = None,
    code: int = 200,
    reject: str | None = None,
    progress: float | None = None,
    answer: float | None = None,
    end: float | None = 0,
    base: dt.datetime = T0,
    invite: float = 0,
) -> tuple:
    """A CDR row as the writer sends it; times in seconds after the INVITE at ``base + invite``."""
    start = base + dt.timedelta(seconds=invite)
    carriers = None
    if tried is not None:
        carriers = json.dumps([{"carrier_id": c, "code": k} for c, k in tried])
    return (
        f"call-{n}",
        customer,
        tried[-1][0] if tried else None,
        carriers,
        len(tried or ()),
        "198.51.100.7",
        5060,
        "3001112222",
        callee,
        callee if normalized == "" else normalized,
        "",
        "sipp",
        code,
        None,
        "rejected" if reject else "failed",
        reject,
        start,
        None if progress is None else start + dt.timedelta(seconds=progress),
        None if answer is None else start + dt.timedelta(seconds=answer),
        "3001112222",
        None,
        start + dt.timedelta(seconds=(end or 0) + 0.5),
        "caller" if reject is None else "sbc",
        None if end is None else start + dt.timedelta(seconds=end),
    )


def _varied_cdrs() -> list[tuple]:
    """Every kind of call the SBC writes, in one batch, in a deliberate order."""
    yesterday = T0 - dt.timedelta(days=1)
    return [
        # answered after a 180; A's minutes: 7.5 + 0.2 (12 s at 1/1) = 7.7
        _cdr(1, CUST_A, tried=[(CAR_1, 200)], progress=1.234, answer=3.5, end=15.499),
        # answered without a 180, through carrier two (60/60 with a connection fee): +1 min = 8.7, warning
        _cdr(2, CUST_A, tried=[(CAR_2, 200)], answer=2.001, end=40.002, callee="573019998877"),
        # refused by the SBC itself
        _cdr(3, CUST_A, reject="cps_exceeded", code=503, end=0.001),
        # busy, no failover
        _cdr(4, CUST_B, tried=[(CAR_1, 486)], code=486, progress=0.8, end=2.5),
        # failover 503 -> answered (B's first CDR of the month rolls its minutes over)
        _cdr(5, CUST_B, tried=[(CAR_2, 503), (CAR_1, 200)], progress=0.3, answer=4.25, end=125.75, invite=5),
        # three carriers tried: timeout, 503, answered by the third; A: +1.5 = 10.2, exhausted
        _cdr(6, CUST_A, tried=[(CAR_1, 408), (CAR_2, 503), (CAR_3, 200)], progress=16, answer=17, end=107.2, invite=6),
        # the 180 seen a hair after the 200; A already exhausted: no second alert
        _cdr(7, CUST_A, tried=[(CAR_1, 200)], progress=2.502, answer=2.5, end=9.001, invite=7),
        # no rate anywhere for this number (cost and price stay NULL, minutes from the duration)
        _cdr(8, CUST_C, callee="999123", tried=[(CAR_1, 200)], answer=1, end=31.337, invite=8),
        # an expired prefix (5730 of carrier one) and a newer rate of the same prefix (573 from 2025-06-01)
        _cdr(9, CUST_A, callee="573011112222", tried=[(CAR_1, 200)], answer=1, end=62.001, invite=9),
        # customer A's 57301 rate starts at T0: this call began before it, the next one after
        _cdr(
            10, CUST_A, callee="573014445555", tried=[(CAR_2, 200)], answer=1, end=7, base=T0 - dt.timedelta(minutes=1)
        ),
        _cdr(11, CUST_A, callee="573014445555", tried=[(CAR_2, 200)], answer=1, end=7, invite=11),
        # cancelled while ringing, no answer, not found, declined everywhere
        _cdr(12, CUST_B, tried=[(CAR_1, 487)], code=487, progress=0.5, end=20, invite=12),
        _cdr(13, CUST_C, tried=[(CAR_2, 480)], code=480, progress=0.5, end=30, invite=13),
        _cdr(14, CUST_C, tried=[(CAR_3, 404)], code=404, end=0.2, invite=14),
        _cdr(15, CUST_C, tried=[(CAR_1, 603), (CAR_2, 408)], code=408, end=15, invite=15),
        # an unknown source: no customer, no carrier
        _cdr(16, None, reject="unknown_source", code=403, normalized=None, end=0.001, invite=16),
        # a progress before the INVITE is dropped; an answer before the INVITE too
        _cdr(17, CUST_C, tried=[(CAR_3, 200)], progress=-1, answer=2, end=5, invite=17),
        _cdr(18, CUST_C, tried=[(CAR_3, 200)], progress=1, answer=-2, end=5, invite=18),
        # yesterday's call (its carrier_daily_stats row is yesterday's)
        _cdr(19, CUST_C, tried=[(CAR_2, 200), (CAR_3, 200)], answer=1, end=61, base=yesterday),
        # D jumps past 80 % and 100 % with one call: only minutes_exhausted
        _cdr(20, CUST_D, tried=[(CAR_3, 200)], answer=1, end=31, invite=20),
        # the number as received (no normalised one), an empty normalised number, answered for 1 ms
        _cdr(21, CUST_B, normalized=None, callee="573105556666", tried=[(CAR_1, 200)], answer=1, end=1.001, invite=21),
        _cdr(22, CUST_C, normalized="", callee="", tried=[(CAR_3, 200)], answer=1, end=2, invite=22),
        # a carrier that no longer exists among those tried; a failover to a user answer
        _cdr(23, CUST_B, tried=[(99, 503), (CAR_2, 486)], code=486, end=3, invite=23),
        # answered but still running when written (no end): billed nothing
        _cdr(24, CUST_B, tried=[(CAR_3, 200)], answer=2, end=None, invite=24),
        # a carrier fee with awkward durations (1/1 with a fee, 6/6)
        _cdr(25, CUST_A, callee="573101234567", tried=[(CAR_1, 200)], answer=0.5, end=77.777, invite=25),
        _cdr(26, CUST_A, callee="573001234567", tried=[(CAR_2, 200)], answer=0.5, end=13.013, invite=26),
    ]


def _insert(conn: pymysql.Connection, table: str, rows: Sequence[tuple], columns: str = COLUMNS) -> None:
    """One multi-row INSERT of writer rows, as the writer sends them."""
    one = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
    _exec(conn, f"INSERT INTO {table} ({columns}) VALUES {', '.join([one] * len(rows))}", [v for r in rows for v in r])


def _file_with_triggers(db: DbSettings, rows: Sequence[tuple]) -> None:
    """What the writer did before: one multi-row INSERT into sbc_cdrs."""
    with connect(db) as conn:
        _insert(conn, "sbc_cdrs", rows)


def _file_with_procedure(db: DbSettings, rows: Sequence[tuple]) -> str | None:
    """What the writer does now: the batch into the intake, then the procedure. Returns why the batch was
    filed one row at a time through the triggers (None: set-based, the normal case)."""
    with connect(db) as conn:
        _insert(conn, "sbc_cdr_intake", rows)
        _exec(conn, "CALL sbc_file_cdrs()")
        return _exec(conn, "SELECT @sbc_file_cdrs_row_by_row AS why")[0]["why"]


def _state(db: DbSettings) -> dict[str, list[dict]]:
    """Everything filing touches; times the filing itself stamps are reduced to set / not set, and the
    times each world was created in are left out."""
    with connect(db) as conn:
        customers = _exec(conn, "SELECT * FROM customers ORDER BY id")
        for row in customers:
            row.pop("created_at"), row.pop("updated_at")
            for name in ("minutes_warning_sent_at", "minutes_exhausted_sent_at"):
                row[name] = row[name] is not None and row[name] > NOW - dt.timedelta(days=1)
        carriers = _exec(conn, "SELECT * FROM carriers ORDER BY id")
        for row in carriers:
            row.pop("created_at"), row.pop("updated_at")
        events = _exec(
            conn, "SELECT type, severity, source, customer_id, carrier_id, message, payload FROM events ORDER BY id"
        )
        for row in events:
            row["payload"] = json.loads(row["payload"])
        cdrs = _exec(conn, "SELECT * FROM sbc_cdrs ORDER BY id")
        for row in cdrs:
            # in the same order, but an INSERT ... SELECT reserves auto-increment ids in blocks
            row.pop("id")
        return {
            "sbc_cdrs": cdrs,
            "customers": customers,
            "carriers": carriers,
            "carrier_daily_stats": _exec(conn, "SELECT * FROM carrier_daily_stats ORDER BY carrier_id, stat_date"),
            "events": events,
            "sbc_cdr_intake": _exec(conn, "SELECT * FROM sbc_cdr_intake ORDER BY id"),
        }


def _assert_same(by_triggers: dict[str, list[dict]], by_procedure: dict[str, list[dict]]) -> None:
    for table in by_triggers:
        left, right = by_triggers[table], by_procedure[table]
        assert len(left) == len(right), f"{table}: {len(left)} rows by the triggers, {len(right)} by the procedure"
        for a, b in zip(left, right, strict=True):
            diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
            assert not diff, f"{table} row {a}: (triggers, procedure) differ in {diff}"


def test_a_batch_filed_by_the_procedure_matches_the_triggers_row_for_row(two_dbs) -> None:
    by_triggers, by_procedure = two_dbs
    rows = _varied_cdrs()
    _file_with_triggers(by_triggers, rows)
    assert _file_with_procedure(by_procedure, rows) is None
    expected, got = _state(by_triggers), _state(by_procedure)
    _assert_same(expected, got)

    # the world did what the scenario says it does (so the comparison compared something)
    cdrs = {row["call_id"]: row for row in got["sbc_cdrs"]}
    assert [row["call_id"] for row in got["sbc_cdrs"]] == [f"call-{n}" for n in range(1, 27)]
    assert cdrs["call-1"]["pdd_ms"] == 1234 and cdrs["call-1"]["ring_ms"] == 2266
    assert cdrs["call-2"]["pdd_ms"] == 2001 and cdrs["call-2"]["ring_ms"] == 0
    assert cdrs["call-7"]["progress_at"] == cdrs["call-7"]["answer_at"]
    assert cdrs["call-9"]["carrier_rate_prefix"] == "573" and cdrs["call-9"]["customer_rate_prefix"] == "57301"
    assert cdrs["call-10"]["customer_rate_prefix"] == "5730" and cdrs["call-11"]["customer_rate_prefix"] == "57301"
    assert cdrs["call-8"]["cost"] is None and cdrs["call-8"]["price"] is None and cdrs["call-8"]["billable_ms"] == 30337
    assert cdrs["call-17"]["progress_at"] is None and cdrs["call-18"]["answer_at"] is None
    assert cdrs["call-22"]["carrier_rate_prefix"] is None and cdrs["call-22"]["cost"] is None
    assert cdrs["call-1"]["currency"] == "EUR"
    assert [c["disposition"] for c in got["sbc_cdrs"][11:16]] == [
        "cancelled",
        "no_answer",
        "failed",
        "no_answer",
        "rejected",
    ]
    assert [(e["type"], e["customer_id"]) for e in got["events"]] == [
        ("minutes_warning", CUST_A),
        ("minutes_warning", CUST_B),
        ("minutes_exhausted", CUST_A),
        ("minutes_exhausted", CUST_D),
    ]
    customers = {row["id"]: row for row in got["customers"]}
    assert customers[CUST_B]["minutes_exhausted_sent_at"] is False, "B's month rolled over"
    assert customers[CUST_D]["minutes_warning_sent_at"] is True
    carriers = {row["id"]: row for row in got["carriers"]}
    assert carriers[CAR_1]["daily_stats_date"] == carriers[CAR_2]["daily_stats_date"]
    assert len(got["carrier_daily_stats"]) >= 4
    assert got["sbc_cdr_intake"] == []


def test_filing_in_several_batches_adds_up_like_one_insert_per_batch(two_dbs) -> None:
    by_triggers, by_procedure = two_dbs
    rows = _varied_cdrs()
    for start in range(0, len(rows), 5):
        _file_with_triggers(by_triggers, rows[start : start + 5])
        assert _file_with_procedure(by_procedure, rows[start : start + 5]) is None
    _assert_same(_state(by_triggers), _state(by_procedure))


def test_an_unfileable_row_stays_in_the_intake_with_its_reason_and_the_others_are_filed(two_dbs) -> None:
    by_triggers, by_procedure = two_dbs
    rows = _varied_cdrs()[:8]
    bad = list(_cdr(99, CUST_A, tried=[(CAR_1, 200)], answer=1, end=20))
    bad[16] = None  # no INVITE time: sbc_cdrs refuses the row
    batch = [*rows[:3], tuple(bad), *rows[3:]]

    _file_with_triggers(by_triggers, rows)
    assert "invite_at" in _file_with_procedure(by_procedure, batch)
    expected, got = _state(by_triggers), _state(by_procedure)
    failure = [e for e in got["events"] if e["type"] == "cdr_filing_failed"]
    got["events"] = [e for e in got["events"] if e["type"] != "cdr_filing_failed"]
    held = got.pop("sbc_cdr_intake")
    expected.pop("sbc_cdr_intake")
    _assert_same(expected, got)

    assert [row["call_id"] for row in held] == ["call-99"]
    assert "invite_at" in held[0]["filing_error"] and held[0]["filing_failed_at"] is not None
    assert len(failure) == 1 and failure[0]["severity"] == "critical"
    assert failure[0]["payload"]["call_ids"] == ["call-99"]

    # a later call leaves it alone; once fixed, it is filed
    with connect(by_procedure) as conn:
        _exec(conn, "CALL sbc_file_cdrs()")
        assert len(_exec(conn, "SELECT id FROM sbc_cdr_intake")) == 1
        _exec(
            conn,
            "UPDATE sbc_cdr_intake SET invite_at = %s, filing_error = NULL, filing_failed_at = NULL",
            (T0,),
        )
        _exec(conn, "CALL sbc_file_cdrs()")
        assert _exec(conn, "SELECT id FROM sbc_cdr_intake") == []
        filed = _exec(conn, "SELECT billable_ms, price FROM sbc_cdrs WHERE call_id = 'call-99'")
    assert filed and filed[0]["billable_ms"] == 19000 and filed[0]["price"] is not None


def test_a_carrier_named_twice_in_one_cdr_is_counted_as_the_triggers_count_it(two_dbs) -> None:
    by_triggers, by_procedure = two_dbs
    rows = [
        *_varied_cdrs()[:3],
        _cdr(50, CUST_B, tried=[(CAR_1, 503), (CAR_1, 200)], answer=1, end=30, invite=50),
    ]
    _file_with_triggers(by_triggers, rows)
    # (the triggers' multi-table UPDATE counts such a carrier once; the batch goes to them)
    assert "Duplicate entry" in _file_with_procedure(by_procedure, rows)
    _assert_same(_state(by_triggers), _state(by_procedure))


def test_a_lock_held_elsewhere_leaves_the_batch_in_the_intake_for_the_next_call(two_dbs) -> None:
    _, by_procedure = two_dbs
    rows = _varied_cdrs()[:4]
    holder = connect(by_procedure, autocommit=False)
    try:
        _exec(holder, "SELECT id FROM customers WHERE id = %s FOR UPDATE", (CUST_A,))
        with connect(by_procedure) as conn:
            _exec(conn, "SET SESSION innodb_lock_wait_timeout = 1")
            _insert(conn, "sbc_cdr_intake", rows)
            with pytest.raises(pymysql.err.OperationalError) as refused:
                _exec(conn, "CALL sbc_file_cdrs()")
            assert refused.value.args[0] == 1205
            assert len(_exec(conn, "SELECT id FROM sbc_cdr_intake WHERE filing_error IS NULL")) == 4
            assert _exec(conn, "SELECT id FROM sbc_cdrs") == []
            holder.rollback()
            _exec(conn, "CALL sbc_file_cdrs()")
            assert len(_exec(conn, "SELECT id FROM sbc_cdrs")) == 4
            assert _exec(conn, "SELECT id FROM sbc_cdr_intake") == []
    finally:
        holder.close()


def test_two_filings_at_once_file_each_row_once(two_dbs) -> None:
    _, by_procedure = two_dbs
    rows = _varied_cdrs()
    with connect(by_procedure) as conn:
        _insert(conn, "sbc_cdr_intake", rows)
    errors: list[BaseException] = []

    def file() -> None:
        try:
            with connect(by_procedure) as conn:
                _exec(conn, "CALL sbc_file_cdrs()")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=file) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    with connect(by_procedure) as conn:
        ids = [row["call_id"] for row in _exec(conn, "SELECT call_id FROM sbc_cdrs ORDER BY id")]
        assert ids == [f"call-{n}" for n in range(1, 27)]
        assert _exec(conn, "SELECT id FROM sbc_cdr_intake") == []


def test_an_empty_intake_files_nothing_and_the_triggers_still_bill_direct_inserts(two_dbs) -> None:
    _, by_procedure = two_dbs
    with connect(by_procedure) as conn:
        _exec(conn, "CALL sbc_file_cdrs()")
        assert _exec(conn, "SELECT id FROM sbc_cdrs") == []
        filed = _cdr(1, CUST_C, tried=[(CAR_1, 200)], answer=1, end=31)
        _insert(conn, "sbc_cdr_intake", [filed])
        _exec(conn, "CALL sbc_file_cdrs()")
        # the same session inserts straight into sbc_cdrs: the triggers bill it
        direct = _cdr(2, CUST_C, tried=[(CAR_1, 200)], answer=1, end=31)
        _insert(conn, "sbc_cdrs", [direct])
        rows = _exec(
            conn, "SELECT call_id, disposition, billable_ms, price IS NOT NULL AS priced FROM sbc_cdrs ORDER BY id"
        )
        carrier = _exec(conn, "SELECT daily_calls FROM carriers WHERE id = %s", (CAR_1,))
    assert rows == [
        {"call_id": "call-1", "disposition": "answered", "billable_ms": 30000, "priced": 1},
        {"call_id": "call-2", "disposition": "answered", "billable_ms": 30000, "priced": 1},
    ]
    assert carrier == [{"daily_calls": 2}]


def test_a_batch_sent_twice_is_filed_once(two_dbs) -> None:
    """Kamailio's writer sends a batch again when the driver gave up on a first try that MariaDB did
    complete: once while the first copy waits in the intake, once after it was filed."""
    by_triggers, by_procedure = two_dbs
    rows = _varied_cdrs()
    writer = f"INSERT INTO sbc_cdr_intake ({COLUMNS}) VALUES {{}} ON DUPLICATE KEY UPDATE id = id"
    one = "(" + ", ".join(["%s"] * len(rows[0])) + ")"

    def send(batch: Sequence[tuple]) -> None:
        with connect(by_procedure) as conn:
            _exec(conn, writer.format(", ".join([one] * len(batch))), [v for r in batch for v in r])

    _file_with_triggers(by_triggers, rows)
    send(rows[:10])
    send(rows[:10])  # the same batch again before any filing: the copies are dropped
    send(rows[10:])
    with connect(by_procedure) as conn:
        assert len(_exec(conn, "SELECT id FROM sbc_cdr_intake")) == len(rows)
        _exec(conn, "CALL sbc_file_cdrs()")
    send(rows[10:])  # and again after it was filed: kept aside, not filed
    with connect(by_procedure) as conn:
        _exec(conn, "CALL sbc_file_cdrs()")

    expected, got = _state(by_triggers), _state(by_procedure)
    held = got.pop("sbc_cdr_intake")
    expected.pop("sbc_cdr_intake")
    _assert_same(expected, got)  # every CDR once: the same CDRs, minutes, counters and events
    assert [row["call_id"] for row in held] == [f"call-{n}" for n in range(11, 27)]
    filed = {row["call_id"]: row["id"] for row in _state_ids(by_procedure)}
    for row in held:
        assert row["filing_error"] == f"a copy of sbc_cdrs {filed[row['call_id']]}, already filed: not filed again"
    assert not [e for e in got["events"] if e["type"] == "cdr_filing_failed"]


def _state_ids(db: DbSettings) -> list[dict]:
    with connect(db) as conn:
        return _exec(conn, "SELECT id, call_id FROM sbc_cdrs ORDER BY id")


# -- CDRs that carry the rates they were routed by -----------------------------------

WITH_RATES = COLUMNS + ", carrier_rate_id, customer_rate_id"
CARRIER_RATE_57, CARRIER_RATE_5730_EXPIRED, CARRIER_2_RATE_57, CARRIER_3_RATE_57 = 1, 4, 6, 8
CUSTOMER_A_RATE_57 = 1


def _routed_rate(rates: Sequence[tuple], owner: int | None, number: str, at: dt.datetime) -> int | None:
    """The id of the rate Kamailio's routing query finds for ``owner`` and ``number`` at ``at``: every
    prefix of the number up to 32 digits and the empty one, longest first, then the latest effective_from."""
    prefixes = {"", *(number[:k] for k in range(1, min(len(number), 32) + 1))}
    found = [
        (len(prefix), dt.datetime.fromisoformat(start), rid)
        for rid, (who, prefix, _rate, _fee, _init, _inc, start, end) in enumerate(rates, start=1)
        if who == owner
        and prefix in prefixes
        and dt.datetime.fromisoformat(start) <= at
        and (end is None or dt.datetime.fromisoformat(end) > at)
    ]
    return max(found)[2] if found else None


def _carrying(row: tuple, carrier_rate: int | None, customer_rate: int | None) -> tuple:
    return (*row, carrier_rate, customer_rate)


def _as_routed(row: tuple) -> tuple:
    """The row as Kamailio writes it: with the rates its routing query found for the row's carrier and
    customer at the INVITE."""
    number = row[9] if row[9] is not None else row[8]
    at = row[16]
    return _carrying(
        row, _routed_rate(CARRIER_RATES, row[2], number, at), _routed_rate(CUSTOMER_RATES, row[1], number, at)
    )


def _file_carrying_rates(db: DbSettings, rows: Sequence[tuple]) -> str | None:
    with connect(db) as conn:
        _insert(conn, "sbc_cdr_intake", rows, WITH_RATES)
        _exec(conn, "CALL sbc_file_cdrs()")
        return _exec(conn, "SELECT @sbc_file_cdrs_row_by_row AS why")[0]["why"]


def test_cdrs_that_carry_the_rates_they_were_routed_by_are_billed_as_the_joins_bill_them(two_dbs) -> None:
    by_triggers, by_procedure = two_dbs
    rows = _varied_cdrs()
    routed = [_as_routed(row) for row in rows]
    assert sum(row[-2] is not None for row in routed) >= 15 and sum(row[-1] is not None for row in routed) >= 15
    _file_with_triggers(by_triggers, rows)
    assert _file_carrying_rates(by_procedure, routed) is None
    _assert_same(_state(by_triggers), _state(by_procedure))


def test_a_cdr_is_priced_from_the_rates_it_carries(two_dbs) -> None:
    """The carried rates are used as they are: here rates of shorter prefixes than the joins would find
    (the rates a cached route was chosen by), so the price shows which ones were used."""
    _, by_procedure = two_dbs
    row = _cdr(1, CUST_A, tried=[(CAR_1, 200)], answer=1, end=31)  # 573001234567, 30 s
    assert _file_carrying_rates(by_procedure, [_carrying(row, CARRIER_RATE_57, CUSTOMER_A_RATE_57)]) is None
    with connect(by_procedure) as conn:
        (cdr,) = _exec(conn, "SELECT * FROM sbc_cdrs")
    # carrier one's 57: 0.01 a minute, 60/60; customer A's 57: 0.03 a minute, 1/1
    assert cdr["carrier_rate_prefix"] == "57" and cdr["billed_seconds_cost"] == 60
    assert str(cdr["cost"]) == "0.010000"
    assert cdr["customer_rate_prefix"] == "57" and cdr["billed_seconds_price"] == 30
    assert str(cdr["price"]) == "0.015000"


def test_a_cdr_whose_carried_rate_billing_could_not_use_is_priced_by_the_joins(two_dbs) -> None:
    """A rate no longer in effect at the INVITE, another carrier's or customer's rate, a rate whose prefix
    does not start the number, a rate that no longer exists: the joins price the CDR,
    as they price one that carries nothing."""
    by_triggers, by_procedure = two_dbs
    rows = [
        _cdr(1, CUST_A, tried=[(CAR_1, 200)], answer=1, end=31),
        _cdr(2, CUST_A, tried=[(CAR_1, 200)], answer=1, end=31, invite=2),
        _cdr(3, CUST_C, callee="999123", tried=[(CAR_3, 200)], answer=1, end=31, invite=3),
        _cdr(4, CUST_B, tried=[(CAR_2, 200)], answer=1, end=31, invite=4),
    ]
    carried = [
        _carrying(rows[0], CARRIER_RATE_5730_EXPIRED, 5),  # 5: customer C's rate
        _carrying(rows[1], CARRIER_2_RATE_57, 999),
        _carrying(rows[2], CARRIER_3_RATE_57, None),  # 57 does not start 999123
        _carrying(rows[3], 12345, CUSTOMER_A_RATE_57),
    ]
    _file_with_triggers(by_triggers, rows)
    assert _file_carrying_rates(by_procedure, carried) is None
    expected, got = _state(by_triggers), _state(by_procedure)
    _assert_same(expected, got)
    cdrs = {row["call_id"]: row for row in got["sbc_cdrs"]}
    assert cdrs["call-1"]["carrier_rate_prefix"] == "573" and cdrs["call-1"]["customer_rate_prefix"] == "5730"
    assert cdrs["call-3"]["cost"] is None


def test_a_twenty_digit_rate_prefix_bills_the_numbers_it_starts(two_dbs) -> None:
    """Prefixes of 17-32 digits are valid rates (migration 0014): the triggers, the joins and a carried rate
    all find them, so a call routed by one is billed by it."""
    by_triggers, by_procedure = two_dbs
    prefix = "57300123456789012345"
    for db in two_dbs:
        with connect(db) as conn:
            _exec(
                conn,
                "INSERT INTO carrier_rates (carrier_id, prefix, rate_per_minute, connection_fee, billing_initial,"
                " billing_increment, effective_from) VALUES (%s, %s, 0.5, 0, 1, 1, '2020-01-01')",
                (CAR_1, prefix),
            )
            _exec(
                conn,
                "INSERT INTO customer_rates (customer_id, prefix, rate_per_minute, connection_fee, billing_initial,"
                " billing_increment, effective_from) VALUES (%s, %s, 0.9, 0, 1, 1, '2020-01-01')",
                (CUST_C, prefix),
            )
    carrier_rate, customer_rate = len(CARRIER_RATES) + 1, len(CUSTOMER_RATES) + 1
    rows = [
        # by the joins (nothing carried), then by the rates carried
        _cdr(1, CUST_C, callee=prefix + "6789", tried=[(CAR_1, 200)], answer=1, end=31),
        _cdr(2, CUST_C, callee=prefix + "6789", tried=[(CAR_1, 200)], answer=1, end=31, invite=2),
    ]
    assert (
        _routed_rate(
            [*CARRIER_RATES, (CAR_1, prefix, "0.5", "0", 1, 1, "2020-01-01", None)], CAR_1, prefix + "6789", NOW
        )
        == carrier_rate
    )
    _file_with_triggers(by_triggers, rows)
    assert (
        _file_carrying_rates(
            by_procedure, [_carrying(rows[0], None, None), _carrying(rows[1], carrier_rate, customer_rate)]
        )
        is None
    )
    expected, got = _state(by_triggers), _state(by_procedure)
    _assert_same(expected, got)
    for cdr in got["sbc_cdrs"]:
        assert cdr["carrier_rate_prefix"] == prefix and cdr["customer_rate_prefix"] == prefix
        assert str(cdr["cost"]) == "0.250000" and str(cdr["price"]) == "0.450000"
