"""Settings of the panel (PANEL_* plus the shared DB_*), read once when the app is built."""

from __future__ import annotations

import dataclasses
import zoneinfo

from centralita.config import ConfigError, setting
from centralita.db import DbSettings


def _secret_key(value: object) -> str | None:
    return None if len(str(value)) >= 32 else "a random string of at least 32 characters"


def _timezone(value: object) -> str | None:
    try:
        zoneinfo.ZoneInfo(str(value))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "an IANA time zone name such as America/Bogota or UTC"
    return None


def _username(value: object) -> str | None:
    text = str(value)
    if text == "" or (len(text) <= 64 and all(c.isalnum() or c in "._-@" for c in text)):
        return None
    return "a user name of letters, digits and . _ - @ (at most 64)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PanelSettings(DbSettings):
    secret_key: str = setting(
        "PANEL_SECRET_KEY", secret=True, check=_secret_key, help="signs session cookies; keep it stable across restarts"
    )
    admin_user: str = setting(
        "PANEL_ADMIN_USER", default="", check=_username, help="first admin, created at start when absent"
    )
    admin_password: str = setting("PANEL_ADMIN_PASSWORD", default="", secret=True)
    timezone: str = setting(
        "PANEL_TIMEZONE", default="UTC", check=_timezone, help="the operator's zone: 'today' and shown times"
    )
    cookie_secure: bool = setting(
        "PANEL_COOKIE_SECURE", default=True, help="send the session cookie over HTTPS only (nginx terminates TLS)"
    )
    session_hours: int = setting("PANEL_SESSION_HOURS", default=8, minimum=1, maximum=24 * 30)
    proxy_count: int = setting(
        "PANEL_PROXY_COUNT",
        default=1,
        minimum=0,
        maximum=5,
        help="reverse proxies in front (nginx = 1); their X-Forwarded-* headers are trusted",
    )

    def __post_init__(self) -> None:

        if bool(self.admin_user) != bool(self.admin_password):
            raise ConfigError(
                "invalid settings:\n  PANEL_ADMIN_USER and PANEL_ADMIN_PASSWORD: expected both set or both empty"
            )
        if self.admin_password and len(self.admin_password) < 10:
            raise ConfigError(
                "invalid settings:\n  PANEL_ADMIN_PASSWORD: expected at least 10 characters, got (hidden)"
            )
