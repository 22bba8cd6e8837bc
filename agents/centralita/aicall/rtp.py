"""externalMedia over RTP/UDP: the agent owns the 20 ms playout clock.

Whatever reaches Asterisk's RTP channel is played as it arrives, so the agent must
send exactly one 160-byte frame every 20 ms: a burst is heard as sped-up audio and a
gap as a click. One :class:`Pacer` per process ticks for every call, so 200 calls
cost one timer wake-up per 20 ms instead of 200, and each call's frame interval stays
as steady as the event loop itself. Between replies the stream carries digital
silence, which keeps the RTP timestamp and Asterisk's bridge timing continuous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from dataclasses import dataclass

from centralita.aicall import g711
from centralita.aicall.media import MediaPath, Played

log = logging.getLogger("centralita.aicall.rtp")

PAYLOAD_TYPES = {"ulaw": 0, "alaw": 8}
_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """A datagram that is not an RTP packet this call can use."""


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def encode(self) -> bytes:
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        return _HEADER.pack(0x80, second, self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc) + self.payload

    @classmethod
    def decode(cls, data: bytes) -> RtpPacket:
        if len(data) < _HEADER.size:
            raise RtpError(f"datagram of {len(data)} bytes is shorter than an RTP header")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != 2:
            raise RtpError(f"RTP version {first >> 6}, expected 2")
        offset = _HEADER.size + 4 * (first & 0x0F)
        if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
            if len(data) < offset + 4:
                raise RtpError("truncated RTP header extension")
            (words,) = struct.unpack_from("!H", data, offset + 2)
            offset += 4 + 4 * words
        end = len(data)
        if first & 0x20:  # padding: last byte says how much
            end -= data[-1]
        if offset > end:
            raise RtpError("RTP header longer than the datagram")
        return cls(second & 0x7F, sequence, timestamp, ssrc, bytes(data[offset:end]), bool(second & 0x80))


class Pacer:
    """One clock for every RTP stream of the process, ticking every 20 ms.

    A late tick (a busy loop) is caught up by at most two frames; after a longer
    stall the clock restarts instead of bursting, because a burst is worse than a gap.
    """

    def __init__(self, frame_ms: int = g711.FRAME_MS) -> None:
        self.period = frame_ms / 1000
        self._streams: dict[int, RtpMedia] = {}
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.restarts = 0
        self.lateness: list[float] | None = None  # seconds each frame left after its due time (benchmark only)

    def add(self, stream: RtpMedia) -> None:
        self._streams[id(stream)] = stream
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rtp-pacer")

    def remove(self, stream: RtpMedia) -> None:
        self._streams.pop(id(stream), None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self._streams:
            now = loop.time()
            if now - due > 3 * self.period:
                due = now
                self.restarts += 1
            for stream in list(self._streams.values()):
                try:
                    stream.tick()
                except Exception:  # one broken call must not silence the others
                    log.exception("rtp stream tick failed; removing stream %s", stream.name)
                    self.remove(stream)
                if self.lateness is not None:
                    self.lateness.append(loop.time() - due)
            self.ticks += 1
            due += self.period
            delay = due - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)

    async def close(self) -> None:
        self._streams.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, media: RtpMedia) -> None:
        self.media = media

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.media._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.warning("rtp %s: socket error %s", self.media.name, exc)


class RtpMedia(MediaPath):
    """One call's RTP leg: receives the caller's audio, sends paced assistant audio back."""

    kind = "rtp"

    def __init__(
        self,
        law: str,
        pacer: Pacer,
        *,
        bind_host: str = "127.0.0.1",
        port_range: tuple[int, int] | None = None,
        name: str = "",
    ) -> None:
        super().__init__(law)
        self.pacer = pacer
        self.bind_host = bind_host
        self.port_range = port_range
        self.name = name
        self.payload_type = PAYLOAD_TYPES[law]
        self.remote: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._ssrc = int.from_bytes(os.urandom(4), "big")
        self._sequence = int.from_bytes(os.urandom(2), "big")
        self._timestamp = int.from_bytes(os.urandom(4), "big")
        self._talking = False
        self._silence = g711.silence(law)
        self.received_packets = 0
        self.rejected_packets = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ports = range(self.port_range[0], self.port_range[1] + 1, 2) if self.port_range else [0]
        last_error: OSError | None = None
        for port in ports:
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), local_addr=(self.bind_host, port)
                )
            except OSError as exc:
                last_error = exc
                continue
            self._transport = transport
            self.local = transport.get_extra_info("sockname")[:2]
            self.pacer.add(self)
            return
        raise OSError(f"no free RTP port on {self.bind_host} in {self.port_range}: {last_error}")

    def set_remote(self, host: str, port: int) -> None:
        """Where Asterisk's RTP channel listens (UNICASTRTP_LOCAL_ADDRESS/PORT)."""
        self.remote = (host, port)

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        # The common packet (version 2, no CSRC, extension or padding, our payload type) is read in
        # place: this runs 50 times a second per call. Anything else goes through the full decoder.
        if len(data) > _HEADER.size and data[0] == 0x80 and data[1] & 0x7F == self.payload_type:
            payload = data[_HEADER.size :]
        else:
            try:
                packet = RtpPacket.decode(data)
            except RtpError as exc:
                self.rejected_packets += 1
                log.debug("rtp %s: dropped datagram from %s: %s", self.name, addr, exc)
                return
            if packet.payload_type != self.payload_type:
                self.rejected_packets += 1  # comfort noise, DTMF events: nothing for the model
                return
            payload = packet.payload
        if self.remote is None:
            self.remote = addr  # symmetric RTP: answer where the audio comes from
        self.received_packets += 1
        self._deliver(payload)

    def tick(self) -> None:
        """Send the next 20 ms frame: queued reply audio, else silence."""
        if self._transport is None or self.remote is None:
            return
        taken = self.playout.take()
        if taken is None:
            payload, marker = self._silence, False
            self._talking = False
        else:
            payload, item_id = taken
            marker = not self._talking
            self._talking = True
            self._mark_start(item_id)
        header = _HEADER.pack(
            0x80, (0x80 if marker else 0) | self.payload_type, self._sequence, self._timestamp, self._ssrc
        )
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + len(payload)) & 0xFFFFFFFF
        self._transport.sendto(header + payload, self.remote)
        self.stats.sent(taken is not None)

    def flush(self) -> Played:
        self._talking = False
        return self.playout.clear()

    async def close(self) -> None:
        self.pacer.remove(self)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
