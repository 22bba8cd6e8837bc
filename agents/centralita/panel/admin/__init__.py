"""The operator's pages (role admin)."""

from __future__ import annotations

from flask import Blueprint, render_template

from centralita.panel import data
from centralita.panel.db import get_db
from centralita.panel.security import role_required
from centralita.panel.timeutil import today_range_utc

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/")
@role_required("admin")
def dashboard() -> str:
    start, end = today_range_utc()
    conn = get_db()
    counts = data.admin_dashboard(conn, start, end)
    events = data.recent_events(conn, limit=10)
    return render_template("admin/dashboard.html", counts=counts, events=events)
