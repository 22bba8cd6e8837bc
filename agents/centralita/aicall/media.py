"""The media path between the agent and Asterisk, behind one small interface.

Two implementations exist: externalMedia over RTP/UDP (``rtp.py``: the agent owns the
20 ms playout clock) and chan_websocket (``wsmedia.py``: Asterisk owns it). The call
logic only sees :class:`MediaPath`: queue the assistant's audio, drop it on barge-in,
learn how much of each reply the caller actually heard, and receive the caller's audio.
"""

from __future__ import annotations

import abc
import collections
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from centralita.aicall import g711

AudioHandler = Callable[[bytes], None]
StartHandler = Callable[[str, float], None]


@dataclass(frozen=True)
class Cut:
    """One reply that lost audio when playout stopped: what of it the caller heard, what was dropped."""

    item_id: str
    played_ms: int
    dropped_ms: int


@dataclass
class Played:
    """What the caller heard of the reply playing when playout stopped (``item_id``), and every
    reply that lost audio then (``cuts``, in playing order: the one playing, then those queued
    behind it, which a barge-in drops unheard)."""

    item_id: str | None
    played_ms: int
    dropped_ms: int
    cuts: tuple[Cut, ...] = ()


@dataclass
class _Chunk:
    item_id: str
    data: bytearray
    offset: int = 0


@dataclass
class Playout:
    """Queued assistant audio, cut into frames, with per-reply played counters.

    The counters are the truth for ``conversation.item.truncate``: a reply is counted
    as heard only when its frame left for Asterisk at the playout clock. The RTP path
    takes frames from the pacer's thread while the event loop queues and flushes, so
    every change happens under one lock.
    """

    law: str
    frame_bytes: int = g711.FRAME_BYTES
    chunks: collections.deque[_Chunk] = field(default_factory=collections.deque)
    played_bytes: dict[str, int] = field(default_factory=dict)
    queued_bytes: int = 0
    current: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, data: bytes, item_id: str) -> None:
        if not data:
            return
        with self._lock:
            if self.chunks and self.chunks[-1].item_id == item_id:
                self.chunks[-1].data.extend(data)
            else:
                self.chunks.append(_Chunk(item_id, bytearray(data)))
            self.queued_bytes += len(data)

    def take(self, size: int | None = None) -> tuple[bytes, str] | None:
        """Up to ``size`` bytes (a frame by default) of one reply; a short tail is padded with silence."""
        if not self.chunks:
            return None
        size = size or self.frame_bytes
        with self._lock:
            chunks = self.chunks
            while chunks:
                chunk = chunks[0]
                start = chunk.offset
                part = chunk.data[start : start + size]
                if not part:
                    chunks.popleft()
                    continue
                chunk.offset = start + len(part)
                if chunk.offset >= len(chunk.data):
                    chunks.popleft()
                self.queued_bytes -= len(part)
                item = self.current = chunk.item_id
                self.played_bytes[item] = self.played_bytes.get(item, 0) + len(part)
                if len(part) < size and size == self.frame_bytes:
                    part += g711.silence(self.law)[: size - len(part)]
                return part, item
        return None

    def clear(self) -> Played:
        with self._lock:
            dropped = self.queued_bytes
            item = self.chunks[0].item_id if self.chunks else self.current
            lost: dict[str, int] = {}  # bytes dropped per reply, in queue order
            for chunk in self.chunks:
                lost[chunk.item_id] = lost.get(chunk.item_id, 0) + len(chunk.data) - chunk.offset
            self.chunks.clear()
            self.queued_bytes = 0
            played = self.played_bytes.get(item, 0) if item else 0
            cuts = tuple(
                Cut(lost_item, g711.duration_ms(self.played_bytes.get(lost_item, 0)), g711.duration_ms(size))
                for lost_item, size in lost.items()
                if size > 0
            )
        return Played(item, g711.duration_ms(played), g711.duration_ms(dropped), cuts)

    def played_ms(self, item_id: str) -> int:
        return g711.duration_ms(self.played_bytes.get(item_id, 0))

    @property
    def queued_ms(self) -> int:
        return g711.duration_ms(self.queued_bytes)


