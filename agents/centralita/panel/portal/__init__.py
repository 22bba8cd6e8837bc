"""The customer portal (role customer): every query is scoped to the user's own customer."""

from __future__ import annotations

from flask import Blueprint, abort, g, render_template

from centralita.panel import data
from centralita.panel.db import get_db
from centralita.panel.security import role_required
from centralita.panel.timeutil import today_range_utc

bp = Blueprint("portal", __name__, url_prefix="/portal")


@bp.get("/")
@role_required("customer")
def dashboard() -> str:
    customer_id = g.user.customer_id
    if customer_id is None:
        abort(403)
    start, end = today_range_utc()
    conn = get_db()
    summary = data.customer_dashboard(conn, customer_id, start, end)
    if summary is None:
        abort(404)
    events = data.recent_events(conn, limit=10, customer_id=customer_id)
    return render_template("portal/dashboard.html", summary=summary, events=events)
