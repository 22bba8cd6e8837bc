"""Login and logout, shared by administrators and customers."""

from __future__ import annotations

import logging

from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from centralita.panel import data
from centralita.panel.db import get_db
from centralita.panel.security import check_csrf, client_ip, start_session, verify_login

bp = Blueprint("auth", __name__)
log = logging.getLogger("centralita.panel.auth")


def _home_for(user: data.User) -> str:
    return url_for("admin.dashboard") if user.role == "admin" else url_for("portal.dashboard")


def _safe_next(target: str | None) -> str | None:
    """Only same-site paths: an attacker's link must not turn the login page into a redirector."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


@bp.get("/")
def index() -> Response:
    if g.user is None:
        return redirect(url_for("auth.login"))
    return redirect(_home_for(g.user))


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    if request.method == "GET":
        if g.user is not None:
            return redirect(_home_for(g.user))
        return render_template("login.html", next=_safe_next(request.args.get("next")))
    check_csrf()
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    user = verify_login(username, password) if username and password else None
    conn = get_db()
    if user is None:
        # fail2ban's panel jail matches this line: keep its wording and the address last.
        log.warning("login failed for user %r from %s", username[:64], client_ip())
        data.record_failed_login(conn, username, data.user_by_name(conn, username) if username else None, client_ip())
        flash("Wrong user name or password.", "error")
        return render_template("login.html", next=_safe_next(request.form.get("next")), username=username), 401
    start_session(user)
    data.record_login(conn, user, client_ip())
    log.info("login of %s (%s) from %s", user.username, user.role, client_ip())
    return redirect(_safe_next(request.form.get("next")) or _home_for(user))


@bp.post("/logout")
def logout() -> Response:
    check_csrf()
    if g.user is not None:
        data.audit(get_db(), actor=g.user.username, user_id=g.user.id, action="logout", ip=client_ip())
    session.clear()
    return redirect(url_for("auth.login"))
