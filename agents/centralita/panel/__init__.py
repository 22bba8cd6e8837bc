"""The web panel: operator pages, the customer portal and the JSON API.

``create_app`` is the one way to build it (gunicorn uses ``centralita.panel.wsgi:app``).
The first administrator comes from PANEL_ADMIN_USER / PANEL_ADMIN_PASSWORD and is
created at start when absent, so a fresh install can be logged into at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import pymysql
from flask import Flask, g, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from centralita.config import load_settings
from centralita.db import connection, describe_target
from centralita.panel.settings import PanelSettings

log = logging.getLogger("centralita.panel")

__all__ = ["PanelSettings", "create_app"]


def create_app(settings: PanelSettings | None = None, *, env_file: str | Path | None = None) -> Flask:
    """Build the panel; without ``settings`` they are loaded from the environment (and ``env_file``).

    Raises ConfigError naming the variable when a setting is wrong.
    """
    if settings is None:
        settings = load_settings(PanelSettings, env_file=env_file)
    app = Flask(__name__)
    app.config.update(
        CENTRALITA_SETTINGS=settings,
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_NAME="centralita_session",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=settings.session_hours),
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    if settings.proxy_count:
        n = settings.proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)  # type: ignore[method-assign]

    from centralita.panel import admin, api, auth, db, portal
    from centralita.panel.security import csrf_token, load_current_user
    from centralita.panel.timeutil import to_local

    db.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(portal.bp)
    app.register_blueprint(api.bp)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.filters["local"] = to_local

    seeder = _AdminSeeder(settings)

    @app.before_request
    def _before() -> None:
        g.user = None
        if _is_api() or request.endpoint == "static":
            return
        seeder.ensure()
        load_current_user()

    @app.after_request
    def _no_store(response):  # type: ignore[no-untyped-def]
        # Pages show tenant data: never let a shared proxy or the browser's back button keep them.
        if not _is_api() and response.mimetype == "text/html":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        if _is_api():
            return {"error": exc.name, "message": exc.description}, exc.code
        return render_template("error.html", error=exc), exc.code

    @app.errorhandler(pymysql.MySQLError)
    def _db_error(exc: pymysql.MySQLError):  # type: ignore[no-untyped-def]
        log.error("database error on %s %s: %s", request.method, request.path, exc)
        if _is_api():
            return {"error": "Service Unavailable", "message": "the database is not reachable"}, 503
        return render_template("error.html", error=None, message="The database is not reachable right now."), 503

    seeder.ensure()
    return app


def _is_api() -> bool:
    """API requests get JSON errors and no session handling, matched or not (a 404 has no blueprint)."""
    return request.path == "/api/v1" or request.path.startswith("/api/")


class _AdminSeeder:
    """Creates the configured first admin once; retried on later requests while MariaDB is down at start."""

    def __init__(self, settings: PanelSettings) -> None:
        self.settings = settings
        self.done = not (settings.admin_user and settings.admin_password)

    def ensure(self) -> None:
        if self.done:
            return
        from centralita.panel import data
        from centralita.panel.security import hash_password

        try:
            with connection(self.settings) as conn:
                if data.user_by_name(conn, self.settings.admin_user) is None:
                    created = data.create_admin_if_absent(
                        conn, self.settings.admin_user, hash_password(self.settings.admin_password)
                    )
                    if created:
                        log.info("created the first admin user %r", self.settings.admin_user)
        except pymysql.MySQLError as exc:
            log.warning(
                "cannot ensure admin user %r in %s yet: %s",
                self.settings.admin_user,
                describe_target(self.settings),
                exc,
            )
            return
        self.done = True


def app_from_environment() -> Flask:
    """The app as systemd runs it: settings from CENTRALITA_ENV_FILE (if set) and the environment."""
    return create_app(env_file=os.environ.get("CENTRALITA_ENV_FILE"))
