"""Settings of ``python -m centralita.worker`` (WORKER_* plus the shared DB_*)."""

from __future__ import annotations

import dataclasses

from centralita.config import port, setting
from centralita.db import DbSettings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _metrics_port(value: object) -> str | None:
    return None if value == 0 else port(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerSettings(DbSettings):
    poll_seconds: float = setting(
        "WORKER_POLL_SECONDS", default=5.0, minimum=0.2, maximum=3600, help="seconds between two polls of events"
    )
    pending_after_seconds: float = setting(
        "WORKER_PENDING_AFTER_SECONDS",
        default=2.0,
        minimum=0,
        maximum=86400,
        help="age an undelivered event must reach before it is queued, so bursts from one incident settle first",
    )
    batch_size: int = setting(
        "WORKER_BATCH_SIZE", default=500, minimum=1, maximum=100000, help="most events queued by one poll"
    )
    log_level: str = setting("WORKER_LOG_LEVEL", default="INFO", choices=LOG_LEVELS)
    metrics_host: str = setting("WORKER_METRICS_HOST", default="127.0.0.1")
    metrics_port: int = setting(
        "WORKER_METRICS_PORT", default=9471, check=_metrics_port, help="Prometheus port; 0 turns metrics off"
    )
