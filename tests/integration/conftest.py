"""A private, throwaway MariaDB server for the integration tests.

One server per test session, started from the host's MariaDB binaries into a
temporary data directory, reachable only through its own unix socket (no TCP,
so it never collides with anything else on the machine), and stopped by PID at
the end. The host's own MariaDB service, if any, is never touched.

If the server cannot start, every test that needs it fails with the reason: a
test that silently skipped would hide a broken database layer.

Fixtures:
- ``mariadb_server`` (session): the running server; ``.socket``, ``.root_settings(db)``,
  ``.create_database()``, ``.drop_database(name)``.
- ``fresh_db`` (function): DbSettings of a new empty database, dropped afterwards.
- ``migrated_db`` (session): DbSettings of a database with every migration applied.
  Tests that write rows there delete them again (or use unique names).
- ``db_conn`` (function): an autocommit pymysql connection (dict rows) to ``migrated_db``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from centralita.db import DbSettings, connect
from centralita.db.migrate import discover, upgrade

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def _binary(*names: str) -> str:
    for name in names:
        for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
    pytest.fail(
        f"MariaDB is not installed on this machine (none of {', '.join(names)} found); "
        "install it with: apt-get install -y mariadb-server",
        pytrace=False,
    )


@dataclasses.dataclass
class MariaDbServer:
    datadir: Path
    rundir: Path
    socket: str
    process: subprocess.Popen

    def root_settings(self, database: str = "mysql") -> DbSettings:
        return DbSettings(db_socket=self.socket, db_user="root", db_password="", db_name=database)

    def root_connection(self, database: str = "mysql") -> pymysql.Connection:
        return connect(self.root_settings(database))

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.root_connection() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return name

    def drop_database(self, name: str) -> None:
        with self.root_connection() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def error_log(self) -> str:
        path = self.datadir / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no error log)"


def _start(base: Path) -> MariaDbServer:
    install_db = _binary("mariadb-install-db", "mysql_install_db")
    server = _binary("mariadbd", "mysqld")
    datadir = base / "data"
    rundir = base / "run"
    if len(str(rundir)) > 80:
        # A unix socket path must fit in 108 bytes; pytest's base temp dir can be deep.
        rundir = Path(tempfile.mkdtemp(prefix="centralita-db-"))
    else:
        rundir.mkdir(parents=True)
    socket = str(rundir / "mysqld.sock")
    common = ["--no-defaults"]
    user = ["--user=root"] if os.geteuid() == 0 else []
    result = subprocess.run(
        [
            install_db,
            *common,
            f"--datadir={datadir}",
            *user,
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"mariadb-install-db failed ({result.returncode}):\n{result.stderr[-4000:]}", pytrace=False)
    process = subprocess.Popen(
        [
            server,
            *common,
            f"--datadir={datadir}",
            f"--socket={socket}",
            f"--pid-file={rundir / 'mysqld.pid'}",
            f"--log-error={datadir / 'error.log'}",
            "--skip-networking",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=2",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            *user,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    instance = MariaDbServer(datadir=datadir, rundir=rundir, socket=socket, process=process)
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"mariadbd exited with {process.returncode} while starting:\n{instance.error_log()}", pytrace=False
            )
        if os.path.exists(socket):
            try:
                instance.root_connection().close()
                return instance
            except pymysql.MySQLError as exc:
                last_error = exc
        time.sleep(0.2)
    _stop(instance)
    pytest.fail(
        f"mariadbd did not accept connections within {START_TIMEOUT_S} s ({last_error}):\n{instance.error_log()}",
        pytrace=False,
    )


def _stop(instance: MariaDbServer) -> None:
    process = instance.process
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDbServer]:
    base = tmp_path_factory.mktemp("mariadb")
    instance = _start(base)
    try:
        yield instance
    finally:
        _stop(instance)
        shutil.rmtree(instance.rundir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_db(mariadb_server: MariaDbServer) -> Iterator[DbSettings]:
    name = mariadb_server.create_database("fresh")
    try:
        yield mariadb_server.root_settings(name)
    finally:
        mariadb_server.drop_database(name)


@pytest.fixture(scope="session")
def migrated_db(mariadb_server: MariaDbServer) -> DbSettings:
    name = mariadb_server.create_database("centralita")
    settings = mariadb_server.root_settings(name)
    with connect(settings) as conn:
        upgrade(conn, discover())
    return settings


@pytest.fixture
def db_conn(migrated_db: DbSettings) -> Iterator[pymysql.Connection]:
    conn = connect(migrated_db)
    try:
        yield conn
    finally:
        conn.close()
