"""In-process stand-in for Asterisk's side of an externalMedia RTP leg.

A UDP socket on 127.0.0.1 plays the caller: it sends the caller's speech as paced
RTP (a tone for speech, digital silence otherwise) and records every packet the
agent sends back with its arrival time, so tests measure what a caller would hear:
frame gaps, non-silent audio, and when it started and stopped. Arrival times are
the kernel's receive timestamps (SO_TIMESTAMPNS), so a pause of the test's own
event loop does not show up as a gap or a burst in what the agent sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from centralita.aicall import g711
from centralita.aicall.media import MediaPath, Played
from centralita.aicall.provider import HistoryLine, ModelEvent, ModelSession
from centralita.aicall.rtp import PAYLOAD_TYPES, RtpPacket
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

# Linux's SO_TIMESTAMPNS (Python's socket module names it only from 3.14 on).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SERVER_EVENTS = TypeAdapter(RealtimeServerEvent)
CLIENT_EVENTS = TypeAdapter(RealtimeClientEvent)


def cue_ms(media: Any) -> int:
    """How much of the agent's own waiting cue reached the caller (played while a tool ran long)."""
    from centralita.aicall.session import CUE_PREFIX

    return sum(media.played_ms(item) for item in list(media.playout.played_bytes) if item.startswith(CUE_PREFIX))


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
    """Run one scenario on a fresh loop, bounded in time, and check it leaked no task."""

    async def bounded() -> Any:
        before = asyncio.all_tasks()
        result = await asyncio.wait_for(coro, timeout)
        await asyncio.sleep(0.05)
        leaked = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
        assert not leaked, f"tasks left running: {[t.get_name() for t in leaked]}"
        return result

    return asyncio.run(bounded())


@dataclass
class Arrival:
    at: float
    packet: RtpPacket

    @property
    def loud(self) -> bool:
        return g711.rms(self.packet.payload, "ulaw") > 300


@dataclass
class RtpPeer:
    law: str = "ulaw"
    arrivals: list[Arrival] = field(default_factory=list)
    sock: socket.socket | None = None
    agent: tuple[str, int] | None = None
    _sender: asyncio.Task[None] | None = None
    _script: asyncio.Queue[tuple[bool, int]] = field(default_factory=asyncio.Queue)
    sent_loud_until: float = 0.0

    def _readable(self) -> None:
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            # The kernel's receive time (CLOCK_REALTIME) moved onto perf_counter's clock.
            age = 0.0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    age = max(0.0, time.time() - (seconds + nanoseconds / 1e9))
            self.arrivals.append(Arrival(time.perf_counter() - age, RtpPacket.decode(data)))

    async def start(self, agent: tuple[str, int]) -> tuple[str, int]:
        self.agent = agent
        loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        loop.add_reader(self.sock.fileno(), self._readable)
        self._sender = loop.create_task(self._send_loop())
        return self.sock.getsockname()[:2]

    def say(self, ms: int) -> None:
        """The caller speaks for ``ms`` milliseconds (then silence again)."""
        self._script.put_nowait((True, ms))

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        sequence, timestamp, due = 1, 0, loop.time()
        speech = b""
        silence = g711.silence(self.law)
        while True:
            if not speech and not self._script.empty():
                _, ms = self._script.get_nowait()
                speech = g711.tone(ms, self.law, 220, 9000)
            frame, speech = (speech[:160], speech[160:]) if speech else (silence, b"")
            if len(frame) < 160:
                frame += silence[: 160 - len(frame)]
            packet = RtpPacket(PAYLOAD_TYPES[self.law], sequence, timestamp, 0x1234, frame)
            with contextlib.suppress(BlockingIOError):
                self.sock.sendto(packet.encode(), self.agent)
            sequence, timestamp = sequence + 1, timestamp + 160
            due += 0.02
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()

    def gaps_ms(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        times = [a.at for a in self.arrivals if since <= a.at <= until]
        return [(b - a) * 1000 for a, b in itertools.pairwise(times)]

    def loud_ms(self, since: float = 0.0) -> int:
        return sum(20 for a in self.arrivals if a.at >= since and a.loud)


@dataclass
class RecordingControl:
    """Call control for in-process tests: records what the session asked Asterisk to do.

    Like Asterisk, it reports the caller leaving the application (StasisEnd) before the
    transfer or hang-up request returns, when it knows the session.
    """

    actions: list[tuple[str, str | None]] = field(default_factory=list)
    session: Any = None

    async def transfer(self, target: str) -> None:
        self.actions.append(("transfer", target))
        if self.session is not None:
            self.session.caller_hung_up()
        await asyncio.sleep(0.01)

    async def hangup(self) -> None:
        self.actions.append(("hangup", None))
        if self.session is not None:
            self.session.caller_hung_up()
        await asyncio.sleep(0.01)

    async def play_apology(self) -> None:
        self.actions.append(("apology", None))


class ScriptedModel(ModelSession):
    """A model whose events the test pushes; it records what the session asks of it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ModelEvent | None] = asyncio.Queue()
        self.truncations: list[tuple[str, int]] = []
        self.histories: list[list[HistoryLine]] = []
        self.responses: list[str | None] = []  # the instructions of each response.create
        self.outputs: list[tuple[str, str]] = []
        self.closed = 0
        self.connect_delay = 0.0
        self.refuse: Exception | None = None  # raised by connect after the delay

    async def connect(self, history: list[HistoryLine] | None = None) -> None:
        await asyncio.sleep(self.connect_delay)
        if self.refuse is not None:
            raise self.refuse
        self.histories.append(list(history or []))

    def send_audio(self, audio: bytes) -> None:
        return None

    async def events(self) -> AsyncIterator[ModelEvent]:
        while (event := await self.queue.get()) is not None:
            yield event

    async def respond(self, instructions: str | None = None) -> None:
        self.responses.append(instructions)

    async def say_progress(self, instructions: str) -> None:
        return None

    async def tool_result(self, call_id: str, output: str) -> None:
        self.outputs.append((call_id, output))

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        self.truncations.append((item_id, audio_end_ms))

    async def cancel(self) -> None:
        return None

    async def close(self) -> None:
        self.closed += 1
        self.queue.put_nowait(None)  # a closed socket's events end


class ManualMedia(MediaPath):
    """A media path whose frames leave when the test says so."""

    kind = "manual"

    async def start(self) -> None:
        return None

    def send_frames(self, count: int) -> None:
        for _ in range(count):
            taken = self.playout.take()
            if taken is not None:
                self._mark_start(taken[1])

    def flush(self) -> Played:
        return self.playout.clear()

    async def close(self) -> None:
        return None
