"""OpenAI GPT-Live (``/v1/live/sessions``) as a :class:`ModelSession`.

GPT-Live is a full-duplex voice model: it listens while it speaks and decides turns
itself, and it hands reasoning and tool calls to a backend (here the Responses model
configured in the session's ``delegation``). What that means for the call logic, which
speaks the Realtime vocabulary of ``provider.py``:

- The first message is ``session.start`` (model, instructions, G.711 format at 8 kHz,
  voice, delegation with the tools, text history after a drop); nothing else may be
  sent before ``session.started``, so :meth:`LiveSession.connect` waits for it.
- Audio in is ``session.input_audio.append``, audio out ``session.output_audio.delta``.
  Output carries no reply or item ids: a *reply* here is a run of voiced output audio,
  numbered by this module, which ends when no voice has been due for ``reply_gap``.
  Digital silence between replies is not queued for the caller (the media path plays
  its own); a pause inside a reply is kept.
- There is no server VAD event. The caller's speech shows up as
  ``session.input_transcript.delta`` on the session timeline: the first one of a caller
  turn becomes :class:`SpeechStarted` (barge-in; a reply still open ends as cancelled)
  and the start of the next reply :class:`SpeechStopped` plus the caller's transcript.
- There is no ``conversation.item.truncate``. The model's own timeline tells it what
  it said; what the caller heard of an interrupted reply is given to it as silent
  context (``session.thinking.append``) built from the reply's transcript timeline.
- Function calls come from the Responses backend inside ``response.event`` envelopes.
  A call is reported when its item is done; its backend response's ``response.completed``
  becomes the :class:`ResponseDone` after which the call logic sends the outputs
  (``response.item.create``) and asks the backend to continue (``response.create``).
  Speech while a call is outstanding is the model's acknowledgement and is reported as
  a progress reply, which stays out of the restored history.
- Usage: the backend's token usage (``response.completed``) and the session's
  cumulative audio seconds (``session.usage.updated``) are attached to the next
  :class:`ResponseDone`.

Keepalive is the WebSocket protocol's ping, answered by the websockets library while
the event loop runs, exactly as for the Realtime provider.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from centralita.aicall import g711
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
    Transcript,
)
from centralita.aicall.wsmodel import WebsocketModelSession

log = logging.getLogger("centralita.aicall.live")

AUDIO_FORMATS = {"ulaw": "audio/pcmu", "alaw": "audio/pcma"}
MAX_HISTORY_ITEMS = 128  # session.input takes at most 128 messages
MAX_CONTEXT_CHARS = 1200  # appended context is limited to 500 tokens
REPLY_PREFIX = "live-reply-"
CALLER_PREFIX = "live-caller-"
DEFAULT_TURN_PROMPT = "Speak to the caller now: greet them briefly and ask how you can help."
BACKEND_STATUSES = {"response.completed": "completed", "response.failed": "failed", "response.incomplete": "incomplete"}


def session_start(
    config: SessionConfig, model: str, backend_model: str, history: list[HistoryLine] | None = None
) -> dict[str, Any]:
    """The ``session.start`` for a phone call in G.711 with the tools on a Responses backend."""
    responses: dict[str, Any] = {
        "model": backend_model,
        "instructions": config.instructions,
        "tools": [
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
            for t in config.tools
        ],
        "tool_choice": "auto" if config.tools else "none",
    }
    if config.max_output_tokens:
        responses["max_output_tokens"] = config.max_output_tokens
    session: dict[str, Any] = {
        "model": model,
        "instructions": config.instructions,
        "audio": {
            "format": {"type": AUDIO_FORMATS[config.law], "rate": g711.SAMPLE_RATE},
            "output": {"voice": config.voice},
        },
        "delegation": {"type": "responses", "responses": responses},
    }
    items = history_input(history or [])
    if items:
        session["input"] = items
    return {"type": "session.start", "session": session}


def history_input(history: list[HistoryLine]) -> list[dict[str, Any]]:
    """The text history a new session starts from (the latest 128 lines)."""
    items = []
    for line in history[-MAX_HISTORY_ITEMS:]:
        if line.role == "caller":
            items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": line.text}]})
        else:
            content = [{"type": "output_text", "text": line.text}]
            items.append({"type": "message", "role": "assistant", "content": content})
    return items


def heard_note(heard: str, played_ms: int) -> str:
    """Silent context for the model after a barge-in: what the caller really heard."""
    heard = heard.strip()
    if len(heard) > MAX_CONTEXT_CHARS:
        heard = "…" + heard[-MAX_CONTEXT_CHARS:]
    if not heard:
        return (
            f"The caller spoke over your last reply after {played_ms} ms: they heard none of its words. "
            "Do not assume they know what it said."
        )
    return (
        f'The caller spoke over your last reply: they heard only "{heard}" ({played_ms} ms). '
        "They did not hear the rest; do not assume they know it."
    )


@dataclass
class _Reply:
    """One run of the model's voiced output, as the call logic sees a response."""

    id: str
    progress: bool
    started_at: float
    audio_ms: int = 0  # delivered to the caller's queue
    voiced_ms: int = 0  # delivered up to the end of the last voiced chunk
    last_voice_at: float = 0.0
    pending_silence: bytearray = field(default_factory=bytearray)
    text: list[tuple[int, int, str]] = field(default_factory=list)  # (start_ms, end_ms, delta) on the session timeline
    origin_ms: int | None = None  # where the reply's audio starts on the session timeline

    def add_text(self, start_ms: int, end_ms: int, delta: str) -> None:
        if self.origin_ms is None:
            # the delta describes the audio received up to now: its end lines up with the audio's end
            self.origin_ms = end_ms - self.audio_ms if self.audio_ms else start_ms
        self.text.append((start_ms, end_ms, delta))

    def heard(self, played_ms: int) -> str:
        """The transcript up to ``played_ms`` into the reply's audio."""
        origin = self.origin_ms or 0
        return "".join(delta for _, end, delta in self.text if end - origin <= played_ms)


