"""externalMedia over RTP/UDP: the agent owns the 20 ms playout clock.

Whatever reaches Asterisk's RTP channel is played as it arrives, so the agent must
send exactly one 160-byte frame every 20 ms: a burst is heard as sped-up audio and a
gap as a click. One :class:`Pacer` per process ticks for every call, so 200 calls
cost ten wake-ups per 20 ms instead of 200. It runs in its own thread and sends on
the calls' socket directly, so the frames keep their 20 ms even while the event
loop is busy. Between replies the stream carries digital silence, which keeps the
RTP timestamp and Asterisk's bridge timing continuous.

The agent receives every call's RTP on one :class:`RtpPort` (one UDP socket, one
port): each wake-up of the event loop reads every datagram waiting, and each is
handed to the call whose Asterisk-side address sent it. A call may also own its
socket (``RtpMedia`` without a port), which learns its peer from the first datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass

from centralita.aicall import g711, urgent
from centralita.aicall.media import MediaPath, Played

log = logging.getLogger("centralita.aicall.rtp")

PAYLOAD_TYPES = {"ulaw": 0, "alaw": 8}
# How long a busy event loop may keep the interpreter lock from the pacer's thread (Python's
# default is 5 ms); the agent and the benchmark set it with sys.setswitchinterval at start.
SWITCH_INTERVAL_S = 0.0005
_HEADER = struct.Struct("!BBHII")
# The largest datagram read from a call's socket: a 20 ms frame is 172 bytes, and even 250 ms of
# G.711 in one packet fits. asyncio's datagram transport reads with a 256 KiB buffer, which the C
# library may serve with a fresh memory mapping per read (about 30 µs per read, measured alone).
RECV_SIZE = 2048
# The shared port's receive buffer: every call's audio waits in it while the event loop is busy. The
# kernel grants twice the request, capped at twice net.core.rmem_max unless the process may force it.
SHARED_RECV_BUFFER = 4 * 2**20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux's value; Python exports it only on some builds
# What one queued 20 ms datagram takes of a receive buffer (the kernel's accounting; measured on Linux 6).
DATAGRAM_TRUESIZE = 832
# Less caller audio than this held for every call at once is worth a warning at start.
HELD_WARNING_MS = 200


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
    def decode(cls, data: bytes | memoryview) -> RtpPacket:
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


def _step_below_the_pacer() -> None:
    """Under a real-time policy, put the calling (event loop) thread one priority below the pacer.

    The pacer's thread inherits the unit's real-time priority (``CPUSchedulingPolicy=rr``). Two
    threads of equal real-time priority never preempt each other on one CPU, so a busy event
    loop would keep a due frame waiting until it blocked or its 100 ms time slice ended. One
    step down is always allowed (lowering a priority needs no privilege), and it still keeps
    the loop above every normal process of the host.
    """
    try:
        policy = os.sched_getscheduler(0)
        priority = os.sched_getparam(0).sched_priority
        if policy in (os.SCHED_RR, os.SCHED_FIFO) and priority > os.sched_get_priority_min(policy):
            os.sched_setparam(0, os.sched_param(priority - 1))
            log.info("rtp pacer: real-time priority %d, the event loop %d", priority, priority - 1)
    except (AttributeError, OSError) as exc:  # not Linux, or refused: the pacer still runs, at equal priority
        log.warning("rtp pacer: cannot put the event loop below the pacer: %s", exc)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("length", ctypes.c_uint)]


def _load_sendmmsg() -> Callable[..., int] | None:
    """The C library's ``sendmmsg`` (Linux), or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sendmmsg  # CDLL: the interpreter lock is released meanwhile
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _load_recvmmsg() -> Callable[..., int] | None:
    """The C library's ``recvmmsg`` (Linux), or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


_sendmmsg = _load_sendmmsg()
_recvmmsg = _load_recvmmsg()
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
_SOCKADDR_IN = 16  # sizeof(struct sockaddr_in)
_SOURCE_KEY = 8  # its family, port and address: the bytes that tell one sender from another


class DatagramBatch:
    """Buffers for reading up to ``count`` datagrams with one ``recvmmsg`` system call.

    Each message has its own ``size`` bytes of one flat buffer, its own ``sockaddr_in`` for the
    sender and, when ``control`` is given, that many bytes of ancillary data (the benchmark's
    receive time stamps). After :meth:`receive` returned ``n``, message ``i``'s bytes are
    ``view[i * size : i * size + lengths[i * length_stride + length_offset]]`` and its sender's
    :func:`source_key` is ``sources[2 * i]``.
    """

    def __init__(self, count: int = 64, size: int = 2048, control: int = 0) -> None:
        self.count, self.size, self.control = count, size, control
        self._data = (ctypes.c_char * (count * size))()
        self._names = (ctypes.c_char * (count * _SOCKADDR_IN))()
        self._controls = (ctypes.c_char * (count * control))() if control else None
        self._iovecs = (_Iovec * count)()
        self._messages = (_Mmsghdr * count)()
        data, names = ctypes.addressof(self._data), ctypes.addressof(self._names)
        for index in range(count):
            self._iovecs[index].base = data + index * size
            self._iovecs[index].length = size
            header = self._messages[index].hdr
            header.name = names + index * _SOCKADDR_IN
            header.namelen = _SOCKADDR_IN
            header.iov = ctypes.pointer(self._iovecs[index])
            header.iovlen = 1
            if self._controls is not None:
                header.control = ctypes.addressof(self._controls) + index * control
                header.controllen = control
        self.view = memoryview(self._data).cast("B")
        self.controls = memoryview(self._controls).cast("B") if self._controls is not None else None
        # the headers as 64-bit words, to give each controllen back its room after a read
        self._words = memoryview(self._messages).cast("B").cast("Q")
        self._controllen = (ctypes.sizeof(_Mmsghdr) // 8, _Msghdr.controllen.offset // 8)
        # each message's length, as unsigned ints: message i's is at i * length_stride + length_offset
        self.lengths = memoryview(self._messages).cast("B").cast("I")
        self.length_stride = ctypes.sizeof(_Mmsghdr) // 4
        self.length_offset = _Mmsghdr.length.offset // 4
        # each sender's family, port and address as one 64-bit integer (its source_key): message i's at 2 * i
        self.sources = memoryview(self._names).cast("B").cast("Q")
        self._address = ctypes.addressof(self._messages)
        self._used = 0  # messages the last read filled

    def receive(self, fd: int) -> int:
        """Read what is waiting, up to ``count`` datagrams, without blocking; -1 with ``errno`` set, as the call.

        With ``control``, message ``i``'s ancillary data is ``controls[i * control :]``, of
        :meth:`control_length` bytes, until the next call.
        """
        if self._used and self.controls is not None:  # the kernel shrank each controllen it wrote to
            stride, offset = self._controllen
            words, control = self._words, self.control
            for index in range(self._used):
                words[index * stride + offset] = control
        received = _recvmmsg(fd, self._address, self.count, MSG_DONTWAIT, None)
        self._used = max(received, 0)
        return received

    def control_length(self, index: int) -> int:
        """How many bytes of ancillary data the kernel wrote for message ``index`` of the last read."""
        stride, offset = self._controllen
        return self._words[index * stride + offset]

    def length(self, index: int) -> int:
        return self.lengths[index * self.length_stride + self.length_offset]

    def source(self, index: int) -> tuple[str, int]:
        """Message ``index``'s sender, as ``recvfrom`` gives it."""
        name = bytes(memoryview(self._names).cast("B")[index * _SOCKADDR_IN : (index + 1) * _SOCKADDR_IN])
        (port,) = struct.unpack_from("!H", name, 2)
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port


