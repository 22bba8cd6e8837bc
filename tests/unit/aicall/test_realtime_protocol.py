"""The Realtime GA protocol as the agent speaks it, checked against the stand-in and openai's models."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest
from aicall_harness import CLIENT_EVENTS, SERVER_EVENTS, run
from centralita.aicall import g711
from centralita.aicall.provider import (
    AudioOut,
    Disconnected,
    FunctionCall,
    HistoryLine,
    ModelError,
    ModelUnavailable,
    ResponseDone,
    SessionConfig,
    SpeechStarted,
    SpeechStopped,
    ToolSpec,
    Transcript,
)
from centralita.aicall.realtime import RealtimeSession, history_items, session_update
from centralita.aicall.wsmodel import AudioMarks, Inbox, MaskKeys, masked_text_frame
from centralita.fakes.realtime import FakeRealtime, Script, Turn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import OP_TEXT, Frame
from websockets.streams import StreamReader

CONFIG = SessionConfig(
    "Eres un asistente.",
    "marin",
    "alaw",
    tools=(
        ToolSpec("find_customer", "Find a customer", {"type": "object", "properties": {"phone": {"type": "string"}}}),
    ),
    vad_idle_timeout_ms=8000,
)


def test_session_update_is_the_ga_shape_with_g711_and_server_vad() -> None:
    event = session_update(CONFIG)
    CLIENT_EVENTS.validate_python(event)
    session = event["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcma"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcma"}, "voice": "marin"}
    turn = session["audio"]["input"]["turn_detection"]
    assert turn == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
        "idle_timeout_ms": 8000,
    }
    assert session["tools"][0]["name"] == "find_customer" and session["tool_choice"] == "auto"
    assert "modalities" not in session and "input_audio_format" not in session


def test_semantic_vad_and_history_events_are_valid_client_events() -> None:
    from dataclasses import replace

    event = session_update(replace(CONFIG, vad_type="semantic_vad", vad_eagerness="low"))
    CLIENT_EVENTS.validate_python(event)
    assert event["session"]["audio"]["input"]["turn_detection"]["eagerness"] == "low"
    for item in history_items([HistoryLine("caller", "hola"), HistoryLine("assistant", "buenas")]):
        CLIENT_EVENTS.validate_python(item)


async def _speak(session: RealtimeSession, ms: int) -> None:
    """Stream a caller utterance (tone) followed by silence, in 20 ms frames at 4x real time."""
    for _ in range(ms // 20):
        session.send_audio(g711.tone(20, "alaw"))
        await asyncio.sleep(0.005)
    for _ in range(40):
        session.send_audio(g711.silence("alaw"))
        await asyncio.sleep(0.005)


def test_a_full_conversation_with_a_function_call_is_valid_both_ways(validate_server_events) -> None:
    script = Script(
        turns=[
            Turn("hola", reply="buenas tardes", reply_ms=400),
            Turn("mi número", tool="find_customer", arguments={"phone": "3001234567"}, after_tool="lo encontré"),
        ]
    )

    async def scenario() -> tuple[list, FakeRealtime]:
        async with FakeRealtime(script, api_key="sk-test", record_sent=True, require_validation=True) as fake:
            model = RealtimeSession(url=fake.url, model="gpt-realtime", api_key="sk-test", config=CONFIG)
            await model.connect()
            await model.respond()
            events = []
            feeder = asyncio.create_task(_speak(model, 400))
            async for event in model.events():
                events.append(event)
                if isinstance(event, ResponseDone) and event.function_calls:
                    for call_id in event.function_calls:
                        await model.tool_result(call_id, json.dumps({"found": True}))
                    await model.respond()
                if isinstance(event, Transcript) and event.role == "caller" and event.text == "hola":
                    feeder = asyncio.create_task(_speak(model, 400))
                if isinstance(event, Transcript) and event.text == "lo encontré":
                    break
            await feeder
            await model.close()
            return events, fake

    events, fake = run(scenario())
    conn = fake.connections[0]
    assert conn.invalid == [] and conn.errors == []
    assert conn.headers["Authorization"] == "Bearer sk-test" and "OpenAI-Beta" not in conn.headers
    assert "model=gpt-realtime" in conn.path
    validate_server_events(conn.sent)
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("SpeechStarted") == 2 and kinds.count("SpeechStopped") == 2
    calls = [e for e in events if isinstance(e, FunctionCall)]
    assert calls[0].name == "find_customer" and json.loads(calls[0].arguments) == {"phone": "3001234567"}
    assert conn.function_outputs == [(calls[0].call_id, '{"found": true}')]
    audio = b"".join(e.audio for e in events if isinstance(e, AudioOut))
    assert g711.rms(audio, "alaw") > 1000
    done = [e for e in events if isinstance(e, ResponseDone) and e.status == "completed"]
    assert all(e.usage.get("total_tokens", 0) > 0 for e in done)
    assert any(isinstance(e, SpeechStarted) for e in events) and any(isinstance(e, SpeechStopped) for e in events)


async def _first_error(config: SessionConfig, tool_output: bool = False) -> ModelError:
    """The first error the stand-in answers a session with (after a tool output no call asked for, if asked)."""
    async with FakeRealtime(Script()) as fake:
        model = RealtimeSession(url=fake.url, model="m", api_key="k", config=config)
        await model.connect()
        if tool_output:
            await model.tool_result("call_unknown", "{}")
        try:
            async for event in model.events():
                if isinstance(event, ModelError):
                    return event
            raise AssertionError("no error")
        finally:
            await model.close()


def test_a_tool_output_sent_before_response_done_is_refused_like_the_real_service() -> None:
    error = run(_first_error(CONFIG, tool_output=True))
    assert error.code == "invalid_tool_call_id"
    assert not error.fatal, "refused after the session took its settings: the call goes on"


def test_a_session_update_the_service_refuses_reads_as_a_fatal_error() -> None:
    error = run(_first_error(dataclasses.replace(CONFIG, max_output_tokens=5000)))  # the service takes 1 to 4096
    assert error.code == "invalid_value" and "max_output_tokens" in error.message
    assert error.fatal, "the socket keeps the service's default audio format: the call cannot use it"


def test_truncating_past_the_audio_that_exists_is_an_error_and_within_it_is_accepted() -> None:
    async def scenario() -> tuple[list, FakeRealtime]:
        async with FakeRealtime(Script(greeting_ms=600)) as fake:
            model = RealtimeSession(url=fake.url, model="m", api_key="k", config=CONFIG)
            await model.connect()
            await model.respond()
            seen = []
            async for event in model.events():
                if isinstance(event, ResponseDone):
                    item = next(e.item_id for e in seen if isinstance(e, AudioOut))
                    await model.truncate(item, 5000)
                    await model.truncate(item, 300)
                seen.append(event)
                if isinstance(event, ModelError):
                    break
            await asyncio.sleep(0.1)
            await model.close()
            return seen, fake

    seen, fake = run(scenario())
    assert [e.code for e in seen if isinstance(e, ModelError)] == ["invalid_value"]
    assert len(fake.connections[0].truncations) == 1 and fake.connections[0].truncations[0][1] == 300


def test_a_wrong_api_key_is_refused_at_the_handshake() -> None:
    async def scenario() -> None:
        async with FakeRealtime(api_key="right") as fake:
            model = RealtimeSession(url=fake.url, model="m", api_key="wrong", config=CONFIG)
            with pytest.raises(ModelUnavailable, match="401"):
                await model.connect()

    run(scenario())


def test_the_beta_header_is_closed_with_4000_as_since_the_beta_shutdown() -> None:
    async def scenario() -> tuple[int | None, str]:
        async with FakeRealtime() as fake:
            async with connect(fake.url + "?model=m", additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
                first = json.loads(await ws.recv())
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                return ws.close_code, first["error"]["code"]

    assert run(scenario()) == (4000, "beta_api_shape_disabled")


def test_invalid_client_events_are_answered_with_an_error_event() -> None:
    async def scenario() -> list[dict]:
        async with FakeRealtime() as fake:
            async with connect(fake.url + "?model=m") as ws:
                await ws.recv()  # session.created
                await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "voise": "x"}}))
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "***"}))
                await ws.send(json.dumps({"type": "response.cancel"}))
                return [json.loads(await ws.recv()) for _ in range(3)]

    replies = run(scenario())
    assert [r["type"] for r in replies] == ["error", "error", "error"]
    assert "voise" in replies[0]["error"]["message"]
    assert replies[2]["error"]["code"] == "response_cancel_not_active"


def test_a_cancelled_response_reports_the_tokens_generated_up_to_the_cut() -> None:
    async def scenario() -> dict:
        async with FakeRealtime(Script(greeting_ms=3000)) as fake:
            async with connect(fake.url + "?model=m") as ws:
                await ws.recv()  # session.created
                await ws.send(json.dumps({"type": "response.create"}))
                deltas = 0
                while deltas < 3:
                    event = json.loads(await ws.recv())
                    deltas += event["type"] == "response.output_audio.delta"
                await ws.send(json.dumps({"type": "response.cancel"}))
                while (event := json.loads(await ws.recv()))["type"] != "response.done":
                    pass
                SERVER_EVENTS.validate_python(event)
                return event["response"]

    response = run(scenario())
    assert response["status"] == "cancelled"
    audio_tokens = response["usage"]["output_token_details"]["audio_tokens"]
    assert 0 < audio_tokens < 3000 // 50, "what was generated before the cut, not the whole greeting"


def test_the_stand_in_pings_and_closes_1011_when_pongs_stop() -> None:
    async def scenario() -> tuple[int, list[float]]:
        async with FakeRealtime(ping_interval=0.2, ping_timeout=0.3) as fake:
            model = RealtimeSession(url=fake.url, model="m", api_key="k", config=CONFIG)
            await model.connect()
            await asyncio.sleep(0.7)
            pongs = list(fake.connections[0].pongs_ms)
            await model.close()
            # a client whose loop never reads cannot answer: websockets answers pings only while reading
            async with connect(fake.url + "?model=m", ping_interval=None) as ws:
                ws.transport.pause_reading()
                await asyncio.sleep(0.8)
            return fake.connections[1].missed_pongs, pongs

    missed, pongs = run(scenario())
    assert len(pongs) >= 2 and missed == 1


def _parse_client_frame(data: bytes) -> tuple[Frame, int]:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parser)
    return done.value.value, len(reader.buffer)


@pytest.mark.parametrize("size", [10, 125, 126, 800, 65536])
def test_audio_frames_are_whole_masked_text_frames_each_with_its_own_key(size: int) -> None:
    payload = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * size}).encode()
    first, second = masked_text_frame(payload), masked_text_frame(payload)
    frame, left = _parse_client_frame(first)
    assert (frame.opcode, frame.fin, frame.data, left) == (OP_TEXT, True, payload, 0)
    assert _parse_client_frame(second)[0].data == payload
    assert first != second, "a fresh masking key per frame"


def test_masking_keys_come_in_batches_and_never_repeat_within_one() -> None:
    keys = MaskKeys(batch=8)
    drawn = [keys.next() for _ in range(24)]
    assert all(len(key) == 4 for key in drawn)
    assert len(set(drawn)) > 20  # random 32-bit keys: a repeat among 24 is all but impossible


def test_audio_marks_answer_from_the_last_frames_only() -> None:
    marks = AudioMarks(keep=5)
    assert marks.sent_at(0) is None
    for index in range(1, 13):  # 20 ms frames sent at t = 100 + index
        marks.add(20 * index, 100.0 + index)
    assert len(marks) == 5  # frames 8 to 12 kept
    assert marks.sent_at(200) == 110.0, "the frame that holds ms 200"
    assert marks.sent_at(201) == 111.0, "the first frame at or after"
    assert marks.sent_at(20) == 108.0, "older than what is kept: the oldest kept"
    assert marks.sent_at(241) is None and marks.sent_at(-1) is None


async def _serve_then(messages: list[object], close_code: int = 1000):
    """A bare websocket server that sends ``messages`` (a list of fragments sends one message in pieces)."""
    from websockets.asyncio.server import serve

    async def handler(ws) -> None:
        for message in messages:
            if isinstance(message, float):  # a pause between messages
                await asyncio.sleep(message)
                continue
            await ws.send(message)
        await ws.close(close_code, "done")

    return await serve(handler, "127.0.0.1", 0)


async def _events_from(messages: list[object], close_code: int = 1000) -> list[object]:
    """Every event a session reads from a server that sends ``messages`` and closes with ``close_code``."""
    server = await _serve_then(messages, close_code=close_code)
    port = server.sockets[0].getsockname()[1]
    try:
        model = RealtimeSession(url=f"ws://127.0.0.1:{port}", model="m", api_key="k", config=CONFIG)
        await model.connect()
        events = [event async for event in model.events()]
        await model.close()
        return events
    finally:
        server.close()
        await server.wait_closed()


def test_the_reader_reassembles_fragments_skips_binary_and_ignored_events_and_keeps_the_order() -> None:
    delta = {"type": "response.output_audio.delta", "item_id": "i", "response_id": "r"}
    messages = [
        json.dumps({**delta, "delta": "AAAA"}),
        b"\x00\x01binary",  # no provider sends these: dropped
        json.dumps({"type": "response.output_audio_transcript.delta", "delta": "hola"}),  # not acted on
        [json.dumps({**delta, "delta": "////"})[:20], json.dumps({**delta, "delta": "////"})[20:]],  # in two frames
        "not json",
        json.dumps({"type": "input_audio_buffer.speech_started", "item_id": "u", "audio_start_ms": 40}),
    ]

    events = run(_events_from(messages))
    assert events[:3] == [
        AudioOut("i", "r", b"\x00\x00\x00"),
        AudioOut("i", "r", b"\xff\xff\xff"),
        SpeechStarted("u", 40),
    ]
    assert len(events) == 4 and "closed by server (1000 done)" in events[3].reason


def test_a_close_with_an_error_code_reads_as_a_lost_connection_with_its_code() -> None:
    (event,) = run(_events_from([], close_code=1011))
    assert event.reason.startswith("connection lost (") and "1011" in event.reason


def test_a_malformed_event_is_skipped_and_the_events_around_it_still_reach_the_call() -> None:
    messages = [
        json.dumps({"type": "input_audio_buffer.speech_started", "item_id": "u"}),
        json.dumps({"type": "response.output_audio.delta"}),  # no item_id: the parser fails
        json.dumps(["not", "an", "object"]),
        json.dumps({"type": "input_audio_buffer.speech_started", "item_id": "v", "audio_start_ms": 80}),
    ]

    async def scenario() -> list[object]:
        server = await _serve_then(messages)
        port = server.sockets[0].getsockname()[1]
        seen: list[object] = []
        try:
            model = RealtimeSession(url=f"ws://127.0.0.1:{port}", model="m", api_key="k", config=CONFIG)
            await model.connect()
            async for event in model.events():
                seen.append(event)
            await model.close()
            return seen
        finally:
            server.close()
            await server.wait_closed()

    seen = run(scenario())
    assert seen[:2] == [SpeechStarted("u", 0), SpeechStarted("v", 80)]
    assert len(seen) == 3 and isinstance(seen[2], Disconnected)


def test_reply_audio_goes_straight_to_the_call_only_while_its_reader_waits_and_the_order_holds() -> None:
    delta = {"type": "response.output_audio.delta", "item_id": "i", "response_id": "r"}
    messages = [
        0.2,  # the reader is waiting by now
        json.dumps({**delta, "delta": "AAAA"}),
        0.2,
        json.dumps({"type": "input_audio_buffer.speech_started", "item_id": "u", "audio_start_ms": 40}),
        json.dumps({**delta, "delta": "////"}),  # read together with the speech start: behind it
        json.dumps({**delta, "delta": "gICA"}),
    ]

    async def scenario() -> tuple[list[tuple[str, object]], list[object]]:
        server = await _serve_then(messages)
        port = server.sockets[0].getsockname()[1]
        seen: list[tuple[str, object]] = []
        try:
            model = RealtimeSession(url=f"ws://127.0.0.1:{port}", model="m", api_key="k", config=CONFIG)
            model.on_audio_out(lambda event: seen.append(("at once", event)))
            await model.connect()
            async for event in model.events():
                seen.append(("from events", event))
                await asyncio.sleep(0)  # the call's task handles the event: the reader may run meanwhile
            await model.close()
            return seen, [event for _, event in seen]
        finally:
            server.close()
            await server.wait_closed()

    seen, order = run(scenario())
    assert order[:4] == [
        AudioOut("i", "r", b"\x00\x00\x00"),
        SpeechStarted("u", 40),
        AudioOut("i", "r", b"\xff\xff\xff"),
        AudioOut("i", "r", b"\x80\x80\x80"),
    ], "the same order as through events() alone"
    assert seen[0][0] == "at once", "audio read while the reader waited skips the task switch"
    assert seen[1][0] == "from events"


def _call_events(status: str, item_status: str, arguments: str, reason: str | None = None) -> list[object]:
    """A function call's response as the service writes it, ending with ``status``."""
    ids = {"response_id": "resp_1", "item_id": "item_1", "output_index": 0, "call_id": "call_1"}
    item = {"type": "function_call", "id": "item_1", "call_id": "call_1", "name": "find_customer"}
    done_item = {**item, "status": item_status, "arguments": arguments}
    response = {
        "id": "resp_1",
        "status": status,
        "status_details": {"type": status, "reason": reason},
        "output": [done_item],
        "usage": {"total_tokens": 12, "output_tokens": 3},
    }
    half = len(arguments) // 2
    return [
        json.dumps({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}}),
        json.dumps({"type": "response.output_item.added", "response_id": "resp_1", "output_index": 0, "item": item}),
        json.dumps({"type": "response.function_call_arguments.delta", **ids, "delta": arguments[:half]}),
        json.dumps({"type": "response.function_call_arguments.delta", **ids, "delta": arguments[half:]}),
        # sent for a cancelled response too, with the arguments cut, as the service's reference says it may be
        json.dumps(
            {"type": "response.function_call_arguments.done", **ids, "name": "find_customer", "arguments": arguments}
        ),
        json.dumps(
            {"type": "response.output_item.done", "response_id": "resp_1", "output_index": 0, "item": done_item}
        ),
        json.dumps({"type": "response.done", "response": response}),
    ]


