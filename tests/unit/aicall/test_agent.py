"""The agent's event routing and its behaviour when Asterisk cannot be reached during set-up."""

from __future__ import annotations

import asyncio
import socket

from aicall_harness import run
from centralita.aicall.agent import AicallAgent
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.settings import AicallSettings
from centralita.config import load_settings


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _agent() -> AicallAgent:
    env = {
        "AICALL_ARI_URL": f"http://127.0.0.1:{_closed_port()}",
        "AICALL_ARI_USER": "ai",
        "AICALL_ARI_PASSWORD": "p",
        "OPENAI_API_KEY": "k",
        "DB_USER": "aicall",
    }
    return AicallAgent(load_settings(AicallSettings, environ=env), metrics=AicallMetrics(), store=None)


def test_a_call_whose_setup_fails_is_counted_and_leaves_nothing_running() -> None:
    async def scenario() -> AicallAgent:
        agent = _agent()
        channel = {"id": "1795.1", "name": "PJSIP/provider-1", "caller": {"number": "300"}, "dialplan": {"exten": "32"}}
        await agent.on_event({"type": "StasisStart", "channel": channel})
        await agent.on_event({"type": "StasisStart", "channel": {"id": "1795.1-media"}})  # our own media channel
        assert list(agent._calls) == ["1795.1"]
        await asyncio.gather(*agent._calls.values())
        await agent.pacer.close()
        agent.ari.close()
        return agent

    agent = run(scenario())
    assert agent.metrics.calls.value(reason="error") == 1
    assert agent.sessions == {} and agent._calls == {} and agent.metrics.active_calls.value() == 0


def test_hangup_events_end_the_matching_session_only() -> None:
    class Session:
        def __init__(self) -> None:
            self.hung_up = False

        def caller_hung_up(self) -> None:
            self.hung_up = True

    async def scenario() -> tuple[Session, Session]:
        agent = _agent()
        mine, other = Session(), Session()
        agent.sessions = {"a": mine, "b": other}  # type: ignore[dict-item]
        await agent.on_event({"type": "StasisEnd", "channel": {"id": "a"}})
        agent.ari.close()
        return mine, other

    mine, other = run(scenario())
    assert mine.hung_up and not other.hung_up


def test_events_the_agent_cannot_use_are_skipped_without_starting_or_ending_a_call(caplog) -> None:
    async def scenario() -> AicallAgent:
        agent = _agent()
        for event in (
            {"type": "StasisStart", "channel": {"name": "PJSIP/provider-2"}},  # no id
            {"type": "StasisStart", "channel": "1795.9"},
            {"type": "StasisStart", "channel": {"id": 17959}},
            {"type": "StasisStart"},
            {"type": "StasisEnd", "channel": ["1795.9"]},
            {"type": "PlaybackFinished", "playback": "apology-1"},
        ):
            await agent.on_event(event)
        agent.ari.close()
        return agent

    with caplog.at_level("WARNING", logger="centralita.aicall.agent"):
        agent = run(scenario())
    assert agent._calls == {} and agent.sessions == {}
    assert sum("without a channel id" in r.getMessage() for r in caplog.records) == 4
