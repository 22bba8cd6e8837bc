"""The worker agent against the real MariaDB server: SQL, the process, its signals and its metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from centralita.db import DbSettings, connect
from centralita.db.migrate import discover, upgrade
from centralita.worker.events import count_by_state, queue_settled_events

PROCESS_TIMEOUT_S = 20


@pytest.fixture
def events_db(fresh_db: DbSettings) -> Iterator[DbSettings]:
    """A migrated database of its own: the worker counts every event, so no other test's rows may be there."""
    with connect(fresh_db) as conn:
        upgrade(conn, discover())
    yield fresh_db


def _insert_event(conn: pymysql.Connection, kind: str, age_s: float) -> int:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO events (type, severity, source, message, payload, created_at) "
            "VALUES (%s, 'warning', 'test', 'x', '{}', NOW(3) - INTERVAL %s MICROSECOND)",
            (kind, int(age_s * 1_000_000)),
        )
        return cur.lastrowid


def _state(conn: pymysql.Connection, event_id: int) -> dict:
    with conn.cursor() as cur:
        cur.execute("SELECT delivery_state, pending_since FROM events WHERE id = %s", (event_id,))
        return cur.fetchone()


def _env(settings: DbSettings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "WORKER_", "CENTRALITA_"))}
    env.update(
        DB_SOCKET=settings.db_socket or "",
        DB_USER=settings.db_user,
        DB_PASSWORD=settings.db_password,
        DB_NAME=settings.db_name,
        WORKER_METRICS_PORT="0",
    )
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_worker(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "centralita.worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM the worker we started and return (exit code, its log)."""
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
        pytest.fail(f"worker ignored SIGTERM for {PROCESS_TIMEOUT_S} s:\n{stderr}")
    return process.returncode, stderr


def _wait_for(condition, what: str, timeout: float = PROCESS_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_only_events_older_than_the_settle_time_are_queued(events_db: DbSettings) -> None:
    with connect(events_db) as conn:
        old = _insert_event(conn, "carrier_down", age_s=120)
        fresh = _insert_event(conn, "carrier_down", age_s=0)
        assert queue_settled_events(conn, older_than_s=60, limit=100) == 1
        assert _state(conn, old)["delivery_state"] == "pending"
        assert _state(conn, old)["pending_since"] is not None
        assert _state(conn, fresh) == {"delivery_state": "new", "pending_since": None}
        assert count_by_state(conn) == {"new": 1, "pending": 1, "delivered": 0, "failed": 0}


def test_queueing_is_batched_oldest_first(events_db: DbSettings) -> None:
    with connect(events_db) as conn:
        ids = [_insert_event(conn, "security_flood_detected", age_s=age) for age in (30, 50, 40)]
        assert queue_settled_events(conn, older_than_s=1, limit=2) == 2
        states = {event_id: _state(conn, event_id)["delivery_state"] for event_id in ids}
        # ages 50 and 40 go first; the youngest (30 s) waits for the next poll
        assert states == {ids[0]: "new", ids[1]: "pending", ids[2]: "pending"}
        assert queue_settled_events(conn, older_than_s=1, limit=2) == 1
        assert queue_settled_events(conn, older_than_s=1, limit=2) == 0


def test_delivered_and_failed_events_are_never_requeued(events_db: DbSettings) -> None:
    with connect(events_db) as conn:
        delivered = _insert_event(conn, "minutes_warning", age_s=600)
        failed = _insert_event(conn, "minutes_warning", age_s=600)
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE events SET delivery_state = 'delivered', delivered_at = NOW(3) WHERE id = %s", (delivered,)
            )
            cur.execute("UPDATE events SET delivery_state = 'failed' WHERE id = %s", (failed,))
        assert queue_settled_events(conn, older_than_s=0, limit=100) == 0
        assert count_by_state(conn) == {"new": 0, "pending": 0, "delivered": 1, "failed": 1}


def test_worker_process_queues_events_logs_counts_and_stops_on_sigterm(events_db: DbSettings) -> None:
    with connect(events_db) as conn:
        event_id = _insert_event(conn, "cps_exceeded", age_s=5)
        process = _start_worker(_env(events_db, WORKER_POLL_SECONDS="0.3", WORKER_PENDING_AFTER_SECONDS="1"))
        try:
            _wait_for(lambda: _state(conn, event_id)["delivery_state"] == "pending", "the event to be queued")
            # An event raised while the worker runs is picked up by a later poll once it has settled.
            later = _insert_event(conn, "carrier_down", age_s=0)
            _wait_for(lambda: _state(conn, later)["delivery_state"] == "pending", "the later event to be queued")
        finally:
            code, log = _stop(process)
    assert code == 0, log
    assert "queued 1 event(s) for delivery; new=0 pending=1 delivered=0 failed=0" in log
    assert "pending=2" in log
    assert "worker stopped" in log


def test_worker_keeps_running_through_a_database_outage_and_logs_it_once(tmp_path: Path) -> None:
    missing = DbSettings(db_socket=str(tmp_path / "no-such.sock"), db_user="root", db_password="", db_name="x")
    process = _start_worker(_env(missing, WORKER_POLL_SECONDS="0.2"))
    time.sleep(1.5)
    assert process.poll() is None, "the worker must not exit when MariaDB is down"
    code, log = _stop(process)
    assert code == 0, log
    assert log.count("cannot poll events") == 1, log


def test_worker_serves_prometheus_metrics(events_db: DbSettings) -> None:
    port = _free_port()
    with connect(events_db) as conn:
        _insert_event(conn, "carrier_recovered", age_s=10)
    process = _start_worker(_env(events_db, WORKER_POLL_SECONDS="0.2", WORKER_METRICS_PORT=str(port)))
    try:

        def scraped() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                return False
            return 'centralita_worker_events{state="pending"} 1' in body and "centralita_worker_polls_total" in body

        _wait_for(scraped, "the pending gauge on /metrics")
    finally:
        code, log = _stop(process)
    assert code == 0, log


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WORKER_POLL_SECONDS", "soon", "WORKER_POLL_SECONDS: expected a number, got 'soon'"),
        ("WORKER_POLL_SECONDS", "0", "WORKER_POLL_SECONDS: expected a value >= 0.2"),
        ("WORKER_METRICS_PORT", "70000", "WORKER_METRICS_PORT: expected a TCP/UDP port"),
        ("WORKER_LOG_LEVEL", "LOUD", "WORKER_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_worker_bad_setting_exits_2_naming_the_variable(variable: str, value: str, expected: str) -> None:
    settings = DbSettings(db_user="centralita", db_password="secret-value", db_name="centralita")
    env = _env(settings, **{variable: value})
    result = subprocess.run(
        [sys.executable, "-m", "centralita.worker"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "secret-value" not in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_reads_its_env_file_named_by_centralita_env_file(events_db: DbSettings, tmp_path: Path) -> None:
    env_file = tmp_path / "worker.env"
    env_file.write_text("WORKER_POLL_SECONDS=bogus\n")
    env = _env(events_db, CENTRALITA_ENV_FILE=str(env_file))
    result = subprocess.run(
        [sys.executable, "-m", "centralita.worker"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "WORKER_POLL_SECONDS: expected a number, got 'bogus'" in result.stderr


def test_worker_with_its_metrics_port_taken_exits_1_with_one_clear_line(events_db: DbSettings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "centralita.worker"],
            env=_env(events_db, WORKER_METRICS_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
