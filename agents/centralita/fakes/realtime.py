"""A stand-in for OpenAI's Realtime API (GA protocol) for tests and the offline demo.

It speaks the wire protocol the agent uses in production: the same URL shape, bearer
auth, event names and payloads (checked against the ``openai`` package's typed models
when that package is installed), server-side voice detection over the G.711 audio it
receives, scripted replies spoken as audio, function calls, ``response.done`` with
usage, truncation, cancellation, errors and protocol pings. The model's intelligence
is replaced by a script; the protocol is not simplified.

Run as a service (lab, offline demo), it is steered over its own HTTP paths, GET
only because a websocket server parses nothing else, with the same bearer key as
the API when one is set:

- ``GET /_stand-in/state``: the script in force and a summary of every recent
  connection (audio received, pongs, truncations, tool outputs, errors, close code);
- ``GET /_stand-in/script?set=<JSON>``: the script for sessions opened from now on
  (a bad script is refused with 400 and the reason); ``GET /_stand-in/script`` reads it;
- ``GET /_stand-in/reset``: forget the connection summaries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import itertools
import json
import logging
import os
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Self
from urllib.parse import SplitResult, parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from centralita.aicall import g711
from centralita.aicall.wsmodel import read_in_small_chunks

log = logging.getLogger("centralita.fakes.realtime")

FORMAT_LAWS = {"audio/pcmu": "ulaw", "audio/pcma": "alaw"}
SPEECH_RMS = 600.0  # linear level above which a 20 ms frame counts as speech
AUDIO_CHUNK_MS = 100  # the real service sends replies in chunks, faster than real time
# the real service streams a function call's arguments as the model writes them, in many small deltas;
# a few pieces are enough for a cancel or the caller's speech to land while they are being written
ARGUMENT_DELTAS = 4
CONTROL_PREFIX = "/_stand-in/"
MAX_CONNECTION_LOGS = 200  # a long-running stand-in keeps the summaries of the latest connections only


@dataclass
class Turn:
    """What the scripted model does after the caller's n-th utterance."""

    transcript: str
    reply: str = ""
    reply_ms: int = 1200
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    after_tool: str = ""
    after_tool_ms: int = 1200


@dataclass
class Script:
    greeting: str = "Hola, soy el asistente virtual. ¿En qué le puedo ayudar?"
    greeting_ms: int = 1500
    turns: list[Turn] = field(default_factory=list)
    fallback: str = "¿Me lo puede repetir, por favor?"
    fallback_ms: int = 1000
    progress_ms: int = 800  # length of an out-of-band "one moment" phrase
    resume: str = "Disculpe, se cortó un instante. Sigo con usted."  # a reply to response.create with instructions
    resume_ms: int = 1000
    drop_after_turns: int | None = None  # close the socket abruptly once, after this many turns
    refuse_after_drop: bool = False  # after that drop, refuse new sessions (503) as during an outage
    refuse: bool = False  # refuse every new session (503): the model cannot be reached
    send_rate: float = 4.0  # reply audio is sent this many times faster than real time
    think_ms: int = 0  # delay before a reply's first audio, as a model's thinking time
    arguments_ms: int = 20  # time to write a function call's arguments, spread over its deltas

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Script:
        """A script from its JSON form; unknown fields or wrong shapes raise ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError("a script is a JSON object")
        data = dict(data)
        turns = data.pop("turns", [])
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise ValueError("turns must be a list of objects")
        try:
            return cls(turns=[Turn(**t) for t in turns], **data)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc


@contextlib.contextmanager
def running_in_thread(fake: FakeRealtime) -> Iterator[FakeRealtime]:
    """Serve ``fake`` from its own thread and event loop, as a separate service would be.

    Tests that measure the agent's pacing use this so the stand-in's own work (making
    reply audio, voice detection) never shares the agent's event loop.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve_forever() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(fake.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve_forever, name="fake-realtime", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the Realtime stand-in did not start within 10 s")
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _openai_validator() -> Callable[[dict[str, Any]], str | None] | None:
    """Check a client event against the ``openai`` package's models (when installed)."""
    try:
        from openai.types.realtime.realtime_client_event import RealtimeClientEvent
        from pydantic import BaseModel, TypeAdapter, ValidationError
    except ImportError:
        return None
    adapter = TypeAdapter(RealtimeClientEvent)

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

    def validate(event: dict[str, Any]) -> str | None:
        try:
            model = adapter.validate_python(event)
        except ValidationError as exc:
            return str(exc).replace("\n", " ")[:500]
        unknown = [p for p in extras(model, "event") if not p.endswith(".parameters")]
        return f"unknown fields: {', '.join(unknown)}" if unknown else None

    return validate