def test_a_completed_responses_function_call_reaches_the_call_whole_and_before_the_responses_end() -> None:
    events = run(_events_from(_call_events("completed", "completed", '{"phone": "3001234567"}')))
    call, done = events[1:3]
    assert call == FunctionCall("call_1", "find_customer", '{"phone": "3001234567"}', "resp_1")
    assert isinstance(done, ResponseDone) and done.status == "completed" and done.function_calls == ("call_1",)
    assert [type(e).__name__ for e in events] == ["ResponseStarted", "FunctionCall", "ResponseDone", "Disconnected"]


@pytest.mark.parametrize("reason", ["turn_detected", "client_cancelled"])
def test_a_call_of_a_cancelled_response_never_reaches_the_call_even_with_its_arguments_done(reason: str) -> None:
    events = run(_events_from(_call_events("cancelled", "incomplete", '{"phone": "30012', reason)))
    assert not any(isinstance(e, FunctionCall) for e in events), "its arguments were cut: it must not run"
    (done,) = [e for e in events if isinstance(e, ResponseDone)]
    assert (done.status, done.reason, done.function_calls) == ("cancelled", reason, ())
    assert done.usage["output_tokens"] == 3, "what the cut response cost is still recorded"


@pytest.mark.parametrize("layout", [(",", ":"), (", ", ": ")])
def test_function_call_argument_events_are_dropped_before_any_json_parse(
    layout: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    session = RealtimeSession(url="ws://127.0.0.1:9", model="m", api_key="k", config=CONFIG)
    ids = {"event_id": "event_1", "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "call_id": "c"}
    inbox = Inbox()
    with caplog.at_level(logging.WARNING, logger="centralita.aicall.realtime"):
        for kind, extra in [("delta", {"delta": '{"pho'}), ("done", {"name": "f", "arguments": '{"pho'})]:
            event = {"type": f"response.function_call_arguments.{kind}", **ids, **extra}
            data = json.dumps(event, separators=layout).encode()
            session._message(inbox, data[:-10])  # cut: a parse would log it as not JSON
    assert not inbox.events and caplog.text == "", "recognised by their first bytes, never parsed"
