"""One AI call: the caller's media leg, one model session, tools, and the rules between them.

Rules the caller can hear:
- The assistant's audio goes out at one frame per 20 ms (the media path's job).
- When the caller talks over the assistant, queued audio is dropped at once and the
  model is told how much of its reply was really played (``truncate``), so what it
  remembers is what the caller heard.
- Tools run as tasks; after ``progress_delay`` a short phrase is spoken, and a soft
  cue fills any longer silence, so a slow router never means dead air.
- A dropped model socket is reopened within ``reconnect_window`` with the
  conversation replayed; if that fails the caller hears an apology and is
  transferred (or the call ends).
Every task started here is owned by the session and cancelled when the call ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from centralita.aicall import g711
from centralita.aicall.media import MediaPath
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import (
    AudioOut,
    Disconnected,
    FunctionCall,
    HistoryLine,
    ModelError,
    ModelEvent,
    ModelSession,
    ModelUnavailable,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    Transcript,
)
from centralita.aicall.realtime import ACTIVE_RESPONSE_ERROR, HARMLESS_ERRORS
from centralita.aicall.record import CallRecord, TranscriptLine, TurnRecord, UsageRecord, heard_text
from centralita.aicall.tools.base import Tool, ToolBox, ToolOutcome

log = logging.getLogger("centralita.aicall.session")

CUE_PREFIX = "local-cue-"
TRANSFER_TOOL = "transfer_to_human"
END_TOOL = "end_call"


class CallControl(Protocol):
    """What the session may do to the call in Asterisk (ARI in production)."""

    async def transfer(self, target: str) -> None: ...

    async def hangup(self) -> None: ...

    async def play_apology(self) -> None: ...


@dataclass(frozen=True)
class CallPolicy:
    progress_phrase: str = "Un momento, por favor."
    progress_delay: float = 1.5
    progress_repeat: float = 8.0
    cue_after: float = 2.0  # seconds of silence while waiting before the soft cue plays
    reconnect_window: float = 5.0
    connect_timeout: float = 5.0
    transfer_target: str | None = None
    greet: bool = True
    drain_timeout: float = 10.0
    max_call_seconds: float = 3300.0  # a Realtime session lasts at most 60 minutes
    input_frames: int = 1  # caller frames per append: 2 halves the socket writes for 20 ms more delay
    reconnect_instructions: str = (
        "La conexión se interrumpió un instante. Discúlpate en una frase corta y continúa donde ibas."
    )


def call_tools(transfer_target: str | None) -> list[Tool]:
    """``transfer_to_human`` and ``end_call``: the session acts on them after the reply is spoken."""

    async def accepted(args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    tools = [
        Tool(
            END_TOOL,
            "End the call after saying goodbye, when the caller has what they needed or asks to hang up.",
            {"type": "object", "properties": {"reason": {"type": "string"}}, "additionalProperties": False},
            accepted,
            timeout=2,
        )
    ]
    if transfer_target:
        tools.append(
            Tool(
                TRANSFER_TOOL,
                "Transfer the caller to a human agent: when they ask for a person, when the problem needs a "
                "technician, or when you cannot help.",
                {"type": "object", "properties": {"reason": {"type": "string"}}, "additionalProperties": False},
                accepted,
                timeout=2,
            )
        )
    return tools


class CallSession:
    def __init__(
        self,
        *,
        record: CallRecord,
        media: MediaPath,
        model: ModelSession,
        tools: ToolBox,
        control: CallControl,
        policy: CallPolicy,
        metrics: AicallMetrics,
    ) -> None:
        self.record = record
        self.media = media
        self.model = model
        self.tools = tools
        self.control = control
        self.policy = policy
        self.metrics = metrics
        self.name = record.call_id
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tool_tasks: dict[str, asyncio.Task[ToolOutcome]] = {}
        self._tool_calls: dict[str, tuple[FunctionCall, float, float]] = {}  # call id -> (call, wall, monotonic)
        self._calls_of: dict[str, list[tuple[str, str]]] = {}
        self._end = asyncio.Event()
        self._end_reason = ""
        self._ending_as: str | None = None
        self._waiting: set[str] = set()  # what the caller waits for: tool calls, a reconnection
        self._wait_began = asyncio.Event()  # wakes the silence filler, which sleeps while nothing is waited for
        self._progress_responses: set[str] = set()
        self._item_response: dict[str, str] = {}
        self._cancelled_items: set[str] = set()
        self._item_audio: dict[str, int] = {}  # bytes of reply audio received per item
        self._heard: dict[str, tuple[int, int]] = {}  # cut items: (played ms, audio ms received by then)
        self._active_response: str | None = None
        self._turn: TurnRecord | None = None
        self._turn_started = 0.0
        self._requested: dict[str, tuple[str, str | None]] = {}  # call id -> the transfer or hang-up it asks for
        self._pending_action: tuple[str, str | None] | None = None  # decided: done after the farewell is heard
        self._action_spoken = False  # the farewell's response was asked for
        self._farewell: str | None = None  # that response's id, once it started
        self._action_task: asyncio.Task[None] | None = None
        self._action_committed = False  # the farewell was heard: the transfer or hang-up is on its way
        self._respond_when_idle = False  # a response.create waits for the conversation's response in progress
        self._failed_responses = 0  # conversation responses failed in a row
        self._greeting_pending = False  # the greeting was asked for and none of its audio has come
        self._given_up = False  # the service refused the call: the socket is closed on purpose, not restored
        self._reconnecting = False
        self._history: list[tuple[str, HistoryLine]] = []  # (item id, what was said) for a reconnection
        self._caller_lines: dict[str, TranscriptLine] = {}  # caller turns whose transcription has not come
        self._cue_ids = itertools.count(1)
        self._input = bytearray()
        self._idle_since = time.monotonic()
        self._cue = (
            g711.tone(120, media.law, 660, 1500) + g711.silence(media.law, 4) + g711.tone(120, media.law, 660, 1500)
        )

    # lifecycle ---------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: task %s failed", self.name, task.get_name(), exc_info=task.exception())
            self.end("error")

    def end(self, reason: str) -> None:
        """Ask the call to finish; the first reason given is the one recorded.

        While the session itself transfers or hangs up, Asterisk reports the caller
        leaving before the request returns; that report must not become the reason.
        """
        if not self._end_reason:
            self._end_reason = self._ending_as or reason
        self._end.set()

    def caller_hung_up(self) -> None:
        self.end("caller_hangup")

    @property
    def ended(self) -> bool:
        return self._end.is_set()

    async def run(self) -> CallRecord:
        """Drive the call until it ends; always releases everything it opened."""
        self.metrics.active_calls.inc()
        self.record.media_kind = self.media.kind
        self.media.on_audio(self._caller_audio)
        self.media.on_item_start(self._item_started)
        self.model.on_audio_out(self._audio_out)
        try:
            # the caller is answered already: while the model's socket opens, the cue breaks the silence
            self._spawn(self._fill_silence(), "cue")
            self._begin_waiting("connect")
            try:
                await asyncio.wait_for(self.model.connect(), self.policy.connect_timeout)
            except (ModelUnavailable, TimeoutError) as exc:
                self._waiting.discard("connect")
                log.error("call %s: model unavailable: %s", self.name, exc)
                self.metrics.realtime_errors.inc(code="connect_failed")
                await self._fallback("model_unavailable")
            else:
                self._waiting.discard("connect")
                if self.policy.greet:
                    self._greeting_pending = True
                    self._begin_waiting("greeting")  # until its first audio: the cue covers a slow start
                    await self.model.respond()
                self._spawn(self._conversation(), "conversation")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._end.wait(), self.policy.max_call_seconds)
                if not self._end.is_set():
                    await self._fallback("max_duration")
        except asyncio.CancelledError:
            self.end("agent_stopped")  # stopped from outside: the agent's own end, not the caller's
            raise
        finally:
            await self._close()
        return self.record

    async def _close(self) -> None:
        try:
            tools = list(self._tool_tasks.values())
            self._abandon_tools("the call ended before the tool finished")
            tasks = list(self._tasks) + tools
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()
            await self.model.close()
            await self.media.close()
        finally:  # cut short too (the agent's stop deadline), the record and the gauges are right
            self._finish_record()

    def _finish_record(self) -> None:
        # The media and the model hold this session's bound methods as it holds them: dropping those
        # references lets a finished call be freed at once instead of waiting, with every object it made,
        # for the garbage collector's next pass over the old generation (a pause every call's audio shares).
        self.media.on_audio(None)
        self.media.on_item_start(None)
        self.model.on_audio_out(None)
        stats = self.media.stats
        log.info(
            "call %s: %s media sent %d frames (%d of reply audio), worst gap between frames %.1f ms",
            self.name, self.media.kind, stats.frames, stats.audio_frames, stats.max_gap_ms,
        )  # fmt: skip
        # a caller turn whose transcription never came (it failed, or the call ended first) has no words to keep
        self.record.transcript = [line for line in self.record.transcript if line.text]
        self.record.end_reason = self._end_reason or "caller_hangup"
        self.record.ended_at = time.time()
        self.metrics.active_calls.dec()
        self.metrics.calls.inc(reason=self.record.end_reason)

    async def _fallback(self, reason: str) -> None:
        """The model is gone: apologise with a recorded prompt, then a human or a hang-up."""
        try:
            await self.control.play_apology()
            if self.policy.transfer_target:
                await self._transfer(self.policy.transfer_target, f"{reason}_transferred")
            else:
                self._ending_as = reason
                await self.control.hangup()
                self.end(reason)
        except Exception:  # the caller may have gone meanwhile; the call still ends cleanly
            log.exception("call %s: fallback after %s failed", self.name, reason)
            self.end(reason)

    async def _transfer(self, target: str, reason: str) -> None:
        self._ending_as = reason
        self.record.transferred_to = target
        try:
            await self.control.transfer(target)
        except Exception:  # refused: the call is not transferred (a cancellation means it was sent)
            self._ending_as = None
            self.record.transferred_to = None
            raise
        self.end(reason)

    # the model's events ---------------------------------------------------------

    async def _conversation(self) -> None:
        while not self._end.is_set():
            async for event in self.model.events():
                await self._handle(event)
            if self._end.is_set() or self._given_up:
                return
            if not await self._reconnect():
                await self._fallback("model_lost")
                return

    async def _reconnect(self) -> bool:
        self._reconnecting = True
        self._begin_waiting("reconnect")
        self.record.reconnects += 1
        self.media.flush()
        self._abandon_tools("the model connection was lost while the tool ran")
        self._calls_of.clear()
        self._active_response = None
        deadline = time.monotonic() + self.policy.reconnect_window
        delay = 0.2
        try:
            while time.monotonic() < deadline:
                remaining = deadline - time.monotonic()
                history = [line for _, line in self._history if line.text]
                try:
                    await asyncio.wait_for(
                        self.model.connect(history=history), min(remaining, self.policy.connect_timeout)
                    )
                except (ModelUnavailable, TimeoutError) as exc:
                    log.warning("call %s: model reconnect failed: %s", self.name, exc)
                    await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                    delay = min(delay * 2, 1.0)
                    continue
                self.metrics.reconnects.inc(outcome="restored")
                log.info("call %s: model socket restored with %d lines of history", self.name, len(self._history))
                await self.model.respond(self.policy.reconnect_instructions)
                return True
            self.metrics.reconnects.inc(outcome="failed")
            return False
        finally:
            self._reconnecting = False
            self._waiting.discard("reconnect")

    def _audio_out(self, event: AudioOut) -> None:
        """Reply audio: queued for the caller (from the conversation task, or from the model's reader)."""
        if event.item_id in self._cancelled_items:
            return
        if self._greeting_pending:
            self._greeting_over()
        self._item_response.setdefault(event.item_id, event.response_id)
        self._item_audio[event.item_id] = self._item_audio.get(event.item_id, 0) + len(event.audio)
        self.media.play(event.audio, event.item_id)

    async def _handle(self, event: ModelEvent) -> None:
        if isinstance(event, AudioOut):
            self._audio_out(event)
        elif isinstance(event, SpeechStarted):
            self._barge_in()
        elif isinstance(event, SpeechStopped):
            now = time.monotonic()
            started = event.speech_end_at if event.speech_end_at is not None and event.speech_end_at <= now else now
            self._turn = TurnRecord(time.time() - (now - started))
            self._turn_started = started
            self.record.turns.append(self._turn)
            self._hold_caller_line(event.item_id)
        elif isinstance(event, Transcript):
            self._transcript(event)
        elif isinstance(event, ResponseStarted):
            if event.progress:
                self._progress_responses.add(event.response_id)
            else:
                self._active_response = event.response_id
                if self._action_spoken and self._farewell is None:
                    self._farewell = event.response_id
        elif isinstance(event, FunctionCall):
            self._start_tool(event)
        elif isinstance(event, ResponseDone):
            self._response_done(event)
        elif isinstance(event, ModelError):
            self.metrics.realtime_errors.inc(code=event.code)
            if event.code not in HARMLESS_ERRORS:
                log.warning("call %s: model error %s: %s", self.name, event.code, event.message)
            if event.code == ACTIVE_RESPONSE_ERROR:
                self._respond_when_idle = True  # refused while a reply was going: asked again when it is done
            elif event.fatal and not self._end.is_set():
                self._spawn(self._model_refused(event), "refused")
        elif isinstance(event, Disconnected):
            if not self._end.is_set():
                log.warning("call %s: model socket dropped: %s", self.name, event.reason)

    def _caller_audio(self, audio: bytes) -> None:
        if self._reconnecting:
            return
        if self.policy.input_frames <= 1:
            self.model.send_audio(audio)
            return
        self._input.extend(audio)
        if len(self._input) >= self.policy.input_frames * g711.FRAME_BYTES:
            self.model.send_audio(bytes(self._input))
            self._input.clear()

    def _item_started(self, item_id: str, at: float) -> None:
        if item_id.startswith(CUE_PREFIX):
            return
        turn = self._turn
        if turn is not None and turn.first_audio_at is None:
            latency = at - self._turn_started
            turn.first_audio_at = time.time()
            turn.latency_ms = round(latency * 1000)
            self.metrics.first_audio.observe(latency)

    def _barge_in(self) -> None:
        """The caller talks over the assistant: every queued reply is dropped, and each one that lost
        audio is truncated at what was played (the one playing, and any queued behind it unheard)."""
        played = self.media.flush()
        items: dict[str, tuple[int, int]] = {}  # item -> (ms played, ms dropped), in playing order
        if played.item_id is not None:
            items[played.item_id] = (played.played_ms, 0 if played.cuts else played.dropped_ms)
        for cut in played.cuts:
            items[cut.item_id] = (cut.played_ms, cut.dropped_ms)
        interrupted = False
        for item, (played_ms, dropped_ms) in items.items():
            if item.startswith(CUE_PREFIX):
                continue
            response = self._item_response.get(item)
            if response in self._progress_responses:
                if dropped_ms > 0:
                    self._cancelled_items.add(item)  # the rest of the phrase must not follow the caller's words
                continue  # out-of-band phrases are not in the conversation: nothing to truncate
            still_going = response is not None and response == self._active_response
            if dropped_ms <= 0 and not still_going:
                continue  # the reply had been heard in full
            self._cancelled_items.add(item)
            if not interrupted and self.record.turns:
                self.record.turns[-1].interrupted = True
                self.record.turns[-1].played_ms = played_ms
            interrupted = True
            self._cut_transcript(item, played_ms)
            log.info("call %s: barge-in, %s heard %d ms, dropped %d ms", self.name, item, played_ms, dropped_ms)
            self._spawn(self.model.truncate(item, played_ms), "truncate")
        if interrupted:
            self.metrics.barge_ins.inc()
            self._farewell_interrupted()

    def _farewell_interrupted(self) -> None:
        """The caller spoke over the farewell before it was heard: the transfer or hang-up waits for the
        model's next decision (it hears what the caller said) instead of following a later reply."""
        if self._pending_action is None or self._action_committed:
            return
        log.info("call %s: the caller spoke over the farewell: %s not done", self.name, self._pending_action[0])
        self._pending_action = None
        self._action_spoken = False
        self._farewell = None
        task, self._action_task = self._action_task, None
        if task is not None and not task.done():
            task.cancel()

    def _cut_transcript(self, item: str, played_ms: int) -> None:
        """Keep of an interrupted reply only what the caller heard, as the model's truncated memory does.

        The reply's transcript may already be recorded (the model speaks faster than real time)
        or come later; either way it is cut at the share of the reply's audio that was played.
        """
        self._heard[item] = (played_ms, g711.duration_ms(self._item_audio.get(item, 0)))
        for line in self.record.transcript:
            if line.item_id == item and line.role == "assistant":
                line.text = heard_text(line.text, *self._heard[item])
        self.record.transcript = [line for line in self.record.transcript if line.text or line.role == "caller"]
        for index, (item_id, entry) in enumerate(self._history):
            if item_id == item:
                self._history[index] = (item_id, HistoryLine(entry.role, heard_text(entry.text, *self._heard[item])))
        self._history = [(item_id, entry) for item_id, entry in self._history if entry.text or entry.role == "caller"]

    def _hold_caller_line(self, item_id: str) -> None:
        """The caller's turn ended: their line takes its place now, before the reply's, and gets its words
        when the transcription comes (the service sends it when ready, often after a short reply's)."""
        if not item_id or item_id in self._caller_lines:
            return
        line = TranscriptLine("caller", "", time.time(), item_id)
        self._caller_lines[item_id] = line
        self.record.transcript.append(line)
        self._history.append((item_id, HistoryLine("caller", "")))

    def _transcript(self, event: Transcript) -> None:
        progress = event.response_id in self._progress_responses if event.response_id else False
        text = event.text.strip()
        if event.role == "assistant" and event.item_id in self._heard:
            text = heard_text(text, *self._heard[event.item_id])
        if not text:
            return
        held = self._caller_lines.pop(event.item_id, None) if event.role == "caller" else None
        if held is not None:  # its place in the conversation was kept when the caller stopped speaking
            held.text = text
            for index, (item_id, entry) in enumerate(self._history):
                if item_id == event.item_id and entry.role == "caller":
                    self._history[index] = (item_id, HistoryLine("caller", text))
            return
        self.record.transcript.append(TranscriptLine(event.role, text, time.time(), event.item_id, progress))
        if not progress:
            self._history.append((event.item_id, HistoryLine(event.role, text)))

    # tools -------------------------------------------------------------------------

    def _start_tool(self, call: FunctionCall) -> None:
        self._calls_of.setdefault(call.response_id, []).append((call.call_id, call.name))
        if call.name == TRANSFER_TOOL and self.policy.transfer_target:
            self._requested[call.call_id] = ("transfer", self.policy.transfer_target)
        elif call.name == END_TOOL:
            self._requested[call.call_id] = ("hangup", None)
        task = asyncio.get_running_loop().create_task(
            self.tools.run(call.name, call.arguments), name=f"tool-{call.name}-{self.name}"
        )
        self._tool_tasks[call.call_id] = task
        self._tool_calls[call.call_id] = (call, time.time(), time.monotonic())
        self._begin_waiting(call.call_id)
        self._spawn(self._progress(task), "progress")

    async def _progress(self, task: asyncio.Task[ToolOutcome]) -> None:
        """Say the short phrase while a tool is slow, again every ``progress_repeat`` seconds."""
        delay = self.policy.progress_delay
        while True:
            done, _ = await asyncio.wait({task}, timeout=delay)
            if done:
                return
            await self.model.say_progress(f'Di solamente, en tono amable y breve: "{self.policy.progress_phrase}"')
            delay = self.policy.progress_repeat

    def _response_done(self, event: ResponseDone) -> None:
        if event.usage:
            self.record.usage.append(UsageRecord(event.response_id, time.time(), event.usage))
        if event.progress:
            return
        if self._greeting_pending:
            self._greeting_over()
        was_active = self._active_response == event.response_id
        if was_active:
            self._active_response = None
        if event.status == "failed":
            self._response_failed(event)
        else:
            self._failed_responses = 0
        completed = event.status == "completed"
        calls = self._calls_of.pop(event.response_id, [])
        if calls:
            self._spawn(self._submit(calls, completed), "submit")
        elif self._pending_action is not None and self._action_spoken and event.response_id == self._farewell:
            self._farewell = None
            if completed:  # still pending while the farewell plays: the caller may speak over it
                self._action_task = self._spawn(self._act(self._pending_action), "action")
            else:  # the farewell was cut off: the model decides again with what the caller says
                action = self._pending_action[0]
                log.info("call %s: the farewell ended %s: %s not done", self.name, event.status, action)
                self._pending_action = None
                self._action_spoken = False
        if self._respond_when_idle and self._active_response is None and not self._end.is_set():
            self._respond_when_idle = False
            self._ask_reply()

    def _response_failed(self, event: ResponseDone) -> None:
        """A reply the service could not make (quota, rate limit, server error): asked again once; a second
        failure in a row, or a failed greeting, means the model cannot serve this call."""
        self._failed_responses += 1
        self.metrics.realtime_errors.inc(code=f"response_failed:{event.reason or 'unknown'}")
        log.warning("call %s: response %s failed: %s", self.name, event.response_id, event.reason or "no reason given")
        if self._end.is_set():
            return
        if self._failed_responses >= 2 or not self.record.turns:
            failure = ModelError(event.reason or "response_failed", "the response failed")
            self._spawn(self._model_refused(failure), "refused")
        else:
            self._spawn(self.model.respond(), "respond")

    def _greeting_over(self) -> None:
        self._greeting_pending = False
        self._waiting.discard("greeting")

    async def _model_refused(self, error: ModelError) -> None:
        """The service refuses to serve the call (its session settings, quota): the caller hears the
        apology and a person, as when it cannot be reached, not silence."""
        log.error("call %s: the model cannot serve the call: %s %s", self.name, error.code, error.message)
        self._given_up = True
        self._waiting.clear()
        await self.model.close()
        self.media.flush()
        await self._fallback("model_unavailable")

    async def _submit(self, calls: list[tuple[str, str]], completed: bool = True) -> None:
        """After the function call's response is done: every output, then one new response.

        A call abandoned meanwhile (the model socket dropped) was recorded then, and the new
        session never asked for it: it is neither recorded again nor answered. A transfer or
        hang-up is decided only by a call whose response completed and whose tool said ok (a
        cancelled response's call may carry cut arguments); it is done after the farewell.
        """
        submitted = False
        for call_id, name in calls:
            requested = self._requested.pop(call_id, None)
            task = self._tool_tasks.get(call_id)
            if task is None:
                continue
            try:
                outcome = await task
            finally:
                owned = self._tool_tasks.get(call_id) is task
                if owned:
                    del self._tool_tasks[call_id]
                    self._tool_calls.pop(call_id, None)
                    self._waiting.discard(call_id)
            if not owned:
                continue
            self.record.tools.append(outcome)
            self.metrics.tool_seconds.observe(outcome.duration, tool=name, outcome=outcome.outcome)
            log.info("call %s: tool %s %s in %.2f s", self.name, name, outcome.outcome, outcome.duration)
            await self.model.tool_result(call_id, outcome.output)
            submitted = True
            if requested is not None and completed and outcome.outcome == "ok":
                self._pending_action = requested
        if not submitted:
            return
        if self._active_response is not None:
            # the server answers the caller's new words meanwhile: a second response would be refused
            self._respond_when_idle = True
            return
        self._ask_reply()

    def _ask_reply(self) -> None:
        """A new response: the answer to the tool outputs (the farewell, when a transfer or hang-up waits)."""
        if self._pending_action is not None:
            self._action_spoken = True
            self._farewell = None
        self._spawn(self.model.respond(), "respond")

    def _abandon_tools(self, why: str) -> None:
        """Every tool call whose output the model will never get is recorded: its result, or cancelled."""
        for call_id, task in list(self._tool_tasks.items()):
            call, started_wall, started = self._tool_calls.pop(call_id)
            if task.done() and not task.cancelled() and task.exception() is None:
                outcome = task.result()
            else:
                task.cancel()
                try:
                    arguments: dict[str, Any] | str = json.loads(call.arguments or "{}")
                except ValueError:
                    arguments = call.arguments
                outcome = ToolOutcome(
                    call.name, arguments, {"error": why}, "cancelled", started_wall, time.monotonic() - started
                )
            self._requested.pop(call_id, None)
            self.record.tools.append(outcome)
            self.metrics.tool_seconds.observe(outcome.duration, tool=call.name, outcome=outcome.outcome)
            took = outcome.duration
            log.info("call %s: tool %s %s after %.2f s: %s", self.name, call.name, outcome.outcome, took, why)
            self._waiting.discard(call_id)
        self._tool_tasks.clear()

    async def _act(self, action: tuple[str, str | None]) -> None:
        """Transfer or hang up once the farewell has been played to the caller."""
        deadline = time.monotonic() + self.policy.drain_timeout
        while self.media.queued_ms > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - polled at the frame clock
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the last frames are in flight toward the caller
        self._action_committed = True  # from here a barge-in no longer stops it
        self._pending_action = None
        kind, target = action
        if kind == "transfer" and target:
            await self._transfer(target, "transferred")
        else:
            self._ending_as = "assistant_hangup"
            await self.control.hangup()
            self.end("assistant_hangup")

    # silence -------------------------------------------------------------------------

    def _begin_waiting(self, what: str) -> None:
        self._waiting.add(what)
        self._wait_began.set()

    async def _fill_silence(self) -> None:
        """While a tool runs or the model reconnects, a soft cue breaks any silence over ``cue_after``.

        Between waits it sleeps until one begins: a timer per call four times a second is a
        cost every call would pay all the time.
        """
        while True:
            if not self._waiting:
                self._wait_began.clear()
                await self._wait_began.wait()
                self._idle_since = time.monotonic()
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if self.media.queued_ms > 0 or not self._waiting:
                self._idle_since = now
                continue
            if now - self._idle_since >= self.policy.cue_after:
                self.media.play(self._cue, f"{CUE_PREFIX}{next(self._cue_ids)}")
                self._idle_since = now