def source_key(host: str, port: int) -> int | None:
    """How :class:`DatagramBatch` names a sender at ``host:port`` (numeric IPv4 only), or None.

    The first 8 bytes of its ``sockaddr_in`` (family, port, address) read as one native integer:
    a dictionary lookup per datagram without building an address tuple or a bytes object.
    """
    name = _sockaddr_in(host, port)
    return None if name is None else int.from_bytes(name[:_SOURCE_KEY], sys.byteorder)


def _sockaddr_in(host: str, port: int) -> bytes | None:
    """``struct sockaddr_in`` for a numeric IPv4 address, or None for anything else."""
    try:
        address = socket.inet_pton(socket.AF_INET, host)
    except (OSError, TypeError):
        return None
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + address + bytes(8)


class FrameBatch:
    """One pass's frames sent with one ``sendmmsg`` system call instead of a ``sendto`` per call.

    Built once for a pass's set of calls (rebuilt when a call joins, leaves or changes its
    address): each message points at its call's packet buffer and Asterisk-side address, so
    a pass only fills the buffers and makes one call into the kernel, which also releases and
    takes back the interpreter lock once per pass instead of once per frame. Only calls that
    share one socket (the agent's :class:`RtpPort`) and send to IPv4 addresses are batched;
    :meth:`of` returns None for any other set, and the pacer then sends call by call.
    """

    def __init__(self, streams: list[RtpMedia], sock: socket.socket, names: list[bytes]) -> None:
        self.streams = streams
        self._sock = sock
        self._fd = sock.fileno()
        count = len(streams)
        self._names = [ctypes.create_string_buffer(name, len(name)) for name in names]
        self._iovecs = (_Iovec * count)()
        self._messages = (_Mmsghdr * count)()
        for index, stream in enumerate(streams):
            buffer = stream._packet_buffer
            self._iovecs[index].base = ctypes.addressof(buffer)
            self._iovecs[index].length = ctypes.sizeof(buffer)
            header = self._messages[index].hdr
            header.name = ctypes.addressof(self._names[index])
            header.namelen = len(names[index])
            header.iov = ctypes.pointer(self._iovecs[index])
            header.iovlen = 1
        self._size = ctypes.sizeof(_Mmsghdr)

    @classmethod
    def of(cls, streams: list[object]) -> FrameBatch | None:
        if _sendmmsg is None or not streams:
            return None
        sock, names = None, []
        for stream in streams:
            target = stream.batch_target() if isinstance(stream, RtpMedia) else None
            if target is None or (sock is not None and target[0] is not sock):
                return None
            sock = target[0]
            names.append(target[1])
        assert sock is not None
        return cls(streams, sock, names)  # type: ignore[arg-type]

    def send(self) -> list[int]:
        """Send every call's prepared packet; returns the indexes of the calls whose frame was lost."""
        count = len(self.streams)
        if self._sock.fileno() != self._fd:  # the port was closed: its number may belong to another socket now
            return list(range(count))
        failed: list[int] = []
        offset = 0
        messages, size = self._messages, self._size
        while offset < count:
            sent = _sendmmsg(self._fd, ctypes.byref(messages, offset * size), count - offset, 0)
            if sent <= 0:  # the message at ``offset`` failed (a full buffer): that frame is lost, the rest go on
                failed.append(offset)
                offset += 1
            else:
                offset += sent
        return failed


