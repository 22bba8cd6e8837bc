"""The websocket half shared by the model providers (OpenAI Realtime and GPT-Live).

Opening the socket (bearer key, protocol pings, no compression), one writer task
that keeps events in order, the hot path for the caller's audio (written at once
when nothing waits, else queued behind the writer), the read path that parses the
server's messages as they arrive (:class:`ModelConnection`), the marks that say when
each millisecond of input audio left, and closing. Each provider adds its protocol:
what it sends on connect, how it names events, how it reads the server.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import json
import logging
import os
import struct
import time
from array import array
from binascii import b2a_base64
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidStatus
from websockets.frames import DATA_OPCODES, Frame, Opcode
from websockets.protocol import Event, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # the library built without its C helper
    from websockets.utils import apply_mask

from centralita.aicall import g711, urgent
from centralita.aicall.provider import Disconnected, ModelEvent, ModelSession, ModelUnavailable

log = logging.getLogger("centralita.aicall.wsmodel")

# Past this many bytes waiting in the socket's buffer, audio goes through the writer's queue.
WRITE_BUFFER_LIMIT = 64 * 1024
# asyncio's selector transports read with a 256 KiB buffer, which the C library may serve with a fresh
# memory mapping per read (about 30 µs per read, measured alone); 64 KiB stays below that threshold and
# still holds any model event in one read.
READ_SIZE = 64 * 1024
_OPEN = State.OPEN
_BYTES_PER_MS = g711.SAMPLE_RATE // 1000  # G.711: one byte per sample
_TEXT_FRAME = 0x81  # FIN and opcode 1 (RFC 6455 section 5.2): a whole text message in one frame
_MASKED = 0x80


def read_in_small_chunks(transport: Any) -> None:
    """Make a selector transport read ``READ_SIZE`` at a time (other transports are left as they are)."""
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = READ_SIZE


class AudioMarks:
    """The last ``keep`` marks (position in ms of input audio sent, monotonic time it left).

    Two flat arrays rather than a deque of tuples: a mark per 20 ms per call would otherwise
    be a new object for the garbage collector to count and, in every full collection, to
    walk (200 calls keep 600,000 of them), pausing every call's audio while it does.
    """

    def __init__(self, keep: int = 3000) -> None:
        self.keep = keep
        self._positions = array("q")
        self._times = array("d")

    def add(self, position_ms: int, at: float) -> None:
        positions = self._positions
        if len(positions) >= 2 * self.keep:  # trimmed in bulk: one move per ``keep`` marks
            del positions[: -self.keep]
            del self._times[: -self.keep]
        positions.append(position_ms)
        self._times.append(at)

    def sent_at(self, position_ms: int) -> float | None:
        """The time of the first mark at or after ``position_ms`` among the last ``keep``."""
        positions = self._positions
        if position_ms < 0 or not positions:
            return None
        index = bisect.bisect_left(positions, position_ms, max(0, len(positions) - self.keep))
        if index >= len(positions):
            return None
        return self._times[index]

    def __len__(self) -> int:
        return min(len(self._positions), self.keep)


class MaskKeys:
    """Masking keys for client frames, drawn from the kernel's random source 1024 at a time.

    RFC 6455 asks for a fresh, unpredictable key per client frame. websockets draws each one
    with its own ``getrandom`` call, which costs a system call per 20 ms of audio per call;
    here one call yields the keys for the next 1024 frames, from the same source.
    """

    def __init__(self, batch: int = 1024) -> None:
        self._size = 4 * batch
        self._pool = b""
        self._offset = 0

    def next(self) -> bytes:
        offset = self._offset
        if offset >= len(self._pool):
            self._pool, offset = os.urandom(self._size), 0
        self._offset = offset + 4
        return self._pool[offset : offset + 4]


MASK_KEYS = MaskKeys()


@functools.lru_cache(maxsize=64)
def _text_frame_head(length: int) -> bytes:
    """The first bytes of a masked text frame carrying ``length`` bytes (cached: audio frames repeat a few sizes)."""
    if length < 126:
        return struct.pack("!BB", _TEXT_FRAME, _MASKED | length)
    if length < 65536:
        return struct.pack("!BBH", _TEXT_FRAME, _MASKED | 126, length)
    return struct.pack("!BBQ", _TEXT_FRAME, _MASKED | 127, length)


def masked_text_frame(payload: bytes, keys: MaskKeys = MASK_KEYS) -> bytes:
    """``payload`` (UTF-8) as one masked client text frame, as websockets would write it."""
    key = keys.next()
    return b"".join((_text_frame_head(len(payload)), key, apply_mask(payload, key)))


def _ignore(_message: bytes) -> None:
    return None


class ModelConnection(ClientConnection):
    """A client connection that hands each whole text message to a callback as it is read.

    The library's own reader queues every frame for a ``recv()`` that a task awaits: a future,
    a task switch and a UTF-8 decode per message, even for the many messages the agent ignores
    (transcript deltas). Here a message is handed over inside ``data_received``, so the provider
    parses it there and wakes the call's task only for the events it acts on. Control frames stay
    with the library: pings are answered, pongs feed its keepalive, the closing handshake and the
    close codes are its own. Binary messages are dropped (the providers send none).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost = False  # the TCP connection is gone: no message will follow
        self._on_message: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[], None] | None = None
        self._held: collections.deque[bytes] = collections.deque()  # read before a reader was attached
        self._fragments: list[bytes] | None = None  # a fragmented message so far
        self._fragmented_text = False

    def deliver(self, on_message: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        """Hand each message to ``on_message`` from now on (held ones first), and the loss to ``on_lost``."""
        self._on_message, self._on_lost = on_message, on_lost
        held, self._held = self._held, collections.deque()
        for message in held:
            on_message(message)
        if self.lost:
            on_lost()

    def stop_delivery(self) -> None:
        """Drop the messages still arriving (the socket is closing); the loss is still reported."""
        self._on_message = _ignore

    def process_event(self, event: Event) -> None:
        if self.response is None or not isinstance(event, Frame) or event.opcode not in DATA_OPCODES:
            super().process_event(event)  # the handshake's response and the control frames
            return
        if event.opcode is Opcode.CONT:
            if self._fragments is None:
                return
            self._fragments.append(bytes(event.data))
            if not event.fin:
                return
            data, text = b"".join(self._fragments), self._fragmented_text
            self._fragments = None
        elif not event.fin:
            self._fragments, self._fragmented_text = [bytes(event.data)], event.opcode is Opcode.TEXT
            return
        else:
            data, text = bytes(event.data), event.opcode is Opcode.TEXT
        if not text:
            return
        if self._on_message is not None:
            self._on_message(data)
            urgent.run()  # the callers' audio does not wait for the rest of a burst of messages
        else:  # no reader yet: kept for the first one
            self._held.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.lost = True
        if self._on_lost is not None:
            self._on_lost()

    def disconnect_reason(self) -> str:
        """Why the messages ended, worded as the reader of ``async for message in ws`` would see it."""
        closed = self.protocol.close_exc
        if isinstance(closed, ConnectionClosedOK):
            return f"closed by server ({self.close_code} {self.close_reason})"
        return f"connection lost ({closed})"


class Inbox:
    """The events parsed from one socket's messages, waiting for the call's task.

    Reading pauses while more than ``HIGH`` wait and resumes when the task has taken them
    (the library's own reader does the same), so a stalled task never buffers without bound.
    """

    HIGH = 64

    def __init__(self, transport: Any = None) -> None:
        self.events: collections.deque[ModelEvent | BaseException] = collections.deque()
        self.lost = False
        self._transport = transport
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: ModelEvent | BaseException) -> None:
        """An event, or an exception the reader raises when it gets there."""
        self.events.append(item)
        if len(self.events) > self.HIGH and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def close(self) -> None:
        self.lost = True
        self._wake()

    @property
    def idle(self) -> bool:
        """The reader has taken every event and waits for the next one."""
        waiter = self._waiter
        return not self.events and waiter is not None and not waiter.done()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> AsyncIterator[ModelEvent]:
        """Every event as it comes, until the socket is gone and nothing is left."""
        events = self.events
        loop = asyncio.get_running_loop()
        while True:
            while events:
                item = events.popleft()
                if isinstance(item, BaseException):
                    raise item
                yield item
            if self._paused:
                self._paused = False
                with contextlib.suppress(RuntimeError):  # the transport closed meanwhile
                    self._transport.resume_reading()
            if self.lost:
                return
            self._waiter = loop.create_future()
            await self._waiter


