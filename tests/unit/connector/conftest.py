"""Shared pieces for the connector tests: settings pointing at the stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest
from centralita.config import load_settings
from centralita.connector.settings import ConnectorSettings


def make_settings(tmp_path: Path, ami_port: int, api_url: str, **extra: str) -> ConnectorSettings:
    env = {
        "API_KEY": "sk_test",
        "AMI_HOST": "127.0.0.1",
        "AMI_PORT": str(ami_port),
        "AMI_USERNAME": "connector",
        "AMI_PASSWORD": "secret",
        "CDR_API_BASE_URL": api_url,
        "CDR_SPOOL_DIR": str(tmp_path / "spool"),
        "CDR_BACKFILL_PATH": str(tmp_path / "cdr-custom" / "centralita.csv"),
        "CDR_TIMEZONE": "America/Bogota",
        "CDR_BATCH_SIZE": "100",
        "CDR_BATCH_TIMEOUT": "0.5",
        "CDR_BATCH_FORCE_TIMEOUT": "0.2",
        "MONITORING_ENABLED": "false",
        "AMI_PING_INTERVAL": "0.5",
        "AMI_PING_TIMEOUT": "0.5",
        "API_RETRY_MAX_DELAY": "0.5",
        "CDR_BACKFILL_INTERVAL": "1",
    }
    env.update(extra)
    return load_settings(ConnectorSettings, environ=env)


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    path = tmp_path / "cdr-custom" / "centralita.csv"
    path.parent.mkdir(parents=True)
    return path


@pytest.fixture
def settings_factory():
    """Build ConnectorSettings aimed at the stand-ins (a function: ports are known only later)."""
    return make_settings
