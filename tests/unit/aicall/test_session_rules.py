"""The call session's rules when events come in awkward orders: several replies cut by one barge-in,
a farewell the caller talks over, a response refused or failed, a model socket slow to open."""

from __future__ import annotations

import asyncio
from typing import Any

from aicall_harness import ManualMedia, RecordingControl, ScriptedModel, run
from centralita.aicall import g711
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import (
    AudioOut,
    FunctionCall,
    ModelError,
    ModelUnavailable,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    Transcript,
)
from centralita.aicall.record import CallRecord
from centralita.aicall.session import CUE_PREFIX, CallPolicy, CallSession, call_tools
from centralita.aicall.tools.base import Tool, ToolBox


class Call:
    """A session on a scripted model and a media path whose frames leave when the test says so."""

    def __init__(self, *, policy: CallPolicy | None = None, tools: list[Tool] | None = None) -> None:
        self.model, self.media, self.control = ScriptedModel(), ManualMedia("ulaw"), RecordingControl()
        policy = policy or CallPolicy(greet=False, transfer_target="6000")
        self.session = CallSession(
            record=CallRecord("1795000000.9", "3001234567", "3241000752"),
            media=self.media,
            model=self.model,
            tools=ToolBox(tools if tools is not None else call_tools(policy.transfer_target)),
            control=self.control,
            policy=policy,
            metrics=AicallMetrics(),
        )
        self.control.session = self.session
        self.task: asyncio.Task[CallRecord] | None = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.session.run())
        await asyncio.sleep(0.02)

    async def push(self, *events: Any) -> None:
        for event in events:
            self.model.queue.put_nowait(event)
        while not self.model.queue.empty() and not self.session.ended:  # an ended call reads no more
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    async def finish(self) -> CallRecord:
        assert self.task is not None
        if not self.task.done():
            self.session.caller_hung_up()
        return await asyncio.wait_for(self.task, 10)


def reply(response: str, item: str, ms: int, status: str = "completed", calls: tuple[str, ...] = ()) -> list[Any]:
    return [
        ResponseStarted(response, progress=False),
        AudioOut(item, response, g711.tone(ms, "ulaw")),
        ResponseDone(response, status, None, function_calls=calls),
    ]


def test_one_barge_in_truncates_every_reply_that_lost_audio_and_drops_their_late_audio() -> None:
    async def scenario() -> tuple[Call, int]:
        call = Call()
        await call.start()
        await call.push(SpeechStopped("item_caller", 900), *reply("resp_1", "item_1", 1000))
        await call.push(*reply("resp_2", "item_2", 1000))  # queued behind the first, not heard at all
        call.media.send_frames(25)  # 500 ms of the first reply
        await call.push(SpeechStarted("item_caller_2", 3000))
        await call.push(AudioOut("item_2", "resp_2", g711.tone(200, "ulaw")))  # in flight before the cut
        queued = call.media.queued_ms
        await call.finish()
        return call, queued

    call, queued = run(scenario())
    assert call.model.truncations == [("item_1", 500), ("item_2", 0)], "the model forgets what was never heard"
    assert queued == 0, "no audio of the cut replies after the barge-in"
    assert call.session.record.turns[-1].interrupted and call.session.record.turns[-1].played_ms == 500
    assert call.session.metrics.barge_ins.value() == 1


def test_an_answer_queued_behind_the_progress_phrase_is_truncated_when_the_caller_speaks() -> None:
    async def scenario() -> tuple[Call, int]:
        call = Call()
        await call.start()
        await call.push(
            ResponseStarted("resp_progress", progress=True),
            AudioOut("item_progress", "resp_progress", g711.tone(800, "ulaw")),
            ResponseDone("resp_progress", "completed", None, progress=True),
            *reply("resp_answer", "item_answer", 1500),
        )
        call.media.send_frames(10)  # 200 ms of the phrase
        await call.push(SpeechStarted("item_caller", 4000))
        await call.push(AudioOut("item_progress", "resp_progress", g711.tone(100, "ulaw")))
        queued = call.media.queued_ms
        await call.finish()
        return call, queued

    call, queued = run(scenario())
    assert call.model.truncations == [("item_answer", 0)], "the phrase is not in the conversation; the answer is"
    assert queued == 0


def _transfer_decided(response: str = "resp_1", status: str = "completed") -> list[Any]:
    return [
        ResponseStarted(response, progress=False),
        FunctionCall("call_1", "transfer_to_human", '{"reason": "técnico"}', response),
        ResponseDone(response, status, None, function_calls=("call_1",)),
    ]


