# ruff: noqa: RUF009 - setting() builds the dataclass field, as config.setting is designed to
"""The connector's settings, read from /etc/centralita/connector.env.

The first names are seed 003's, unchanged, so an operator's existing ``.env``
keeps working; the rest are Centralita's additions (spool, back-fill, region
URLs, the MariaDB sink).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from centralita.config import ConfigError, port, setting, url

REGIONS = ("ca1", "us1", "us2")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _extensions(value: Any) -> str | None:
    bad = [v for v in value if not v.startswith(".") or len(v) < 2]
    return f"extensions that start with a dot (.wav), not {', '.join(bad)}" if bad else None


def _optional_url(value: Any) -> str | None:
    return None if not value else url(value)


@dataclass(frozen=True, kw_only=True)
class ConnectorSettings:
    # Seed 003: core
    api_key: str = setting("API_KEY", default="", secret=True, help="the CDR API key (sk_...)")
    ami_host: str = setting("AMI_HOST", help="Asterisk's AMI address")
    ami_username: str = setting("AMI_USERNAME", help="the [user] section of manager.conf")
    ami_password: str = setting("AMI_PASSWORD", secret=True, help="that user's secret")
    region: str = setting("REGION", default="us1", choices=REGIONS)
    ami_port: int = setting("AMI_PORT", default=5038, check=port)
    log_level: str = setting("LOG_LEVEL", default="INFO", choices=LOG_LEVELS)
    # Seed 003: CDR processing
    cdr_mode: str = setting("CDR_MODE", default="batch", choices=("batch", "direct"))
    cdr_batch_size: int = setting("CDR_BATCH_SIZE", default=100, minimum=1, maximum=10000)
    cdr_batch_timeout: float = setting("CDR_BATCH_TIMEOUT", default=30.0, minimum=0.01)
    cdr_batch_force_timeout: float = setting("CDR_BATCH_FORCE_TIMEOUT", default=5.0, minimum=0.01)
    cdr_max_concurrent: int = setting("CDR_MAX_CONCURRENT", default=10, minimum=1, maximum=200)
    # batch mode: batches posted at once (the next is read from the spool while one is on the wire)
    cdr_batch_in_flight: int = setting("CDR_BATCH_IN_FLIGHT", default=4, minimum=1, maximum=32)
    # Seed 003: filtering
    cdr_filter_enabled: bool = setting("CDR_FILTER_ENABLED", default=True)
    cdr_filter_queue_attempts: bool = setting("CDR_FILTER_QUEUE_ATTEMPTS", default=False)
    cdr_filter_zero_duration: bool = setting("CDR_FILTER_ZERO_DURATION", default=False)
    cdr_filter_internal_only: bool = setting("CDR_FILTER_INTERNAL_ONLY", default=False)
    cdr_filter_min_duration: int = setting("CDR_FILTER_MIN_DURATION", default=0, minimum=0)
    cdr_filter_exclude_dst: list[str] = setting("CDR_FILTER_EXCLUDE_DST", default=["h"])
    cdr_filter_internal_pattern: str = setting("CDR_FILTER_INTERNAL_PATTERN", default=r"^\d{2,6}$")
    # Seed 003: monitoring
    monitoring_enabled: bool = setting("MONITORING_ENABLED", default=True)
    monitoring_port: int = setting("MONITORING_PORT", default=8000, check=port)
    monitoring_host: str = setting("MONITORING_HOST", default="127.0.0.1")
    # Seed 003: recordings
    recording_watcher_enabled: bool = setting("RECORDING_WATCHER_ENABLED", default=False)
    recording_watch_paths: list[Path] = setting("RECORDING_WATCH_PATHS", default=[Path("/var/spool/asterisk/monitor")])
    recording_file_extensions: list[str] = setting(
        "RECORDING_FILE_EXTENSIONS", default=[".wav", ".mp3", ".gsm"], check=_extensions
    )
    recording_min_file_size: int = setting("RECORDING_MIN_FILE_SIZE", default=1024, minimum=0)
    recording_stabilization_time: float = setting("RECORDING_STABILIZATION_TIME", default=2.0, minimum=0)
    recording_process_existing: bool = setting("RECORDING_PROCESS_EXISTING", default=False)
    recording_delete_after_upload: bool = setting("RECORDING_DELETE_AFTER_UPLOAD", default=False)
    recording_include_patterns: list[str] = setting("RECORDING_INCLUDE_PATTERNS", default=[])
    recording_exclude_patterns: list[str] = setting("RECORDING_EXCLUDE_PATTERNS", default=[])
    recording_min_duration: float = setting("RECORDING_MIN_DURATION", default=0.0, minimum=0)
    recording_max_age_hours: float = setting("RECORDING_MAX_AGE_HOURS", default=24.0, minimum=0)
    recording_cdr_wait: float = setting(
        "RECORDING_CDR_WAIT", default=60.0, minimum=0, help="seconds a stable file waits for its call's CDR"
    )
    # Centralita: the HTTP API
    cdr_api_enabled: bool = setting("CDR_API_ENABLED", default=True)
    cdr_api_base_url: str = setting("CDR_API_BASE_URL", default="", check=_optional_url)
    cdr_api_url_ca1: str = setting("CDR_API_URL_CA1", default="https://api-ca1.sipstack.com/v1", check=url)
    cdr_api_url_us1: str = setting("CDR_API_URL_US1", default="https://api-us1.sipstack.com/v1", check=url)
    cdr_api_url_us2: str = setting("CDR_API_URL_US2", default="https://api-us2.sipstack.com/v1", check=url)
    api_timeout: float = setting("API_TIMEOUT", default=10.0, minimum=0.1)
    api_retry_max_delay: float = setting("API_RETRY_MAX_DELAY", default=60.0, minimum=0.1)
    # Centralita: spool, times, back-fill, AMI liveness
    cdr_spool_dir: Path = setting("CDR_SPOOL_DIR", default=Path("/var/lib/centralita/connector"))
    cdr_spool_retention_days: float = setting("CDR_SPOOL_RETENTION_DAYS", default=7.0, minimum=0)
    cdr_spool_min_free_mb: int = setting("CDR_SPOOL_MIN_FREE_MB", default=200, minimum=0)
    cdr_timezone: str = setting("CDR_TIMEZONE", default="", help="tz name of Asterisk's clock; empty: the host's")
    cdr_backfill_enabled: bool = setting("CDR_BACKFILL_ENABLED", default=True)
    cdr_backfill_path: Path = setting("CDR_BACKFILL_PATH", default=Path("/var/log/asterisk/cdr-custom/centralita.csv"))
    cdr_backfill_max_age_hours: float = setting("CDR_BACKFILL_MAX_AGE_HOURS", default=24.0, minimum=0)
    cdr_backfill_interval: float = setting("CDR_BACKFILL_INTERVAL", default=60.0, minimum=1)
    ami_ping_interval: float = setting("AMI_PING_INTERVAL", default=10.0, minimum=0.1)
    ami_ping_timeout: float = setting("AMI_PING_TIMEOUT", default=5.0, minimum=0.1)
    asterisk_binary: str = setting("ASTERISK_BINARY", default="asterisk")
    # Centralita: the panel's CDR store (MariaDB)
    db_enabled: bool = setting("DB_ENABLED", default=False)
    db_host: str = setting("DB_HOST", default="127.0.0.1")
    db_port: int = setting("DB_PORT", default=3306, check=port)
    db_socket: str = setting("DB_SOCKET", default="")
    db_name: str = setting("DB_NAME", default="centralita")
    db_user: str = setting("DB_USER", default="connector")
    db_password: str = setting("DB_PASSWORD", default="", secret=True)

    def __post_init__(self) -> None:
        if self.cdr_api_enabled and not self.api_key:
            raise ConfigError("invalid settings:\n  API_KEY: required while CDR_API_ENABLED is true")

    @property
    def api_base_url(self) -> str:
        """CDR_API_BASE_URL when set (a private receiver, the lab's stand-in), else the region's URL."""
        if self.cdr_api_base_url:
            return self.cdr_api_base_url.rstrip("/")
        return str(getattr(self, f"cdr_api_url_{self.region}")).rstrip("/")
