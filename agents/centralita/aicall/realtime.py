"""OpenAI Realtime (GA protocol) as a :class:`ModelSession`.

One websocket per call. Audio goes in as ``input_audio_buffer.append`` with G.711 in
base64 and comes back as ``response.output_audio.delta``; the server's VAD decides
turns. Sends go through one writer task so a slow socket never blocks the audio path,
and protocol pings are answered by the websockets library as long as the event loop
runs, which is why nothing in the agent may block it.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit

from centralita.aicall.audiodelta import read_audio_delta
from centralita.aicall.provider import (
    AudioOut,
    Disconnected,
    FunctionCall,
    HistoryLine,
    ModelError,
    ModelEvent,
    ResponseDone,
    ResponseStarted,
    SessionConfig,
    SpeechStarted,
    SpeechStopped,
    Transcript,
)
from centralita.aicall.wsmodel import Inbox, ModelConnection, WebsocketModelSession

log = logging.getLogger("centralita.aicall.realtime")

AUDIO_FORMATS = {"ulaw": "audio/pcmu", "alaw": "audio/pcma"}
PROGRESS_TAG = {"centralita": "progress"}
# Errors that describe a race the client cannot avoid (the reply ended on its own
# just before our cancel or truncate arrived); they change nothing for the call.
HARMLESS_ERRORS = frozenset({"response_cancel_not_active"})
# a response.create while the conversation's response is in progress: asked again once it is done
ACTIVE_RESPONSE_ERROR = "conversation_already_has_active_response"
# Events the call never acts on, recognised before parsing when "type" is the first key (as the server
# and the stand-in write it, with or without a space): about half of a reply's messages, each a JSON
# parse saved. Any other layout is parsed and ignored as before.
_IGNORED_TYPES = (
    b"response.output_audio_transcript.delta",
    b"conversation.item.input_audio_transcription.delta",
    # a function call is read whole from its response's response.done (see _response_done)
    b"response.function_call_arguments.delta",
    b"response.function_call_arguments.done",
)
_IGNORED_PREFIXES = tuple(head + kind + b'"' for kind in _IGNORED_TYPES for head in (b'{"type":"', b'{"type": "'))


def session_update(config: SessionConfig) -> dict[str, Any]:
    """The GA ``session.update`` for a phone call in G.711."""
    audio_format = {"type": AUDIO_FORMATS[config.law]}
    if config.vad_type == "semantic_vad":
        turn: dict[str, Any] = {
            "type": "semantic_vad",
            "eagerness": config.vad_eagerness,
            "create_response": True,
            "interrupt_response": True,
        }
    else:
        turn = {
            "type": "server_vad",
            "threshold": config.vad_threshold,
            "prefix_padding_ms": config.vad_prefix_padding_ms,
            "silence_duration_ms": config.vad_silence_duration_ms,
            "create_response": True,
            "interrupt_response": True,
        }
        if config.vad_idle_timeout_ms:
            turn["idle_timeout_ms"] = config.vad_idle_timeout_ms
    audio_input: dict[str, Any] = {"format": audio_format, "turn_detection": turn}
    if config.noise_reduction:
        audio_input["noise_reduction"] = {"type": config.noise_reduction}
    if config.transcription_model:
        audio_input["transcription"] = {"model": config.transcription_model}
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": config.instructions,
        "audio": {"input": audio_input, "output": {"format": audio_format, "voice": config.voice}},
        "tools": [
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
            for t in config.tools
        ],
        "tool_choice": "auto",
    }
    if config.max_output_tokens:
        session["max_output_tokens"] = config.max_output_tokens
    return {"type": "session.update", "session": session}


def history_items(history: list[HistoryLine]) -> list[dict[str, Any]]:
    """``conversation.item.create`` events that rebuild a conversation as text."""
    events = []
    for line in history:
        if line.role == "caller":
            content = [{"type": "input_text", "text": line.text}]
            item = {"type": "message", "role": "user", "content": content}
        else:
            item = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": line.text}]}
        events.append({"type": "conversation.item.create", "item": item})
    return events


class RealtimeSession(WebsocketModelSession):
    protocol = "realtime"
    audio_event = "input_audio_buffer.append"

    def __init__(
        self,
        *,
        url: str,
        model: str,
        api_key: str,
        config: SessionConfig,
        connect_timeout: float = 5.0,
        ping_interval: float = 10.0,
        ping_timeout: float = 10.0,
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
        self.config = config
        self._progress: set[str] = set()
        self._configured = False  # the server confirmed this socket's session.update

    def _endpoint(self) -> str:
        parts = urlsplit(self.url)
        query = parts.query + ("&" if parts.query else "") + urlencode({"model": self.model})
        return parts._replace(query=query).geturl()

    async def connect(self, history: list[HistoryLine] | None = None) -> None:
        await self.close()
        ws = await self._open(self._endpoint(), ModelConnection)
        self._reset_audio()
        self._configured = False
        self._attach(ws)
        self._send(session_update(self.config))
        for event in history_items(history or []):
            self._send(event)

    async def respond(self, instructions: str | None = None) -> None:
        event: dict[str, Any] = {"type": "response.create"}
        if instructions:
            event["response"] = {"instructions": instructions}
        self._send(event)

    async def say_progress(self, instructions: str) -> None:
        self._send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "instructions": instructions,
                    "output_modalities": ["audio"],
                    "metadata": PROGRESS_TAG,
                    "tool_choice": "none",
                },
            }
        )

    async def tool_result(self, call_id: str, output: str) -> None:
        self._send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            }
        )

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        self._send(
            {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms}
        )

    async def cancel(self) -> None:
        self._send({"type": "response.cancel"})

    async def events(self) -> AsyncIterator[ModelEvent]:
        ws = self._ws
        if not isinstance(ws, ModelConnection):
            yield Disconnected("not connected")
            return
        async for event in self._inbox_events(ws):
            yield event

    def _message(self, inbox: Inbox, data: bytes) -> None:
        # Runs in the socket's read callback for every message; only the events the call acts on
        # wake its task (about half of a reply's messages are transcript deltas, which it ignores).
        if data.startswith(_IGNORED_PREFIXES):
            return
        delta = read_audio_delta(data)  # reply audio, most of what the call acts on, read without a JSON parse
        if delta is not None:
            parsed: ModelEvent | None = AudioOut(delta.item_id, delta.response_id, delta.audio)
        else:
            try:
                event = json.loads(data)
            except ValueError:
                log.warning("realtime %s: a frame that is not JSON: %.80r", self.name, data)
                return
            try:
                parsed = self._parse(event)
            except Exception as exc:  # a malformed event (a field missing or of another type): skipped
                kind = event.get("type") if isinstance(event, dict) else type(event).__name__
                log.warning("realtime %s: skipped a malformed %s event (%r): %.200r", self.name, kind, exc, data)
                return
            if parsed is None:
                return
            if type(parsed) is tuple:  # a response's function calls, then its end
                for each in parsed:
                    inbox.put(each)
                return
        handler = self._audio_handler
        if handler is not None and type(parsed) is AudioOut and inbox.idle:
            # The call's task waits with nothing before this event: it is handled here, as the task would
            # handle it next, without waking the task (a reply's audio is most of what it acts on).
            try:
                handler(parsed)
            except Exception as exc:  # raised where the call reads its events, as from the task
                inbox.put(exc)
            return
        inbox.put(parsed)

    def _parse(self, event: dict[str, Any]) -> ModelEvent | tuple[ModelEvent, ...] | None:
        kind = event.get("type")
        if kind == "response.output_audio.delta":
            return AudioOut(event["item_id"], event["response_id"], base64.b64decode(event["delta"]))
        if kind == "input_audio_buffer.speech_started":
            return SpeechStarted(event["item_id"], event.get("audio_start_ms", 0))
        if kind == "input_audio_buffer.speech_stopped":
            end_ms = event.get("audio_end_ms", 0)
            # audio_end_ms includes the VAD's trailing silence: the caller stopped that much earlier
            spoken_ms = end_ms - (self.config.vad_silence_duration_ms if self.config.vad_type == "server_vad" else 0)
            return SpeechStopped(event["item_id"], end_ms, self.audio_sent_at(spoken_ms))
        if kind == "conversation.item.input_audio_transcription.completed":
            return Transcript("caller", event.get("transcript", ""), event["item_id"])
        if kind == "response.output_audio_transcript.done":
            return Transcript("assistant", event.get("transcript", ""), event["item_id"], event.get("response_id"))
        if kind == "response.created":
            response = event.get("response") or {}
            progress = (response.get("metadata") or {}).get("centralita") == "progress"
            if progress:
                self._progress.add(response.get("id", ""))
            return ResponseStarted(response.get("id", ""), progress)
        if kind == "response.done":
            return self._response_done(event.get("response") or {})
        if kind == "session.updated":
            self._configured = True
            return None
        if kind == "error":
            error = event.get("error") or {}
            code = str(error.get("code") or error.get("type") or "error")
            # refused before the session took its settings (audio format, voice, tools): the socket would
            # carry another format than the call's, so the call cannot go on with it
            fatal = not self._configured and code not in HARMLESS_ERRORS
            return ModelError(code, str(error.get("message", "")), fatal)
        return None

    def _response_done(self, response: dict[str, Any]) -> tuple[ModelEvent, ...]:
        """The calls to run, then the response's end.

        A call runs only when its response completed: one cancelled (by us, or by the server when
        the caller spoke) or cut short may hold a call whose arguments were cut mid-way, which ends
        "incomplete" and must never run; the service's reference even says the arguments' done
        event is sent for a cancelled response too. Waiting for response.done delays nothing: a
        response that calls a function ends with the call.
        """
        response_id = response.get("id", "")
        status = response.get("status", "")
        details = response.get("status_details") or {}
        output = (response.get("output") or []) if status == "completed" else []
        calls = [
            FunctionCall(item["call_id"], str(item.get("name", "")), str(item.get("arguments", "")), response_id)
            for item in output
            if item.get("type") == "function_call"
            and item.get("call_id")  # one without an id could never be answered: the response still ends
            and item.get("status", "completed") == "completed"
        ]
        progress = response_id in self._progress
        self._progress.discard(response_id)
        done = ResponseDone(
            response_id,
            status,
            details.get("reason") or (details.get("error") or {}).get("code"),  # a failed response's error
            response.get("usage") or {},
            progress,
            tuple(call.call_id for call in calls),
        )
        return (*calls, done)

    async def close(self) -> None:
        await self._close_socket()
