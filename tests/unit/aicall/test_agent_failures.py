"""The agent when calls end the hard way: a caller who leaves during set-up, a stop with Asterisk
or the database hung, set-up failures, a full agent.

Asterisk's side of ARI, the model and the store are stand-ins in the test's process: the
agent's own code (set-up, clean-up, shutdown, records) runs unchanged, over a real RTP port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aicall_harness import run
from centralita.aicall import agent as agent_module
from centralita.aicall import store as store_module
from centralita.aicall.agent import AicallAgent
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import ModelSession
from centralita.aicall.record import CallRecord
from centralita.aicall.settings import AicallSettings
from centralita.aicall.store import CallStore
from centralita.asterisk.ari import AriNotFound
from centralita.config import load_settings
from centralita.db import DbSettings

CALLER = {"id": "1795.1", "name": "PJSIP/provider-1", "caller": {"number": "3001234567"}, "dialplan": {"exten": "32"}}


class StubAri:
    """Asterisk's side of ARI for one test: it records every request; a step can be held, fail or run a hook.

    Events are not read from a socket: the test hands them to ``agent.on_event`` itself.
    """

    def __init__(self, rtp_sink: tuple[str, int]) -> None:
        self.rtp_sink = rtp_sink
        self.requests: list[tuple[Any, ...]] = []
        self.entered: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.holds: dict[str, asyncio.Event] = {}
        self.failures: dict[str, Exception] = {}
        self.hooks: dict[str, Callable[..., Awaitable[None]]] = {}
        self.closed = False

    async def _step(self, name: str, *args: Any) -> None:
        self.requests.append((name, *args))
        self.entered[name].set()
        hook = self.hooks.get(name)
        if hook is not None:
            await hook(*args)
        hold = self.holds.get(name)
        if hold is not None:
            await hold.wait()
        failure = self.failures.get(name)
        if failure is not None:
            raise failure

    def names(self) -> list[str]:
        return [request[0] for request in self.requests]

    async def run_events(self, on_event: Any, on_connect: Any = None) -> None:
        await asyncio.Event().wait()

    async def answer(self, channel_id: str) -> None:
        await self._step("answer", channel_id)

    async def create_bridge(self, bridge_id: str) -> dict[str, Any]:
        await self._step("create_bridge", bridge_id)
        return {"id": bridge_id}

    async def external_media(self, media_id: str, host: str, codec: str, **options: Any) -> dict[str, Any]:
        await self._step("external_media", media_id)
        address, port = self.rtp_sink
        return {"channelvars": {"UNICASTRTP_LOCAL_ADDRESS": address, "UNICASTRTP_LOCAL_PORT": str(port)}}

    async def add_to_bridge(self, bridge_id: str, *channel_ids: str) -> None:
        await self._step("add_to_bridge", bridge_id, *channel_ids)

    async def get_variable(self, channel_id: str, variable: str) -> str | None:
        await self._step("get_variable", channel_id, variable)
        return None

    async def hangup(self, channel_id: str, reason: str = "normal") -> bool:
        await self._step("hangup", channel_id, reason)
        return True

    async def destroy_bridge(self, bridge_id: str) -> bool:
        await self._step("destroy_bridge", bridge_id)
        return True

    async def continue_in_dialplan(self, channel_id: str, context: str, extension: str, priority: int = 1) -> None:
        await self._step("continue", channel_id, extension)

    async def get_channel(self, channel_id: str) -> dict[str, Any] | None:
        return {"id": channel_id}

    async def play(self, target: str, media: str, playback_id: str, **options: Any) -> dict[str, Any]:
        await self._step("play", target)
        return {}

    def close(self) -> None:
        self.closed = True


class _Silent:
    """A model's event stream with nothing to say."""

    def __aiter__(self) -> _Silent:
        return self

    async def __anext__(self) -> Any:
        await asyncio.Event().wait()


