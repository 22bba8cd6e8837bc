"""One AI call end to end on GPT-Live: RTP to a UDP peer playing Asterisk, the GPT-Live stand-in,
and the unchanged call session (tools, barge-in, a dropped model socket, cleanup)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aicall_harness import RecordingControl, RtpPeer, cue_ms, run
from centralita.aicall.live import LiveSession
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import SessionConfig
from centralita.aicall.record import CallRecord
from centralita.aicall.rtp import Pacer, RtpMedia
from centralita.aicall.session import CallPolicy, CallSession, call_tools
from centralita.aicall.tools.base import ToolBox
from centralita.fakes.live import FakeLive
from centralita.fakes.realtime import Script, Turn

KEY = "sk-test"


@dataclass
class Rig:
    session: CallSession
    peer: RtpPeer
    media: RtpMedia
    control: RecordingControl
    metrics: AicallMetrics
    task: asyncio.Task[CallRecord]

    async def finish(self, within: float = 20) -> CallRecord:
        return await asyncio.wait_for(self.task, within)


@contextlib.asynccontextmanager
async def call(url: str, policy: CallPolicy | None = None) -> AsyncIterator[Rig]:
    pacer = Pacer()
    media = RtpMedia("ulaw", pacer, name="test")
    await media.start()
    peer = RtpPeer()
    media.set_remote(*await peer.start(media.local))
    policy = policy or CallPolicy(transfer_target="6000", reconnect_window=3)
    box = ToolBox(call_tools(policy.transfer_target))
    model = LiveSession(
        url=url,
        model="gpt-live-1",
        backend_model="gpt-5.5",
        api_key=KEY,
        config=SessionConfig("x", "marin", "ulaw", tools=box.specs),
    )
    control = RecordingControl()
    metrics = AicallMetrics()
    session = CallSession(
        record=CallRecord("1795000000.7", "3001234567", "3241000752"),
        media=media,
        model=model,
        tools=box,
        control=control,
        policy=policy,
        metrics=metrics,
    )
    control.session = session
    task = asyncio.get_running_loop().create_task(session.run())
    try:
        yield Rig(session, peer, media, control, metrics, task)
    finally:
        if not task.done():
            session.caller_hung_up()
            await asyncio.wait_for(task, 10)
        await peer.close()
        await pacer.close()


async def wait_for(condition, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def spoken(record: CallRecord) -> list[tuple[str, str]]:
    return [(line.role, line.text) for line in record.transcript]


async def greeting_played(rig) -> None:
    """Until the caller has heard the whole greeting (the transcript comes as it starts)."""
    await wait_for(lambda: rig.media.queued_ms == 0 and rig.peer.loud_ms() >= Script().greeting_ms - 40)


def test_a_call_with_end_call_on_the_backend_hangs_up_after_the_farewell() -> None:
    script = Script(
        turns=[
            Turn("hola", reply="buenas tardes", reply_ms=600),
            Turn(
                "adiós", tool="end_call", arguments={"reason": "resuelto"}, after_tool="hasta luego", after_tool_ms=800
            ),
        ]
    )

    async def scenario() -> tuple[CallRecord, Rig, FakeLive]:
        async with (
            FakeLive(script, api_key=KEY, record_sent=True, require_validation=True) as fake,
            call(fake.url) as rig,
        ):
            await wait_for(lambda: any(line.text.startswith("Hola") for line in rig.session.record.transcript))
            await greeting_played(rig)  # speaking earlier would be a barge-in
            rig.peer.say(600)
            await wait_for(lambda: any(line.text == "buenas tardes" for line in rig.session.record.transcript))
            await wait_for(lambda: rig.media.queued_ms == 0)
            rig.peer.say(600)
            return await rig.finish(), rig, fake

    record, rig, fake = run(scenario())
    conn = fake.connections[0]
    assert conn.invalid == [] and conn.invalid_sent == [] and conn.errors == []
    assert record.end_reason == "assistant_hangup" and rig.control.actions == [("hangup", None)]
    assert spoken(record) == [
        ("assistant", "Hola, soy el asistente virtual. ¿En qué le puedo ayudar?"),
        ("caller", "hola"),
        ("assistant", "buenas tardes"),
        ("caller", "adiós"),
        ("assistant", "hasta luego"),
    ]
    (tool,) = record.tools
    assert tool.name == "end_call" and tool.outcome == "ok"
    assert [o[1] for o in conn.function_outputs] == ['{"ok":true}'], "the output went after the backend's response"
    # the waiting cue plays too if the backend is slow to answer the tool call (a busy host)
    heard = rig.peer.loud_ms() - cue_ms(rig.media)
    assert 2800 <= heard <= 3000, "greeting 1.5 s + 0.6 s + farewell 0.8 s, nothing lost or doubled"
    assert [t.latency_ms is not None for t in record.turns] == [True, True], "first-audio latency of both turns"
    assert record.total("total_tokens") > 0, "the backend's token usage is recorded"
    assert any("live_audio_seconds" in u.usage for u in record.usage), "and the session's audio seconds"
    assert rig.metrics.calls.value(reason="assistant_hangup") == 1 and rig.metrics.active_calls.value() == 0
    assert conn.close_code is not None and rig.media.closed, "model socket and RTP socket closed"


def test_barge_in_stops_playout_and_the_model_learns_what_was_heard() -> None:
    script = Script(greeting="uno dos tres cuatro cinco seis siete ocho nueve diez once doce", greeting_ms=6000)

    async def scenario() -> tuple[Rig, FakeLive]:
        async with FakeLive(script, api_key=KEY, require_validation=True) as fake, call(fake.url) as rig:
            await wait_for(lambda: rig.peer.loud_ms() >= 1000)
            rig.peer.say(500)
            await wait_for(lambda: any(k == "session.thinking.append" for k, _ in fake.connections[0].appended))
            await asyncio.sleep(0.5)
            rig.session.caller_hung_up()
            await rig.finish()
            return rig, fake

    rig, fake = run(scenario())
    conn = fake.connections[0]
    assert conn.invalid == [] and conn.invalid_sent == [] and conn.interruptions == 1
    (note,) = [content for kind, content in conn.appended if kind == "session.thinking.append"]
    assert note.startswith('The caller spoke over your last reply: they heard only "uno')
    assert "doce" not in note, "the unplayed end of the reply is not claimed as heard"
    assert rig.peer.loud_ms() < 4000, "the queued rest of the 6 s greeting was dropped"
    assert rig.metrics.barge_ins.value() == 1


def test_a_dropped_model_socket_is_restored_with_the_conversation() -> None:
    script = Script(turns=[Turn("hola", reply="buenas", reply_ms=400)], drop_after_turns=1)

    async def scenario() -> tuple[CallRecord, Rig, FakeLive]:
        async with FakeLive(script, api_key=KEY, require_validation=True) as fake, call(fake.url) as rig:
            await wait_for(lambda: rig.session.record.transcript)
            await greeting_played(rig)  # speaking earlier would be a barge-in
            rig.peer.say(500)
            await wait_for(lambda: any(line.text == Script().resume for line in rig.session.record.transcript))
            await asyncio.sleep(0.3)
            rig.session.caller_hung_up()
            return await rig.finish(), rig, fake

    record, rig, fake = run(scenario())
    assert record.reconnects == 1 and rig.metrics.reconnects.value(outcome="restored") == 1
    first, second = fake.connections
    assert [(i["role"], i["content"][0]["text"]) for i in second.session["input"]] == [
        ("assistant", "Hola, soy el asistente virtual. ¿En qué le puedo ayudar?"),
        ("user", "hola"),
    ]
    assert record.end_reason == "caller_hangup" and rig.control.actions == []
    assert first.invalid == [] and second.invalid == [] and second.invalid_sent == []
