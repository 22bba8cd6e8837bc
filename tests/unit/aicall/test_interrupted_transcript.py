"""An interrupted reply is recorded as the caller heard it, as the model's memory is after a truncate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aicall_harness import ManualMedia, RecordingControl, ScriptedModel, run
from centralita.aicall import g711
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import (
    AudioOut,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    Transcript,
)
from centralita.aicall.record import CallRecord, heard_text
from centralita.aicall.session import CallPolicy, CallSession
from centralita.aicall.tools.base import ToolBox

REPLY = "Le explico con calma todos los pasos que vamos a seguir hoy."


@pytest.mark.parametrize(
    ("played_ms", "audio_ms", "heard"),
    [
        (4000, 4000, REPLY),
        (5000, 4000, REPLY),
        (0, 4000, ""),
        (2000, 4000, "Le explico con calma todos los"),  # 30 of 60 characters
        (2500, 4000, "Le explico con calma todos los pasos"),  # 37.5 characters end inside "que": whole words only
        (1000, 0, REPLY),  # no audio known: nothing to cut by
    ],
)
def test_heard_text_keeps_the_words_spoken_within_the_played_share(played_ms: int, audio_ms: int, heard: str) -> None:
    assert heard_text(REPLY, played_ms, audio_ms) == heard


async def _interrupted_call(transcript_first: bool) -> tuple[CallRecord, ScriptedModel, list[str]]:
    model, media = ScriptedModel(), ManualMedia("ulaw")
    session = CallSession(
        record=CallRecord("1795000000.2", "3001234567", "3241000752"),
        media=media,
        model=model,
        tools=ToolBox([]),
        control=RecordingControl(),
        policy=CallPolicy(greet=False, transfer_target=None),
        metrics=AicallMetrics(),
    )
    task = asyncio.get_running_loop().create_task(session.run())

    async def push(*events: Any) -> None:
        for event in events:
            model.queue.put_nowait(event)
        while not model.queue.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)

    await push(
        SpeechStopped("item_caller", 1500),
        Transcript("caller", "Tengo una falla", "item_caller"),
        ResponseStarted("resp_1", progress=False),
        AudioOut("item_reply", "resp_1", g711.tone(4000, "ulaw")),  # the whole reply arrived at once
    )
    if transcript_first:
        await push(Transcript("assistant", REPLY, "item_reply", "resp_1"))
    media.send_frames(100)  # 2 s of the 4 s reply played
    await push(SpeechStarted("item_caller_2", 5000))
    if not transcript_first:
        await push(Transcript("assistant", REPLY, "item_reply", "resp_1"))
    await push(None)  # the socket closes: the session reconnects with its history
    for _ in range(200):
        if len(model.histories) > 1:
            break
        await asyncio.sleep(0.01)
    session.caller_hung_up()
    record = await asyncio.wait_for(task, 10)
    assert len(model.histories) == 2, "the session reconnected after the socket closed"
    return record, model, [line.text for line in model.histories[-1]]


@pytest.mark.parametrize("transcript_first", [True, False], ids=["transcript-before", "transcript-after"])
def test_an_interrupted_reply_is_recorded_and_remembered_up_to_what_was_played(transcript_first: bool) -> None:
    record, model, restored = run(_interrupted_call(transcript_first))

    assert model.truncations == [("item_reply", 2000)]
    assistant = [line.text for line in record.transcript if line.role == "assistant"]
    assert assistant == ["Le explico con calma todos los"], "the stored reply is what the caller heard"
    assert record.turns[-1].interrupted and record.turns[-1].played_ms == 2000
    assert restored == ["Tengo una falla", "Le explico con calma todos los"], "the reconnected model remembers it"


def test_a_reply_interrupted_before_any_word_was_heard_leaves_no_assistant_line() -> None:
    async def scenario() -> CallRecord:
        model, media = ScriptedModel(), ManualMedia("ulaw")
        session = CallSession(
            record=CallRecord("1795000000.3", "3001234567", "3241000752"),
            media=media,
            model=model,
            tools=ToolBox([]),
            control=RecordingControl(),
            policy=CallPolicy(greet=False, transfer_target=None),
            metrics=AicallMetrics(),
        )
        task = asyncio.get_running_loop().create_task(session.run())
        for event in (
            ResponseStarted("resp_1", progress=False),
            AudioOut("item_reply", "resp_1", g711.tone(4000, "ulaw")),
            Transcript("assistant", REPLY, "item_reply", "resp_1"),
        ):
            model.queue.put_nowait(event)
        await asyncio.sleep(0.05)
        media.send_frames(5)  # 100 ms: not even the first word
        model.queue.put_nowait(SpeechStarted("item_caller", 300))
        await asyncio.sleep(0.05)
        session.caller_hung_up()
        return await asyncio.wait_for(task, 10)

    record = run(scenario())
    assert [line for line in record.transcript if line.role == "assistant"] == []
