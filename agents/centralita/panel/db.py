"""One MariaDB connection per request, opened on first use and closed at teardown."""

from __future__ import annotations

import pymysql
from flask import Flask, current_app, g

from centralita.db import connect


def get_db() -> pymysql.Connection:
    if "db" not in g:
        g.db = connect(current_app.config["CENTRALITA_SETTINGS"])
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        try:
            conn.close()
        except pymysql.MySQLError as err:
            current_app.logger.warning("closing the request's DB connection failed: %s", err)


def init_app(app: Flask) -> None:
    app.teardown_appcontext(close_db)