@dataclass
class _Item:
    id: str
    role: str
    kind: str = "message"
    audio_ms: int = 0
    transcript: str = ""
    call_id: str | None = None


@dataclass
class ConnectionLog:
    """Everything one connection saw, for tests to assert on."""

    path: str
    headers: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    sent_types: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)  # every server event, when record_sent is on
    invalid: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    pongs_ms: list[float] = field(default_factory=list)
    missed_pongs: int = 0
    audio_in_ms: int = 0
    truncations: list[tuple[str, int]] = field(default_factory=list)
    function_outputs: list[tuple[str, str]] = field(default_factory=list)
    close_code: int | None = None
    session: dict[str, Any] = field(default_factory=dict)
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    # [wall time, "started" | "stopped", ms of input audio] each time voice detection changed its mind
    speech: list[tuple[float, str, int]] = field(default_factory=list)

    def received_types(self) -> list[str]:
        return [e.get("type", "") for e in self.received]

    def summary(self) -> dict[str, Any]:
        """What a test outside this process needs to judge the connection (JSON-ready)."""
        return {
            "path": self.path,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_code": self.close_code,
            "received": dict(Counter(self.received_types())),
            "sent": dict(Counter(self.sent_types)),
            "invalid": list(self.invalid),
            "errors": [e.get("code") for e in self.errors],
            "pongs": len(self.pongs_ms),
            "max_pong_ms": round(max(self.pongs_ms), 2) if self.pongs_ms else None,
            "missed_pongs": self.missed_pongs,
            "audio_in_ms": self.audio_in_ms,
            "truncations": [list(t) for t in self.truncations],
            "function_outputs": [list(o) for o in self.function_outputs],
            "speech": [[round(at, 3), what, ms] for at, what, ms in self.speech],
        }


async def keepalive_pings(ws: ServerConnection, log: ConnectionLog, interval: float, pong_within: float) -> None:
    """Protocol pings as the real service sends them; a missed pong closes with 1011."""
    while True:
        await asyncio.sleep(interval)
        started = time.perf_counter()
        try:
            waiter = await ws.ping()
            await asyncio.wait_for(waiter, pong_within)
        except TimeoutError:
            log.missed_pongs += 1
            await ws.close(1011, "keepalive ping timeout")
            return
        except ConnectionClosed:
            return
        log.pongs_ms.append((time.perf_counter() - started) * 1000)