@dataclass
class _CallerTurn:
    id: str
    start_ms: int
    end_ms: int
    text: list[str] = field(default_factory=list)


class LiveSession(WebsocketModelSession):
    protocol = "live"
    audio_event = "session.input_audio.append"

    def __init__(
        self,
        *,
        url: str,
        model: str,
        backend_model: str,
        api_key: str,
        config: SessionConfig,
        connect_timeout: float = 5.0,
        ping_interval: float = 10.0,
        ping_timeout: float = 10.0,
        reply_gap: float = 0.6,
        turn_prompt: str = DEFAULT_TURN_PROMPT,
        name: str = "",
    ) -> None:
        self._init_socket(
            url=url,
            api_key=api_key,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            name=name,
        )
        self.model = model
        self.backend_model = backend_model
        self.config = config
        self.reply_gap = reply_gap
        self.turn_prompt = turn_prompt
        self.session_id: str | None = None
        self._silence_byte = g711.silence(config.law)[0]
        self._ids = itertools.count(1)
        self._reset_state()

    def _reset_state(self) -> None:
        self._reset_audio()
        self._reply: _Reply | None = None
        self._recent: collections.OrderedDict[str, _Reply] = collections.OrderedDict()
        self._early_text: list[tuple[int, int, str]] = []
        self._caller: _CallerTurn | None = None
        self._backend_calls: dict[str, list[str]] = {}  # backend response id -> call ids seen
        self._backend_response = ""  # the backend response being streamed
        self._outstanding: set[str] = set()  # calls whose outputs the backend still waits for
        self._outputs_sent = False
        self._muted = False
        self._usage: dict[str, Any] = {}
        self._closed_reason: str | None = None

    # connection ------------------------------------------------------------------------

    async def connect(self, history: list[HistoryLine] | None = None) -> None:
        await self.close()
        self._reset_state()
        ws = await self._open(self.url)
        try:
            await ws.send(json.dumps(session_start(self.config, self.model, self.backend_model, history)))
            started = await asyncio.wait_for(self._await_started(ws), self.connect_timeout)
        except (ConnectionClosed, TimeoutError, ModelUnavailable) as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout=2)
            if isinstance(exc, ModelUnavailable):
                raise
            raise ModelUnavailable(f"live session did not start: {exc or 'no session.started in time'}") from exc
        self.session_id = (started.get("session") or {}).get("id")
        self._attach(ws)

    @staticmethod
    async def _await_started(ws: ClientConnection) -> dict[str, Any]:
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                continue
            try:
                event = json.loads(message)
            except ValueError:
                continue
            kind = event.get("type")
            if kind == "session.started":
                return event
            if kind == "error":
                error = event.get("error") or {}
                raise ModelUnavailable(f"live session refused: {error.get('code')}: {error.get('message')}")

    async def close(self) -> None:
        await self._close_socket('{"type":"session.close"}')

    # requests ----------------------------------------------------------------------------

    async def respond(self, instructions: str | None = None) -> None:
        self._muted = False
        if self._outputs_sent:
            # the delegated backend response waits for the tool outputs just sent: let it continue
            self._outputs_sent = False
            self._outstanding.clear()
            self._send({"type": "response.create"})
            return
        self._send(
            {"type": "session.instructions.append", "content": instructions or self.turn_prompt, "delegation_id": None}
        )

    async def say_progress(self, instructions: str) -> None:
        self._send({"type": "session.commentary.append", "content": instructions, "delegation_id": None})

    async def tool_result(self, call_id: str, output: str) -> None:
        if call_id in self._outstanding:
            self._outputs_sent = True  # the next respond() lets the waiting backend response continue
        self._send(
            {
                "type": "response.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            }
        )

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        reply = self._recent.get(item_id)
        if reply is None:
            log.debug("live %s: no reply %s to describe after a barge-in", self.name, item_id)
            return
        played = max(0, min(audio_end_ms, reply.audio_ms))
        self._send(
            {
                "type": "session.thinking.append",
                "content": heard_note(reply.heard(played), played),
                "delegation_id": None,
            }
        )

    async def cancel(self) -> None:
        """GPT-Live has no cancel: the rest of the current reply is dropped until the next turn."""
        self._muted = True

    # events ------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[ModelEvent]:
        ws = self._ws
        if ws is None:
            yield Disconnected("not connected")
            return
        reason = "closed"
        try:
            while True:
                wait = self._reply_wait()
                try:
                    if wait is None:
                        message = await ws.recv()
                    else:
                        message = await asyncio.wait_for(ws.recv(), wait)
                except TimeoutError:
                    for event in self._end_reply("completed", None):
                        yield event
                    continue
                if isinstance(message, bytes):
                    continue
                try:
                    event = json.loads(message)
                except ValueError:
                    log.warning("live %s: a frame that is not JSON: %.80r", self.name, message)
                    continue
                for parsed in self._parse(event):
                    yield parsed
        except ConnectionClosed as exc:
            if self._closed_reason is not None:
                reason = f"session closed ({self._closed_reason})"
            elif exc.rcvd is not None:
                reason = f"closed by server ({exc.rcvd.code} {exc.rcvd.reason})"
            else:
                reason = f"connection lost ({exc})"
        for event in self._end_reply("cancelled", "disconnected"):
            yield event
        for event in self._end_caller_turn():
            yield event  # what the caller said before the drop belongs in the restored history
        yield Disconnected(reason)

    def _reply_wait(self) -> float | None:
        """Seconds until the open reply counts as finished, or None when none is open."""
        reply = self._reply
        if reply is None:
            return None
        due = max(reply.started_at + reply.voiced_ms / 1000, reply.last_voice_at) + self.reply_gap
        return max(0.0, due - time.monotonic())

    def _parse(self, event: dict[str, Any]) -> list[ModelEvent]:
        kind = event.get("type")
        if kind == "session.output_audio.delta":
            return self._audio(base64.b64decode(event.get("delta", "")))
        if kind == "session.output_transcript.delta":
            piece = (int(event.get("start_ms", 0)), int(event.get("end_ms", 0)), str(event.get("delta", "")))
            if self._reply is not None:
                self._reply.add_text(*piece)
            else:
                self._early_text.append(piece)
            return []
        if kind == "session.input_transcript.delta":
            return self._caller_speech(event)
        if kind == "response.event":
            return self._backend(event.get("event") or {})
        if kind == "session.usage.updated":
            self._usage["live_audio_seconds"] = (event.get("usage") or {}).get("seconds", 0)
            ratio = (event.get("context_window") or {}).get("usage_ratio")
            if ratio is not None:
                self._usage["context_usage_ratio"] = ratio
            return []
        if kind == "session.closed":
            self._closed_reason = str(event.get("reason", ""))
            self._usage["live_audio_seconds"] = (event.get("usage") or {}).get("seconds", 0)
            return []
        if kind == "error":
            error = event.get("error") or {}
            return [ModelError(str(error.get("code") or error.get("type") or "error"), str(error.get("message", "")))]
        return []  # acknowledgements (*.appended, session.updated), info, delegation.created

    def _audio(self, data: bytes) -> list[ModelEvent]:
        if not data or self._muted:
            return []
        now = time.monotonic()
        voiced = data.count(self._silence_byte) != len(data)
        reply = self._reply
        events: list[ModelEvent] = []
        if reply is None:
            if not voiced:
                return []  # silence between replies: the media path plays its own
            reply, events = self._open_reply(now)
        if not voiced:
            reply.pending_silence.extend(data)
            return events
        audio = bytes(reply.pending_silence) + data if reply.pending_silence else data
        reply.pending_silence.clear()
        reply.audio_ms += g711.duration_ms(audio)
        reply.voiced_ms = reply.audio_ms
        reply.last_voice_at = now
        events.append(AudioOut(reply.id, reply.id, audio))
        return events

    def _open_reply(self, now: float) -> tuple[_Reply, list[ModelEvent]]:
        events = self._end_caller_turn()
        reply = _Reply(f"{REPLY_PREFIX}{next(self._ids)}", bool(self._outstanding), now, last_voice_at=now)
        for piece in self._early_text:
            reply.add_text(*piece)
        self._early_text = []
        self._reply = reply
        self._recent[reply.id] = reply
        while len(self._recent) > 8:
            self._recent.popitem(last=False)
        events.append(ResponseStarted(reply.id, reply.progress))
        return reply, events

    def _end_caller_turn(self) -> list[ModelEvent]:
        caller, self._caller = self._caller, None
        if caller is None:
            return []
        spoken_at = self.audio_sent_at(caller.end_ms)
        return [
            SpeechStopped(caller.id, caller.end_ms, spoken_at),
            Transcript("caller", "".join(caller.text).strip(), caller.id),
        ]

    def _end_reply(self, status: str, reason: str | None) -> list[ModelEvent]:
        reply, self._reply = self._reply, None
        if reply is None:
            return []
        reply.pending_silence.clear()
        text = "".join(delta for _, _, delta in reply.text).strip()
        usage, self._usage = self._usage, {}
        if "live_audio_seconds" in usage:
            self._usage["live_audio_seconds"] = usage["live_audio_seconds"]  # cumulative: kept for the next one
        events: list[ModelEvent] = []
        if text:
            events.append(Transcript("assistant", text, reply.id, reply.id))
        events.append(ResponseDone(reply.id, status, reason, usage, reply.progress))
        return events

    def _caller_speech(self, event: dict[str, Any]) -> list[ModelEvent]:
        start, end = int(event.get("start_ms", 0)), int(event.get("end_ms", 0))
        events: list[ModelEvent] = []
        if self._caller is None:
            self._muted = False
            self._caller = _CallerTurn(f"{CALLER_PREFIX}{next(self._ids)}", start, end)
            events.append(SpeechStarted(self._caller.id, start))
            events += self._end_reply("cancelled", "turn_detected")
        self._caller.end_ms = max(self._caller.end_ms, end)
        self._caller.text.append(str(event.get("delta", "")))
        return events

    def _backend(self, nested: dict[str, Any]) -> list[ModelEvent]:
        kind = nested.get("type", "")
        if kind == "response.output_item.done":
            item = nested.get("item") or {}
            if item.get("type") != "function_call":
                return []
            if item.get("status", "completed") != "completed":
                # written only in part (the backend response was cut): its arguments are not the model's
                return []
            response_id = self._backend_response
            call_id = str(item.get("call_id", ""))
            self._backend_calls.setdefault(response_id, []).append(call_id)
            self._outstanding.add(call_id)
            return [FunctionCall(call_id, str(item.get("name", "")), str(item.get("arguments", "")), response_id)]
        if kind == "response.created":
            self._backend_response = str((nested.get("response") or {}).get("id", ""))
            return []
        if kind in BACKEND_STATUSES:
            response = nested.get("response") or {}
            response_id = str(response.get("id", ""))
            usage = response.get("usage") or {}
            for key in ("input_tokens", "output_tokens", "total_tokens"):
                self._usage[key] = self._usage.get(key, 0) + int(usage.get(key) or 0)
            calls = tuple(self._backend_calls.pop(response_id, []))
            if not calls:
                return []  # a spoken answer: its usage goes with the reply that speaks it
            done_usage, self._usage = self._usage, {}
            if "live_audio_seconds" in done_usage:
                self._usage["live_audio_seconds"] = done_usage["live_audio_seconds"]
            details = response.get("incomplete_details") or {}
            reason = details.get("reason") or ((response.get("error") or {}).get("code"))
            return [ResponseDone(response_id, BACKEND_STATUSES[kind], reason, done_usage, False, calls)]
        if kind == "error":
            return [ModelError(str(nested.get("code") or "backend_error"), str(nested.get("message", "")))]
        return []
