"""Panel settings, the operator's 'today', and what the app does before it touches the database."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from centralita.config import ConfigError, load_settings
from centralita.panel import create_app
from centralita.panel.auth import _safe_next
from centralita.panel.settings import PanelSettings
from centralita.panel.timeutil import today_range_utc

GOOD = {"DB_USER": "centralita_panel", "DB_SOCKET": "/nonexistent/mysqld.sock", "PANEL_SECRET_KEY": "s" * 40}


def _load(**overrides: str) -> PanelSettings:
    return load_settings(PanelSettings, environ={**GOOD, **overrides})


def test_defaults_are_secure_cookies_utc_and_one_proxy() -> None:
    settings = _load()
    assert settings.cookie_secure is True
    assert settings.timezone == "UTC"
    assert settings.proxy_count == 1
    assert settings.admin_user == ""


def test_missing_secret_key_is_named() -> None:
    environ = {k: v for k, v in GOOD.items() if k != "PANEL_SECRET_KEY"}
    with pytest.raises(ConfigError, match="PANEL_SECRET_KEY: required setting is missing"):
        load_settings(PanelSettings, environ=environ)


def test_short_secret_key_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        _load(PANEL_SECRET_KEY="tooshort")
    assert "PANEL_SECRET_KEY: expected a random string of at least 32 characters, got (hidden)" in str(caught.value)
    assert "tooshort" not in str(caught.value)


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ConfigError, match="PANEL_TIMEZONE: expected an IANA time zone name"):
        _load(PANEL_TIMEZONE="Mars/Olympus")


def test_admin_user_needs_a_password_and_the_other_way_round() -> None:
    with pytest.raises(ConfigError, match="PANEL_ADMIN_USER and PANEL_ADMIN_PASSWORD: expected both set or both empty"):
        _load(PANEL_ADMIN_USER="admin")
    with pytest.raises(ConfigError, match="expected both set or both empty"):
        _load(PANEL_ADMIN_PASSWORD="long enough password")


def test_short_admin_password_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        _load(PANEL_ADMIN_USER="admin", PANEL_ADMIN_PASSWORD="short")
    assert "PANEL_ADMIN_PASSWORD: expected at least 10 characters" in str(caught.value)
    assert "short" not in str(caught.value).replace("expected", "")


def test_today_in_bogota_is_a_utc_range_shifted_by_five_hours() -> None:
    # 02:00 UTC on the 10th is still the 9th in Bogota (UTC-5).
    now = dt.datetime(2026, 3, 10, 2, 0, tzinfo=dt.UTC)
    start, end = today_range_utc(now, zone="America/Bogota")
    assert (start, end) == (dt.datetime(2026, 3, 9, 5, 0), dt.datetime(2026, 3, 10, 5, 0))


def test_today_spans_23_hours_on_a_spring_forward_day() -> None:
    now = dt.datetime(2026, 3, 29, 12, 0, tzinfo=dt.UTC)
    start, end = today_range_utc(now, zone="Europe/Madrid")
    assert end - start == dt.timedelta(hours=23)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/admin/", "/admin/"),
        ("//evil.example/x", None),
        ("https://evil.example/", None),
        ("/\\evil.example", None),
        ("", None),
        (None, None),
    ],
)
def test_login_only_follows_same_site_paths(target: str | None, expected: str | None) -> None:
    assert _safe_next(target) == expected


def test_login_page_carries_a_csrf_token_and_a_post_without_it_is_refused_before_any_query() -> None:
    # The database socket does not exist: anything below that reached MariaDB would fail with 503.
    client = create_app(_load()).test_client()
    page = client.get("/login", base_url="https://panel.test")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert re.search(r'name="csrf_token" value="[A-Za-z0-9_-]{40,}"', html)
    assert page.headers["Cache-Control"] == "no-store"
    refused = client.post("/login", data={"username": "a", "password": "b"}, base_url="https://panel.test")
    assert refused.status_code == 400


def test_api_errors_are_json() -> None:
    client = create_app(_load()).test_client()
    response = client.get("/api/v1/no-such-thing", base_url="https://panel.test")
    assert response.status_code == 404
    assert response.get_json()["error"] == "Not Found"


def test_session_cookie_is_marked_insecure_only_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(_load(PANEL_COOKIE_SECURE="false"))
    assert app.config["SESSION_COOKIE_SECURE"] is False
    assert create_app(_load()).config["SESSION_COOKIE_SECURE"] is True
