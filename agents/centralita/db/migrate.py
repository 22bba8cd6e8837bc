"""Numbered SQL migrations, applied in order and recorded in ``schema_migrations``.

Files are ``migrations/NNNN_name.sql`` inside this package (shipped as package
data). Each applied file is recorded with its SHA-256; editing an applied file
is refused, because the database would silently differ from what the file says:
a change to the schema is always a new file.

MariaDB commits DDL implicitly, so a migration cannot be rolled back. Each one
is recorded the moment its last statement succeeds, and a failure names the
file, the statement number, its line and the statements already applied, so
the operator knows exactly what state the schema is in. Migrations are written
re-runnable (``IF NOT EXISTS``, ``CREATE OR REPLACE``), so after fixing the cause
the same ``upgrade`` finishes the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.resources
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pymysql

from centralita.db.sqlsplit import SqlSplitError, Statement, split_statements

log = logging.getLogger(__name__)

FILENAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
LOCK_NAME = "centralita.schema_migrations"
LOCK_TIMEOUT_S = 60

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INT UNSIGNED NOT NULL PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    checksum CHAR(64) NOT NULL,
    statements INT UNSIGNED NOT NULL,
    duration_ms INT UNSIGNED NOT NULL,
    applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
"""


class MigrationError(RuntimeError):
    """A migration cannot be applied or the recorded history does not match the files."""


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    filename: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    def statements(self) -> list[Statement]:
        try:
            return split_statements(self.sql)
        except SqlSplitError as exc:
            raise MigrationError(f"{self.filename}: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class AppliedRecord:
    version: int
    name: str
    checksum: str
    applied_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class StatusLine:
    migration: Migration | None
    record: AppliedRecord | None

    @property
    def state(self) -> str:
        if self.record is None:
            return "pending"
        if self.migration is None:
            return "unknown"
        if self.migration.checksum != self.record.checksum:
            return "changed"
        return "applied"


def _load(filename: str, data: bytes) -> Migration:
    match = FILENAME.match(filename)
    if match is None:
        raise MigrationError(f"{filename}: migration files must be named NNNN_name.sql (lower case)")
    try:
        sql = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError(f"{filename}: not UTF-8 ({exc})") from exc
    return Migration(
        version=int(match["version"]),
        name=match["name"],
        filename=filename,
        sql=sql,
        checksum=hashlib.sha256(data).hexdigest(),
    )


def discover(directory: str | Path | None = None) -> list[Migration]:
    """All migration files in version order; the package's own directory by default."""
    if directory is None:
        root = importlib.resources.files("centralita.db") / "migrations"
        entries = [(entry.name, entry) for entry in root.iterdir() if entry.name.endswith(".sql")]
        loaded = [_load(name, entry.read_bytes()) for name, entry in entries]
    else:
        paths = sorted(Path(directory).glob("*.sql"))
        loaded = [_load(path.name, path.read_bytes()) for path in paths]
    loaded.sort(key=lambda m: m.version)
    seen: dict[int, str] = {}
    for migration in loaded:
        if migration.version in seen:
            raise MigrationError(
                f"{migration.filename}: version {migration.version:04d} is also used by {seen[migration.version]}"
            )
        seen[migration.version] = migration.filename
    return loaded


def _has_table(conn: pymysql.Connection) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() "
            "AND table_name = 'schema_migrations'"
        )
        (present,) = _row(cur.fetchone(), ("n",))
    return bool(present)


def ensure_table(conn: pymysql.Connection) -> None:
    """Create the bookkeeping table once; checked first so a user without CREATE can still read status."""
    if not _has_table(conn):
        with conn.cursor() as cur:
            cur.execute(CREATE_TABLE)