class Pacer:
    """One clock for every RTP stream of the process: a thread that sends every due frame.

    The clock runs beside the event loop, not on it: whatever the loop is busy with (a burst
    of model events, a slow callback) delays a frame only by the time the interpreter needs
    to hand the thread its lock, which the process bounds with ``sys.setswitchinterval``, and
    the frame's ``sendto`` runs outside that lock. A garbage collection is the exception: it
    keeps the lock to its end, so nothing per frame is left for the collector to walk.

    The 20 ms period is cut into ``phases`` passes (2 ms apart by default) and each call is
    given the least busy one for its whole life: its frames stay exactly 20 ms apart, while
    one pass sends a tenth of the calls, so the last frame of a pass leaves well within a
    millisecond of its due time (each ``sendto`` costs 10-20 µs). Passes without a call are
    skipped. Ten passes rather than four cost about 1-2 % of a core in extra wake-ups.

    A pass over calls that share the agent's one RTP port sends all their frames with one
    ``sendmmsg`` (:class:`FrameBatch`); other streams are sent one ``tick()`` at a time.

    A late pass (the host did not run the thread) is caught up by at most two frames; after
    a longer stall the clock restarts instead of bursting, because a burst is worse than a gap.
    """

    LATE_S = 0.04  # a pass this late is counted and logged: the caller heard a gap

    def __init__(
        self,
        frame_ms: int = g711.FRAME_MS,
        phases: int = 10,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.period = frame_ms / 1000
        self._clock = clock
        self._sleep = sleep
        self._phases: list[dict[int, RtpMedia]] = [{} for _ in range(max(1, phases))]
        self._phase_of: dict[int, int] = {}
        # per pass: its FrameBatch, None when its calls cannot be batched, _STALE to be rebuilt
        self._batches: list[FrameBatch | object | None] = [_STALE] * len(self._phases)
        self._lock = threading.Lock()  # held for a whole pass: a removed stream is never sent to afterwards
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ticks = 0
        self.restarts = 0
        self.late_ticks = 0
        self.worst_late_ms = 0.0
        self.lateness: MutableSequence[float] | None = None  # s each frame left after its due time (benchmark only)
        self.passes: list[tuple[float, float]] | None = None  # per pass: started after due, lasted (s; same)

    def add(self, stream: RtpMedia) -> None:
        self._loop = asyncio.get_running_loop()
        with self._lock:
            phase = min(range(len(self._phases)), key=lambda index: len(self._phases[index]))
            self._phases[phase][id(stream)] = stream
            self._phase_of[id(stream)] = phase
            self._batches[phase] = _STALE
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="rtp-pacer", daemon=True)
            self._thread.start()
            _step_below_the_pacer()
        self._wake.set()

    def remove(self, stream: RtpMedia) -> None:
        with self._lock:
            phase = self._phase_of.pop(id(stream), None)
            if phase is not None:
                self._phases[phase].pop(id(stream), None)
                self._batches[phase] = _STALE

    def changed(self, stream: RtpMedia) -> None:
        """``stream`` sends somewhere else now: its pass's batch is rebuilt before the next send."""
        with self._lock:
            phase = self._phase_of.get(id(stream))
            if phase is not None:
                self._batches[phase] = _STALE

    @property
    def streams(self) -> int:
        return len(self._phase_of)

    @property
    def phase_sizes(self) -> list[int]:
        """How many calls each pass of the 20 ms period sends."""
        return [len(streams) for streams in self._phases]

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on the event loop (the pacer's thread must not touch the calls)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        clock, sleep = self._clock, self._sleep
        count = len(self._phases)
        step = self.period / count
        due, phase = clock(), 0
        while not self._stop:
            if not self._phase_of:
                self._wake.wait()
                self._wake.clear()
                due, phase = clock(), 0
                continue
            for _ in range(count - 1):  # passes without a call are skipped: few calls, few wake-ups
                if self._phases[phase]:
                    break
                if phase == 0:
                    self.ticks += 1
                phase = (phase + 1) % count
                due += step
            delay = due - clock()
            if delay > 0:
                sleep(delay)
            now = clock()
            late = now - due
            if late > self.LATE_S:
                self.late_ticks += 1
                self.worst_late_ms = max(self.worst_late_ms, late * 1000)
                self.call_soon(log.warning, "rtp pacer: a frame pass ran %.0f ms late", late * 1000)
            if late > 3 * self.period:
                self.restarts += 1
                due = now
            if self._phases[phase]:
                self._pass(phase, due)
            if phase == 0:
                self.ticks += 1
            phase = (phase + 1) % count
            due += step

    def _pass(self, phase: int, due: float) -> None:
        lateness, clock = self.lateness, self._clock
        started = clock()
        with self._lock:
            batch = self._batches[phase]
            if batch is _STALE:
                batch = self._batches[phase] = FrameBatch.of(list(self._phases[phase].values()))
            if isinstance(batch, FrameBatch):
                self._send_batch(phase, batch)
                if lateness is not None:
                    lateness.extend([clock() - due] * len(batch.streams))
            else:
                self._tick_each(phase, due)
        if self.passes is not None:
            self.passes.append((started - due, clock() - started))

    def _send_batch(self, phase: int, batch: FrameBatch) -> None:
        now = time.monotonic()
        broken = []
        for stream in batch.streams:
            try:
                stream.prepare(now)
            except Exception:  # one broken call must not silence the others
                log.exception("rtp stream tick failed; removing stream %s", stream.name)
                broken.append(stream)
        if broken:
            self._batches[phase] = _STALE
            for stream in broken:
                self._phases[phase].pop(id(stream), None)
                self._phase_of.pop(id(stream), None)
            for stream in batch.streams:  # the batch still points at the broken calls' buffers
                if stream not in broken:
                    stream.send_prepared()
            return
        for index in batch.send():
            batch.streams[index].send_errors += 1

    def _tick_each(self, phase: int, due: float) -> None:
        lateness, clock = self.lateness, self._clock
        streams = self._phases[phase]
        for key, stream in list(streams.items()):
            try:
                stream.tick()
            except Exception:  # one broken call must not silence the others
                log.exception("rtp stream tick failed; removing stream %s", stream.name)
                streams.pop(key, None)
                self._phase_of.pop(key, None)
            if lateness is not None:
                lateness.append(clock() - due)

    async def close(self) -> None:
        with self._lock:
            for streams in self._phases:
                streams.clear()
            self._phase_of.clear()
            self._batches = [_STALE] * len(self._phases)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop = True
            self._wake.set()
            await asyncio.to_thread(thread.join, 5)


_STALE = object()


def _bind(bind_host: str, port_range: tuple[int, int] | None) -> socket.socket:
    """A non-blocking UDP socket on the first free (even) port of ``port_range``, or any free port."""
    ports = range(port_range[0], port_range[1] + 1, 2) if port_range else [0]
    last_error: OSError | None = None
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((bind_host, port))
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        return sock
    raise OSError(f"no free RTP port on {bind_host} in {port_range}: {last_error}")


class RtpPort:
    """One UDP socket for every call's RTP: the agent's side of all its externalMedia channels.

    Asterisk sends each call's audio from that call's own address (its RTP instance, which ARI
    reports as UNICASTRTP_LOCAL_ADDRESS/PORT), so the source of a datagram says whose audio it
    is. A datagram from an address no call has claimed is counted and dropped, never handed to
    another call.

    One socket instead of one per call: each time the event loop finds it readable, every datagram
    waiting is read in one callback (up to ``BATCH``), so the loop's own work per wake-up (the
    poll, a callback handle) is shared by all calls instead of paid per datagram. Where the C
    library has ``recvmmsg`` (Linux), up to ``READ_AT_ONCE`` datagrams come in with one system call
    (:class:`DatagramBatch`) and each sender is looked up by its ``sockaddr_in`` read as one
    integer (:func:`source_key`), without building an address tuple per datagram.
    """

    BATCH = 256  # datagrams per wake-up at most: a flood cannot keep the loop from its other work
    READ_AT_ONCE = 64  # datagrams per recvmmsg
    # Between two model messages, the port is read again when its last read is older than this
    # (see :mod:`urgent`): a burst of model messages delays the callers' audio by about this much
    # plus one message, instead of by the whole burst. An empty read costs a few µs.
    URGENT_AFTER_S = 0.0003

    def __init__(
        self, bind_host: str = "127.0.0.1", port_range: tuple[int, int] | None = None, *, max_calls: int = 200
    ) -> None:
        self.bind_host = bind_host
        self.port_range = port_range
        self.max_calls = max_calls
        self.local: tuple[str, int] | None = None
        self.sock: socket.socket | None = None
        self.receive_buffer = 0  # bytes the kernel granted for the receive queue
        self.unknown_packets = 0  # datagrams from addresses no call has claimed (dropped)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[tuple[str, int], RtpMedia] = {}
        # the same calls by their sender's source_key, with the address, for the recvmmsg reader
        self._sources: dict[int, tuple[RtpMedia, tuple[str, int]]] = {}
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._batch = self._datagram_batch() if _recvmmsg is not None else None
        self._read_at = 0.0  # monotonic time the socket was last read until empty (or the batch limit)
        self._in_read = False

    def _datagram_batch(self) -> DatagramBatch:
        return DatagramBatch(self.READ_AT_ONCE, RECV_SIZE)

    def open(self) -> None:
        """Bind the socket (once) and start reading it on the running loop."""
        if self.sock is not None:
            return
        loop = asyncio.get_running_loop()
        sock = _bind(self.bind_host, self.port_range)
        for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # forcing needs CAP_NET_ADMIN; else capped by rmem_max
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SHARED_RECV_BUFFER)
                break
            except OSError:
                continue
        self.receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        loop.add_reader(sock.fileno(), self._readable)
        self._loop, self.sock = loop, sock
        urgent.register(self.read_if_late)
        self.local = sock.getsockname()[:2]
        log.info("rtp: every call's media on %s:%d (receive buffer %d KiB)", *self.local, self.receive_buffer // 1024)
        if self.held_ms < HELD_WARNING_MS:
            log.warning(
                "rtp: the receive buffer holds %d ms of audio for %d calls: a busy event loop drops callers' "
                "audio after that; raise net.core.rmem_max to %d",
                self.held_ms, self.max_calls, SHARED_RECV_BUFFER,
            )  # fmt: skip

    @property
    def held_ms(self) -> int:
        """How much caller audio the receive buffer holds for ``max_calls`` calls at once."""
        frames = self.receive_buffer // DATAGRAM_TRUESIZE
        return frames * g711.FRAME_MS // max(1, self.max_calls)

    @property
    def calls(self) -> int:
        return len(self._calls)

    def claim(self, remote: tuple[str, int], media: RtpMedia) -> None:
        """Datagrams from ``remote`` are ``media``'s from now on."""
        previous = self._calls.get(remote)
        if previous is not None and previous is not media:
            # Asterisk gave a new call an address an ended call still held here: the newer call is the live one
            log.warning("rtp: %s:%d moves from call %s to call %s", *remote, previous.name, media.name)
        self._calls[remote] = media
        key = source_key(*remote[:2])
        if key is not None:
            self._sources[key] = (media, remote)

    def release(self, remote: tuple[str, int], media: RtpMedia) -> None:
        if self._calls.get(remote) is media:
            del self._calls[remote]
            key = source_key(*remote[:2])
            if key is not None:
                self._sources.pop(key, None)

    def _readable(self) -> None:
        # Never inside itself (an urgent read asked for by work a call's frame started): a nested read
        # would overwrite the batch buffers the outer one is still handing out.
        if self._in_read:
            return
        self._in_read = True
        try:
            if self._batch is not None:
                self._read_batches(self._batch)
            else:
                self._read_each()
        finally:
            self._in_read = False
            self._read_at = time.monotonic()

    def read_if_late(self) -> None:
        """Read the callers' audio now if the socket was last read more than ``URGENT_AFTER_S`` ago."""
        if self.sock is not None and time.monotonic() - self._read_at > self.URGENT_AFTER_S:
            self._readable()

    def _read_batches(self, batch: DatagramBatch) -> None:
        """Every datagram waiting (up to ``BATCH``), ``READ_AT_ONCE`` per system call.

        Read until the socket is empty, as the loop without ``recvmmsg`` does: datagrams that
        arrived while a batch was handed out are taken now, not after the loop's other callbacks.
        """
        sock = self.sock
        if sock is None:
            return
        fd, calls, view, size = sock.fileno(), self._sources, batch.view, batch.size
        lengths, stride, offset, sources = batch.lengths, batch.length_stride, batch.length_offset, batch.sources
        for _ in range(-(-self.BATCH // batch.count)):
            received = batch.receive(fd)
            if received < 0:
                error = ctypes.get_errno()
                if error in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                # an ICMP error for an earlier frame, reported once: the calls go on
                log.warning("rtp: socket error %s", OSError(error, os.strerror(error)))
                continue
            for index in range(received):
                entry = calls.get(sources[2 * index])
                if entry is None:
                    self.unknown_packets += 1
                    log.debug("rtp: dropped a datagram from %s, which no call has claimed", batch.source(index))
                    continue
                start = index * size
                entry[0]._received(view[start : start + lengths[index * stride + offset]], entry[1])

    def _read_each(self) -> None:
        """The same without ``recvmmsg``: one ``recvfrom_into`` per datagram."""
        sock = self.sock
        if sock is None:
            return
        receive, view, calls = sock.recvfrom_into, self._view, self._calls
        for _ in range(self.BATCH):
            try:
                size, addr = receive(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier frame: the calls go on
                log.warning("rtp: socket error %s", exc)
                continue
            media = calls.get(addr)
            if media is None:
                self.unknown_packets += 1
                log.debug("rtp: dropped a datagram from %s, which no call has claimed", addr)
                continue
            media._received(view[:size], addr)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        urgent.unregister(self.read_if_late)
        self._calls.clear()
        self._sources.clear()
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
            if self.unknown_packets:
                log.info("rtp: %d datagrams from unclaimed addresses were dropped", self.unknown_packets)


class RtpMedia(MediaPath):
    """One call's RTP leg: receives the caller's audio, sends paced assistant audio back.

    With a shared :class:`RtpPort` the call sends and receives on the port's socket, and hears
    only datagrams from the address given to :meth:`set_remote`. Without one it binds its own
    socket (in ``port_range``, if given) and answers wherever the first datagram came from.
    """

    kind = "rtp"

    def __init__(
        self,
        law: str,
        pacer: Pacer,
        *,
        bind_host: str = "127.0.0.1",
        port_range: tuple[int, int] | None = None,
        port: RtpPort | None = None,
        name: str = "",
    ) -> None:
        super().__init__(law)
        self.pacer = pacer
        self.bind_host = bind_host
        self.port_range = port_range
        self.port = port
        self.name = name
        self.payload_type = PAYLOAD_TYPES[law]
        self.remote: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading: socket.socket | None = None  # the call's own socket, which the event loop watches
        self._sock: socket.socket | None = None  # where the pacer's thread sends: the call's or the port's
        self._open = False
        self._packet = bytearray(_HEADER.size + g711.FRAME_BYTES)
        # The packet's memory for a FrameBatch (its size never changes: the buffer holds an export of it).
        self._packet_buffer = (ctypes.c_char * len(self._packet)).from_buffer(self._packet)
        self._ssrc = int.from_bytes(os.urandom(4), "big")
        self._sequence = int.from_bytes(os.urandom(2), "big")
        self._timestamp = int.from_bytes(os.urandom(4), "big")
        self._talking = False
        self._silence = g711.silence(law)
        self.received_packets = 0
        self.rejected_packets = 0
        self.send_errors = 0

    async def start(self) -> None:
        if self.port is not None:
            self.port.open()
            self._sock, self.local = self.port.sock, self.port.local
            if self.remote is not None:
                self.port.claim(self.remote, self)
        else:
            loop = asyncio.get_running_loop()
            sock = _bind(self.bind_host, self.port_range)
            # One datagram read per readiness, as asyncio's transport does, but into a frame-sized buffer.
            loop.add_reader(sock.fileno(), self._readable)
            self._loop, self._reading = loop, sock
            self._sock = sock  # the pacer's thread sends on it directly; the loop only receives
            self.local = sock.getsockname()[:2]
        self._open = True
        self.pacer.add(self)

    @property
    def closed(self) -> bool:
        """No socket is open for the call: not started yet, or released by :meth:`close`."""
        return not self._open

    @property
    def frames_in(self) -> int:
        """Every datagram Asterisk sent for the call, used or not (comfort noise, events): the receive
        path's own counters, so watching the call for silence adds nothing per frame."""
        return self.received_packets + self.rejected_packets

    def set_remote(self, host: str, port: int) -> None:
        """Where Asterisk's RTP channel listens (UNICASTRTP_LOCAL_ADDRESS/PORT), which is also where it sends from."""
        remote = (host, port)
        shared = self.port
        if shared is not None and self._open:
            if self.remote is not None:
                shared.release(self.remote, self)
            shared.claim(remote, self)
        self.remote = remote
        self.pacer.changed(self)

    def batch_target(self) -> tuple[socket.socket, bytes] | None:
        """The shared socket and the ``sockaddr_in`` a :class:`FrameBatch` sends this call's frames with."""
        sock, remote = self._sock, self.remote
        if self.port is None or sock is None or remote is None:
            return None
        name = _sockaddr_in(*remote[:2])
        return None if name is None else (sock, name)

    def _readable(self) -> None:
        sock = self._reading
        if sock is None:
            return
        try:
            data, addr = sock.recvfrom(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # an ICMP error for an earlier frame (nobody listens there yet): the call goes on
            log.warning("rtp %s: socket error %s", self.name, exc)
            return
        self._received(data, addr)

    def _received(self, data: bytes | memoryview, addr: tuple[str, int]) -> None:
        # The common packet (version 2, no CSRC, extension or padding, our payload type) is read in
        # place: this runs 50 times a second per call. Anything else goes through the full decoder.
        # ``data`` may be a view of the shared port's buffer: only a copy of the payload is kept.
        if len(data) > _HEADER.size and data[0] == 0x80 and data[1] & 0x7F == self.payload_type:
            payload = bytes(data[_HEADER.size :])
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
        handler = self._on_audio
        if handler is not None:
            handler(payload)

    def tick(self) -> None:
        """Send the next 20 ms frame: queued reply audio, else silence (runs in the pacer's thread)."""
        if self._sock is not None and self.remote is not None:
            self.prepare(time.monotonic())
            self.send_prepared()

    def prepare(self, now: float) -> None:
        """Put the next 20 ms frame in the packet buffer (runs in the pacer's thread; ``now``: the pass's time)."""
        taken = self.playout.take()
        packet = self._packet
        if taken is None:
            packet[_HEADER.size :] = self._silence
            marker = 0
            self._talking = False
        else:
            payload, item_id = taken
            packet[_HEADER.size :] = payload
            marker = 0 if self._talking else 0x80
            self._talking = True
            if item_id not in self._started_items:
                self._started_items.add(item_id)
                self.pacer.call_soon(self._item_heard, item_id, now)
        _HEADER.pack_into(packet, 0, 0x80, marker | self.payload_type, self._sequence, self._timestamp, self._ssrc)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + g711.FRAME_BYTES) & 0xFFFFFFFF
        self.stats.sent(taken is not None, now)

    def send_prepared(self) -> None:
        """Send the packet :meth:`prepare` made, on its own (the path outside a :class:`FrameBatch`)."""
        sock, remote = self._sock, self.remote
        if sock is None or remote is None:
            return
        try:
            sock.sendto(self._packet, remote)
        except OSError:  # a full socket buffer or an ICMP error: this frame is lost, the clock goes on
            self.send_errors += 1

    def _item_heard(self, item_id: str, at: float) -> None:
        if self._on_start is not None:
            self._on_start(item_id, at)

    def flush(self) -> Played:
        self._talking = False
        return self.playout.clear()

    async def close(self) -> None:
        self.pacer.remove(self)  # waits for a pass in progress: no frame is sent after this
        self._sock = None
        self._open = False
        if self.port is not None and self.remote is not None:
            self.port.release(self.remote, self)
        sock, self._reading = self._reading, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
