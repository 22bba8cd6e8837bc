"""The GPT-Live protocol as the agent speaks it, checked against the stand-in and openai.types.live."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from aicall_harness import run
from centralita.aicall import g711
from centralita.aicall.live import LiveSession, heard_note, history_input, session_start
from centralita.aicall.provider import (
    AudioOut,
    Disconnected,
    FunctionCall,
    HistoryLine,
    ModelError,
    ModelEvent,
    ModelUnavailable,
    ResponseDone,
    ResponseStarted,
    SessionConfig,
    SpeechStarted,
    SpeechStopped,
    ToolSpec,
    Transcript,
    open_model_session,
)
from centralita.aicall.realtime import RealtimeSession
from centralita.aicall.settings import AicallSettings
from centralita.config import load_settings
from centralita.fakes.live import FakeLive, LiveConnectionLog, live_validators
from centralita.fakes.realtime import Script, Turn
from openai.types.live.server_event import ServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

KEY = "sk-test"
SERVER_EVENTS = TypeAdapter(ServerEvent)
VALIDATORS = live_validators()
CONFIG = SessionConfig(
    "Eres un asistente.",
    "marin",
    "alaw",
    tools=(
        ToolSpec("find_customer", "Find a customer", {"type": "object", "properties": {"phone": {"type": "string"}}}),
    ),
    max_output_tokens=300,
)


def live(url: str, **kwargs: Any) -> LiveSession:
    return LiveSession(url=url, model="gpt-live-1", backend_model="gpt-5.5", api_key=KEY, config=CONFIG, **kwargs)


async def speak(model: LiveSession, ms: int) -> None:
    """A caller utterance (tone) and then silence, in 20 ms frames at 4x real time."""
    for _ in range(ms // 20):
        model.send_audio(g711.tone(20, "alaw"))
        await asyncio.sleep(0.005)
    for _ in range(40):
        model.send_audio(g711.silence("alaw"))
        await asyncio.sleep(0.005)


def assert_clean(conn: LiveConnectionLog) -> None:
    """Every event both ways matched its openai.types.live model and nothing was refused."""
    assert conn.invalid == [] and conn.invalid_sent == [] and conn.errors == []
    for event in conn.sent:
        SERVER_EVENTS.validate_python(event)


def test_session_start_is_a_strict_client_event_with_g711_the_tools_and_the_history() -> None:
    history = [HistoryLine("caller", "hola"), HistoryLine("assistant", "buenas tardes")]
    event = session_start(CONFIG, "gpt-live-1", "gpt-5.5", history)
    assert VALIDATORS is not None and VALIDATORS.client(event) is None
    session = event["session"]
    assert session["model"] == "gpt-live-1" and session["instructions"] == "Eres un asistente."
    assert session["audio"] == {"format": {"type": "audio/pcma", "rate": 8000}, "output": {"voice": "marin"}}
    backend = session["delegation"]["responses"]
    assert session["delegation"]["type"] == "responses" and backend["model"] == "gpt-5.5"
    assert backend["tools"][0]["name"] == "find_customer" and backend["tool_choice"] == "auto"
    assert backend["max_output_tokens"] == 300
    assert [(i["role"], i["content"][0]["type"]) for i in session["input"]] == [
        ("user", "input_text"),
        ("assistant", "output_text"),
    ]
    assert "input" not in session_start(CONFIG, "gpt-live-1", "gpt-5.5")["session"]
    assert len(history_input([HistoryLine("caller", str(n)) for n in range(300)])) == 128


def test_the_validators_refuse_unknown_fields_and_malformed_events() -> None:
    assert VALIDATORS is not None
    extra = {"type": "session.thinking.append", "content": "x", "delegation_id": None, "bogus": 1}
    assert "unknown fields: event.bogus" in (VALIDATORS.client(extra) or "")
    assert VALIDATORS.client({"type": "session.input_audio.append"}) is not None, "audio is required"
    assert VALIDATORS.client({"type": "input_audio_buffer.append", "audio": ""}) is not None, "a Realtime event"
    assert VALIDATORS.server({"type": "session.output_audio.delta"}) is not None, "delta is required"
    assert VALIDATORS.server({"type": "session.output_audio.delta", "delta": ""}) is None
    assert VALIDATORS.backend({"type": "response.completed", "sequence_number": 1}) is not None


def test_a_call_with_a_tool_call_progress_speech_and_usage_is_valid_both_ways() -> None:
    script = Script(
        turns=[
            Turn("hola", reply="buenas tardes", reply_ms=400),
            Turn("mi número", tool="find_customer", arguments={"phone": "3001234567"}, after_tool="lo encontré"),
        ]
    )

    async def scenario() -> tuple[list[ModelEvent], FakeLive, list[str]]:
        async with FakeLive(script, api_key=KEY, record_sent=True, require_validation=True, ping_interval=0.2) as fake:
            model = live(fake.url)
            await model.connect()
            await model.respond()
            events: list[ModelEvent] = []
            order: list[str] = []
            feeder: asyncio.Task[None] | None = None
            async for event in model.events():
                events.append(event)
                if isinstance(event, ResponseDone) and event.response_id.endswith("-1"):
                    feeder = asyncio.create_task(speak(model, 400))  # after the greeting
                elif isinstance(event, ResponseDone) and event.status == "completed" and not event.progress:
                    if event.function_calls:
                        order.append("call done")
                        await model.say_progress('Di solamente: "Un momento, por favor."')
                    elif len(order) == 0:
                        feeder = asyncio.create_task(speak(model, 400))  # after "buenas tardes"
                elif isinstance(event, ResponseDone) and event.progress:
                    order.append("progress spoken")
                    call = next(e for e in events if isinstance(e, FunctionCall))
                    await model.tool_result(call.call_id, json.dumps({"found": True}))
                    await model.respond()
                if isinstance(event, Transcript) and event.text == "lo encontré":
                    break
            if feeder is not None:
                await feeder
            await model.close()
            await asyncio.sleep(0.05)
            return events, fake, order

    events, fake, order = run(scenario())
    conn = fake.connections[0]
    assert_clean(conn)
    assert conn.path == "/v1/live/sessions" and conn.headers["Authorization"] == f"Bearer {KEY}"
    assert conn.received_types()[0] == "session.start" and conn.received_types()[-1] == "session.close"
    assert conn.pongs_ms and conn.missed_pongs == 0, "protocol pings were answered"
    assert order == ["call done", "progress spoken"]
    texts = [(e.role, e.text) for e in events if isinstance(e, Transcript)]
    assert texts == [
        ("assistant", "Hola, soy el asistente virtual. ¿En qué le puedo ayudar?"),
        ("caller", "hola"),
        ("assistant", "buenas tardes"),
        ("caller", "mi número"),
        ("assistant", "Un momento, por favor."),
        ("assistant", "lo encontré"),
    ]
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("SpeechStarted") == 2 and kinds.count("SpeechStopped") == 2
    stopped = [e for e in events if isinstance(e, SpeechStopped)]
    assert all(e.speech_end_at is not None for e in stopped), "the caller's speech end maps to when it was sent"
    (call,) = [e for e in events if isinstance(e, FunctionCall)]
    assert call.name == "find_customer" and json.loads(call.arguments) == {"phone": "3001234567"}
    (call_done,) = [e for e in events if isinstance(e, ResponseDone) and e.function_calls]
    assert call_done.function_calls == (call.call_id,) and call_done.response_id == call.response_id
    assert call_done.usage["total_tokens"] > 0, "the backend's token usage"
    assert conn.function_outputs == [(call.call_id, '{"found": true}')]
    received = conn.received_types()
    assert received.index("response.item.create") < received.index("response.create")
    progress = [e for e in events if isinstance(e, ResponseStarted) and e.progress]
    assert len(progress) == 1, "speech while the call was outstanding is a progress reply"
    replies = [e for e in events if isinstance(e, ResponseDone) and not e.function_calls]
    assert all(e.status == "completed" for e in replies)
    assert any(e.usage.get("live_audio_seconds", 0) > 0 for e in replies), "the session's audio usage"
    assert sum(len(e.audio) for e in events if isinstance(e, AudioOut)) == (1500 + 400 + 800 + 1200) * 8, (
        "every voiced byte reached the caller's queue and no leading silence did"
    )


def test_a_tool_output_is_refused_until_the_backend_response_has_completed() -> None:
    script = Script(turns=[Turn("mi número", tool="find_customer", arguments={"phone": "1"}, after_tool="listo")])

    async def scenario() -> tuple[list[dict[str, Any]], FakeLive]:
        async with FakeLive(script, record_sent=True, require_validation=True, backend_ms=300) as fake:
            seen: list[dict[str, Any]] = []
            async with connect(fake.url) as ws:
                await ws.send(json.dumps(session_start(CONFIG, "gpt-live-1", "gpt-5.5")))
                assert json.loads(await ws.recv())["type"] == "session.started"
                speech = [g711.tone(20, "alaw")] * 20 + [g711.silence("alaw")] * 40
                for frame in speech:
                    await ws.send(
                        json.dumps({"type": "session.input_audio.append", "audio": base64.b64encode(frame).decode()})
                    )
                call_id = None
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    seen.append(event)
                    nested = event.get("event") or {}
                    if nested.get("type") == "response.output_item.done" and call_id is None:
                        call_id = nested["item"]["call_id"]
                        await ws.send(json.dumps(output_for(call_id, "early")))
                    elif (
                        nested.get("type") == "response.completed"
                        and call_id
                        and not fake.connections[0].function_outputs
                    ):
                        await ws.send(json.dumps(output_for(call_id, "on time")))
                        await ws.send(json.dumps({"type": "response.create"}))
                    elif event["type"] == "session.output_transcript.delta":
                        break
            await asyncio.sleep(0.05)
            return seen, fake

    seen, fake = run(scenario())
    conn = fake.connections[0]
    assert conn.invalid == [] and conn.invalid_sent == []
    assert [e["code"] for e in conn.errors] == ["invalid_tool_call_id"], "the early output was refused"
    assert [o[1] for o in conn.function_outputs] == ["on time"]
    types = [e["type"] for e in seen]
    assert types.index("session.delegation.created") < types.index("response.event")
    nested = [e["event"]["type"] for e in seen if e["type"] == "response.event"]
    assert nested.count("response.completed") == 2, "the backend answered after the output"
    assert seen[-1]["delta"].strip() == "listo"


def output_for(call_id: str, output: str) -> dict[str, Any]:
    return {
        "type": "response.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def test_barge_in_ends_the_reply_and_tells_the_model_what_the_caller_heard() -> None:
    script = Script(greeting="uno dos tres cuatro cinco seis siete ocho nueve diez", greeting_ms=5000, send_rate=1.0)

    async def scenario() -> tuple[list[ModelEvent], FakeLive]:
        async with FakeLive(script, record_sent=True, require_validation=True) as fake:
            model = live(fake.url)
            await model.connect()
            await model.respond()
            events: list[ModelEvent] = []
            feeder: asyncio.Task[None] | None = None
            async for event in model.events():
                events.append(event)
                if (
                    isinstance(event, AudioOut)
                    and feeder is None
                    and sum(len(e.audio) for e in events if isinstance(e, AudioOut)) >= 1000 * 8
                ):
                    feeder = asyncio.create_task(speak(model, 300))
                if isinstance(event, SpeechStarted):
                    reply = next(e for e in events if isinstance(e, ResponseStarted))
                    await model.truncate(reply.response_id, 1000)
                if isinstance(event, ResponseDone) and event.status == "cancelled":
                    break
            assert feeder is not None
            await feeder
            await asyncio.sleep(0.2)
            await model.close()
            return events, fake

    events, fake = run(scenario())
    conn = fake.connections[0]
    assert_clean(conn)
    assert conn.interruptions == 1, "the model stopped speaking when the caller spoke"
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert [(e.status, e.reason) for e in done] == [("cancelled", "turn_detected")]
    (note,) = [content for kind, content in conn.appended if kind == "session.thinking.append"]
    assert note == heard_note("uno dos ", 1000), "the first second of the reply's transcript timeline"
    assert "conversation.item.truncate" not in conn.received_types()


def test_errors_are_events_and_the_session_goes_on() -> None:
    async def scenario() -> tuple[list[ModelEvent], FakeLive]:
        async with FakeLive(Script(greeting_ms=300), require_validation=True) as fake:
            model = live(fake.url)
            await model.connect()
            await model.tool_result("call_unknown", "{}")  # no such call: the service says so
            await model.respond()
            events: list[ModelEvent] = []
            async for event in model.events():
                events.append(event)
                if isinstance(event, ResponseDone):
                    break
            await model.close()
            return events, fake

    events, fake = run(scenario())
    errors = [e for e in events if isinstance(e, ModelError)]
    assert [e.code for e in errors] == ["invalid_tool_call_id"] and "call_unknown" in errors[0].message
    assert isinstance(events[-1], ResponseDone) and events[-1].status == "completed", "the greeting still came"
    assert fake.connections[0].invalid == []


@pytest.mark.parametrize(
    ("script", "key", "suffix", "status"),
    [(Script(refuse=True), KEY, "", "503"), (Script(), "sk-wrong", "", "401"), (Script(), KEY, "?model=x", "400")],
)
def test_a_refused_session_is_model_unavailable(script: Script, key: str, suffix: str, status: str) -> None:
    async def scenario() -> str:
        async with FakeLive(script, api_key=KEY) as fake:
            model = LiveSession(
                url=fake.url + suffix, model="gpt-live-1", backend_model="b", api_key=key, config=CONFIG
            )
            with pytest.raises(ModelUnavailable) as caught:
                await model.connect()
            await model.close()
            return str(caught.value)

    assert status in run(scenario())


def test_a_dropped_socket_ends_the_events_and_a_new_session_starts_from_the_history() -> None:
    script = Script(turns=[Turn("hola", reply="buenas", reply_ms=300)], drop_after_turns=1, greeting_ms=300)

    async def scenario() -> tuple[list[ModelEvent], list[ModelEvent], FakeLive]:
        async with FakeLive(script, require_validation=True) as fake:
            model = live(fake.url)
            await model.connect()
            await model.respond()
            first: list[ModelEvent] = []
            async for event in model.events():
                first.append(event)
                if isinstance(event, ResponseDone):
                    asyncio.get_running_loop().create_task(speak(model, 300))
            history = [HistoryLine("assistant", "Hola"), HistoryLine("caller", "hola")]
            await model.connect(history=history)
            await model.respond("La conexión se interrumpió. Discúlpate y sigue.")
            second: list[ModelEvent] = []
            async for event in model.events():
                second.append(event)
                if isinstance(event, ResponseDone):
                    break
            await model.close()
            await asyncio.sleep(0.1)
            return first, second, fake

    first, second, fake = run(scenario())
    assert isinstance(first[-1], Disconnected) and "connection lost" in first[-1].reason
    old, new = fake.connections
    assert new.session["input"] == history_input([HistoryLine("assistant", "Hola"), HistoryLine("caller", "hola")])
    assert ("session.instructions.append", "La conexión se interrumpió. Discúlpate y sigue.") in new.appended
    spoken = [e.text for e in second if isinstance(e, Transcript)]
    assert spoken == [Script().resume], "the restored session resumes instead of greeting again"
    assert new.invalid == [] and new.invalid_sent == [] and old.invalid == []


def test_the_provider_setting_selects_the_session_class_and_its_endpoint() -> None:
    base = {"AICALL_ARI_USER": "ai", "AICALL_ARI_PASSWORD": "p", "OPENAI_API_KEY": "sk-x", "DB_USER": "aicall"}
    default = load_settings(AicallSettings, environ=base)
    assert default.provider == "realtime" and default.model_id == "gpt-realtime"
    assert isinstance(open_model_session(default, CONFIG), RealtimeSession)
    chosen = load_settings(
        AicallSettings, environ={**base, "AICALL_PROVIDER": "live", "OPENAI_LIVE_MODEL": "gpt-live-2"}
    )
    model = open_model_session(chosen, CONFIG, name="c1")
    assert isinstance(model, LiveSession)
    assert (model.url, model.model, model.backend_model) == (
        "wss://api.openai.com/v1/live/sessions",
        "gpt-live-2",
        "gpt-5.5",
    )
    assert model.api_key == "sk-x" and chosen.model_id == "gpt-live-2"


def test_a_session_start_the_service_refuses_or_never_answers_is_model_unavailable() -> None:
    bad = SessionConfig("x", "marin", "ulaw", tools=(ToolSpec("f", "a tool", ["not", "a", "schema"]),))  # type: ignore[arg-type]

    async def silent(ws: Any) -> None:
        await ws.wait_closed()  # accepts the socket, never starts the session

    async def scenario() -> tuple[str, str]:
        async with FakeLive(Script()) as fake:
            refused = LiveSession(url=fake.url, model="gpt-live-1", backend_model="b", api_key=KEY, config=bad)
            with pytest.raises(ModelUnavailable) as first:
                await refused.connect()
        async with serve(silent, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            url = f"ws://127.0.0.1:{port}/v1/live/sessions"
            mute = LiveSession(
                url=url, model="gpt-live-1", backend_model="b", api_key=KEY, config=CONFIG, connect_timeout=0.5
            )
            with pytest.raises(ModelUnavailable) as second:
                await mute.connect()
        return str(first.value), str(second.value)

    refused, unanswered = run(scenario())
    assert refused.startswith("live session refused: invalid_value") and "parameters" in refused
    assert "did not start" in unanswered


def test_an_expired_session_ends_with_its_reason_and_final_usage() -> None:
    async def scenario() -> tuple[list[ModelEvent], FakeLive]:
        async with FakeLive(Script(greeting_ms=300), record_sent=True, session_seconds=1.5) as fake:
            model = live(fake.url)
            await model.connect()
            await model.respond()
            events = [event async for event in model.events()]
            await model.close()
            return events, fake

    events, fake = run(scenario())
    assert isinstance(events[-1], Disconnected) and events[-1].reason == "session closed (expired)"
    assert [e.status for e in events if isinstance(e, ResponseDone)] == ["completed"], "the greeting came first"
    closed = fake.connections[0].sent[-1]
    assert closed["type"] == "session.closed" and closed["usage"]["seconds"] > 0
    assert_clean(fake.connections[0])


def test_a_function_call_the_backend_left_incomplete_is_not_run() -> None:
    model = live("ws://127.0.0.1:9")
    model._parse({"type": "response.event", "event": {"type": "response.created", "response": {"id": "resp_1"}}})
    cut = {"type": "function_call", "status": "incomplete", "call_id": "call_1", "name": "find_customer"}
    whole = {**cut, "status": "completed", "call_id": "call_2", "arguments": '{"phone": "3001"}'}
    for item in (cut, whole):
        events = model._parse({"type": "response.event", "event": {"type": "response.output_item.done", "item": item}})
        assert [e.call_id for e in events] == ([] if item is cut else ["call_2"])
