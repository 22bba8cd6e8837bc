"""Fixtures of the AI call tests (helpers live in aicall_harness)."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest
from aicall_harness import SERVER_EVENTS


@pytest.fixture(scope="session", autouse=True)
def frozen_heap() -> None:
    """Freeze what is loaded (openai's and pydantic's models included), as the agent does at start.

    Without it a full collection over the test process's large heap stalls the event loop
    for 70-300 ms, which the pacing assertions would then measure.
    """
    gc.freeze()


@pytest.fixture
def realtime_priority() -> Iterator[None]:
    """Run a pacing measurement under SCHED_RR when allowed, as the agent's unit runs the agent.

    Frame-gap assertions measure the host's scheduler as much as the code; on a host busy
    with other jobs a normal-priority process can wait tens of ms for a CPU. Linux keeps 5 %
    of every second for normal tasks, and the tests are bounded in time.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
    except (PermissionError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@pytest.fixture
def validate_server_events():
    """Check events the stand-in sent against the openai package's server event models."""

    def check(events: list[dict[str, Any]]) -> None:
        for event in events:
            SERVER_EVENTS.validate_python(event)

    return check
