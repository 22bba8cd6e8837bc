"""The roles' own Ansible modules, run as Ansible runs them (a JSON argument file).

``centralita_db_accounts`` against the private MariaDB server: accounts, passwords
and exact grants, idempotence, drift correction and refused input.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = ROOT / "roles" / "mariadb" / "library" / "centralita_db_accounts.py"


def run_module(module: Path, args: dict, tmp_path: Path, check_mode: bool = False) -> dict:
    payload = dict(args)
    if check_mode:
        payload["_ansible_check_mode"] = True
    arguments = tmp_path / f"args-{secrets.token_hex(4)}.json"
    arguments.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    done = subprocess.run([sys.executable, str(module), str(arguments)], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)


@pytest.fixture
def schema(mariadb_server):
    name = mariadb_server.create_database("grants")
    with mariadb_server.root_connection(name) as conn, conn.cursor() as cur:
        for table in ("settings", "events", "calls"):
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
    yield name
    mariadb_server.drop_database(name)


@pytest.fixture
def prefix(mariadb_server):
    value = f"t{secrets.token_hex(3)}_"
    yield value
    with mariadb_server.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT User, Host FROM mysql.user WHERE User LIKE %s", (value + "%",))
        for row in cur.fetchall():
            cur.execute("DROP USER %s@%s", (row["User"], row["Host"]))


def grants_of(server, user: str, host: str = "localhost") -> set[str]:
    with server.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SHOW GRANTS FOR %s@%s", (user, host))
        return {next(iter(row.values())).split(" IDENTIFIED BY")[0] for row in cur.fetchall()}


def can_log_in(server, user: str, password: str) -> bool:
    import pymysql

    try:
        pymysql.connect(unix_socket=server.socket, user=user, password=password).close()
    except pymysql.err.OperationalError:
        return False
    return True


def base_args(server, schema: str, prefix: str) -> dict:
    return {
        "login_unix_socket": server.socket,
        "database": schema,
        "user_prefix": prefix,
        "client_hosts": ["localhost", "127.0.0.1"],
        "services": {
            "panel": [{"table": "*", "privs": ["SELECT", "INSERT", "UPDATE", "DELETE"]}],
            "aicall": [
                {"table": "settings", "privs": ["SELECT"]},
                {"table": "calls", "privs": ["SELECT", "INSERT", "UPDATE"]},
                {"table": "events", "privs": ["INSERT"]},
            ],
        },
        "passwords": {"panel": "panel-password-1234", "aicall": "aicall-password-1234"},
    }


def test_accounts_get_exactly_their_grants_and_a_second_run_changes_nothing(mariadb_server, schema, prefix, tmp_path):
    args = base_args(mariadb_server, schema, prefix)
    first = run_module(ACCOUNTS, args, tmp_path)
    assert first["changed"] is True
    assert f"created {prefix}aicall@127.0.0.1" in first["changes"]
    assert grants_of(mariadb_server, prefix + "aicall") == {
        f"GRANT USAGE ON *.* TO `{prefix}aicall`@`localhost`",
        f"GRANT SELECT ON `{schema}`.`settings` TO `{prefix}aicall`@`localhost`",
        f"GRANT SELECT, INSERT, UPDATE ON `{schema}`.`calls` TO `{prefix}aicall`@`localhost`",
        f"GRANT INSERT ON `{schema}`.`events` TO `{prefix}aicall`@`localhost`",
    }
    assert f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{schema}`.* TO `{prefix}panel`@`localhost`" in grants_of(
        mariadb_server, prefix + "panel"
    )
    assert can_log_in(mariadb_server, prefix + "panel", "panel-password-1234")

    second = run_module(ACCOUNTS, args, tmp_path)
    assert second == {**second, "changed": False, "changes": []}


def test_drift_is_put_back_and_reported(mariadb_server, schema, prefix, tmp_path):
    args = base_args(mariadb_server, schema, prefix)
    run_module(ACCOUNTS, args, tmp_path)
    with mariadb_server.root_connection() as conn, conn.cursor() as cur:
        cur.execute(f"GRANT DROP ON `{schema}`.`settings` TO %s@'localhost'", (prefix + "aicall",))
        cur.execute("GRANT PROCESS ON *.* TO %s@'localhost'", (prefix + "panel",))
        cur.execute("SET PASSWORD FOR %s@'localhost' = PASSWORD('somebody-else-99')", (prefix + "panel",))

    check = run_module(ACCOUNTS, args, tmp_path, check_mode=True)
    assert check["changed"] is True
    assert not can_log_in(mariadb_server, prefix + "panel", "panel-password-1234")  # check mode changed nothing

    fixed = run_module(ACCOUNTS, args, tmp_path)
    assert sorted(fixed["changes"]) == sorted(
        [
            f"grants of {prefix}aicall@localhost",
            f"password of {prefix}panel@localhost",
            f"grants of {prefix}panel@localhost",
        ]
    )
    assert f"GRANT SELECT ON `{schema}`.`settings` TO `{prefix}aicall`@`localhost`" in grants_of(
        mariadb_server, prefix + "aicall"
    )
    assert not any("PROCESS" in grant for grant in grants_of(mariadb_server, prefix + "panel"))
    assert can_log_in(mariadb_server, prefix + "panel", "panel-password-1234")
    assert run_module(ACCOUNTS, args, tmp_path)["changed"] is False


def test_grants_on_missing_tables_wait_when_allowed_and_only_limits_the_services(
    mariadb_server, schema, prefix, tmp_path
):
    args = base_args(mariadb_server, schema, prefix)
    args["services"]["aicall"].append({"table": "recordings", "privs": ["SELECT"]})
    refused = run_module(ACCOUNTS, {**args, "only": ["aicall"]}, tmp_path)
    assert refused.get("failed") is True
    assert f"do not exist in {schema}: recordings" in refused["msg"]

    waited = run_module(ACCOUNTS, {**args, "only": ["aicall"], "allow_missing_tables": True}, tmp_path)
    assert waited["changed"] is True and waited["missing_tables"] == ["recordings"]
    assert f"GRANT SELECT, INSERT, UPDATE ON `{schema}`.`calls` TO `{prefix}aicall`@`localhost`" in grants_of(
        mariadb_server, prefix + "aicall"
    )
    with mariadb_server.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM mysql.user WHERE User = %s", (prefix + "panel",))
        assert cur.fetchone()["n"] == 0  # not in `only`
        cur.execute(f"CREATE TABLE `{schema}`.recordings (id INT PRIMARY KEY)")
    granted = run_module(ACCOUNTS, {**args, "only": ["aicall"]}, tmp_path)
    assert granted["changes"] == [f"grants of {prefix}aicall@localhost", f"grants of {prefix}aicall@127.0.0.1"]
    assert f"GRANT SELECT ON `{schema}`.`recordings` TO `{prefix}aicall`@`localhost`" in grants_of(
        mariadb_server, prefix + "aicall"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"services": {"aicall": [{"table": "calls; DROP TABLE x", "privs": ["SELECT"]}]}}, "services.aicall"),
        ({"services": {"aicall": [{"table": "calls", "privs": ["SELECT; DROP"]}]}}, "privileges"),
        ({"passwords": {"panel": "panel-password-1234"}}, "the aicall service has no password"),
        ({"only": ["billing"]}, "only: no grants are defined for billing"),
        ({"database": "bad-name"}, "database"),
    ],
)
def test_bad_input_is_refused_naming_what_is_wrong(mariadb_server, schema, prefix, tmp_path, change, message):
    result = run_module(ACCOUNTS, {**base_args(mariadb_server, schema, prefix), **change}, tmp_path)
    assert result.get("failed") is True
    assert message in result["msg"]


def test_the_schema_is_created_once_and_grants_only_limits_whose_grants_are_set(mariadb_server, prefix, tmp_path):
    schema = f"fresh_{secrets.token_hex(3)}"
    args = {**base_args(mariadb_server, schema, prefix), "create_database": True, "grants_only": ["panel"]}
    try:
        first = run_module(ACCOUNTS, args, tmp_path)
        assert first["changes"][0] == f"created database {schema}"
        assert f"grants of {prefix}panel@localhost" in first["changes"]
        assert not any(change.startswith(f"grants of {prefix}aicall") for change in first["changes"])
        assert grants_of(mariadb_server, prefix + "aicall") == {f"GRANT USAGE ON *.* TO `{prefix}aicall`@`localhost`"}
        with mariadb_server.root_connection() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT DEFAULT_CHARACTER_SET_NAME AS cs, DEFAULT_COLLATION_NAME AS co"
                " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (schema,),
            )
            assert cur.fetchone() == {"cs": "utf8mb4", "co": "utf8mb4_unicode_ci"}
        assert run_module(ACCOUNTS, args, tmp_path)["changed"] is False
        assert (
            "grants_only: no grants are defined for billing"
            in run_module(ACCOUNTS, {**args, "grants_only": ["billing"]}, tmp_path)["msg"]
        )
    finally:
        mariadb_server.drop_database(schema)
