"""MariaDB access shared by the panel and the agents.

Every agent's settings class inherits :class:`DbSettings`, so the same DB_*
variables mean the same thing in every env file, and :func:`connect` is the one
place where connection options are decided.

Times are stored in UTC: each session sets ``time_zone = '+00:00'`` so that
``NOW(3)`` and ``CURRENT_TIMESTAMP(3)`` defaults agree with the Python side
whatever the server's own zone is. Display code converts to the operator's zone.

pymysql blocks: asyncio code calls these helpers through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import pymysql
import pymysql.cursors

from centralita.config import port, setting

COLLATION = "utf8mb4_unicode_ci"

__all__ = ["DbSettings", "connect", "connection", "db_settings_of", "describe_target"]


def _identifier(value: Any) -> str | None:
    text = str(value)
    if text and len(text) <= 64 and all(c.isalnum() or c in "_$" for c in text):
        return None
    return "a MariaDB name (letters, digits, _ or $; at most 64 characters)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DbSettings:
    """Where and as whom to reach MariaDB.

    Keyword-only so that agent settings classes can inherit it and still declare
    their own required fields without defaults.
    """

    db_host: str = setting("DB_HOST", default="127.0.0.1", help="MariaDB host name or address")
    db_port: int = setting("DB_PORT", default=3306, check=port)
    db_socket: str | None = setting(
        "DB_SOCKET", default=None, help="unix socket path; when set it is used instead of DB_HOST/DB_PORT"
    )
    db_name: str = setting("DB_NAME", default="centralita", check=_identifier)
    db_user: str = setting("DB_USER", help="the service's own MariaDB user")
    db_password: str = setting("DB_PASSWORD", default="", secret=True)
    db_connect_timeout: int = setting("DB_CONNECT_TIMEOUT", default=5, minimum=1, maximum=120)
    db_read_timeout: int = setting(
        "DB_READ_TIMEOUT", default=30, minimum=1, maximum=3600, help="seconds before a query with no answer fails"
    )


def db_settings_of(settings: DbSettings) -> DbSettings:
    """The plain DbSettings part of an agent's settings (for code that only needs the DB)."""
    names = {f.name for f in dataclasses.fields(DbSettings)}
    return DbSettings(**{name: getattr(settings, name) for name in names})


def connect(settings: DbSettings, *, autocommit: bool = True, dict_rows: bool = True) -> pymysql.Connection:
    """Open one connection; raises pymysql.err.OperationalError when MariaDB cannot be reached."""
    options: dict[str, Any] = {
        "user": settings.db_user,
        "password": settings.db_password,
        "database": settings.db_name,
        "charset": "utf8mb4",
        # The schema's collation: literals and CASTs then compare with columns without "illegal mix" errors,
        # whatever the server's default is (MariaDB 11.x defaults to uca1400).
        "collation": COLLATION,
        "autocommit": autocommit,
        "connect_timeout": settings.db_connect_timeout,
        "read_timeout": settings.db_read_timeout,
        "write_timeout": settings.db_read_timeout,
        "init_command": "SET time_zone = '+00:00'",
        "cursorclass": pymysql.cursors.DictCursor if dict_rows else pymysql.cursors.Cursor,
    }
    if settings.db_socket:
        options["unix_socket"] = settings.db_socket
    else:
        options["host"] = settings.db_host
        options["port"] = settings.db_port
    return pymysql.connect(**options)


@contextlib.contextmanager
def connection(settings: DbSettings, **kwargs: Any) -> Iterator[pymysql.Connection]:
    """A connection that is closed when the block ends, even on error."""
    conn = connect(settings, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def describe_target(settings: DbSettings) -> str:
    """Where a connection goes, for error messages (never the password)."""
    where = settings.db_socket or f"{settings.db_host}:{settings.db_port}"
    return f"{settings.db_user}@{where}/{settings.db_name}"