class StubModel(ModelSession):
    def __init__(self) -> None:
        self.connected = False
        self.closed = False

    async def connect(self, history: Any = None) -> None:
        self.connected = True

    def send_audio(self, audio: bytes) -> None:
        return None

    def events(self) -> Any:
        return _Silent()

    async def respond(self, instructions: str | None = None) -> None:
        return None

    async def say_progress(self, instructions: str) -> None:
        return None

    async def tool_result(self, call_id: str, output: str) -> None:
        return None

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        return None

    async def cancel(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


class StubStore:
    def __init__(self) -> None:
        self.saved: list[CallRecord] = []
        self.any_saved = asyncio.Event()

    async def save(self, record: CallRecord) -> bool:
        self.saved.append(record)
        self.any_saved.set()
        return True

    async def replay_forever(self) -> None:
        await asyncio.Event().wait()


class Lab:
    """One agent with its stand-ins, running as the service runs it (``agent.run``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: Any = None, **env: str) -> None:
        settings = load_settings(
            AicallSettings,
            environ={
                "AICALL_ARI_URL": "http://127.0.0.1:9",
                "AICALL_ARI_USER": "ai",
                "AICALL_ARI_PASSWORD": "p",
                "OPENAI_API_KEY": "k",
                "DB_USER": "aicall",
                **env,
            },
        )
        self.store = store if store is not None else StubStore()
        self.agent = AicallAgent(settings, metrics=AicallMetrics(), store=self.store)
        self.agent.stop_calls_s = self.agent.stop_cut_s = self.agent.stop_records_s = 0.2
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where the agent's RTP goes
        self.sink.bind(("127.0.0.1", 0))
        self.ari = StubAri(self.sink.getsockname())
        self.agent.ari = self.ari  # type: ignore[assignment]
        self.models: list[StubModel] = []

        def open_model(settings: Any, config: Any, *, name: str = "") -> StubModel:
            model = StubModel()
            self.models.append(model)
            return model

        monkeypatch.setattr(agent_module, "open_model_session", open_model)
        self.runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.runner = asyncio.get_running_loop().create_task(self.agent.run())
        await asyncio.sleep(0)

    async def stop(self) -> BaseException | None:
        """What the SIGTERM handler does; returns what ``agent.run`` ended with."""
        assert self.runner is not None
        self.runner.cancel()
        try:
            await self.runner
        except BaseException as exc:  # the test looks at what came out
            return exc
        finally:
            self.sink.close()
        return None

    async def until_saved(self) -> None:
        await asyncio.wait_for(self.store.any_saved.wait(), 10)

    async def until_running(self, channel_id: str) -> None:
        while channel_id not in self.agent.sessions:  # a state change with no event of its own
            await asyncio.sleep(0.01)


def _stasis_start(channel: dict[str, Any] = CALLER) -> dict[str, Any]:
    return {"type": "StasisStart", "channel": channel}


def _cleaned_up(ari: StubAri, channel_id: str = "1795.1") -> bool:
    return {("hangup", channel_id + "-media", "normal"), ("destroy_bridge", channel_id + "-bridge"),
            ("hangup", channel_id, "normal")} <= set(ari.requests)  # fmt: skip


# a caller who hangs up while the call is being set up ----------------------------------------


def test_a_caller_who_hangs_up_during_set_up_ends_the_call_before_the_model_is_opened(monkeypatch) -> None:
    async def scenario() -> tuple[Lab, BaseException | None]:
        lab = Lab(monkeypatch)
        await lab.start()

        async def caller_leaves(channel_id: str, variable: str) -> None:
            # Asterisk reports the hang-up while the request is in flight; the request itself succeeds
            await lab.agent.on_event({"type": "StasisEnd", "channel": {"id": channel_id}})
            await lab.agent.on_event({"type": "ChannelDestroyed", "channel": {"id": channel_id}})

        lab.ari.hooks["get_variable"] = caller_leaves
        await lab.agent.on_event(_stasis_start())
        await lab.until_saved()
        assert lab.agent.sessions == {} and lab.agent.calls_in_progress == 0
        return lab, await lab.stop()

    lab, ended = run(scenario())
    assert isinstance(ended, asyncio.CancelledError)
    assert lab.models == [], "no model session may be opened for a caller who has gone"
    [record] = lab.store.saved
    assert record.end_reason == "caller_hangup" and record.ended_at is not None
    assert _cleaned_up(lab.ari)
    assert lab.agent.metrics.calls.value(reason="caller_hangup") == 1


def test_a_hangup_request_during_the_answer_stops_the_set_up_at_once(monkeypatch) -> None:
    async def scenario() -> Lab:
        lab = Lab(monkeypatch)
        await lab.start()

        async def caller_leaves(channel_id: str) -> None:
            await lab.agent.on_event({"type": "ChannelHangupRequest", "channel": {"id": channel_id}})

        lab.ari.hooks["answer"] = caller_leaves
        await lab.agent.on_event(_stasis_start())
        await lab.until_saved()
        await lab.stop()
        return lab

    lab = run(scenario())
    assert lab.models == [] and [r.end_reason for r in lab.store.saved] == ["caller_hangup"]
    assert "create_bridge" not in lab.ari.names() and "external_media" not in lab.ari.names()
    assert ("hangup", "1795.1", "normal") in lab.ari.requests


def test_a_channel_gone_from_asterisk_during_set_up_is_a_caller_hangup(monkeypatch) -> None:
    async def scenario() -> Lab:
        lab = Lab(monkeypatch)
        await lab.start()
        lab.ari.failures["get_variable"] = AriNotFound("GET /channels/1795.1/variable: not found", 404)
        await lab.agent.on_event(_stasis_start())
        await lab.until_saved()
        await lab.stop()
        return lab

    lab = run(scenario())
    assert lab.models == [] and [r.end_reason for r in lab.store.saved] == ["caller_hangup"]
    assert _cleaned_up(lab.ari)


# stopping ------------------------------------------------------------------------------------


def test_a_stop_with_asterisk_hung_still_saves_every_record_and_releases_everything(monkeypatch) -> None:
    """One call running, one in set-up; Asterisk stops answering; then SIGTERM."""

    async def scenario() -> tuple[Lab, BaseException | None]:
        lab = Lab(monkeypatch)
        await lab.start()
        await lab.agent.on_event(_stasis_start())
        await lab.until_running("1795.1")
        lab.ari.holds["get_variable"] = asyncio.Event()  # never answered
        lab.ari.holds["hangup"] = asyncio.Event()
        lab.ari.holds["destroy_bridge"] = asyncio.Event()
        lab.ari.entered["get_variable"].clear()
        await lab.agent.on_event(_stasis_start({"id": "1795.2"}))
        await lab.ari.entered["get_variable"].wait()
        return lab, await lab.stop()

    lab, ended = run(scenario())
    assert isinstance(ended, asyncio.CancelledError), f"agent.run ended with {ended!r}"
    assert sorted((r.call_id, r.end_reason) for r in lab.store.saved) == [
        ("1795.1", "agent_stopped"),
        ("1795.2", "agent_stopped"),
    ]
    assert all(r.ended_at is not None for r in lab.store.saved)
    assert len(lab.models) == 1 and lab.models[0].closed
    assert lab.agent.pacer._thread is None, "the pacer thread is still running"
    assert lab.agent.rtp_port.sock is None and lab.ari.closed
    assert lab.agent._calls == {} and lab.agent._records == set()


def test_a_call_being_set_up_at_stop_ends_as_agent_stopped_without_a_model(monkeypatch) -> None:
    async def scenario() -> Lab:
        lab = Lab(monkeypatch)
        await lab.start()
        hold = lab.ari.holds["get_variable"] = asyncio.Event()
        await lab.agent.on_event(_stasis_start())
        await lab.ari.entered["get_variable"].wait()
        stopping = asyncio.get_running_loop().create_task(lab.stop())
        while lab.agent._setting_up.get("1795.1") != "agent_stopped":  # the stop has begun
            await asyncio.sleep(0.01)
        hold.set()  # Asterisk answers after the stop began
        await stopping
        return lab

    lab = run(scenario())
    assert lab.models == [] and [r.end_reason for r in lab.store.saved] == ["agent_stopped"]
    assert _cleaned_up(lab.ari)


def test_a_stop_with_the_database_hung_too_puts_the_record_in_the_spool(monkeypatch, tmp_path: Path) -> None:
    written = threading.Event()

    def hung_write(settings: DbSettings, record: CallRecord) -> int:
        written.wait(30)  # MariaDB accepts the connection and never answers
        raise store_module.pymysql.err.OperationalError(2013, "Lost connection to server during query")

    monkeypatch.setattr(store_module, "write_record", hung_write)
    spool = tmp_path / "spool"

    async def scenario() -> tuple[Lab, BaseException | None]:
        lab = Lab(monkeypatch, store=CallStore(DbSettings(db_user="aicall"), spool, AicallMetrics()))
        lab.store.replay_forever = StubStore().replay_forever  # type: ignore[method-assign]
        await lab.start()
        await lab.agent.on_event(_stasis_start())
        await lab.until_running("1795.1")
        lab.ari.holds["hangup"] = asyncio.Event()
        try:
            return lab, await lab.stop()
        finally:
            written.set()

    _, ended = run(scenario())
    assert isinstance(ended, asyncio.CancelledError)
    [spooled] = list(spool.glob("*.json"))
    record = json.loads(spooled.read_text(encoding="utf-8"))
    assert record["call_id"] == "1795.1" and record["end_reason"] == "agent_stopped"
    assert list(spool.glob("*.tmp")) == []


# set-up failures and capacity ----------------------------------------------------------------


def test_an_unexpected_set_up_failure_is_recorded_as_an_error_with_the_call_named(monkeypatch, caplog) -> None:
    async def scenario() -> Lab:
        lab = Lab(monkeypatch)
        await lab.start()
        lab.ari.failures["external_media"] = ValueError("a handshake the agent did not expect")
        await lab.agent.on_event(_stasis_start())
        await lab.until_saved()
        await lab.stop()
        return lab

    with caplog.at_level("ERROR", logger="centralita.aicall.agent"):
        lab = run(scenario())
    [record] = lab.store.saved
    assert record.end_reason == "error" and lab.models == []
    assert lab.agent.metrics.calls.value(reason="error") == 1
    assert any("1795.1" in r.getMessage() and r.exc_info for r in caplog.records)
    assert _cleaned_up(lab.ari)


def test_calls_being_set_up_count_against_the_call_limit(monkeypatch) -> None:
    async def scenario() -> Lab:
        lab = Lab(monkeypatch, AICALL_MAX_CALLS="1", AICALL_TRANSFER_EXTENSION="none")
        await lab.start()
        hold = lab.ari.holds["answer"] = asyncio.Event()
        await lab.agent.on_event(_stasis_start())
        await lab.ari.entered["answer"].wait()
        await lab.agent.on_event(_stasis_start({"id": "1795.2"}))
        await lab.until_saved()
        assert [(r.call_id, r.end_reason) for r in lab.store.saved] == [("1795.2", "rejected_busy")]
        hold.set()
        await lab.until_running("1795.1")
        await lab.stop()
        return lab

    lab = run(scenario())
    assert ("hangup", "1795.2", "congestion") in lab.ari.requests
    assert ("answer", "1795.2") not in lab.ari.requests
    assert [(r.call_id, r.end_reason) for r in lab.store.saved] == [
        ("1795.2", "rejected_busy"),
        ("1795.1", "agent_stopped"),
    ]


def test_a_store_failure_is_logged_with_the_call_and_the_call_still_ends_cleanly(monkeypatch, caplog) -> None:
    class BrokenStore(StubStore):
        async def save(self, record: CallRecord) -> bool:
            self.any_saved.set()
            raise TypeError("Object of type bytes is not JSON serializable")

    async def scenario() -> asyncio.Task[None]:
        lab = Lab(monkeypatch, store=BrokenStore())
        await lab.start()
        lab.ari.failures["answer"] = AriNotFound("POST /channels/1795.1/answer: not found", 404)
        await lab.agent.on_event(_stasis_start())
        call = lab.agent._calls["1795.1"]
        await asyncio.wait([call])
        await lab.stop()
        return call

    with caplog.at_level("ERROR", logger="centralita.aicall.agent"):
        call = run(scenario())
    assert call.exception() is None
    assert any("1795.1" in r.getMessage() and "could not be saved" in r.getMessage() for r in caplog.records)
