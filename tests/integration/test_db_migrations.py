"""The migrations runner against a real MariaDB server."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pymysql
import pytest
from centralita.db import DbSettings, connect
from centralita.db.migrate import MigrationError, current_version, discover, status, upgrade

SHIPPED = discover()


def _copy_migrations(target: Path) -> Path:
    target.mkdir()
    for migration in SHIPPED:
        (target / migration.filename).write_text(migration.sql, encoding="utf-8")
    return target


def _tables(conn: pymysql.Connection) -> set[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()")
        return {row["t"] for row in cur.fetchall()}


def _columns(conn: pymysql.Connection, table: str) -> dict[str, dict]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name AS name, column_type AS type, is_nullable AS nullable "
            "FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = %s",
            (table,),
        )
        return {row["name"]: row for row in cur.fetchall()}


def _env_file(path: Path, settings: DbSettings) -> Path:
    path.write_text(
        f"DB_SOCKET={settings.db_socket}\nDB_USER={settings.db_user}\nDB_PASSWORD=\nDB_NAME={settings.db_name}\n"
    )
    return path


def test_upgrade_applies_every_shipped_migration_in_order(fresh_db: DbSettings) -> None:
    with connect(fresh_db) as conn:
        applied = upgrade(conn, SHIPPED)
        assert [m.version for m in applied] == sorted(m.version for m in SHIPPED)
        assert {1, 2, 5} <= {m.version for m in applied}
        with conn.cursor() as cur:
            cur.execute("SELECT version, name, checksum, statements FROM schema_migrations ORDER BY version")
            rows = cur.fetchall()
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (m.version, m.name, m.checksum) for m in SHIPPED
        ]
        assert all(r["statements"] > 0 for r in rows)
        assert current_version(conn) == SHIPPED[-1].version


def test_second_upgrade_applies_nothing(fresh_db: DbSettings) -> None:
    with connect(fresh_db) as conn:
        upgrade(conn, SHIPPED)
        tables_before = _tables(conn)
        assert upgrade(conn, SHIPPED) == []
        assert _tables(conn) == tables_before
        assert all(line.state == "applied" for line in status(conn, SHIPPED))


def test_current_version_is_none_on_an_empty_database(fresh_db: DbSettings) -> None:
    with connect(fresh_db) as conn:
        assert current_version(conn) is None


def test_edited_applied_migration_is_refused_naming_the_file(fresh_db: DbSettings, tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path / "migrations")
    with connect(fresh_db) as conn:
        upgrade(conn, discover(directory))
        edited = directory / "0001_core.sql"
        edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
        with pytest.raises(MigrationError, match=r"0001_core\.sql: changed after it was applied"):
            upgrade(conn, discover(directory))


def test_failed_statement_is_reported_with_file_number_and_line(fresh_db: DbSettings, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_first.sql").write_text("CREATE TABLE a (id INT PRIMARY KEY);\n")
    (directory / "0002_broken.sql").write_text(
        "-- two good statements, then a bad one\n"
        "CREATE TABLE b (id INT PRIMARY KEY);\n"
        "INSERT INTO b VALUES (1);\n"
        "\n"
        "ALTER TABLE b ADD COLUMN note VARCHAR(10) REFERENCES_NOTHING;\n"
    )
    with connect(fresh_db) as conn:
        with pytest.raises(MigrationError) as caught:
            upgrade(conn, discover(directory))
        message = str(caught.value)
        assert "0002_broken.sql: statement 3 of 3 (line 5) failed: [1064]" in message
        assert "ALTER TABLE b ADD COLUMN note" in message
        assert "statements 1-2 of 0002_broken.sql were applied" in message
        assert "applied and recorded in this run: 0001_first.sql" in message
        states = {line.migration.filename: line.state for line in status(conn, discover(directory))}
        assert states == {"0001_first.sql": "applied", "0002_broken.sql": "pending"}


def test_upgrade_after_fixing_a_failed_migration_finishes(fresh_db: DbSettings, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    broken = directory / "0001_partial.sql"
    broken.write_text("CREATE TABLE IF NOT EXISTS p (id INT PRIMARY KEY);\nSELECT * FROM missing_table;\n")
    with connect(fresh_db) as conn:
        with pytest.raises(MigrationError, match="statement 2 of 2"):
            upgrade(conn, discover(directory))
        broken.write_text("CREATE TABLE IF NOT EXISTS p (id INT PRIMARY KEY);\nCREATE TABLE q (id INT);\n")
        assert [m.filename for m in upgrade(conn, discover(directory))] == ["0001_partial.sql"]
        assert {"p", "q"} <= _tables(conn)


def test_migration_recorded_but_not_shipped_is_refused(fresh_db: DbSettings, tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path / "migrations")
    extra = directory / "0099_future.sql"
    extra.write_text("CREATE TABLE future_thing (id INT);\n")
    with connect(fresh_db) as conn:
        upgrade(conn, discover(directory))
        extra.unlink()
        with pytest.raises(MigrationError, match=r"0099_future\.sql is recorded as applied but this package"):
            upgrade(conn, discover(directory))


def test_late_lower_numbered_migration_is_still_applied(fresh_db: DbSettings, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_a.sql").write_text("CREATE TABLE a (id INT);\n")
    (directory / "0005_c.sql").write_text("CREATE TABLE c (id INT);\n")
    with connect(fresh_db) as conn:
        upgrade(conn, discover(directory))
        (directory / "0003_b.sql").write_text("CREATE TABLE b (id INT);\n")
        assert [m.filename for m in upgrade(conn, discover(directory))] == ["0003_b.sql"]


def test_schema_has_the_core_sbc_and_collections_tables(migrated_db: DbSettings) -> None:
    with connect(migrated_db) as conn:
        tables = _tables(conn)
        expected = {
            "schema_migrations",
            "users",
            "api_tokens",
            "settings",
            "events",
            "audit_log",
            "customers",
            "customer_ips",
            "carriers",
            "carrier_rates",
            "customer_rates",
            "dialing_plans",
            "dialing_plan_rules",
            "normalization_rules",
            "sbc_cdrs",
            "sip_traces",
            "sip_trace_files",
            "ip_blacklist",
            "carrier_daily_stats",
            "collections_debtors",
            "collections_debtors_v",
            "collections_campaigns",
            "collections_calls",
            "collections_attempts",
        }
        assert expected <= tables, expected - tables
        cdr = _columns(conn, "sbc_cdrs")
        for column in (
            "customer_id",
            "carriers_tried",
            "callee_original",
            "callee_normalized",
            "source_ip",
            "sip_code",
            "disposition",
            "hangup_side",
            "pdd_ms",
            "ring_ms",
            "billable_ms",
            "total_ms",
            "cost",
            "price",
        ):
            assert column in cdr, column
        for column in ("invite_at", "progress_at", "answer_at", "end_at"):
            assert cdr[column]["type"] == "datetime(3)", column
        events = _columns(conn, "events")
        assert events["customer_id"]["nullable"] == "YES"
        assert events["carrier_id"]["nullable"] == "YES"
        assert events["created_at"]["type"] == "datetime(3)"
        customers = _columns(conn, "customers")
        for column in ("max_cps", "max_channels", "monthly_minutes_limit", "minutes_used", "minutes_warning_sent_at"):
            assert column in customers, column
        with conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT engine AS e FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'"
            )
            assert {row["e"] for row in cur.fetchall()} == {"InnoDB"}
            cur.execute(
                "SELECT DISTINCT table_collation AS c FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'"
            )
            assert all(row["c"].startswith("utf8mb4") for row in cur.fetchall())


def test_a_trace_spool_file_can_be_marked_loaded_once_per_sbc(db_conn: pymysql.Connection) -> None:
    with db_conn.cursor() as cur:
        cur.execute(
            "INSERT INTO sip_trace_files (origin, file, bytes, row_count) VALUES ('sbc-a', 'traces_1.tsv', 10, 1),"
            " ('sbc-b', 'traces_1.tsv', 10, 1)"
        )
        with pytest.raises(pymysql.IntegrityError):
            cur.execute(
                "INSERT INTO sip_trace_files (origin, file, bytes, row_count) VALUES ('sbc-a', 'traces_1.tsv', 10, 1)"
            )
        cur.execute("SELECT refused, loaded_at FROM sip_trace_files WHERE origin = 'sbc-a'")
        row = cur.fetchone()
        assert row["refused"] == 0 and row["loaded_at"] is not None
        cur.execute("DELETE FROM sip_trace_files WHERE file = 'traces_1.tsv'")


def test_events_payload_must_be_json_and_created_at_keeps_milliseconds(db_conn: pymysql.Connection) -> None:
    with db_conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute("INSERT INTO events (type, payload) VALUES ('cps_exceeded', 'not json')")
        cur.execute(
            "INSERT INTO events (type, severity, payload) VALUES ('cps_exceeded', 'warning', %s)", ('{"cps": 12}',)
        )
        event_id = cur.lastrowid
        try:
            cur.execute("SELECT created_at, delivery_state FROM events WHERE id = %s", (event_id,))
            row = cur.fetchone()
            assert row["delivery_state"] == "new"
            assert row["created_at"].microsecond % 1000 == 0
        finally:
            cur.execute("DELETE FROM events WHERE id = %s", (event_id,))


def test_longest_prefix_rate_lookup_uses_the_prefix_index(db_conn: pymysql.Connection) -> None:
    with db_conn.cursor() as cur:
        cur.execute("INSERT INTO carriers (name, host) VALUES ('lpm-test', '10.213.9.9')")
        carrier = cur.lastrowid
        try:
            cur.executemany(
                "INSERT INTO carrier_rates (carrier_id, prefix, rate_per_minute, effective_from) "
                "VALUES (%s, %s, %s, '2020-01-01')",
                [(carrier, "57", "0.0100"), (carrier, "573", "0.0200"), (carrier, "5730", "0.0300")],
            )
            number = "573001234567"
            prefixes = [number[:i] for i in range(1, len(number) + 1)]
            cur.execute(
                "SELECT prefix, rate_per_minute FROM carrier_rates WHERE carrier_id = %s AND prefix IN %s "
                "AND effective_from <= UTC_TIMESTAMP() AND (effective_to IS NULL OR effective_to > UTC_TIMESTAMP()) "
                "ORDER BY LENGTH(prefix) DESC LIMIT 1",
                (carrier, prefixes),
            )
            assert cur.fetchone()["prefix"] == "5730"
        finally:
            cur.execute("DELETE FROM carriers WHERE id = %s", (carrier,))


@pytest.mark.parametrize("prefix", ["", "+57", "57 1"])
def test_a_rate_without_a_prefix_of_digits_is_refused(db_conn: pymysql.Connection, prefix: str) -> None:
    # routing would match an empty prefix to every number while billing never does
    with db_conn.cursor() as cur:
        cur.execute("INSERT INTO carriers (name, host) VALUES ('prefix-test', '10.213.9.9')")
        carrier = cur.lastrowid
        cur.execute("INSERT INTO customers (name) VALUES ('prefix-test')")
        customer = cur.lastrowid
        try:
            with pytest.raises(pymysql.err.OperationalError, match="ck_carrier_rates_prefix"):
                cur.execute(
                    "INSERT INTO carrier_rates (carrier_id, prefix, rate_per_minute, effective_from) "
                    "VALUES (%s, %s, 0.01, '2020-01-01')",
                    (carrier, prefix),
                )
            with pytest.raises(pymysql.err.OperationalError, match="ck_customer_rates_prefix"):
                cur.execute(
                    "INSERT INTO customer_rates (customer_id, prefix, rate_per_minute, effective_from) "
                    "VALUES (%s, %s, 0.02, '2020-01-01')",
                    (customer, prefix),
                )
        finally:
            cur.execute("DELETE FROM carriers WHERE id = %s", (carrier,))
            cur.execute("DELETE FROM customers WHERE id = %s", (customer,))


def test_customer_user_without_customer_is_rejected(db_conn: pymysql.Connection) -> None:
    with db_conn.cursor() as cur, pytest.raises(pymysql.err.OperationalError, match="ck_users_customer_role"):
        cur.execute("INSERT INTO users (username, password_hash, role) VALUES ('orphan', 'x', 'customer')")


def test_cli_upgrade_prints_applied_files_then_nothing_to_apply(fresh_db: DbSettings, tmp_path: Path) -> None:
    env_file = _env_file(tmp_path / "migrate.env", fresh_db)
    command = [sys.executable, "-m", "centralita.cli", "db", "upgrade", "--env-file", str(env_file)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert [line for line in first.stdout.splitlines() if line.startswith("applied ")] == [
        _applied_line(m.filename, first.stdout) for m in SHIPPED
    ]
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "nothing to apply"

    status_run = subprocess.run(
        [sys.executable, "-m", "centralita.cli", "db", "status", "--check", "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status_run.returncode == 0, status_run.stderr
    assert status_run.stdout.splitlines()[-1] == "up to date"


def _applied_line(filename: str, stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(f"applied {filename} ("):
            return line
    raise AssertionError(f"no 'applied {filename}' line in:\n{stdout}")


def test_cli_status_check_reports_pending_with_exit_3(fresh_db: DbSettings, tmp_path: Path) -> None:
    env_file = _env_file(tmp_path / "migrate.env", fresh_db)
    result = subprocess.run(
        [sys.executable, "-m", "centralita.cli", "db", "status", "--check", "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "pending  0001_core.sql" in result.stdout


def test_cli_reports_unreachable_database_without_traceback(tmp_path: Path) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text(f"DB_SOCKET={tmp_path / 'no.sock'}\nDB_USER=nobody\nDB_CONNECT_TIMEOUT=2\n")
    result = subprocess.run(
        [sys.executable, "-m", "centralita.cli", "db", "upgrade", "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot use nobody@" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bad_setting_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text("DB_USER=x\nDB_PORT=notaport\n")
    result = subprocess.run(
        [sys.executable, "-m", "centralita.cli", "db", "upgrade", "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "DB_PORT: expected an integer, got 'notaport'" in result.stderr


def test_upgrade_as_user_without_create_privilege_fails_clearly(mariadb_server, fresh_db: DbSettings) -> None:
    with mariadb_server.root_connection() as root, root.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'limited'@'localhost' IDENTIFIED BY 'pw'")
        cur.execute(f"GRANT SELECT, INSERT ON `{fresh_db.db_name}`.* TO 'limited'@'localhost'")
    try:
        with connect(fresh_db) as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE schema_migrations (version INT UNSIGNED NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL,"
                " checksum CHAR(64) NOT NULL, statements INT UNSIGNED NOT NULL, duration_ms INT UNSIGNED NOT NULL,"
                " applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3))"
            )
        limited = DbSettings(
            db_socket=fresh_db.db_socket,
            db_user="limited",
            db_password="pw",
            db_name=fresh_db.db_name,
        )
        with (
            connect(limited) as conn,
            pytest.raises(MigrationError, match=r"0001_core\.sql: statement 1 of .*\[1142\]"),
        ):
            upgrade(conn, SHIPPED)
    finally:
        with mariadb_server.root_connection() as root, root.cursor() as cur:
            cur.execute("DROP USER IF EXISTS 'limited'@'localhost'")


def test_two_upgrades_at_once_apply_each_migration_exactly_once(fresh_db: DbSettings) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(fresh_db) as conn:
                results.append([m.filename for m in upgrade(conn, SHIPPED)])
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(results, key=len) == [[], [m.filename for m in SHIPPED]]
