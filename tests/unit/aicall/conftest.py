"""Fixtures of the AI call tests (helpers live in aicall_harness)."""

from __future__ import annotations

from typing import Any

import pytest
from aicall_harness import SERVER_EVENTS


@pytest.fixture
def validate_server_events():
    """Check events the stand-in sent against the openai package's server event models."""

    def check(events: list[dict[str, Any]]) -> None:
        for event in events:
            SERVER_EVENTS.validate_python(event)

    return check