@dataclass
class PacingStats:
    """Frames sent toward the caller and the longest gap between two of them (logged per call)."""

    frames: int = 0
    audio_frames: int = 0
    last_sent: float = 0.0
    max_gap: float = 0.0  # seconds

    def sent(self, audio: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.frames and now - self.last_sent > self.max_gap:
            self.max_gap = now - self.last_sent
        self.last_sent = now
        self.frames += 1
        if audio:
            self.audio_frames += 1

    @property
    def max_gap_ms(self) -> float:
        return self.max_gap * 1000


class MediaPath(abc.ABC):
    """One call's media leg to Asterisk."""

    kind: str = ""

    def __init__(self, law: str) -> None:
        self.law = g711.check_law(law)
        self.playout = Playout(law)
        self.stats = PacingStats()
        self._on_audio: AudioHandler | None = None
        self._on_start: StartHandler | None = None
        self._started_items: set[str] = set()
        self._frames_in = 0  # what a path without a counter of its own counts (chan_websocket's binary frames)

    @property
    def frames_in(self) -> int:
        """Frames (datagrams, messages) received from Asterisk so far; :class:`MediaWatch` compares it."""
        return self._frames_in

    def on_audio(self, handler: AudioHandler | None) -> None:
        """Register where the caller's audio goes (G.711 bytes, any length); None drops it."""
        self._on_audio = handler

    def on_item_start(self, handler: StartHandler | None) -> None:
        """Register a callback told when a reply's first frame leaves for the caller."""
        self._on_start = handler

    def _deliver(self, data: bytes) -> None:
        if self._on_audio is not None:
            self._on_audio(data)

    def _mark_start(self, item_id: str) -> None:
        if item_id not in self._started_items:
            self._started_items.add(item_id)
            if self._on_start is not None:
                self._on_start(item_id, time.monotonic())

    def play(self, data: bytes, item_id: str) -> None:
        """Queue assistant audio for the caller; never blocks."""
        self.playout.add(data, item_id)
        self._after_queue()

    def _after_queue(self) -> None:  # noqa: B027 - optional hook, RTP needs none
        """Hook for paths that push audio out as soon as it is queued."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open sockets; the caller's audio starts flowing to the handler."""

    @abc.abstractmethod
    def flush(self) -> Played:
        """Drop every queued frame at once (barge-in) and say how much of the reply was heard."""

    def played_ms(self, item_id: str) -> int:
        return self.playout.played_ms(item_id)

    @property
    def queued_ms(self) -> int:
        return self.playout.queued_ms

    @abc.abstractmethod
    async def close(self) -> None:
        """Release sockets and tasks; safe to call twice."""


@dataclass
class _Quiet:
    frames: int  # the path's frame count when it last changed
    seconds: float = 0.0  # checked time since then


class MediaWatch:
    """Finds the calls Asterisk stopped sending media for: one periodic check over every call.

    Nothing is done per frame: each media path only counts what it receives (the RTP path's
    counters existed already), and each check compares every call's count with the last one.
    A call is silent for ``timeout`` seconds when its count stood still over checks adding up
    to that long. A check that comes late (the event loop was busy, the process was stopped)
    counts as at most two intervals: a pause of the agent's own never ends a call, as the
    frames that arrived meanwhile are read before the next check. A path is counted from the
    first check that sees it, so a call's set-up is never counted.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(1.0, timeout / 4)
        self._last_check: float | None = None
        self._calls: dict[MediaPath, _Quiet] = {}

    def check(self, paths: Iterable[MediaPath], now: float) -> tuple[list[MediaPath], list[MediaPath]]:
        """The paths silent for half the timeout since this check, and those silent for all of it.

        A path is in the first list once per stretch of silence; in the second at every check
        until it receives again or :meth:`restart` starts its count over. Paths no longer given
        are forgotten.
        """
        credit = 0.0 if self._last_check is None else min(max(0.0, now - self._last_check), 2 * self.interval)
        self._last_check = now
        half = self.timeout / 2
        seen: dict[MediaPath, _Quiet] = {}
        halfway: list[MediaPath] = []
        silent: list[MediaPath] = []
        for path in paths:
            frames = path.frames_in
            quiet = self._calls.get(path)
            if quiet is None or quiet.frames != frames:
                quiet = _Quiet(frames)
            else:
                before = quiet.seconds
                quiet.seconds += credit
                if before < half <= quiet.seconds:
                    halfway.append(path)
                if quiet.seconds >= self.timeout:
                    silent.append(path)
            seen[path] = quiet
        self._calls = seen
        return halfway, silent

    def restart(self, path: MediaPath) -> None:
        """Count ``path``'s silence from zero again (the silence was found to be the caller's own)."""
        quiet = self._calls.get(path)
        if quiet is not None:
            quiet.seconds = 0.0


# Payload octets a packet may carry and still be taken for comfort noise rather than audio. RFC 3389's
# packet is one byte of noise level plus optional spectral coefficients (ten at the most in common
# implementations); a 20 ms frame of any codec Asterisk offers carries more (G.711 160, G.729 20).
COMFORT_NOISE_MAX_OCTETS = 16


@dataclass(frozen=True)
class CallerRtp:
    """What Asterisk has received from the caller so far: ARI's ``rtp_statistics`` of the caller's channel."""

    packets: int  # rxcount: every RTP packet, comfort noise and DTMF events too
    octets: int | None  # rxoctetcount: their payload octets (None: not reported)

    @classmethod
    def from_statistics(cls, stats: object) -> CallerRtp | None:
        """From ARI's JSON; None when it holds no packet count."""
        if not isinstance(stats, dict):
            return None
        packets, octets = stats.get("rxcount"), stats.get("rxoctetcount")
        if not isinstance(packets, int):
            return None
        return cls(packets, octets if isinstance(octets, int) else None)

    def __str__(self) -> str:
        return f"{self.packets} packets, {'?' if self.octets is None else self.octets} octets"


def caller_was_quiet(before: CallerRtp | None, after: CallerRtp | None) -> bool:
    """Whether the caller sent Asterisk no audio between two readings: no RTP at all (on hold, silence
    suppression), or only packets as small as comfort noise (a phone with VAD sends one every 20 ms to
    a few seconds while its user listens; DTMF events are as small).

    Asterisk's two-party bridge relays neither silence nor comfort noise to the agent (measured), so
    such a silence is the caller's own. False when either reading is missing, when the counters went
    back (a new RTP session), or packets came and their octets are not reported: the caller may have
    talked.
    """
    if before is None or after is None:
        return False
    packets = after.packets - before.packets
    if packets < 0:  # the counters started again (a new RTP session): nothing can be told
        return False
    if packets == 0:
        return True
    if before.octets is None or after.octets is None:
        return False
    return after.octets - before.octets <= COMFORT_NOISE_MAX_OCTETS * packets