class WebsocketModelSession(ModelSession):
    """Subclasses set ``protocol`` (for messages and task names) and ``audio_event`` (the
    event type that carries input audio), and call :meth:`_init_socket` in ``__init__``."""

    protocol = "model"
    audio_event = ""

    def _init_socket(
        self,
        *,
        url: str,
        api_key: str,
        connect_timeout: float,
        ping_interval: float,
        ping_timeout: float,
        name: str,
    ) -> None:
        self.url = url
        self.api_key = api_key
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.name = name
        self.sent_audio_bytes = 0
        self._audio_prefix = b'{"type":"' + self.audio_event.encode("ascii") + b'","audio":"'
        self._ws: ClientConnection | None = None
        self._inbox = Inbox()  # what the current socket's reader parsed (a ModelConnection's only)
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._writing = False
        self._reset_audio()

    def _reset_audio(self) -> None:
        self._buffer_ms = 0  # input audio sent on this socket, in ms (the server's audio clock)
        self._audio_marks = AudioMarks()

    async def _open(self, endpoint: str, connection: type[ClientConnection] = ClientConnection) -> ClientConnection:
        """A connected socket, or :class:`ModelUnavailable` saying why not."""
        try:
            return await connect(
                endpoint,
                create_connection=connection,
                additional_headers={"Authorization": f"Bearer {self.api_key}"},
                open_timeout=self.connect_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=2,
                max_size=16 * 2**20,
                compression=None,  # base64 audio barely compresses; deflate would cost CPU on every frame
            )
        except InvalidStatus as exc:
            raise ModelUnavailable(f"{self.protocol} handshake refused: HTTP {exc.response.status_code}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ModelUnavailable(f"{self.protocol} connect to {urlsplit(self.url).netloc} failed: {exc}") from exc

    def _attach(self, ws: ClientConnection) -> None:
        """Use ``ws`` from now on: a fresh queue and its writer task."""
        read_in_small_chunks(ws.transport)
        self._ws = ws
        if isinstance(ws, ModelConnection):
            self._inbox = inbox = Inbox(ws.transport)
            ws.deliver(functools.partial(self._message, inbox), inbox.close)
        self._outbox = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(
            self._write(ws), name=f"{self.protocol}-writer-{self.name}"
        )

    def _message(self, inbox: Inbox, data: bytes) -> None:
        """Parse one server message into ``inbox`` (runs in the socket's read callback)."""
        raise NotImplementedError(f"{type(self).__name__} reads with ws.recv(), not a ModelConnection")

    async def _inbox_events(self, ws: ModelConnection) -> AsyncIterator[ModelEvent]:
        """The events of ``ws`` as its reader parsed them, then :class:`Disconnected` with the close's reason."""
        async for event in self._inbox.drain():
            yield event
        yield Disconnected(ws.disconnect_reason())

    def _send(self, event: dict[str, Any]) -> None:
        if self._ws is None:
            return
        self._outbox.put_nowait(json.dumps(event, separators=(",", ":"), ensure_ascii=False))

    async def _write(self, ws: ClientConnection) -> None:
        try:
            while True:
                message = await self._outbox.get()
                self._writing = True
                try:
                    await ws.send(message)
                finally:
                    self._writing = False
        except ConnectionClosed:
            return  # the reader reports the close

    def audio_sent_at(self, position_ms: int) -> float | None:
        """When the input audio at ``position_ms`` of this socket's buffer was sent (monotonic)."""
        return self._audio_marks.sent_at(position_ms)

    def send_audio(self, audio: bytes) -> None:
        ws = self._ws
        if ws is None:
            return
        size = len(audio)
        self._buffer_ms += size // _BYTES_PER_MS
        self._audio_marks.add(self._buffer_ms, time.monotonic())
        self.sent_audio_bytes += size
        # The event is built as bytes: base64 is ASCII, so no text round trip is needed.
        message = b"".join((self._audio_prefix, b2a_base64(audio, newline=False), b'"}'))
        # The hot path: 50 frames a second per call. When nothing is queued or being written and the
        # socket's buffer is not backed up, the frame is framed and written at once, in order, skipping a
        # queue hop and a task switch per frame; otherwise it waits its turn behind the writer task.
        # websockets writes every frame it makes at once (its pending writes are always empty between
        # calls), so a frame written straight to the transport keeps its place among them.
        transport = ws.transport
        if (
            not self._writing
            and self._outbox.empty()
            and ws.protocol.state is _OPEN
            and transport.get_write_buffer_size() < WRITE_BUFFER_LIMIT
        ):
            try:
                transport.write(masked_text_frame(message))
                return
            except OSError:
                pass  # the reader sees the broken socket; the queue path keeps ordering meanwhile
        self._outbox.put_nowait(message.decode("ascii"))

    async def _close_socket(self, goodbye: str | None = None) -> None:
        """Stop the writer and close the socket (after ``goodbye``, if given and still possible)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        ws, self._ws = self._ws, None
        if ws is not None:
            if isinstance(ws, ModelConnection):
                ws.stop_delivery()
            if goodbye is not None:
                with contextlib.suppress(Exception):
                    if ws.protocol.state is State.OPEN:
                        await ws.send(goodbye)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout=3)