def test_a_caller_who_speaks_over_the_farewell_is_not_transferred_after_a_later_reply() -> None:
    async def scenario() -> Call:
        call = Call()
        await call.start()
        await call.push(*_transfer_decided())
        assert call.model.outputs == [("call_1", '{"ok":true}')] and call.model.responses == [None]
        await call.push(*reply("resp_farewell", "item_farewell", 1500))  # "le paso con un técnico"
        call.media.send_frames(10)
        await call.push(SpeechStarted("item_caller", 5000))  # "¡no, espere, ya funciona!"
        await call.push(*reply("resp_3", "item_3", 400))  # "perfecto, ¿algo más?"
        call.media.send_frames(30)
        await asyncio.sleep(0.3)
        assert not call.session.ended
        assert call.control.actions == [], "the caller stays with the assistant"
        await call.finish()
        return call

    call = run(scenario())
    assert call.session.record.end_reason == "caller_hangup"


def test_a_farewell_cancelled_by_the_caller_does_not_leave_the_hang_up_for_the_next_reply() -> None:
    async def scenario() -> Call:
        call = Call()
        await call.start()
        await call.push(
            ResponseStarted("resp_1", progress=False),
            FunctionCall("call_1", "end_call", "{}", "resp_1"),
            ResponseDone("resp_1", "completed", None, function_calls=("call_1",)),
        )
        await call.push(*reply("resp_bye", "item_bye", 300, status="cancelled"))
        await call.push(*reply("resp_3", "item_3", 300))
        call.media.send_frames(40)
        await asyncio.sleep(0.3)
        assert call.control.actions == [] and not call.session.ended
        await call.finish()
        return call

    call = run(scenario())
    assert call.session.record.end_reason == "caller_hangup"


def test_a_transfer_asked_for_in_a_response_that_was_cancelled_is_not_done() -> None:
    async def scenario() -> Call:
        call = Call()
        await call.start()
        await call.push(*_transfer_decided(status="cancelled"))
        await call.push(*reply("resp_2", "item_2", 300))
        call.media.send_frames(20)
        await asyncio.sleep(0.3)
        assert call.control.actions == []
        await call.finish()
        return call

    call = run(scenario())
    assert call.model.outputs == [("call_1", '{"ok":true}')], "the call still gets its output"
    assert call.session.record.end_reason == "caller_hangup"


def test_the_farewell_heard_to_its_end_is_followed_by_the_transfer() -> None:
    async def scenario() -> CallRecord:
        call = Call()
        await call.start()
        await call.push(*_transfer_decided())
        await call.push(*reply("resp_farewell", "item_farewell", 300))
        call.media.send_frames(20)
        return await asyncio.wait_for(call.task, 10)

    record = run(scenario())
    assert record.end_reason == "transferred" and record.transferred_to == "6000"


def test_a_tool_answer_waits_for_the_reply_the_server_is_making_to_the_callers_new_words() -> None:
    finish = asyncio.Event()

    async def lookup(args: dict[str, Any]) -> dict[str, Any]:
        await finish.wait()
        return {"online": True}

    tool = Tool("customer_status", "state", {"type": "object", "properties": {}}, lookup, timeout=5)

    async def scenario() -> tuple[list[str | None], list[str | None], list[str | None]]:
        call = Call(tools=[tool])
        await call.start()
        await call.push(
            ResponseStarted("resp_1", progress=False),
            FunctionCall("call_1", "customer_status", "{}", "resp_1"),
            ResponseDone("resp_1", "completed", None, function_calls=("call_1",)),
            SpeechStopped("item_caller", 3000),  # "¿sigue ahí?"
            ResponseStarted("resp_auto", progress=False),  # the server answers it by itself
        )
        finish.set()
        await asyncio.sleep(0.1)
        while_busy = list(call.model.responses)
        await call.push(AudioOut("item_auto", "resp_auto", g711.tone(200, "ulaw")))
        await call.push(ResponseDone("resp_auto", "completed", None))
        after = list(call.model.responses)
        await call.push(ModelError("conversation_already_has_active_response", "busy"))
        await call.push(*reply("resp_4", "item_4", 100))
        last = list(call.model.responses)
        await call.finish()
        return while_busy, after, last

    while_busy, after, last = run(scenario())
    assert while_busy == [], "no response.create while another response is in progress"
    assert after == [None], "the answer is asked for once that response is done"
    assert last == [None, None], "a refused response.create is asked again after the next response"


def test_while_the_model_socket_is_slow_to_open_the_caller_hears_the_cue_and_then_the_apology() -> None:
    async def scenario() -> tuple[Call, CallRecord, list[str]]:
        call = Call(policy=CallPolicy(greet=True, transfer_target="6000", connect_timeout=5, cue_after=0.3))
        call.model.connect_delay = 1.0
        call.model.refuse = ModelUnavailable("realtime connect to api failed: timed out")
        await call.start()
        await asyncio.sleep(0.8)
        queued = [chunk.item_id for chunk in call.media.playout.chunks]
        record = await asyncio.wait_for(call.task, 10)
        return call, record, queued

    call, record, queued = run(scenario())
    assert any(item.startswith(CUE_PREFIX) for item in queued), "the cue plays while the socket opens"
    assert record.end_reason == "model_unavailable_transferred"
    assert call.control.actions == [("apology", None), ("transfer", "6000")]


