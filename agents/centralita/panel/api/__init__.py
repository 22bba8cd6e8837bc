"""The JSON API under /api/v1 (token authentication and rate limits come with the API work)."""

from __future__ import annotations

import importlib.metadata
import logging

import pymysql
from flask import Blueprint, current_app, jsonify
from werkzeug.wrappers import Response

from centralita.db import connection, describe_target
from centralita.db.migrate import current_version

bp = Blueprint("api", __name__, url_prefix="/api/v1")
log = logging.getLogger("centralita.panel.api")


def _package_version() -> str:
    try:
        return importlib.metadata.version("centralita")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@bp.get("/health")
def health() -> tuple[Response, int]:
    """Liveness for nginx/monitoring: 200 when MariaDB answers, 503 (with the reason) when it does not.

    Uses its own short-lived connection, not the request's, so the answer says
    whether a new connection can be made right now.
    """
    settings = current_app.config["CENTRALITA_SETTINGS"]
    database: dict[str, object] = {"reachable": False, "schema_version": None}
    try:
        with connection(settings) as conn:
            database["schema_version"] = current_version(conn)
            database["reachable"] = True
    except pymysql.MySQLError as exc:
        log.warning("health: MariaDB %s not usable: %s", describe_target(settings), exc)
        database["error"] = str(exc.args[1] if len(exc.args) > 1 else exc)
    if not database["reachable"]:
        state = "unavailable"
    elif database["schema_version"] is None:
        state = "no_schema"  # reachable but `centralita db upgrade` has not run
    else:
        state = "ok"
    ok = state == "ok"
    body = {"status": state, "version": _package_version(), "database": database}
    return jsonify(body), 200 if ok else 503
