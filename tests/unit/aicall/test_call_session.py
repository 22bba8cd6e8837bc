"""One AI call end to end in-process: RTP to a UDP peer playing Asterisk, the Realtime and
MikroTik stand-ins, and the call session's rules (barge-in, tools, failures, cleanup)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aicall_harness import RecordingControl, RtpPeer, run
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import SessionConfig
from centralita.aicall.realtime import RealtimeSession
from centralita.aicall.record import CallRecord
from centralita.aicall.rtp import Pacer, RtpMedia
from centralita.aicall.session import CallPolicy, CallSession, call_tools
from centralita.aicall.tools.base import ToolBox
from centralita.aicall.tools.mikrotik import Router, RouterOsBackend, mikrotik_tools
from centralita.fakes.mikrotik import FakeMikrotik
from centralita.fakes.realtime import FakeRealtime, Script, Turn, running_in_thread

KEY = "sk-test"


@dataclass
class Rig:
    session: CallSession
    peer: RtpPeer
    media: RtpMedia
    control: RecordingControl
    metrics: AicallMetrics
    task: asyncio.Task[CallRecord]
    started: float = field(default_factory=time.perf_counter)

    async def finish(self, within: float = 20) -> CallRecord:
        return await asyncio.wait_for(self.task, within)


@contextlib.asynccontextmanager
async def call(
    url: str,
    router_url: str | None = None,
    *,
    policy: CallPolicy | None = None,
    tool_timeout: float = 10,
) -> AsyncIterator[Rig]:
    pacer = Pacer()
    media = RtpMedia("ulaw", pacer, name="test")
    await media.start()
    peer = RtpPeer()
    media.set_remote(*await peer.start(media.local))
    policy = policy or CallPolicy(transfer_target="6000", reconnect_window=3)
    tools = call_tools(policy.transfer_target)
    if router_url:
        backend = RouterOsBackend([Router("core", router_url, "api", "secret")], request_timeout=tool_timeout)
        tools += mikrotik_tools(backend, tool_timeout, tool_timeout)
    box = ToolBox(tools)
    model = RealtimeSession(
        url=url, model="gpt-realtime", api_key=KEY, config=SessionConfig("x", "marin", "ulaw", tools=box.specs)
    )
    control = RecordingControl()
    metrics = AicallMetrics()
    session = CallSession(
        record=CallRecord("1795000000.1", "3001234567", "3241000752"),
        media=media,
        model=model,
        tools=box,
        control=control,
        policy=policy,
        metrics=metrics,
    )
    control.session = session
    task = asyncio.get_running_loop().create_task(session.run())
    rig = Rig(session, peer, media, control, metrics, task)
    try:
        yield rig
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


# A gap this long means the pacer stopped (scheduling noise on a busy host stays well below it).
STALL_MS = 250


def test_greeting_and_answer_reach_the_caller_and_the_call_is_recorded() -> None:
    script = Script(turns=[Turn("hola", reply="buenas tardes", reply_ms=800)])

    async def scenario() -> tuple[CallRecord, Rig, FakeRealtime]:
        async with FakeRealtime(script, api_key=KEY) as fake, call(fake.url) as rig:
            await asyncio.sleep(2.0)  # the 1.5 s greeting plays
            rig.peer.say(600)
            await wait_for(lambda: any(line.text == "buenas tardes" for line in rig.session.record.transcript))
            await asyncio.sleep(1.2)
            rig.session.caller_hung_up()
            return await rig.finish(), rig, fake

    record, rig, fake = run(scenario())
    assert record.end_reason == "caller_hangup" and rig.control.actions == [], "the caller left: nothing to hang up"
    assert [(line.role, line.text) for line in record.transcript] == [
        ("assistant", "Hola, soy el asistente virtual. ¿En qué le puedo ayudar?"),
        ("caller", "hola"),
        ("assistant", "buenas tardes"),
    ]
    assert 2200 <= rig.peer.loud_ms() <= 2400  # greeting 1.5 s + answer 0.8 s, nothing lost or doubled
    # from the end of the caller's speech: the model's 500 ms silence window, then the reply's first frame
    (turn,) = record.turns
    assert turn.latency_ms is not None and 500 <= turn.latency_ms < 700
    assert record.total("total_tokens") > 0 and len(record.usage) == 2
    assert rig.metrics.calls.value(reason="caller_hangup") == 1 and rig.metrics.active_calls.value() == 0
    assert fake.connections[0].invalid == [] and fake.connections[0].errors == []
    assert fake.connections[0].close_code is not None, "the model socket was closed"
    assert rig.media.closed, "the RTP socket was closed"


def test_barge_in_drops_queued_audio_at_once_and_truncates_at_what_was_played() -> None:
    script = Script(greeting_ms=6000)

    async def scenario() -> tuple[CallRecord, Rig, FakeRealtime, float]:
        async with FakeRealtime(script, api_key=KEY) as fake, call(fake.url) as rig:
            await asyncio.sleep(1.5)
            rig.peer.say(500)
            await wait_for(lambda: fake.connections[0].truncations)
            spoke_at = rig.peer.arrivals[-1].at
            await asyncio.sleep(0.5)
            rig.session.caller_hung_up()
            return await rig.finish(), rig, fake, spoke_at

    record, rig, fake, truncated_at = run(scenario())
    conn = fake.connections[0]
    (_item, audio_end_ms) = conn.truncations[0]
    heard = rig.peer.loud_ms()
    assert abs(audio_end_ms - heard) <= 60, "the model is told what the caller really heard"
    assert 1200 <= audio_end_ms <= 2600
    assert rig.peer.loud_ms(since=truncated_at + 0.03) == 0, "no reply audio after the barge-in"
    assert conn.errors == [] and rig.metrics.barge_ins.value() == 1
    # the transcript keeps the first 20-43 % of the greeting's words, as the caller heard it
    (greeting,) = [line.text for line in record.transcript if line.role == "assistant"]
    assert script.greeting.startswith(greeting) and 0 < len(greeting) < len(script.greeting) / 2


def _slow_tool_script() -> Script:
    return Script(
        greeting_ms=500,
        turns=[
            Turn(
                "cómo está mi servicio",
                tool="customer_status",
                arguments={"pppoe_user": "ana.gomez"},
                after_tool="Su servicio está activo.",
                after_tool_ms=1000,
            )
        ],
    )


def _tool_call_scenario(tool_seconds: float):
    async def scenario() -> tuple[CallRecord, Rig, FakeRealtime, float, float]:
        with (
            FakeMikrotik(delays={"ppp/active": tool_seconds}) as router,
            running_in_thread(FakeRealtime(_slow_tool_script(), api_key=KEY, ping_interval=1.0)) as fake,
        ):
            policy = CallPolicy(progress_delay=1.5, progress_repeat=8, transfer_target=None)
            async with call(fake.url, router.url, policy=policy, tool_timeout=tool_seconds + 10) as rig:
                await asyncio.sleep(1.0)
                rig.peer.say(600)
                await wait_for(lambda: rig.session._tool_tasks, 5)
                tool_started = time.perf_counter()
                await wait_for(lambda: rig.session.record.tools, tool_seconds + 5)
                tool_ended = time.perf_counter()
                await wait_for(lambda: any("activo" in line.text for line in rig.session.record.transcript), 5)
                await asyncio.sleep(1.3)
                rig.session.caller_hung_up()
                return await rig.finish(), rig, fake, tool_started, tool_ended

    return scenario


def _check_tool_call(tool_seconds: float) -> None:
    record, rig, fake, started, ended = run(_tool_call_scenario(tool_seconds)(), timeout=tool_seconds + 40)
    conn = fake.connections[0]
    assert conn.errors == [] and conn.invalid == []
    (outcome,) = record.tools
    assert outcome.outcome == "ok" and outcome.result["online"] is True
    assert tool_seconds <= outcome.duration < tool_seconds + 1.5
    gaps = rig.peer.gaps_ms(since=started, until=ended)
    assert len(gaps) >= tool_seconds * 45
    # The tool runs beside the audio: a blocked loop would stop RTP for the whole tool call. The
    # 60 ms bound of the specification is asserted through real Asterisk in the lab test (with the
    # host's steal time measured); in-process, on a shared CI core, only a stall is a failure.
    assert max(gaps) < STALL_MS, f"RTP toward the caller stopped for {max(gaps):.0f} ms during the tool call"
    # pings were answered all along the tool call
    pongs_during = sum(1 for _ in conn.pongs_ms)
    assert conn.missed_pongs == 0 and pongs_during >= int(tool_seconds) - 1
    assert max(conn.pongs_ms) < 500
    progress = [line for line in record.transcript if line.progress]
    assert progress and progress[0].text == "Un momento, por favor."
    # never more than 3 s without sound toward the caller while waiting
    loud = [a.at for a in rig.peer.arrivals if a.loud and started <= a.at <= ended]
    silences = [b - a for a, b in zip([started, *loud], [*loud, ended], strict=True)]
    assert max(silences) < 3.0, f"{max(silences):.1f} s of dead air during the tool call"
    assert record.transcript[-1].text == "Su servicio está activo."


def test_a_4_s_tool_call_speaks_a_progress_phrase_and_then_the_answer(realtime_priority) -> None:
    _check_tool_call(4.0)


def test_a_25_s_tool_call_keeps_audio_and_websocket_keepalive_flowing(realtime_priority) -> None:
    _check_tool_call(25.0)


def test_transfer_to_human_happens_after_the_farewell_is_played() -> None:
    script = Script(
        greeting_ms=400,
        turns=[Turn("quiero un humano", tool="transfer_to_human", after_tool="Le transfiero.", after_tool_ms=700)],
    )

    async def scenario() -> tuple[CallRecord, Rig, float]:
        async with FakeRealtime(script, api_key=KEY) as fake, call(fake.url) as rig:
            await asyncio.sleep(0.8)
            rig.peer.say(500)
            record = await rig.finish()
            return record, rig, fake.connections[0]

    record, rig, conn = run(scenario())
    assert record.end_reason == "transferred" and record.transferred_to == "6000"
    assert rig.control.actions == [("transfer", "6000")]
    last_loud = max(a.at for a in rig.peer.arrivals if a.loud)
    assert rig.peer.loud_ms() >= 1100 - 40, "greeting and farewell were both played before the transfer"
    assert last_loud > 0 and conn.function_outputs[0][1] == '{"ok":true}'


def test_end_call_hangs_up_after_the_goodbye() -> None:
    script = Script(
        greeting_ms=400, turns=[Turn("eso es todo", tool="end_call", after_tool="Adiós.", after_tool_ms=500)]
    )

    async def scenario() -> tuple[CallRecord, Rig]:
        async with FakeRealtime(script, api_key=KEY) as fake, call(fake.url) as rig:
            await asyncio.sleep(0.8)
            rig.peer.say(500)
            return await rig.finish(), rig

    record, rig = run(scenario())
    assert record.end_reason == "assistant_hangup" and rig.control.actions == [("hangup", None)]
    assert [t.name for t in record.tools] == ["end_call"]


def test_a_failing_tool_is_answered_not_silenced() -> None:
    script = Script(
        greeting_ms=400,
        turns=[
            Turn("estado", tool="customer_status", arguments={"pppoe_user": "nadie"}, after_tool="No lo encuentro.")
        ],
    )

    async def scenario() -> CallRecord:
        with FakeMikrotik() as router:
            async with FakeRealtime(script, api_key=KEY) as fake, call(fake.url, router.url) as rig:
                await asyncio.sleep(0.8)
                rig.peer.say(500)
                await wait_for(lambda: any("encuentro" in line.text for line in rig.session.record.transcript))
                conn = fake.connections[0]
                rig.session.caller_hung_up()
                record = await rig.finish()
                assert '"error"' in conn.function_outputs[0][1]
                return record

    record = run(scenario())
    assert record.tools[0].outcome == "error" and "no PPPoE customer" in record.tools[0].result["error"]


def test_a_dropped_model_socket_is_restored_with_the_conversation() -> None:
    script = Script(
        greeting_ms=400,
        turns=[Turn("hola", reply="buenas", reply_ms=400), Turn("sigues ahí", reply="sí, aquí estoy", reply_ms=400)],
        drop_after_turns=1,
    )

    async def scenario() -> tuple[CallRecord, FakeRealtime, Rig]:
        async with FakeRealtime(script, api_key=KEY) as fake, call(fake.url) as rig:
            await asyncio.sleep(0.8)
            rig.peer.say(500)
            await wait_for(lambda: len(fake.connections) == 2, 5)
            await asyncio.sleep(1.5)
            rig.peer.say(500)
            await wait_for(lambda: any(line.text == "sí, aquí estoy" for line in rig.session.record.transcript))
            rig.session.caller_hung_up()
            return await rig.finish(), fake, rig

    record, fake, rig = run(scenario())
    assert record.reconnects == 1 and record.end_reason == "caller_hangup"
    restored = [e for e in fake.connections[1].received if e["type"] == "conversation.item.create"]
    assert [e["item"]["content"][0]["text"] for e in restored] == [
        "Hola, soy el asistente virtual. ¿En qué le puedo ayudar?",
        "hola",
    ]
    assert fake.connections[1].received_types()[:2] == ["session.update", "conversation.item.create"]
    assert rig.metrics.reconnects.value(outcome="restored") == 1


def test_when_the_model_cannot_be_reached_the_caller_hears_an_apology_and_is_transferred() -> None:
    async def scenario() -> tuple[CallRecord, Rig]:
        async with FakeRealtime(api_key="another-key") as fake, call(fake.url) as rig:
            return await rig.finish(), rig

    record, rig = run(scenario())
    assert record.end_reason == "model_unavailable_transferred"
    assert rig.control.actions == [("apology", None), ("transfer", "6000")]


def test_when_the_model_is_lost_for_good_the_call_is_transferred_within_the_window() -> None:
    async def scenario() -> tuple[CallRecord, Rig, float]:
        fake = FakeRealtime(Script(greeting_ms=400), api_key=KEY)
        await fake.start()
        async with call(fake.url, policy=CallPolicy(transfer_target="6000", reconnect_window=2)) as rig:
            await asyncio.sleep(0.8)
            lost = time.monotonic()
            await fake.stop()
            record = await rig.finish()
            return record, rig, time.monotonic() - lost

    record, rig, elapsed = run(scenario())
    assert record.end_reason == "model_lost_transferred" and record.reconnects == 1
    assert rig.control.actions == [("apology", None), ("transfer", "6000")]
    assert elapsed < 4


def test_the_caller_hanging_up_mid_reply_releases_everything() -> None:
    async def scenario() -> tuple[CallRecord, Rig, FakeRealtime]:
        async with FakeRealtime(Script(greeting_ms=5000), api_key=KEY) as fake, call(fake.url) as rig:
            await asyncio.sleep(1.0)
            rig.session.caller_hung_up()
            record = await rig.finish(2)
            await asyncio.sleep(0.2)
            return record, rig, fake

    record, rig, fake = run(scenario())  # run() also fails on any task left behind
    assert record.end_reason == "caller_hangup" and rig.control.actions == []
    assert fake.connections[0].close_code is not None and rig.media.closed


def test_a_tool_still_running_when_the_caller_hangs_up_is_recorded_as_cancelled() -> None:
    async def scenario() -> tuple[CallRecord, Rig]:
        with (
            FakeMikrotik(delays={"ppp/active": 30}) as router,
            running_in_thread(FakeRealtime(_slow_tool_script(), api_key=KEY)) as fake,
        ):
            policy = CallPolicy(progress_delay=1.0, transfer_target=None)
            async with call(fake.url, router.url, policy=policy, tool_timeout=60) as rig:
                await asyncio.sleep(1.0)
                rig.peer.say(600)
                await wait_for(lambda: rig.session._tool_tasks, 5)
                await asyncio.sleep(0.5)
                rig.session.caller_hung_up()
                return await rig.finish(5), rig

    record, rig = run(scenario())  # run() also fails on any task left behind
    (tool,) = record.tools
    assert tool.name == "customer_status" and tool.outcome == "cancelled"
    assert tool.arguments == {"pppoe_user": "ana.gomez"}
    assert tool.result == {"error": "the call ended before the tool finished"}
    assert 0.4 <= tool.duration < 5
    assert rig.metrics.tool_seconds.count(tool="customer_status", outcome="cancelled") == 1


def test_caller_frames_can_be_batched_two_per_message() -> None:
    async def scenario() -> FakeRealtime:
        policy = CallPolicy(transfer_target=None, input_frames=2)
        async with FakeRealtime(Script(greeting_ms=300), api_key=KEY) as fake, call(fake.url, policy=policy) as rig:
            await asyncio.sleep(1.0)
            rig.session.caller_hung_up()
            await rig.finish()
            return fake

    conn = run(scenario()).connections[0]
    appends = conn.received_types().count("input_audio_buffer.append")
    assert appends > 10 and conn.audio_in_ms == appends * 40 and conn.invalid == []
