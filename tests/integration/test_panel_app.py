"""The panel through Flask's test client, against the real MariaDB server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator

import pymysql
import pytest
from centralita.db import DbSettings, connect
from centralita.db.migrate import discover, upgrade
from centralita.panel import create_app
from centralita.panel.settings import PanelSettings
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import check_password_hash, generate_password_hash

ADMIN = "operator"
ADMIN_PASSWORD = "correct horse battery"
SECRET = "k" * 48
HTTPS = "https://panel.test"


@pytest.fixture(scope="module")
def panel_db(mariadb_server) -> Iterator[DbSettings]:
    """A migrated database of the module's own: dashboard counts must not see other tests' rows."""
    name = mariadb_server.create_database("panel")
    settings = mariadb_server.root_settings(name)
    with connect(settings) as conn:
        upgrade(conn, discover())
    yield settings
    mariadb_server.drop_database(name)


def _settings(db: DbSettings, **overrides: object) -> PanelSettings:
    values = {f.name: getattr(db, f.name) for f in dataclasses.fields(DbSettings)}
    values.update(
        secret_key=SECRET,
        admin_user=ADMIN,
        admin_password=ADMIN_PASSWORD,
        timezone="America/Bogota",
        proxy_count=0,
    )
    values.update(overrides)
    return PanelSettings(**values)


@pytest.fixture(scope="module")
def app(panel_db: DbSettings) -> Flask:
    application = create_app(_settings(panel_db))
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def conn(panel_db: DbSettings) -> Iterator[pymysql.Connection]:
    connection = connect(panel_db)
    yield connection
    connection.close()


def _csrf(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path, base_url=HTTPS)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert match, page.get_data(as_text=True)
    return match.group(1)


def _login(client: FlaskClient, username: str, password: str, **extra: str):
    token = _csrf(client)
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, **extra},
        base_url=HTTPS,
    )


def _card(html: str, card_id: str) -> str:
    match = re.search(rf'id="{card_id}"><span class="value">([^<]*)</span>', html)
    assert match, f"card {card_id} not on the page"
    return match.group(1)


def test_first_admin_is_created_with_a_password_hash(conn: pymysql.Connection, app: Flask) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT password_hash, role, active FROM users WHERE username = %s", (ADMIN,))
        row = cur.fetchone()
    assert row["role"] == "admin" and row["active"] == 1
    assert ADMIN_PASSWORD not in row["password_hash"]
    assert row["password_hash"].startswith(("scrypt:", "pbkdf2:"))
    assert check_password_hash(row["password_hash"], ADMIN_PASSWORD)


def test_restart_never_overwrites_an_admin_password_changed_in_the_panel(
    conn: pymysql.Connection, panel_db: DbSettings
) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT password_hash FROM users WHERE username = %s", (ADMIN,))
        original = cur.fetchone()["password_hash"]
        cur.execute(
            "UPDATE users SET password_hash = %s WHERE username = %s",
            (generate_password_hash("changed by the operator"), ADMIN),
        )
    try:
        create_app(_settings(panel_db))
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) AS n FROM users WHERE username = %s", (ADMIN,))
            assert cur.fetchone()["n"] == 1
            cur.execute("SELECT password_hash FROM users WHERE username = %s", (ADMIN,))
            assert check_password_hash(cur.fetchone()["password_hash"], "changed by the operator")
    finally:
        with conn.cursor() as cur:
            cur.execute("UPDATE users SET password_hash = %s WHERE username = %s", (original, ADMIN))


def test_login_with_the_seeded_admin_opens_the_dashboard(client: FlaskClient) -> None:
    response = _login(client, ADMIN, ADMIN_PASSWORD)
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/admin/")
    cookie = response.headers["Set-Cookie"]
    assert "centralita_session=" in cookie
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/admin/", base_url=HTTPS)
    assert page.status_code == 200
    assert "<h1>Dashboard</h1>" in page.get_data(as_text=True)


def test_login_form_without_the_csrf_token_is_refused(client: FlaskClient) -> None:
    client.get("/login", base_url=HTTPS)
    response = client.post("/login", data={"username": ADMIN, "password": ADMIN_PASSWORD}, base_url=HTTPS)
    assert response.status_code == 400
    assert client.get("/admin/", base_url=HTTPS).status_code == 302


def test_wrong_password_is_refused_logged_and_audited(
    client: FlaskClient, conn: pymysql.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    response = _login(client, ADMIN, "not the password")
    assert response.status_code == 401
    assert "Wrong user name or password." in response.get_data(as_text=True)
    assert "login failed for user 'operator' from" in caplog.text
    with conn.cursor() as cur:
        cur.execute("SELECT actor, action FROM audit_log WHERE action = 'login_failed' ORDER BY id DESC LIMIT 1")
        assert cur.fetchone() == {"actor": ADMIN, "action": "login_failed"}
        cur.execute("SELECT failed_logins FROM users WHERE username = %s", (ADMIN,))
        assert cur.fetchone()["failed_logins"] >= 1


def test_unknown_user_gets_the_same_answer_as_a_wrong_password(client: FlaskClient) -> None:
    response = _login(client, "nobody-here", "whatever")
    assert response.status_code == 401
    assert "Wrong user name or password." in response.get_data(as_text=True)


def test_pages_need_a_login_and_keep_the_wanted_page(client: FlaskClient) -> None:
    response = client.get("/admin/", base_url=HTTPS)
    assert response.status_code == 302
    assert "/login?next=/admin/" in response.headers["Location"]


def test_login_never_redirects_off_site(client: FlaskClient) -> None:
    response = _login(client, ADMIN, ADMIN_PASSWORD, next="//evil.example/steal")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/admin/")


def test_logout_ends_the_session_and_needs_the_token(client: FlaskClient) -> None:
    _login(client, ADMIN, ADMIN_PASSWORD)
    assert client.post("/logout", data={}, base_url=HTTPS).status_code == 400
    token = _csrf(client, "/admin/")
    assert client.post("/logout", data={"csrf_token": token}, base_url=HTTPS).status_code == 302
    assert client.get("/admin/", base_url=HTTPS).status_code == 302


def test_dashboard_counts_customers_carriers_todays_cdrs_and_open_events(
    client: FlaskClient, conn: pymysql.Connection
) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO customers (name) VALUES ('Dash A'), ('Dash B')")
        cur.execute("SELECT id FROM customers WHERE name = 'Dash A'")
        customer = cur.fetchone()["id"]
        cur.execute("INSERT INTO carriers (name, host, state) VALUES ('Dash C1', '10.213.5.1', 'up')")
        cur.execute(
            "INSERT INTO sbc_cdrs (call_id, customer_id, source_ip, callee_original, sip_code, disposition, invite_at)"
            " VALUES ('dash-1', %s, '10.213.5.9', '573001', 200, 'answered', %s),"
            " ('dash-2', %s, '10.213.5.9', '573002', 486, 'busy', %s),"
            " ('dash-old', %s, '10.213.5.9', '573003', 200, 'answered', %s)",
            (customer, now, customer, now, customer, now - dt.timedelta(days=3)),
        )
        cur.execute(
            "INSERT INTO events (type, severity, customer_id, message) VALUES "
            "('carrier_down', 'critical', NULL, 'Dash C1 down'), ('cps_exceeded', 'warning', %s, 'cps 12 > 10')",
            (customer,),
        )
        cur.execute("INSERT INTO events (type, severity, acknowledged_at) VALUES ('carrier_recovered', 'info', NOW(3))")
    try:
        _login(client, ADMIN, ADMIN_PASSWORD)
        html = client.get("/admin/", base_url=HTTPS).get_data(as_text=True)
        assert _card(html, "customers") == "2"
        assert _card(html, "carriers") == "1"
        assert _card(html, "cdrs-today") == "2"
        assert _card(html, "open-events") == "2"
        assert "1 críticas" in html
        assert "Dash C1 down" in html
    finally:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM events")
            cur.execute("DELETE FROM sbc_cdrs WHERE call_id LIKE 'dash-%'")
            cur.execute("DELETE FROM carriers WHERE name = 'Dash C1'")
            cur.execute("DELETE FROM customers WHERE name IN ('Dash A', 'Dash B')")


def test_customer_user_sees_only_its_own_portal(client: FlaskClient, conn: pymysql.Connection) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO customers (name, monthly_minutes_limit, minutes_used) VALUES ('Mine', 1000, 12.5)")
        mine = cur.lastrowid
        cur.execute("INSERT INTO customers (name) VALUES ('Theirs')")
        theirs = cur.lastrowid
        cur.execute(
            "INSERT INTO users (username, password_hash, role, customer_id) VALUES ('mine-user', %s, 'customer', %s)",
            (generate_password_hash("portal password"), mine),
        )
        cur.execute(
            "INSERT INTO sbc_cdrs (call_id, customer_id, source_ip, callee_original, sip_code, disposition, invite_at)"
            " VALUES ('p-1', %s, '10.213.6.1', '5711', 200, 'answered', %s),"
            " ('p-2', %s, '10.213.6.2', '5712', 200, 'answered', %s),"
            " ('p-3', %s, '10.213.6.2', '5713', 200, 'answered', %s)",
            (mine, now, theirs, now, theirs, now),
        )
    try:
        response = _login(client, "mine-user", "portal password")
        assert response.headers["Location"].endswith("/portal/")
        assert client.get("/admin/", base_url=HTTPS).status_code == 403
        html = client.get("/portal/", base_url=HTTPS).get_data(as_text=True)
        assert "<h1>Mine</h1>" in html
        assert _card(html, "cdrs-today") == "1"
        assert "de 1000" in html
        assert "Theirs" not in html
    finally:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM sbc_cdrs WHERE call_id LIKE 'p-%'")
            cur.execute("DELETE FROM customers WHERE id IN (%s, %s)", (mine, theirs))


def test_disabling_a_user_ends_their_session_at_the_next_request(client: FlaskClient, conn: pymysql.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO users (username, password_hash, role) VALUES ('second-admin', %s, 'admin')",
            (generate_password_hash("second admin pw"),),
        )
        user_id = cur.lastrowid
    try:
        _login(client, "second-admin", "second admin pw")
        assert client.get("/admin/", base_url=HTTPS).status_code == 200
        with conn.cursor() as cur:
            cur.execute("UPDATE users SET active = 0 WHERE id = %s", (user_id,))
        assert client.get("/admin/", base_url=HTTPS).status_code == 302
    finally:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM users WHERE id = %s", (user_id,))


def test_health_reports_database_reachable_and_schema_version(client: FlaskClient) -> None:
    response = client.get("/api/v1/health", base_url=HTTPS)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["database"] == {"reachable": True, "schema_version": discover()[-1].version}


def test_health_is_503_with_the_reason_when_the_database_is_down(panel_db: DbSettings, tmp_path) -> None:
    down = _settings(panel_db, db_socket=str(tmp_path / "gone.sock"), admin_user="", admin_password="")
    response = create_app(down).test_client().get("/api/v1/health", base_url=HTTPS)
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["database"]["reachable"] is False
    assert "Can't connect" in body["database"]["error"]


def test_health_says_no_schema_before_the_first_upgrade(fresh_db: DbSettings) -> None:
    app = create_app(_settings(fresh_db, admin_user="", admin_password=""))
    response = app.test_client().get("/api/v1/health", base_url=HTTPS)
    assert response.status_code == 503
    assert response.get_json()["status"] == "no_schema"
    assert response.get_json()["database"] == {"reachable": True, "schema_version": None}


def test_panel_starts_while_the_database_is_down_and_seeds_the_admin_once_it_is_up(
    mariadb_server, panel_db: DbSettings
) -> None:
    name = mariadb_server.create_database("late")
    late = mariadb_server.root_settings(name)
    try:
        app = create_app(_settings(late, admin_user="late-admin"))  # no tables yet: seeding must wait
        client = app.test_client()
        with connect(late) as conn:
            upgrade(conn, discover())
        assert client.get("/login", base_url=HTTPS).status_code == 200
        with connect(late) as conn, conn.cursor() as cur:
            cur.execute("SELECT role FROM users WHERE username = 'late-admin'")
            assert cur.fetchone() == {"role": "admin"}
    finally:
        mariadb_server.drop_database(name)


def test_pages_turn_a_lost_database_into_a_503_page(panel_db: DbSettings, tmp_path) -> None:
    down = _settings(panel_db, db_socket=str(tmp_path / "gone.sock"), admin_user="", admin_password="")
    client = create_app(down).test_client()
    assert client.get("/login", base_url=HTTPS).status_code == 200  # the form itself needs no database
    response = _login(client, "someone", "something")
    assert response.status_code == 503
    assert "Servicio no disponible" in response.get_data(as_text=True)
