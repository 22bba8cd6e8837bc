"""Settings of ``python -m centralita.collections`` (COLLECTIONS_* plus the shared DB_*)."""

from __future__ import annotations

import dataclasses

from centralita.config import ConfigError, port, setting, url
from centralita.db import DbSettings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _http_url(value: object) -> str | None:
    problem = url(value)
    if problem is None and not str(value).startswith(("http://", "https://")):
        problem = "an http(s):// URL of Asterisk's HTTP server, e.g. http://127.0.0.1:8088"
    return problem


def _metrics_port(value: object) -> str | None:
    return None if value == 0 else port(value)


def _app_name(value: object) -> str | None:
    text = str(value)
    ok = text and len(text) <= 80 and all(c.isalnum() or c in "-_." for c in text)
    return None if ok else "a Stasis application name (letters, digits, - _ .)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CollectionsSettings(DbSettings):
    ari_url: str = setting(
        "COLLECTIONS_ARI_URL",
        default="http://127.0.0.1:8088",
        check=_http_url,
        help="Asterisk's HTTP server; /ari is appended",
    )
    ari_user: str = setting("COLLECTIONS_ARI_USER", help="ARI user from ari.conf")
    ari_password: str = setting("COLLECTIONS_ARI_PASSWORD", secret=True)
    ari_app: str = setting("COLLECTIONS_ARI_APP", default="centralita-collections", check=_app_name)
    request_timeout_seconds: float = setting(
        "COLLECTIONS_REQUEST_TIMEOUT_SECONDS", default=5.0, minimum=0.5, maximum=60, help="ARI REST and connect timeout"
    )
    reconnect_min_seconds: float = setting("COLLECTIONS_RECONNECT_MIN_SECONDS", default=1.0, minimum=0.1, maximum=60)
    reconnect_max_seconds: float = setting("COLLECTIONS_RECONNECT_MAX_SECONDS", default=30.0, minimum=0.5, maximum=600)
    log_level: str = setting("COLLECTIONS_LOG_LEVEL", default="INFO", choices=LOG_LEVELS)
    metrics_host: str = setting("COLLECTIONS_METRICS_HOST", default="127.0.0.1")
    metrics_port: int = setting(
        "COLLECTIONS_METRICS_PORT", default=9472, check=_metrics_port, help="Prometheus port; 0 turns metrics off"
    )

    def __post_init__(self) -> None:
        if self.reconnect_min_seconds > self.reconnect_max_seconds:
            raise ConfigError(
                "invalid settings:\n  COLLECTIONS_RECONNECT_MIN_SECONDS: expected a value <= "
                f"COLLECTIONS_RECONNECT_MAX_SECONDS ({self.reconnect_max_seconds}), got {self.reconnect_min_seconds}"
            )
