"""A function call's arguments stream in several deltas, as the service writes them, and a call cut
while they are being written (a cancel, or the caller speaking) is never made: the Realtime stand-in
over a real websocket, then a whole call through the agent."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aicall_harness import run
from centralita.aicall import g711
from centralita.aicall.provider import SessionConfig, ToolSpec
from centralita.aicall.realtime import session_update
from centralita.aicall.record import CallRecord
from centralita.fakes.realtime import FakeRealtime, Script, Turn
from test_call_session import KEY, Rig, call, wait_for
from websockets.asyncio.client import ClientConnection, connect

CONFIG = SessionConfig(
    "Eres un asistente.",
    "marin",
    "ulaw",
    tools=(
        ToolSpec(
            "find_customer",
            "Find a customer",
            {"type": "object", "properties": {"phone": {"type": "string"}, "name": {"type": "string"}}},
        ),
    ),
)
ARGUMENTS = {"phone": "3001234567", "name": "Ana Gómez"}
# long enough that a cancel sent on the first delta always lands while the arguments are written
SLOW_ARGUMENTS_MS = 5000


async def _open(fake: FakeRealtime) -> ClientConnection:
    ws = await connect(fake.url + "?model=gpt-realtime")
    assert json.loads(await ws.recv())["type"] == "session.created"
    await ws.send(json.dumps(session_update(CONFIG)))
    return ws


async def _say(ws: ClientConnection, speech_ms: int = 300, silence_ms: int = 0) -> None:
    """The caller's audio: speech (a tone), then silence long enough for the server to end the turn."""
    frames = [g711.tone(20, "ulaw")] * (speech_ms // 20) + [g711.silence("ulaw")] * (silence_ms // 20)
    for frame in frames:
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()}))


async def _until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """Every event up to and including the first of ``kind``."""
    events = [json.loads(await ws.recv())]
    while events[-1]["type"] != kind:
        events.append(json.loads(await ws.recv()))
    return events


def _of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


def test_the_arguments_arrive_in_several_deltas_that_make_up_the_done_arguments(validate_server_events) -> None:
    script = Script(turns=[Turn("mi número", tool="find_customer", arguments=ARGUMENTS)])

    async def scenario() -> tuple[list[dict[str, Any]], FakeRealtime]:
        async with FakeRealtime(script, record_sent=True, require_validation=True) as fake:
            async with await _open(fake) as ws:
                await _say(ws, silence_ms=600)
                return await _until(ws, "response.done"), fake

    events, fake = run(scenario())
    deltas = _of_type(events, "response.function_call_arguments.delta")
    (done,) = _of_type(events, "response.function_call_arguments.done")
    assert len(deltas) >= 2, "streamed as the model writes them, not in one piece"
    assert "".join(delta["delta"] for delta in deltas) == done["arguments"]
    assert json.loads(done["arguments"]) == ARGUMENTS and done["name"] == "find_customer"
    assert {(d["item_id"], d["call_id"], d["response_id"]) for d in deltas} == {
        (done["item_id"], done["call_id"], done["response_id"])
    }
    item = _of_type(events, "response.output_item.done")[-1]["item"]
    assert item["status"] == "completed" and item["arguments"] == done["arguments"]
    response = events[-1]["response"]
    assert response["status"] == "completed" and response["output"] == [item]
    assert response["usage"]["output_tokens"] > 0
    conn = fake.connections[0]
    assert conn.invalid == [] and conn.errors == []
    validate_server_events(conn.sent)