def test_a_greeting_slow_to_come_is_covered_by_the_cue_until_its_audio_arrives() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        call = Call(policy=CallPolicy(greet=True, transfer_target="6000", cue_after=0.3))
        await call.start()
        await asyncio.sleep(0.8)
        before = [chunk.item_id for chunk in call.media.playout.chunks]
        call.media.playout.clear()
        await call.push(*reply("resp_greeting", "item_greeting", 2000))
        await asyncio.sleep(0.8)
        after = [chunk.item_id for chunk in call.media.playout.chunks]
        await call.finish()
        return before, after

    before, after = run(scenario())
    assert any(item.startswith(CUE_PREFIX) for item in before)
    assert after == ["item_greeting"], "no cue once the greeting is playing"


def test_a_session_the_service_refuses_ends_in_the_apology_and_a_person_not_in_silence() -> None:
    async def scenario() -> tuple[Call, CallRecord]:
        call = Call()
        await call.start()
        await call.push(ModelError("invalid_value", "Invalid 'session.max_output_tokens'", fatal=True))
        return call, await asyncio.wait_for(call.task, 10)

    call, record = run(scenario())
    assert record.end_reason == "model_unavailable_transferred"
    assert call.control.actions == [("apology", None), ("transfer", "6000")]
    assert call.model.closed >= 1
    assert len(call.model.histories) == 1, "the socket closed on purpose is not opened again"


def test_a_failed_greeting_ends_in_the_apology_and_a_person() -> None:
    async def scenario() -> tuple[Call, CallRecord]:
        call = Call(policy=CallPolicy(greet=True, transfer_target="6000"))
        await call.start()
        await call.push(
            ResponseStarted("resp_1", progress=False), ResponseDone("resp_1", "failed", "insufficient_quota")
        )
        return call, await asyncio.wait_for(call.task, 10)

    call, record = run(scenario())
    assert record.end_reason == "model_unavailable_transferred"
    assert call.session.metrics.realtime_errors.value(code="response_failed:insufficient_quota") == 1


def test_a_failed_reply_is_asked_again_once_and_a_second_failure_ends_in_a_person() -> None:
    async def scenario() -> tuple[list[str | None], CallRecord]:
        call = Call()
        await call.start()
        await call.push(SpeechStopped("item_caller", 900), ResponseStarted("resp_1", progress=False))
        await call.push(ResponseDone("resp_1", "failed", "server_error"))
        asked = list(call.model.responses)
        assert not call.session.ended
        await call.push(ResponseStarted("resp_2", progress=False), ResponseDone("resp_2", "failed", "server_error"))
        return asked, await asyncio.wait_for(call.task, 10)

    asked, record = run(scenario())
    assert asked == [None]
    assert record.end_reason == "model_unavailable_transferred"


def test_the_callers_words_keep_their_place_before_the_reply_when_their_transcription_comes_late() -> None:
    async def scenario() -> tuple[CallRecord, list[list[str]]]:
        call = Call()
        await call.start()
        await call.push(SpeechStopped("item_caller_1", 900), *reply("resp_1", "item_1", 300))
        await call.push(Transcript("assistant", "Sí, dígame.", "item_1", "resp_1"))
        await call.push(Transcript("caller", "¿Hola?", "item_caller_1"))  # the transcription, after the reply's
        await call.push(SpeechStopped("item_caller_2", 3000))  # this one's transcription never comes
        await call.push(None)  # the socket closes: the conversation is restored from what was said
        for _ in range(200):
            if len(call.model.histories) > 1:
                break
            await asyncio.sleep(0.01)
        record = await call.finish()
        return record, [[line.text for line in history] for history in call.model.histories]

    record, histories = run(scenario())
    lines = [(line.role, line.text) for line in record.transcript]
    assert lines == [("caller", "¿Hola?"), ("assistant", "Sí, dígame.")], "no empty line for the lost transcription"
    assert histories[-1] == ["¿Hola?", "Sí, dígame."], "the restored model hears the question before the answer"


def test_a_call_stopped_from_outside_is_recorded_as_agent_stopped_and_leaves_the_gauges_right() -> None:
    async def scenario() -> tuple[Call, CallRecord]:
        call = Call()
        await call.start()
        await call.push(SpeechStopped("item_caller", 900), *reply("resp_1", "item_1", 300))
        assert call.task is not None
        call.task.cancel()  # the agent's stop deadline
        await asyncio.gather(call.task, return_exceptions=True)
        return call, call.session.record

    call, record = run(scenario())
    assert record.end_reason == "agent_stopped" and record.ended_at is not None
    assert call.session.metrics.active_calls.value() == 0
    assert call.session.metrics.calls.value(reason="agent_stopped") == 1
    assert call.model.closed >= 1
