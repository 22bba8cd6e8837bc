"""``centralita db upgrade`` and ``centralita db status``.

The output of ``upgrade`` is meant for people and for Ansible alike: one
``applied NNNN_name.sql`` line per migration, and exactly ``nothing to apply``
when the schema was already current, so a play can tell changed from ok.
"""

from __future__ import annotations

import argparse
import sys

import pymysql

from centralita.config import load_settings
from centralita.db import DbSettings, connection, describe_target
from centralita.db.migrate import Migration, MigrationError, check_history, discover, status, upgrade

EXIT_FAILED = 1
EXIT_PENDING = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="database schema: upgrade, status")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")

    up = db_sub.add_parser("upgrade", help="apply pending migrations in order")
    up.add_argument("--env-file", help="env file with DB_* settings (the environment is read too)")
    up.set_defaults(func=cmd_upgrade)

    st = db_sub.add_parser("status", help="list applied and pending migrations")
    st.add_argument("--env-file", help="env file with DB_* settings (the environment is read too)")
    st.add_argument("--check", action="store_true", help=f"exit {EXIT_PENDING} when migrations are pending")
    st.set_defaults(func=cmd_status)


def cmd_upgrade(args: argparse.Namespace) -> int:
    settings = load_settings(DbSettings, env_file=args.env_file)

    def report(migration: Migration, duration_ms: int) -> None:
        print(f"applied {migration.filename} ({duration_ms} ms)", flush=True)

    try:
        with connection(settings) as conn:
            done = upgrade(conn, discover(), on_applied=report)
    except MigrationError as exc:
        print(f"centralita db upgrade: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except pymysql.MySQLError as exc:
        print(f"centralita db upgrade: cannot use {describe_target(settings)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if done:
        print(f"{len(done)} migration(s) applied; schema version {done[-1].version:04d}")
    else:
        print("nothing to apply")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(DbSettings, env_file=args.env_file)
    try:
        with connection(settings) as conn:
            lines = status(conn, discover())
    except MigrationError as exc:
        print(f"centralita db status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except pymysql.MySQLError as exc:
        print(f"centralita db status: cannot use {describe_target(settings)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in lines:
        if line.migration is not None:
            label = line.migration.filename
        else:
            assert line.record is not None
            label = f"{line.record.version:04d}_{line.record.name}.sql"
        when = line.record.applied_at.strftime("%Y-%m-%d %H:%M:%S UTC") if line.record else ""
        print(f"{line.state:<8} {label:<40} {when}".rstrip())
    try:
        check_history(lines)
    except MigrationError as exc:
        print(f"centralita db status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    pending = sum(1 for line in lines if line.state == "pending")
    print(f"{pending} pending" if pending else "up to date")
    return EXIT_PENDING if (args.check and pending) else 0