@pytest.mark.parametrize("cut_by", ["response.cancel", "the caller's speech"])
def test_a_call_cut_while_its_arguments_are_written_ends_incomplete_with_the_arguments_written(
    cut_by: str, validate_server_events
) -> None:
    script = Script(
        arguments_ms=SLOW_ARGUMENTS_MS,
        turns=[
            Turn("mi número", tool="find_customer", arguments=ARGUMENTS),
            Turn("olvídelo", reply="De acuerdo.", reply_ms=300),
        ],
    )

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], FakeRealtime]:
        async with FakeRealtime(script, record_sent=True, require_validation=True) as fake:
            async with await _open(fake) as ws:
                await _say(ws, silence_ms=600)
                before = await _until(ws, "response.function_call_arguments.delta")
                if cut_by == "response.cancel":
                    await ws.send(json.dumps({"type": "response.cancel"}))
                    cut = await _until(ws, "response.done")
                    await _say(ws, silence_ms=600)  # the caller goes on
                else:
                    await _say(ws, silence_ms=600)  # the server cancels the call's response when speech starts
                    cut = await _until(ws, "response.done")
                after = await _until(ws, "response.done")
                return before + cut, after, fake

    events, after, fake = run(scenario())
    deltas = _of_type(events, "response.function_call_arguments.delta")
    written = "".join(delta["delta"] for delta in deltas)
    assert deltas and written != json.dumps(ARGUMENTS) and json.dumps(ARGUMENTS).startswith(written)
    (done,) = _of_type(events + after, "response.function_call_arguments.done")
    assert done["arguments"] == written, "the done event of a cut call carries the arguments written so far"
    item = _of_type(events, "response.output_item.done")[-1]["item"]
    assert item["type"] == "function_call" and item["status"] == "incomplete" and item["arguments"] == written
    assert _of_type(events, "conversation.item.done")[-1]["item"] == item
    response = events[-1]["response"]
    reason = "client_cancelled" if cut_by == "response.cancel" else "turn_detected"
    assert response["status"] == "cancelled" and response["status_details"]["reason"] == reason
    assert response["output"] == [item]
    assert response["usage"]["output_tokens"] > 0, "the tokens written up to the cut are reported"

    # the conversation goes on: the caller's next words are answered
    assert after[-1]["response"]["status"] == "completed"
    (transcript,) = _of_type(after, "response.output_audio_transcript.done")
    assert transcript["transcript"] == "De acuerdo."
    conn = fake.connections[0]
    assert conn.invalid == [] and conn.errors == []
    validate_server_events(conn.sent)


def test_the_call_runs_no_tool_for_a_call_the_caller_cut_and_goes_on() -> None:
    # end_call would hang up: a cut call that ran would show in the actions as well as in the tools
    script = Script(
        greeting_ms=400,
        arguments_ms=SLOW_ARGUMENTS_MS,
        turns=[
            Turn("eso es todo", tool="end_call", arguments={"reason": "el cliente se despide"}),
            Turn("no, espere", reply="Claro, le escucho.", reply_ms=600),
        ],
    )

    async def scenario() -> tuple[CallRecord, Rig, FakeRealtime]:
        async with FakeRealtime(script, api_key=KEY, record_sent=True) as fake, call(fake.url) as rig:
            conn = fake.connections
            await wait_for(lambda: rig.session.record.transcript and rig.media.queued_ms == 0)  # the greeting
            rig.peer.say(500)
            await wait_for(lambda: "response.function_call_arguments.delta" in conn[0].sent_types)
            rig.peer.say(500)
            heard = "Claro, le escucho."
            await wait_for(lambda: any(line.text == heard for line in rig.session.record.transcript))
            await wait_for(lambda: rig.media.queued_ms == 0)
            rig.session.caller_hung_up()
            return await rig.finish(), rig, fake

    record, rig, fake = run(scenario())
    conn = fake.connections[0]
    assert "response.function_call_arguments.done" in conn.sent_types, "cut arguments, announced done"
    ends = [event["response"] for event in conn.sent if event["type"] == "response.done"]
    (cut,) = [response for response in ends if response["status"] != "completed"]
    assert cut["status"] == "cancelled" and cut["output"][0]["status"] == "incomplete"
    assert record.tools == [] and conn.function_outputs == [], "no tool ran and no output was sent"
    assert rig.control.actions == [] and record.end_reason == "caller_hangup"
    assert [(line.role, line.text) for line in record.transcript][-1] == ("assistant", "Claro, le escucho.")
    assert cut["id"] in {usage.response_id for usage in record.usage}, "the cut response's usage is recorded"
    assert conn.invalid == [] and conn.errors == []
