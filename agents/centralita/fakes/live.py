"""A stand-in for OpenAI's GPT-Live sessions API (primary WebSocket) for tests and the offline demo.

It speaks the wire protocol of ``wss://api.openai.com/v1/live/sessions``: bearer auth,
no query parameters, ``session.start`` first and ``session.started`` back, G.711 audio
in ``session.input_audio.append`` and ``session.output_audio.delta``, transcripts as
timeline deltas, a Responses backend reached through delegation (``session.delegation.created``
and the backend's stream inside ``response.event``; tool outputs through
``response.item.create`` and ``response.create``), appended context with its
acknowledgements, ``session.usage.updated``, ``session.close``/``session.closed``,
errors and protocol pings. Every client event it receives is checked against
``openai.types.live``'s client events and every event it sends against the server
events (the backend's nested events against ``openai.types.responses``), unknown
fields included, as the service's strict configuration does.

The model is a script (the Realtime stand-in's :class:`Script`): voice detection over
the received G.711 audio ends the caller's turns, the n-th turn's scripted transcript
is reported, and its reply is spoken (a tone) or its tool is called on the backend.
Speech over a reply interrupts it, as the full-duplex model yields to the caller.
"""

from __future__ import annotations

import asyncio
import base64
import http
import itertools
import json
import logging
import re
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from centralita.aicall import g711
from centralita.aicall.wsmodel import read_in_small_chunks
from centralita.fakes.realtime import (
    AUDIO_CHUNK_MS,
    SPEECH_RMS,
    ConnectionLog,
    Script,
    StandInServer,
    Turn,
    keepalive_pings,
    serve_main,
)

log = logging.getLogger("centralita.fakes.live")

PATH = "/v1/live/sessions"
FORMAT_LAWS = {"audio/pcmu": "ulaw", "audio/pcma": "alaw"}
SESSION_SECONDS = 3600
SPEECH_FRAMES = 3  # loud 20 ms frames in a row that start the caller's speech
END_SILENCE_MS = 500  # the caller's turn ends after this much silence
CONTEXT_EVENTS = {
    "session.instructions.append": "session.instructions.appended",
    "session.thinking.append": "session.thinking.appended",
    "session.commentary.append": "session.commentary.appended",
}
UNSUPPORTED = {
    "session.output_audio.fixture.play": "Audio fixtures are not available in this stand-in.",
    "decision.create": "decision.create requires Decisions delegation.",
    "decision.item.create": "decision.item.create requires Decisions delegation.",
    "decision.item.delete": "decision.item.delete requires Decisions delegation.",
}


def _strict(union: Any) -> Callable[[dict[str, Any]], str | None]:
    """A check of one event against the member of a typed event union its ``type`` names.

    Its shape is checked, and that it carries no field the model does not name (the
    service's configuration is strict; the SDK's models keep unknown fields as extras).
    """
    from pydantic import BaseModel, TypeAdapter, ValidationError

    members = typing.get_args(typing.get_args(union)[0] if typing.get_origin(union) is typing.Annotated else union)
    adapters: dict[str, Any] = {}
    for member in members:
        for kind in typing.get_args(member.model_fields["type"].annotation):
            adapters[kind] = TypeAdapter(member)

    def extras(model: Any, path: str) -> list[str]:
        found = []
        if isinstance(model, BaseModel):
            found += [f"{path}.{k}" for k in (model.model_extra or {})]
            for name in type(model).model_fields:
                found += extras(getattr(model, name), f"{path}.{name}")
        elif isinstance(model, list):
            for i, value in enumerate(model):
                found += extras(value, f"{path}[{i}]")
        return found

    def check(event: dict[str, Any]) -> str | None:
        adapter = adapters.get(event.get("type"))  # type: ignore[arg-type]
        if adapter is None:
            return f"unknown event type {event.get('type')!r}"
        try:
            model = adapter.validate_python(event)
        except ValidationError as exc:
            return str(exc).replace("\n", " ")[:500]
        unknown = extras(model, "event")
        return f"unknown fields: {', '.join(unknown)}" if unknown else None

    return check


@dataclass
class Validators:
    client: Callable[[dict[str, Any]], str | None]
    server: Callable[[dict[str, Any]], str | None]
    backend: Callable[[dict[str, Any]], str | None]