class StandInServer:
    """The websocket server half of a model stand-in: serving on ``path``, start/stop (also as an
    async context manager), event ids, JSON error answers and the control paths under
    ``CONTROL_PREFIX`` (script, state, reset). Subclasses define ``_handle`` and
    ``_check_session`` (the checks of a session request, as the real service makes them)."""

    path = "/"

    def __init__(
        self,
        script: Script | None,
        *,
        host: str,
        port: int,
        api_key: str | None,
        ping_interval: float,
        ping_timeout: float,
        record_sent: bool,
    ) -> None:
        self.script = script or Script()
        self.host = host
        self.port = port
        self.api_key = api_key
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.record_sent = record_sent
        self.connections: list[Any] = []
        self._server: Server | None = None
        self._ids: Iterator[int] = itertools.count(1)
        self._dropped = False
        # served over TLS (wss://) when set, as the real service is; plain ws:// otherwise
        self.ssl_context: ssl.SSLContext | None = None

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path.startswith(CONTROL_PREFIX):
            return self._control(request, parts.path[len(CONTROL_PREFIX) :].strip("/"), parse_qs(parts.query))
        return self._check_session(connection, request, parts)  # type: ignore[attr-defined]

    def set_script(self, script: Script) -> None:
        """Sessions opened from now on follow ``script`` (open ones keep theirs); the one drop is re-armed."""
        self.script = script
        self._dropped = False

    def state(self) -> dict[str, Any]:
        return {
            "script": asdict(self.script),
            "dropped": self._dropped,
            "connections": [c.summary() for c in self.connections],
        }

    def _control(self, request: Request, action: str, query: dict[str, list[str]]) -> Response:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._json_error(401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided.")
        if action == "state":
            return self._json(200, self.state())
        if action == "script":
            if "set" not in query:
                return self._json(200, {"script": asdict(self.script)})
            try:
                script = Script.from_json(json.loads(query["set"][0]))
            except ValueError as exc:
                return self._json_error(400, "invalid_request_error", "invalid_script", f"bad script: {exc}")
            self.set_script(script)
            log.info("stand-in: new script with %d turns", len(script.turns))
            return self._json(200, {"script": asdict(script)})
        if action == "reset":
            self.connections.clear()
            return self._json(200, {"connections": 0})
        return self._json_error(404, "invalid_request_error", "unknown_path", f"no control path {action!r}")

    @staticmethod
    def _json(status: int, data: Any) -> Response:
        body = json.dumps(data).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(status, http.HTTPStatus(status).phrase, headers, body)

    @classmethod
    def _json_error(cls, status: int, kind: str, code: str, message: str) -> Response:
        return cls._json(status, {"error": {"message": message, "type": kind, "code": code, "param": None}})

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}{self.path}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        g711.warm_up()
        self._server = await serve(
            self._handle,  # type: ignore[attr-defined]
            self.host,
            self.port,
            process_request=self._check_request,  # type: ignore[attr-defined]
            ping_interval=None,  # our own ping loop records every round trip
            max_size=16 * 2**20,
            ssl=self.ssl_context,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"


class FakeRealtime(StandInServer):
    path = "/v1/realtime"
    """The stand-in server. ``async with FakeRealtime(script) as fake:`` serves on ``fake.url``."""

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
        audio_hook: Callable[[bytes], None] | None = None,
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
        self.validator = _openai_validator() if validate else None
        if require_validation and self.validator is None:
            raise RuntimeError("the openai package is needed to validate client events")
        self.audio_hook = audio_hook  # sees every appended chunk (the benchmark reads its time stamps)

    def _check_session(self, connection: ServerConnection, request: Request, parts: SplitResult) -> Response | None:
        if parts.path != "/v1/realtime":
            return connection.respond(http.HTTPStatus.NOT_FOUND, "unknown path\n")
        if not parse_qs(parts.query).get("model"):
            return self._json_error(400, "invalid_request_error", "missing_model", "model is required")
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._json_error(401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided.")
        if self.script.refuse or (self.script.refuse_after_drop and self._dropped):
            return self._json_error(503, "server_error", "service_unavailable", "The server is overloaded.")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        read_in_small_chunks(ws.transport)  # as the agent does: no memory mapping per read
        request = ws.request
        record = ConnectionLog(request.path if request else "", dict(request.headers.raw_items()) if request else {})
        self.connections.append(record)
        del self.connections[:-MAX_CONNECTION_LOGS]
        conn = _Connection(self, ws, record)
        await conn.run()


class _Connection:
    def __init__(self, server: FakeRealtime, ws: ServerConnection, record: ConnectionLog) -> None:
        self.server = server
        self.ws = ws
        self.log = record
        self.script = server.script
        self.session: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": server.new_id("sess"),
            "model": parse_qs(urlsplit(record.path).query).get("model", [""])[0],
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "create_response": True,
                        "interrupt_response": True,
                        "idle_timeout_ms": None,
                    },
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
            },
        }
        self.items: dict[str, _Item] = {}
        # where the script stands; a reconnecting client restores it by replaying the conversation
        self.turn_index = 0
        self.greeted = False
        self.buffer_ms = 0
        self.speaking = False
        self.speech_frames = 0
        self.silence_ms = 0
        self.speech_start_ms = 0
        self.user_item: str | None = None
        self.pending = bytearray()
        self.active: asyncio.Task[None] | None = None
        self.active_id: str | None = None
        self.side_tasks: set[asyncio.Task[None]] = set()
        self.done_calls: set[str] = set()
        self.open_calls: dict[str, Turn] = {}
        self.outputs_waiting: list[str] = []
        self.input_tokens = 0

    @property
    def law(self) -> str:
        fmt = self.session["audio"]["input"]["format"].get("type")
        return FORMAT_LAWS.get(fmt, "ulaw")

    async def send(self, event: dict[str, Any]) -> None:
        # laid out as the service writes its events: compact, "type" first, then "event_id"
        event = {"type": event["type"], "event_id": self.server.new_id("event"), **event}
        self.log.sent_types.append(event["type"])
        if self.server.record_sent:
            self.log.sent.append(event)
        await self.ws.send(json.dumps(event, separators=(",", ":")))

    async def error(self, kind: str, code: str, message: str, event_id: str | None = None, param: str | None = None):
        error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
        self.log.errors.append(error)
        await self.send({"type": "error", "error": error})

    async def run(self) -> None:
        if self.ws.request and "OpenAI-Beta" in self.ws.request.headers:
            await self.error("invalid_request_error", "beta_api_shape_disabled", "The beta Realtime API is disabled.")
            await self.ws.close(4000, "beta_api_shape_disabled")
            self.log.close_code = 4000
            return
        pinger = asyncio.get_running_loop().create_task(self._ping_loop())
        try:
            await self.send({"type": "session.created", "session": self.session})
            async for message in self.ws:
                await self._on_message(message)
        except ConnectionClosed:
            pass  # the client went away: nothing to answer
        finally:
            pinger.cancel()
            for task in [self.active, *self.side_tasks]:
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
            await self.error("invalid_request_error", "invalid_json", "The event is not valid JSON.")
            return
        if not isinstance(event, dict):
            await self.error("invalid_request_error", "invalid_event", "An event must be a JSON object.")
            return
        self.log.received.append(event if event.get("type") != "input_audio_buffer.append" else {"type": event["type"]})
        if self.server.validator is not None:
            problem = self.server.validator(event)
            if problem:
                self.log.invalid.append(f"{event.get('type')}: {problem}")
                await self.error("invalid_request_error", "invalid_value", problem, event.get("event_id"))
                return
        handler = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.clear": self._clear,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._truncate,
        }.get(event.get("type", ""))
        if handler is None:
            await self.error(
                "invalid_request_error",
                "unknown_event",
                f"Unknown event type {event.get('type')!r}.",
                event.get("event_id"),
            )
            return
        await handler(event)

    # session and input ------------------------------------------------------

    async def _session_update(self, event: dict[str, Any]) -> None:
        update = event.get("session") or {}
        if update.get("type") != "realtime":
            await self.error(
                "invalid_request_error", "invalid_value", "session.type must be 'realtime'", param="session.type"
            )
            return
        tokens = update.get("max_output_tokens", "inf")
        if tokens != "inf" and (isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 4096):
            # as the service: an integer from 1 to 4096, or "inf"; the whole update is refused
            await self.error(
                "invalid_request_error",
                "invalid_value",
                f"Invalid 'session.max_output_tokens': an integer from 1 to 4096 or 'inf', not {tokens!r}.",
                event.get("event_id"),
                param="session.max_output_tokens",
            )
            return
        for key, value in update.items():
            if key == "audio":
                for side in ("input", "output"):
                    self.session["audio"][side].update((value or {}).get(side) or {})
            else:
                self.session[key] = value
        self.log.session = self.session
        await self.send({"type": "session.updated", "session": self.session})

    async def _append(self, event: dict[str, Any]) -> None:
        try:
            audio = base64.b64decode(event.get("audio", ""), validate=True)
        except ValueError:
            await self.error("invalid_request_error", "invalid_value", "audio is not base64", param="audio")
            return
        self.log.audio_in_ms += g711.duration_ms(audio)
        if self.server.audio_hook is not None:
            self.server.audio_hook(audio)
        self.input_tokens += max(1, len(audio) // 800)
        self.pending.extend(audio)
        while len(self.pending) >= g711.FRAME_BYTES:
            frame = bytes(self.pending[: g711.FRAME_BYTES])
            del self.pending[: g711.FRAME_BYTES]
            await self._vad(frame)

    async def _clear(self, event: dict[str, Any]) -> None:
        self.pending.clear()
        self.speaking = False
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _vad(self, frame: bytes) -> None:
        turn = self.session["audio"]["input"].get("turn_detection") or {}
        self.buffer_ms += g711.FRAME_MS
        constant = frame.count(frame[0]) == len(frame)  # digital silence needs no arithmetic
        loud = False if constant else g711.rms(frame, self.law) > SPEECH_RMS
        if not self.speaking:
            self.speech_frames = self.speech_frames + 1 if loud else 0
            if self.speech_frames >= 3 and turn:
                self.speaking = True
                self.silence_ms = 0
                self.user_item = self.server.new_id("item")
                padding = int(turn.get("prefix_padding_ms") or 300)
                self.speech_start_ms = max(0, self.buffer_ms - 3 * g711.FRAME_MS - padding)
                self.log.speech.append((time.time(), "started", self.buffer_ms))
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": self.speech_start_ms,
                        "item_id": self.user_item,
                    }
                )
                if turn.get("interrupt_response", True) and self.active is not None and not self.active.done():
                    await self._cancel_active("turn_detected")
            return
        self.silence_ms = 0 if loud else self.silence_ms + g711.FRAME_MS
        if self.silence_ms >= int(turn.get("silence_duration_ms") or 500):
            self.speaking = False
            self.speech_frames = 0
            self.log.speech.append((time.time(), "stopped", self.buffer_ms))
            await self._commit_turn(turn)

    async def _commit_turn(self, turn: dict[str, Any]) -> None:
        item_id = self.user_item or self.server.new_id("item")
        previous = next(reversed(self.items), None)
        await self.send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": self.buffer_ms, "item_id": item_id}
        )
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        scripted = self.script.turns[self.turn_index] if self.turn_index < len(self.script.turns) else None
        self.turn_index += 1
        text = scripted.transcript if scripted else ""
        self.items[item_id] = _Item(item_id, "user", transcript=text)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.send({"type": "conversation.item.added", "item": item, "previous_item_id": previous})
        await self.send({"type": "conversation.item.done", "item": item, "previous_item_id": previous})
        if self.session["audio"]["input"].get("transcription"):
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": text,
                    "usage": {"type": "duration", "seconds": round((self.buffer_ms - self.speech_start_ms) / 1000, 3)},
                }
            )
        drop = self.script.drop_after_turns
        if drop is not None and self.turn_index >= drop and not self.server._dropped:
            self.server._dropped = True
            log.info("stand-in: dropping the connection after turn %d as scripted", self.turn_index)
            self.ws.transport.abort()
            return
        if turn.get("create_response", True):
            self._start_response(self._plan_for(scripted), conversation=True, metadata=None)

    # responses -------------------------------------------------------------

    def _plan_for(self, scripted: Turn | None) -> tuple[str, int, Turn | None]:
        if scripted is None:
            return self.script.fallback, self.script.fallback_ms, None
        if scripted.tool:
            return "", 0, scripted
        return scripted.reply, scripted.reply_ms, None

    def _start_response(
        self, plan: tuple[str, int, Turn | None], *, conversation: bool, metadata: dict[str, Any] | None
    ) -> None:
        response_id = self.server.new_id("resp")
        task = asyncio.get_running_loop().create_task(self._respond(response_id, plan, conversation, metadata))
        if conversation:
            self.active, self.active_id = task, response_id
        else:
            self.side_tasks.add(task)
            task.add_done_callback(self.side_tasks.discard)

    async def _response_create(self, event: dict[str, Any]) -> None:
        params = event.get("response") or {}
        out_of_band = params.get("conversation") == "none"
        if not out_of_band and self.active is not None and not self.active.done():
            await self.error(
                "invalid_request_error",
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active_id}.",
                event.get("event_id"),
            )
            return
        if out_of_band:
            instructions = params.get("instructions") or ""
            quoted = re.search(r'"([^"]+)"', instructions)  # "say exactly: "..."" -> the quoted phrase
            spoken = quoted.group(1) if quoted else instructions
            plan: tuple[str, int, Turn | None] = (spoken, self.script.progress_ms, None)
        elif self.outputs_waiting:
            turn = self.open_calls.pop(self.outputs_waiting[-1], None)
            self.outputs_waiting.clear()
            plan = (turn.after_tool, turn.after_tool_ms, None) if turn else (self.script.fallback, 1000, None)
        elif not self.greeted:
            self.greeted = True
            plan = (self.script.greeting, self.script.greeting_ms, None)
        elif params.get("instructions"):
            plan = (self.script.resume, self.script.resume_ms, None)
        else:
            plan = (self.script.fallback, self.script.fallback_ms, None)
        self._start_response(plan, conversation=not out_of_band, metadata=params.get("metadata"))

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        if self.active is None or self.active.done():
            await self.error(
                "invalid_request_error",
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                event.get("event_id"),
            )
            return
        await self._cancel_active("client_cancelled")

    async def _cancel_active(self, reason: str) -> None:
        task = self.active
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.active = None
        response = getattr(task, "centralita_state", None)
        if response is not None:
            response["status"] = "cancelled"
            response["status_details"] = {"type": "cancelled", "reason": reason}
            await self.send({"type": "response.done", "response": response})

    def _response_object(self, response_id: str, conversation: bool, metadata: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": response_id,
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": "conv_fake" if conversation else None,
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": self.session["audio"]["output"]["format"], "voice": "marin"}},
            "usage": None,
            "metadata": metadata,
        }

    async def _respond(
        self,
        response_id: str,
        plan: tuple[str, int, Turn | None],
        conversation: bool,
        metadata: dict[str, Any] | None,
    ) -> None:
        text, audio_ms, tool_turn = plan
        response = self._response_object(response_id, conversation, metadata)
        current = asyncio.current_task()
        current.centralita_state = response  # type: ignore[union-attr]
        await self.send({"type": "response.created", "response": dict(response)})
        if tool_turn is not None:
            arguments = await self._function_call(response, tool_turn)
            response["usage"] = self._usage(0, arguments)
        else:
            await self._speak(response, text, audio_ms, conversation)
            response["usage"] = self._usage(audio_ms, text)
        response["status"] = "completed"
        response["status_details"] = {"type": "completed", "reason": None}
        if self.active is current:
            self.active = None
        current.centralita_state = None  # type: ignore[union-attr]
        for call_id in [o["call_id"] for o in response["output"] if o["type"] == "function_call"]:
            self.done_calls.add(call_id)
        await self.send({"type": "response.done", "response": response})

    def _usage(self, audio_ms: int, text: str) -> dict[str, Any]:
        audio_out = audio_ms // 50
        text_out = max(1, len(text) // 4)
        return {
            "total_tokens": self.input_tokens + audio_out + text_out,
            "input_tokens": self.input_tokens,
            "output_tokens": audio_out + text_out,
            "input_token_details": {
                "text_tokens": 0,
                "audio_tokens": self.input_tokens,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    async def _speak(self, response: dict[str, Any], text: str, audio_ms: int, conversation: bool) -> None:
        response_id = response["id"]
        item_id = self.server.new_id("item")
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        response["output"].append(item)
        record = _Item(item_id, "assistant", transcript=text)
        if conversation:
            self.items[item_id] = record
        common = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.send(
            {"type": "response.output_item.added", "response_id": response_id, "output_index": 0, "item": item}
        )
        if conversation:
            await self.send({"type": "conversation.item.added", "item": item})
        part = {"type": "audio", "transcript": ""}
        await self.send({"type": "response.content_part.added", **common, "part": part})
        if self.script.think_ms:
            await asyncio.sleep(self.script.think_ms / 1000)
        audio = g711.tone(audio_ms, self.law, frequency=300 + 40 * (len(self.items) % 10))
        chunk = g711.SAMPLE_RATE * AUDIO_CHUNK_MS // 1000
        words = text.split()
        pieces = max(1, (len(audio) + chunk - 1) // chunk)
        spoken: list[str] = []
        try:
            for index in range(pieces):
                part_audio = audio[index * chunk : (index + 1) * chunk]
                await self.send(
                    {"type": "response.output_audio.delta", **common, "delta": base64.b64encode(part_audio).decode()}
                )
                record.audio_ms += g711.duration_ms(part_audio)
                share = words[index * len(words) // pieces : (index + 1) * len(words) // pieces]
                if share:
                    spoken += share
                    await self.send(
                        {"type": "response.output_audio_transcript.delta", **common, "delta": " ".join(share) + " "}
                    )
                await asyncio.sleep(AUDIO_CHUNK_MS / 1000 / self.script.send_rate)
        except asyncio.CancelledError:
            # as the API does on an interruption: the item ends "incomplete" with the text generated so far
            record.transcript = " ".join(spoken)
            # and its response.done reports the tokens generated up to the cut, as the API's does
            response["usage"] = self._usage(record.audio_ms, record.transcript)
            await self._finish_item(item, common, record.transcript, "incomplete", conversation)
            raise
        await self._finish_item(item, common, text, "completed", conversation)

    async def _finish_item(
        self, item: dict[str, Any], common: dict[str, Any], text: str, status: str, conversation: bool
    ) -> None:
        await self.send({"type": "response.output_audio.done", **common})
        await self.send({"type": "response.output_audio_transcript.done", **common, "transcript": text})
        part = {"type": "audio", "transcript": text}
        await self.send({"type": "response.content_part.done", **common, "part": part})
        item["status"] = status
        item["content"] = [{"type": "output_audio", "transcript": text}]
        await self.send(
            {"type": "response.output_item.done", "response_id": common["response_id"], "output_index": 0, "item": item}
        )
        if conversation:
            await self.send({"type": "conversation.item.done", "item": item})

    async def _function_call(self, response: dict[str, Any], turn: Turn) -> str:
        """The scripted call, its arguments streamed as they are written; returns the arguments."""
        response_id = response["id"]
        item_id = self.server.new_id("item")
        call_id = self.server.new_id("call")
        arguments = json.dumps(turn.arguments)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": turn.tool,
            "call_id": call_id,
            "arguments": "",
        }
        response["output"].append(item)
        self.items[item_id] = _Item(item_id, "assistant", kind="function_call", call_id=call_id)
        self.open_calls[call_id] = turn
        await self.send(
            {"type": "response.output_item.added", "response_id": response_id, "output_index": 0, "item": item}
        )
        await self.send({"type": "conversation.item.added", "item": item})
        common = {"response_id": response_id, "item_id": item_id, "output_index": 0, "call_id": call_id}
        size = -(-len(arguments) // ARGUMENT_DELTAS)  # JSON of an object: never empty
        pieces = [arguments[index : index + size] for index in range(0, len(arguments), size)]
        written = ""
        try:
            for piece in pieces:
                await asyncio.sleep(self.script.arguments_ms / 1000 / len(pieces))
                written += piece  # on the wire before send() can wait (it waits only to drain)
                await self.send({"type": "response.function_call_arguments.delta", **common, "delta": piece})
        except asyncio.CancelledError:
            # cut while the arguments were being written: as the API reference says of
            # response.function_call_arguments.done ("also emitted when a Response is interrupted, incomplete,
            # or cancelled"), it comes with the arguments written so far; the item ends "incomplete" (the call
            # was never made: it waits for no output), and the cancelled response.done reports the tokens
            # generated up to the cut
            self.open_calls.pop(call_id, None)
            response["usage"] = self._usage(0, written)
            await self.send(
                {"type": "response.function_call_arguments.done", **common, "name": turn.tool, "arguments": written}
            )
            await self._finish_call(response, {**item, "status": "incomplete", "arguments": written})
            raise
        await self.send(
            {"type": "response.function_call_arguments.done", **common, "name": turn.tool, "arguments": arguments}
        )
        await self._finish_call(response, {**item, "status": "completed", "arguments": arguments})
        return arguments

    async def _finish_call(self, response: dict[str, Any], item: dict[str, Any]) -> None:
        response["output"][-1] = item
        await self.send(
            {"type": "response.output_item.done", "response_id": response["id"], "output_index": 0, "item": item}
        )
        await self.send({"type": "conversation.item.done", "item": item})

    # conversation items -----------------------------------------------------

    async def _item_create(self, event: dict[str, Any]) -> None:
        item = dict(event.get("item") or {})
        if item.get("type") == "function_call_output":
            call_id = item.get("call_id", "")
            if call_id not in self.done_calls:
                await self.error(
                    "invalid_request_error",
                    "invalid_tool_call_id",
                    f"Tool call ID '{call_id}' not found in conversation.",
                    event.get("event_id"),
                    "item.call_id",
                )
                return
            self.done_calls.discard(call_id)
            self.outputs_waiting.append(call_id)
            self.log.function_outputs.append((call_id, item.get("output", "")))
        if item.get("type") == "message" and item.get("role") == "user":
            self.turn_index += 1
        elif item.get("type") == "message" and item.get("role") == "assistant":
            self.greeted = True
        item.setdefault("id", self.server.new_id("item"))
        item["object"] = "realtime.item"
        item["status"] = "completed"
        role = item.get("role", "tool")
        self.items[item["id"]] = _Item(item["id"], role, kind=item.get("type", "message"))
        await self.send({"type": "conversation.item.added", "item": item})
        await self.send({"type": "conversation.item.done", "item": item})

    async def _truncate(self, event: dict[str, Any]) -> None:
        item = self.items.get(event.get("item_id", ""))
        if item is None or item.role != "assistant" or item.kind != "message":
            await self.error(
                "invalid_request_error",
                "item_not_found",
                f"Item {event.get('item_id')!r} is not an assistant message.",
                event.get("event_id"),
                "item_id",
            )
            return
        end = int(event.get("audio_end_ms", -1))
        if end < 0 or end > item.audio_ms:
            await self.error(
                "invalid_request_error",
                "invalid_value",
                f"Audio content of {item.audio_ms}ms is shorter than {end}ms.",
                event.get("event_id"),
                "audio_end_ms",
            )
            return
        item.audio_ms = end
        item.transcript = ""
        self.log.truncations.append((item.id, end))
        await self.send(
            {"type": "conversation.item.truncated", "item_id": item.id, "content_index": 0, "audio_end_ms": end}
        )


def serve_main(argv: list[str] | None, *, prog: str, description: str, port: int, stand_in: type) -> int:
    """Run a model stand-in (``stand_in(script, host=..., port=..., ...)``) as its own process until
    SIGTERM/SIGINT, printing its URL as JSON; shared by the Realtime and GPT-Live stand-ins."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY") or None,
        help="the bearer key to accept (default: $OPENAI_API_KEY, else any)",
    )
    parser.add_argument("--script", help="a JSON file with the Script fields (greeting, turns, ...)")
    parser.add_argument("--ping-interval", type=float, default=5.0)
    parser.add_argument("--no-validate", action="store_true", help="skip checking events (saves CPU)")
    parser.add_argument("--certfile", help="serve wss:// with this certificate (PEM; with --keyfile)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    args = parser.parse_args(argv)
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    script = Script()
    if args.script:
        with open(args.script, encoding="utf-8") as handle:
            script = Script.from_json(json.load(handle))

    async def serve_until_stopped() -> None:
        fake = stand_in(
            script,
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            ping_interval=args.ping_interval,
            validate=not args.no_validate,
        )
        if args.certfile:
            fake.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            fake.ssl_context.load_cert_chain(args.certfile, args.keyfile)
        await fake.start()
        print(json.dumps({"url": fake.url}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await fake.stop()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve_until_stopped())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serve the stand-in as its own process (offline demo, benchmark)."""
    return serve_main(
        argv,
        prog="python -m centralita.fakes.realtime",
        description=__doc__.split("\n")[0],
        port=8765,
        stand_in=FakeRealtime,
    )


if __name__ == "__main__":
    raise SystemExit(main())
