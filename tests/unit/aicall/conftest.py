"""Shared pieces of the AI call tests: the stand-ins' strict protocol checks and a runner."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

SERVER_EVENTS = TypeAdapter(RealtimeServerEvent)
CLIENT_EVENTS = TypeAdapter(RealtimeClientEvent)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
    """Run one scenario on a fresh loop, bounded in time, and check it leaked no task."""

    async def bounded() -> Any:
        before = asyncio.all_tasks()
        result = await asyncio.wait_for(coro, timeout)
        await asyncio.sleep(0.05)
        leaked = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
        assert not leaked, f"tasks left running: {[t.get_name() for t in leaked]}"
        return result

    return asyncio.run(bounded())


@pytest.fixture
def validate_server_events():
    """Check events the stand-in sent against the openai package's server event models."""

    def check(events: list[dict[str, Any]]) -> None:
        for event in events:
            SERVER_EVENTS.validate_python(event)

    return check