def live_validators() -> Validators | None:
    """Checks against ``openai.types.live`` (and the Responses stream events), or None without the package."""
    try:
        from openai.types.live.client_event import ClientEvent
        from openai.types.live.server_event import ServerEvent
        from openai.types.responses.response_stream_event import ResponseStreamEvent
    except ImportError:
        return None
    return Validators(_strict(ClientEvent), _strict(ServerEvent), _strict(ResponseStreamEvent))


@dataclass
class LiveConnectionLog(ConnectionLog):
    """What one GPT-Live connection saw; ``invalid_sent`` lists server events that failed their model."""

    invalid_sent: list[str] = field(default_factory=list)
    appended: list[tuple[str, str]] = field(default_factory=list)  # (client event type, content)
    delegations: list[str] = field(default_factory=list)
    interruptions: int = 0

    def summary(self) -> dict[str, Any]:
        data = super().summary()
        data |= {
            "invalid_sent": list(self.invalid_sent),
            "appended": [list(a) for a in self.appended],
            "delegations": list(self.delegations),
            "interruptions": self.interruptions,
        }
        return data


class FakeLive(StandInServer):
    path = PATH
    """The stand-in server. ``async with FakeLive(script) as fake:`` serves on ``fake.url``."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 10.0,
        validate: bool = True,
        require_validation: bool = False,
        record_sent: bool = False,
        leading_silence_ms: int = 200,
        backend_ms: int = 50,
        session_seconds: float = SESSION_SECONDS,
    ) -> None:
        super().__init__(
            script,
            host=host,
            port=port,
            api_key=api_key,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            record_sent=record_sent,
        )
        self.validators = live_validators() if validate else None
        if require_validation and self.validators is None:
            raise RuntimeError("the openai package is needed to validate GPT-Live events")
        self.leading_silence_ms = leading_silence_ms  # digital silence the model streams before it speaks
        self.backend_ms = backend_ms  # the backend's time between a function call item and its response's end
        self.session_seconds = session_seconds  # a session is closed as expired after this long

    def _check_session(self, connection: ServerConnection, request: Request, parts: SplitResult) -> Response | None:
        if parts.path != PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "unknown path\n")
        if parts.query:
            return self._json_error(
                400, "invalid_request_error", "unknown_parameter", "Live sessions take no query parameters."
            )
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._json_error(401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided.")
        if self.script.refuse or (self.script.refuse_after_drop and self._dropped):
            return self._json_error(503, "server_error", "service_unavailable", "The server is overloaded.")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        read_in_small_chunks(ws.transport)  # as the agent does: no memory mapping per read
        request = ws.request
        record = LiveConnectionLog(
            request.path if request else "", dict(request.headers.raw_items()) if request else {}
        )
        self.connections.append(record)
        await _Connection(self, ws, record).run()


class _Connection:
    def __init__(self, server: FakeLive, ws: ServerConnection, record: LiveConnectionLog) -> None:
        self.server = server
        self.ws = ws
        self.log = record
        self.script = server.script
        self.session: dict[str, Any] | None = None
        self.started_at = 0.0
        self.law = "ulaw"
        self.turn_index = 0
        self.greeted = False
        self.restored = False  # started from a history: the next prompt resumes the conversation
        self.muted = False
        self.buffer_ms = 0
        self.out_ms = 0
        self.speaking = False
        self.loud_frames = 0
        self.silence_ms = 0
        self.speech_start_ms = 0
        self.words: list[str] = []
        self.pending = bytearray()
        self.reply: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.sequence = itertools.count(0)
        self.open_calls: dict[str, tuple[Turn, str]] = {}  # call id -> (turn, delegation id), response still going
        self.done_calls: dict[str, tuple[Turn, str]] = {}  # calls whose backend response completed
        self.outputs_waiting: list[tuple[Turn, str]] = []

    # plumbing ----------------------------------------------------------------------------

    def clock_ms(self) -> int:
        """The session timeline: milliseconds since the session started."""
        return int((time.monotonic() - self.started_at) * 1000) if self.started_at else 0

    async def send(self, event: dict[str, Any]) -> None:
        if event["type"] != "session.output_audio.delta":
            event = {"event_id": self.server.new_id("event"), **event}
        validators = self.server.validators
        if validators is not None:
            problem = validators.server(event)
            if problem is None and event["type"] == "response.event":
                problem = validators.backend(event["event"])
            if problem:
                self.log.invalid_sent.append(f"{event['type']}: {problem}")
        self.log.sent_types.append(event["type"])
        if self.server.record_sent:
            self.log.sent.append(event)
        await self.ws.send(json.dumps(event))

    async def error(self, code: str, message: str, client_event_id: str | None = None, param: str | None = None):
        error: dict[str, Any] = {"type": "invalid_request_error", "code": code, "message": message}
        if client_event_id:
            error["client_event_id"] = client_event_id
        if param:
            error["param"] = param
        self.log.errors.append(error)
        event: dict[str, Any] = {"type": "error", "error": error}
        if client_event_id:
            event["client_event_id"] = client_event_id
        await self.send(event)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def run(self) -> None:
        pinger = asyncio.get_running_loop().create_task(self._ping_loop())
        try:
            async for message in self.ws:
                await self._on_message(message)
        except ConnectionClosed:
            pass  # the client went away: nothing to answer
        finally:
            pinger.cancel()
            for task in [self.reply, *self.tasks]:
                if task is not None:
                    task.cancel()
            self.log.close_code = self.ws.close_code
            self.log.closed_at = time.time()

    async def _ping_loop(self) -> None:
        await keepalive_pings(self.ws, self.log, self.server.ping_interval, self.server.ping_timeout)

    async def _on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            await self.error("invalid_json", "The event is not valid JSON.")
            return
        if not isinstance(event, dict):
            await self.error("invalid_event", "An event must be a JSON object.")
            return
        kind = event.get("type", "")
        self.log.received.append(event if kind != "session.input_audio.append" else {"type": kind})
        client_id = event.get("event_id")
        if self.server.validators is not None:
            problem = self.server.validators.client(event)
            if problem:
                self.log.invalid.append(f"{kind}: {problem}")
                await self.error("invalid_value", problem, client_id)
                return
        if self.session is None and kind != "session.start":
            await self.error("session_not_started", "Send session.start and wait for session.started first.", client_id)
            return
        handler = {
            "session.start": self._start,
            "session.update": self._update,
            "session.input_audio.append": self._append,
            "session.input_audio.mute": self._mute,
            "session.input_audio.unmute": self._mute,
            "response.item.create": self._item_create,
            "response.create": self._response_create,
            "session.close": self._close,
        }.get(kind)
        if kind in CONTEXT_EVENTS:
            await self._context(event)
        elif handler is not None:
            await handler(event)
        else:
            await self.error("unsupported_event", UNSUPPORTED.get(kind, f"Unknown event type {kind!r}."), client_id)

    # session -----------------------------------------------------------------------------

    async def _start(self, event: dict[str, Any]) -> None:
        client_id = event.get("event_id")
        if self.session is not None:
            await self.error("session_already_started", "session.start was already sent.", client_id)
            return
        config = dict(event.get("session") or {})
        audio_format = (config.get("audio") or {}).get("format") or {"type": "audio/pcm", "rate": 24000}
        if audio_format.get("type") in FORMAT_LAWS and audio_format.get("rate") != g711.SAMPLE_RATE:
            await self.error("invalid_value", "G.711 audio uses 8000 Hz.", client_id, "session.audio.format.rate")
            return
        if audio_format.get("type") not in FORMAT_LAWS:
            await self.error(
                "unsupported_format", "This stand-in speaks G.711 only.", client_id, "session.audio.format"
            )
            return
        self.law = FORMAT_LAWS[audio_format["type"]]
        voice = ((config.get("audio") or {}).get("output") or {}).get("voice", "marin")
        audio = {"format": audio_format, "output": {"voice": voice}}
        self.session = {
            **config,
            "id": self.server.new_id("sess"),
            "expires_at": int(time.time() + self.server.session_seconds),
            "status": "active",
            "audio": audio,
            "delegation": config.get("delegation") or {"type": "client"},
        }
        self.log.session = self.session
        self.started_at = time.monotonic()
        for item in config.get("input") or []:
            if item.get("role") == "user":
                self.turn_index += 1
            elif item.get("role") == "assistant":
                self.greeted = True
            self.restored = True
        await self.send({"type": "session.started", "session": self.session, **self._echo(client_id)})
        self.spawn(self._expire())

    async def _expire(self) -> None:
        await asyncio.sleep(self.server.session_seconds)
        await self._end_session("expired")

    @staticmethod
    def _echo(client_id: str | None) -> dict[str, str]:
        return {"client_event_id": client_id} if client_id else {}

    @property
    def delegation(self) -> str:
        return str(((self.session or {}).get("delegation") or {}).get("type", "client"))

    async def _update(self, event: dict[str, Any]) -> None:
        assert self.session is not None
        update = event.get("session") or {}
        new = update.get("delegation")
        if new is not None and new.get("type") != self.delegation:
            await self.error(
                "invalid_value", "The delegation type cannot change.", event.get("event_id"), "session.delegation.type"
            )
            return
        if new is not None:
            merged = dict(self.session["delegation"])
            for key, value in new.items():
                merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
            self.session["delegation"] = merged
        if "triggers" in update:
            self.session["triggers"] = update["triggers"]
        await self.send({"type": "session.updated", "session": self.session, **self._echo(event.get("event_id"))})

    async def _mute(self, event: dict[str, Any]) -> None:
        self.muted = event["type"].endswith(".mute")
        ack = "session.input_audio.muted" if self.muted else "session.input_audio.unmuted"
        await self.send({"type": ack, **self._echo(event.get("event_id"))})

    async def _close(self, event: dict[str, Any]) -> None:
        await self._end_session("close_requested", event.get("event_id"))

    async def _end_session(self, reason: str, client_id: str | None = None) -> None:
        assert self.session is not None
        if self.reply is not None:
            self.reply.cancel()
        closed = {"type": "session.closed", "reason": reason, "session": self.session, "usage": self._usage()}
        await self.send({**closed, **self._echo(client_id)})
        await self.ws.close(1000, "session closed")

    def _usage(self) -> dict[str, float]:
        return {"seconds": round((self.buffer_ms + self.out_ms) / 1000, 3)}

    async def _context(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        client_id = event.get("event_id")
        if "delegation_id" not in event:
            message = "delegation_id is required (null for the session)."
            await self.error("missing_required_parameter", message, client_id, "delegation_id")
            return
        if event["delegation_id"] is not None and self.delegation == "responses":
            message = "Delegation IDs are not accepted with Responses delegation."
            await self.error("invalid_value", message, client_id, "delegation_id")
            return
        self.log.appended.append((kind, event.get("content", "")))
        now = self.clock_ms()
        await self.send({"type": CONTEXT_EVENTS[kind], "start_ms": now, "end_ms": now, **self._echo(client_id)})
        if kind == "session.commentary.append" and not self._replying():
            quoted = re.search(r'"([^"]+)"', event.get("content", ""))
            self._say(quoted.group(1) if quoted else event.get("content", ""), self.script.progress_ms)
        elif kind == "session.instructions.append" and not self._replying():
            if not self.greeted:
                self.greeted = True
                self._say(self.script.greeting, self.script.greeting_ms)
            elif self.restored:
                self.restored = False
                self._say(self.script.resume, self.script.resume_ms)

    # the caller's audio -----------------------------------------------------------------

    async def _append(self, event: dict[str, Any]) -> None:
        try:
            audio = base64.b64decode(event.get("audio", ""), validate=True)
        except ValueError:
            await self.error("invalid_value", "audio is not base64", event.get("event_id"), "audio")
            return
        self.log.audio_in_ms += g711.duration_ms(audio)
        self.pending.extend(audio)
        while len(self.pending) >= g711.FRAME_BYTES:
            frame = bytes(self.pending[: g711.FRAME_BYTES])
            del self.pending[: g711.FRAME_BYTES]
            self.buffer_ms += g711.FRAME_MS
            if not self.muted:
                await self._vad(frame)

    async def _vad(self, frame: bytes) -> None:
        constant = frame.count(frame[0]) == len(frame)  # digital silence needs no arithmetic
        loud = False if constant else g711.rms(frame, self.law) > SPEECH_RMS
        if not self.speaking:
            self.loud_frames = self.loud_frames + 1 if loud else 0
            if self.loud_frames >= SPEECH_FRAMES:
                await self._speech_started()
            return
        self.silence_ms = 0 if loud else self.silence_ms + g711.FRAME_MS
        if self.silence_ms >= END_SILENCE_MS:
            await self._speech_stopped()

    def _scripted(self) -> Turn | None:
        return self.script.turns[self.turn_index] if self.turn_index < len(self.script.turns) else None

    async def _speech_started(self) -> None:
        self.speaking, self.silence_ms = True, 0
        self.speech_start_ms = max(0, self.buffer_ms - SPEECH_FRAMES * g711.FRAME_MS)
        if self._replying():
            assert self.reply is not None
            self.reply.cancel()  # the full-duplex model yields to the caller
            self.log.interruptions += 1
        scripted = self._scripted()
        self.words = (scripted.transcript if scripted else "eh").split() or ["eh"]
        first, self.words = self.words[0], self.words[1:]
        await self._input_transcript(first + (" " if self.words else ""))

    async def _input_transcript(self, text: str) -> None:
        await self.send(
            {
                "type": "session.input_transcript.delta",
                "delta": text,
                "start_ms": self.speech_start_ms,
                "end_ms": self.buffer_ms,
            }
        )

    async def _speech_stopped(self) -> None:
        self.speaking, self.loud_frames = False, 0
        if self.words:
            await self._input_transcript(" ".join(self.words))
            self.words = []
        scripted = self._scripted()
        self.turn_index += 1
        drop = self.script.drop_after_turns
        if drop is not None and self.turn_index >= drop and not self.server._dropped:
            self.server._dropped = True
            log.info("stand-in: dropping the connection after turn %d as scripted", self.turn_index)
            self.ws.transport.abort()
            return
        if scripted is not None and scripted.tool:
            self.spawn(self._delegate(scripted))
        elif scripted is not None:
            self._say(scripted.reply, scripted.reply_ms)
        else:
            self._say(self.script.fallback, self.script.fallback_ms)

    # speech ------------------------------------------------------------------------------

    def _replying(self) -> bool:
        return self.reply is not None and not self.reply.done()

    def _say(self, text: str, audio_ms: int) -> None:
        if self.reply is not None:
            self.reply.cancel()
        self.reply = asyncio.get_running_loop().create_task(self._speak(text, audio_ms))

    async def _speak(self, text: str, audio_ms: int) -> None:
        silence = g711.silence(self.law, max(0, self.server.leading_silence_ms // g711.FRAME_MS))
        if silence:
            await self.send({"type": "session.output_audio.delta", "delta": base64.b64encode(silence).decode()})
        if self.script.think_ms:
            await asyncio.sleep(self.script.think_ms / 1000)
        audio = g711.tone(audio_ms, self.law, frequency=300 + 40 * (self.turn_index % 10))
        chunk = g711.SAMPLE_RATE * AUDIO_CHUNK_MS // 1000
        words = text.split()
        pieces = max(1, (len(audio) + chunk - 1) // chunk)
        origin = self.clock_ms()
        for index in range(pieces):
            part = audio[index * chunk : (index + 1) * chunk]
            await self.send({"type": "session.output_audio.delta", "delta": base64.b64encode(part).decode()})
            start = origin + index * AUDIO_CHUNK_MS
            self.out_ms += g711.duration_ms(part)
            share = words[index * len(words) // pieces : (index + 1) * len(words) // pieces]
            if share:
                await self.send(
                    {
                        "type": "session.output_transcript.delta",
                        "delta": " ".join(share) + " ",
                        "start_ms": start,
                        "end_ms": start + g711.duration_ms(part),
                    }
                )
            await asyncio.sleep(AUDIO_CHUNK_MS / 1000 / self.script.send_rate)
        ratio = min(1.0, round(self.clock_ms() / 3_600_000, 4))
        await self.send(
            {"type": "session.usage.updated", "usage": self._usage(), "context_window": {"usage_ratio": ratio}}
        )

    # delegation to the Responses backend ------------------------------------------------

    def _backend_response(self, response_id: str, status: str, output_tokens: int = 0) -> dict[str, Any]:
        """A lifecycle snapshot: input omitted, instructions, tools and output cleared, as the service sends."""
        responses = ((self.session or {}).get("delegation") or {}).get("responses") or {}
        response: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "model": responses.get("model", ""),
            "status": status,
            "output": [],
            "instructions": None,
            "tools": [],
            "tool_choice": responses.get("tool_choice", "auto"),
            "parallel_tool_calls": bool(responses.get("parallel_tool_calls", True)),
        }
        if status == "completed":
            input_tokens = 200 + self.buffer_ms // 100
            response["usage"] = {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            }
        return response

    async def _backend_event(self, delegation_id: str, nested: dict[str, Any]) -> None:
        nested = {**nested, "sequence_number": next(self.sequence)}
        await self.send({"type": "response.event", "event": nested, "delegation_id": delegation_id})

    async def _delegate(self, turn: Turn) -> None:
        if self.delegation != "responses":
            self._say(self.script.fallback, self.script.fallback_ms)  # nothing to call tools with
            return
        delegation_id = self.server.new_id("dlg")
        response_id = self.server.new_id("resp")
        self.log.delegations.append(delegation_id)
        await self.send(
            {
                "type": "session.delegation.created",
                "delegation": {
                    "id": delegation_id,
                    "type": "delegation",
                    "target": "responses",
                    "response_id": response_id,
                },
                "offset_ms": self.clock_ms(),
            }
        )
        await self._backend_event(
            delegation_id, {"type": "response.created", "response": self._backend_response(response_id, "in_progress")}
        )
        call_id = self.server.new_id("call")
        item_id = self.server.new_id("fc")
        arguments = json.dumps(turn.arguments)
        item = {"type": "function_call", "id": item_id, "call_id": call_id, "name": turn.tool, "arguments": ""}
        self.open_calls[call_id] = (turn, delegation_id)
        added = {**item, "status": "in_progress"}
        await self._backend_event(
            delegation_id, {"type": "response.output_item.added", "output_index": 0, "item": added}
        )
        common = {"item_id": item_id, "output_index": 0}
        await self._backend_event(
            delegation_id, {"type": "response.function_call_arguments.delta", **common, "delta": arguments}
        )
        await self._backend_event(
            delegation_id, {"type": "response.function_call_arguments.done", **common, "arguments": arguments}
        )
        done = {**item, "arguments": arguments, "status": "completed"}
        await self._backend_event(delegation_id, {"type": "response.output_item.done", "output_index": 0, "item": done})
        await asyncio.sleep(self.server.backend_ms / 1000)
        self.done_calls[call_id] = self.open_calls.pop(call_id)
        await self._backend_event(
            delegation_id,
            {"type": "response.completed", "response": self._backend_response(response_id, "completed", 20)},
        )

    async def _item_create(self, event: dict[str, Any]) -> None:
        client_id = event.get("event_id")
        if self.delegation != "responses":
            await self.error("delegation_required", "response.item.create requires Responses delegation.", client_id)
            return
        item = event.get("item") or {}
        if item.get("type") != "function_call_output":
            await self.error("unsupported_item", "This stand-in takes function_call_output items only.", client_id)
            return
        call_id = str(item.get("call_id", ""))
        if call_id not in self.done_calls:
            waiting = " before its response completed" if call_id in self.open_calls else ""
            message = f"Tool call ID '{call_id}' is not awaiting output{waiting}."
            await self.error("invalid_tool_call_id", message, client_id, "item.call_id")
            return
        self.outputs_waiting.append(self.done_calls.pop(call_id))
        self.log.function_outputs.append((call_id, str(item.get("output", ""))))

    async def _response_create(self, event: dict[str, Any]) -> None:
        client_id = event.get("event_id")
        if self.delegation != "responses":
            await self.error("delegation_required", "response.create requires Responses delegation.", client_id)
            return
        if not self.outputs_waiting:
            await self.error("no_response_waiting", "No delegated response is waiting for tool results.", client_id)
            return
        turn, delegation_id = self.outputs_waiting[-1]
        self.outputs_waiting.clear()
        self.spawn(self._continue(turn, delegation_id))

    async def _continue(self, turn: Turn, delegation_id: str) -> None:
        """The backend answers from the tool outputs; the Live model speaks the answer."""
        response_id = self.server.new_id("resp")
        text = turn.after_tool
        await self._backend_event(
            delegation_id, {"type": "response.created", "response": self._backend_response(response_id, "in_progress")}
        )
        item_id = self.server.new_id("msg")
        message = {"type": "message", "id": item_id, "role": "assistant", "status": "in_progress", "content": []}
        await self._backend_event(
            delegation_id, {"type": "response.output_item.added", "output_index": 0, "item": message}
        )
        common = {"item_id": item_id, "output_index": 0, "content_index": 0, "logprobs": []}
        await self._backend_event(delegation_id, {"type": "response.output_text.delta", **common, "delta": text})
        await self._backend_event(delegation_id, {"type": "response.output_text.done", **common, "text": text})
        part = {"type": "output_text", "text": text, "annotations": []}
        final = {**message, "status": "completed", "content": [part]}
        await self._backend_event(
            delegation_id, {"type": "response.output_item.done", "output_index": 0, "item": final}
        )
        await self._backend_event(
            delegation_id,
            {"type": "response.completed", "response": self._backend_response(response_id, "completed", len(text))},
        )
        self._say(text, turn.after_tool_ms)


def main(argv: list[str] | None = None) -> int:
    """Serve the stand-in as its own process (offline demo)."""
    return serve_main(
        argv,
        prog="python -m centralita.fakes.live",
        description=__doc__.split("\n")[0],
        port=8768,
        stand_in=FakeLive,
    )


if __name__ == "__main__":
    raise SystemExit(main())