def applied(conn: pymysql.Connection) -> dict[int, AppliedRecord]:
    """What the database says has been applied (creates the bookkeeping table if needed)."""
    ensure_table(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
        rows = cur.fetchall()
    out: dict[int, AppliedRecord] = {}
    for row in rows:
        version, name, checksum, applied_at = _row(row, ("version", "name", "checksum", "applied_at"))
        out[int(version)] = AppliedRecord(int(version), name, checksum, applied_at)
    return out


def _row(row: object, names: tuple[str, ...]) -> tuple:
    if isinstance(row, dict):
        return tuple(row[n] for n in names)
    return tuple(row)  # type: ignore[arg-type]


def current_version(conn: pymysql.Connection) -> int | None:
    """Highest applied version, or None when no migration has run (or the table is absent)."""
    if not _has_table(conn):
        return None
    with conn.cursor() as cur:
        cur.execute("SELECT MAX(version) AS v FROM schema_migrations")
        (version,) = _row(cur.fetchone(), ("v",))
    return None if version is None else int(version)


def status(conn: pymysql.Connection, migrations: Iterable[Migration]) -> list[StatusLine]:
    """One line per known version: files and records matched by version."""
    records = applied(conn)
    by_version = {m.version: m for m in migrations}
    versions = sorted(set(records) | set(by_version))
    return [StatusLine(by_version.get(v), records.get(v)) for v in versions]


def check_history(lines: Iterable[StatusLine]) -> None:
    """Refuse to run when an applied file was edited or the schema is ahead of this package."""
    problems: list[str] = []
    for line in lines:
        if line.state == "changed":
            assert line.migration is not None and line.record is not None
            problems.append(
                f"{line.migration.filename}: changed after it was applied (recorded checksum "
                f"{line.record.checksum[:12]}, file now {line.migration.checksum[:12]}); "
                "applied migrations must not be edited, add a new migration instead"
            )
        elif line.state == "unknown":
            assert line.record is not None
            problems.append(
                f"{line.record.version:04d}_{line.record.name}.sql is recorded as applied but this package "
                "does not ship it; install the matching or a newer package"
            )
    if problems:
        raise MigrationError("\n".join(problems))


def upgrade(
    conn: pymysql.Connection,
    migrations: Iterable[Migration] | None = None,
    *,
    on_applied: Callable[[Migration, int], None] | None = None,
) -> list[Migration]:
    """Apply every pending migration in version order; return what was applied.

    A named lock keeps two hosts running ``db upgrade`` at once from interleaving.
    """
    migrations = discover() if migrations is None else list(migrations)
    with _migration_lock(conn):
        lines = status(conn, migrations)
        check_history(lines)
        pending = [line.migration for line in lines if line.state == "pending" and line.migration is not None]
        done: list[Migration] = []
        for migration in pending:
            duration_ms = _apply(conn, migration, done)
            done.append(migration)
            if on_applied is not None:
                on_applied(migration, duration_ms)
        return done


@contextlib.contextmanager
def _migration_lock(conn: pymysql.Connection) -> Iterator[None]:
    with conn.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, %s) AS got", (LOCK_NAME, LOCK_TIMEOUT_S))
        (got,) = _row(cur.fetchone(), ("got",))
    if got != 1:
        raise MigrationError(f"another `db upgrade` holds the migration lock for more than {LOCK_TIMEOUT_S} s")
    try:
        yield
    finally:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))
        except pymysql.MySQLError as err:
            # The lock dies with the session anyway; do not hide the original error.
            log.warning("could not release the migration lock: %s", err)


def _apply(conn: pymysql.Connection, migration: Migration, earlier: list[Migration]) -> int:
    statements = migration.statements()
    started = time.monotonic()
    with conn.cursor() as cur:
        for number, statement in enumerate(statements, start=1):
            try:
                cur.execute(statement.text)
                while cur.nextset():
                    pass
            except pymysql.MySQLError as err:
                raise MigrationError(_failure(migration, statements, number, err, earlier)) from err
        duration_ms = int((time.monotonic() - started) * 1000)
        cur.execute(
            "INSERT INTO schema_migrations (version, name, checksum, statements, duration_ms, applied_at) "
            "VALUES (%s, %s, %s, %s, %s, NOW(3))",
            (migration.version, migration.name, migration.checksum, len(statements), duration_ms),
        )
    if not conn.get_autocommit():
        conn.commit()
    log.info("applied %s (%d statements, %d ms)", migration.filename, len(statements), duration_ms)
    return duration_ms


def _failure(
    migration: Migration, statements: list[Statement], number: int, err: pymysql.MySQLError, earlier: list[Migration]
) -> str:
    statement = statements[number - 1]
    code, text = (err.args[0], err.args[1]) if len(err.args) >= 2 else ("?", str(err))
    lines = [
        f"{migration.filename}: statement {number} of {len(statements)} (line {statement.line}) failed: "
        f"[{code}] {text}",
        f"  statement: {statement.summary()}",
    ]
    if number > 1:
        lines.append(
            f"  statements 1-{number - 1} of {migration.filename} were applied (MariaDB DDL is not transactional); "
            f"{migration.filename} is not recorded, so the next upgrade runs it again from the start"
        )
    if earlier:
        lines.append("  applied and recorded in this run: " + ", ".join(m.filename for m in earlier))
    return "\n".join(lines)
