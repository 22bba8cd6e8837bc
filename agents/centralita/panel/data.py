"""Every SQL statement the panel runs, parameterised; views call these functions only.

Functions take an open pymysql connection (dict rows) and never commit on
their own except where a write is the whole point of the call.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pymysql


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    username: str
    password_hash: str
    role: str
    customer_id: int | None
    active: bool


def _user(row: dict[str, Any] | None) -> User | None:
    if row is None:
        return None
    return User(
        id=int(row["id"]),
        username=row["username"],
        password_hash=row["password_hash"],
        role=row["role"],
        customer_id=row["customer_id"],
        active=bool(row["active"]),
    )


_SELECT_USER = "SELECT id, username, password_hash, role, customer_id, active FROM users "


def user_by_name(conn: pymysql.Connection, username: str) -> User | None:
    with conn.cursor() as cur:
        cur.execute(_SELECT_USER + "WHERE username = %s", (username,))
        return _user(cur.fetchone())


def user_by_id(conn: pymysql.Connection, user_id: int) -> User | None:
    with conn.cursor() as cur:
        cur.execute(_SELECT_USER + "WHERE id = %s", (user_id,))
        return _user(cur.fetchone())


def create_admin_if_absent(conn: pymysql.Connection, username: str, password_hash: str) -> bool:
    """Insert the admin unless a user of that name exists; True when it was created.

    INSERT IGNORE on the unique username makes two gunicorn workers starting at
    once safe: one creates the user, the other sees it exists. An existing
    user's password is never overwritten: the operator may have changed it.
    """
    with conn.cursor() as cur:
        cur.execute(
            "INSERT IGNORE INTO users (username, password_hash, role, active) VALUES (%s, %s, 'admin', 1)",
            (username, password_hash),
        )
        created = cur.rowcount == 1
    if created:
        audit(conn, actor="panel", action="admin_seeded", object_type="user", object_id=username)
    return created


def record_login(conn: pymysql.Connection, user: User, ip: str | None) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE users SET last_login_at = NOW(3), last_login_ip = %s, failed_logins = 0 WHERE id = %s",
            (ip, user.id),
        )
    audit(conn, actor=user.username, user_id=user.id, action="login", ip=ip)


def record_failed_login(conn: pymysql.Connection, username: str, user: User | None, ip: str | None) -> None:
    if user is not None:
        with conn.cursor() as cur:
            cur.execute("UPDATE users SET failed_logins = failed_logins + 1 WHERE id = %s", (user.id,))
    audit(
        conn,
        actor=username[:100],
        user_id=user.id if user else None,
        action="login_failed",
        ip=ip,
    )


def audit(
    conn: pymysql.Connection,
    *,
    actor: str,
    action: str,
    user_id: int | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    details: dict[str, Any] | None = None,
    ip: str | None = None,
) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO audit_log (user_id, actor, action, object_type, object_id, details, ip) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (user_id, actor, action, object_type, object_id, json.dumps(details) if details else None, ip),
        )


@dataclasses.dataclass(frozen=True)
class DashboardCounts:
    customers: int
    active_customers: int
    carriers: int
    carriers_up: int
    cdrs_today: int
    answered_today: int
    open_events: int
    critical_events: int


def admin_dashboard(conn: pymysql.Connection, day_start_utc: dt.datetime, day_end_utc: dt.datetime) -> DashboardCounts:
    """System-wide counts; ``today`` is the operator's day given as a UTC range."""
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) AS n, COALESCE(SUM(active), 0) AS active FROM customers")
        customers = cur.fetchone()
        cur.execute("SELECT COUNT(*) AS n, COALESCE(SUM(enabled = 1 AND state = 'up'), 0) AS up FROM carriers")
        carriers = cur.fetchone()
        cur.execute(
            "SELECT COUNT(*) AS n, COALESCE(SUM(disposition = 'answered'), 0) AS answered FROM sbc_cdrs "
            "WHERE invite_at >= %s AND invite_at < %s",
            (day_start_utc, day_end_utc),
        )
        cdrs = cur.fetchone()
        cur.execute(
            "SELECT COUNT(*) AS n, COALESCE(SUM(severity = 'critical'), 0) AS critical FROM events "
            "WHERE acknowledged_at IS NULL"
        )
        events = cur.fetchone()
    return DashboardCounts(
        customers=int(customers["n"]),
        active_customers=int(customers["active"]),
        carriers=int(carriers["n"]),
        carriers_up=int(carriers["up"]),
        cdrs_today=int(cdrs["n"]),
        answered_today=int(cdrs["answered"]),
        open_events=int(events["n"]),
        critical_events=int(events["critical"]),
    )


def recent_events(conn: pymysql.Connection, limit: int = 10, customer_id: int | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT e.id, e.type, e.severity, e.message, e.created_at, c.name AS customer "
        "FROM events e LEFT JOIN customers c ON c.id = e.customer_id "
    )
    params: tuple[Any, ...] = ()
    if customer_id is not None:
        sql += "WHERE e.customer_id = %s "
        params = (customer_id,)
    sql += "ORDER BY e.created_at DESC, e.id DESC LIMIT %s"
    with conn.cursor() as cur:
        cur.execute(sql, (*params, limit))
        return list(cur.fetchall())


@dataclasses.dataclass(frozen=True)
class CustomerSummary:
    name: str
    max_cps: int
    max_channels: int
    monthly_minutes_limit: int | None
    minutes_used: float
    cdrs_today: int
    answered_today: int
    open_events: int


def customer_dashboard(
    conn: pymysql.Connection, customer_id: int, day_start_utc: dt.datetime, day_end_utc: dt.datetime
) -> CustomerSummary | None:
    """The portal's view: only rows of ``customer_id`` are ever read."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT name, max_cps, max_channels, monthly_minutes_limit, minutes_used FROM customers WHERE id = %s",
            (customer_id,),
        )
        customer = cur.fetchone()
        if customer is None:
            return None
        cur.execute(
            "SELECT COUNT(*) AS n, COALESCE(SUM(disposition = 'answered'), 0) AS answered FROM sbc_cdrs "
            "WHERE customer_id = %s AND invite_at >= %s AND invite_at < %s",
            (customer_id, day_start_utc, day_end_utc),
        )
        cdrs = cur.fetchone()
        cur.execute(
            "SELECT COUNT(*) AS n FROM events WHERE customer_id = %s AND acknowledged_at IS NULL", (customer_id,)
        )
        events = cur.fetchone()
    return CustomerSummary(
        name=customer["name"],
        max_cps=int(customer["max_cps"]),
        max_channels=int(customer["max_channels"]),
        monthly_minutes_limit=customer["monthly_minutes_limit"],
        minutes_used=float(customer["minutes_used"]),
        cdrs_today=int(cdrs["n"]),
        answered_today=int(cdrs["answered"]),
        open_events=int(events["n"]),
    )
