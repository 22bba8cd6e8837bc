"""Benchmark: N synthetic calls through one agent process.

Three processes, as in production: this one runs N call sessions exactly as the
agent does (RTP media, the shared pacer, one Realtime websocket per call, the call
state machine), the Realtime stand-in runs in a second process and streams a reply
to every call at real-time pace, and an RTP generator in a third process plays N
callers (20 ms frames in, paced frames out) and measures what a caller receives.

Measured per load point:
- inbound added latency: a caller frame from its arrival at the agent's socket (the
  kernel's receive time stamp, ``SO_TIMESTAMPNS``) until its ``input_audio_buffer.append``
  has been written to the model socket (p50/p99): the wait for the event loop, the call
  logic and the framing. The agent notes two things per frame and works the rest out after
  the point (:class:`_Timing`), so the measuring costs it little of the core it is measured on;
- outbound added latency: a frame's due time on the 20 ms clock until it is sent (p50/p99);
- outbound pacing jitter at the callers: |inter-arrival - 20 ms| (p50/p99, worst gap);
- the callers' real send rate (frames per call and second): a busy helper core sends fewer than
  50, which lightens the agent's load, so such a point never counts as carried;
- how late the callers sent their groups of frames (p99): a late group leaves together with the
  next ones, and the agent gets a burst of frames that independent callers would have spread over
  the 20 ms. The callers' process runs one real-time priority above the stand-in's on the helper
  core, so the stand-in's work never holds a group back;
- CPU of the agent process per call (percent of one core).
Load loops are bounded: every point runs for a fixed time and every process is
stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import errno
import gc
import itertools
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from typing import Any

from centralita.aicall import g711
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import SessionConfig
from centralita.aicall.realtime import RealtimeSession
from centralita.aicall.record import CallRecord
from centralita.aicall.rtp import (
    _SOCKADDR_IN,
    PAYLOAD_TYPES,
    RECV_SIZE,
    SWITCH_INTERVAL_S,
    DatagramBatch,
    Pacer,
    RtpMedia,
    RtpPacket,
    RtpPort,
    _sockaddr_in,
    _step_below_the_pacer,
)
from centralita.aicall.session import CallPolicy, CallSession
from centralita.aicall.tools.base import ToolBox

log = logging.getLogger("centralita.aicall.bench")

WARM_UP_S = 2.0
# A point whose pacer thread (real-time, above everything else of the agent) woke this late at p99
# was run while the host took the core away at times: it is flagged under the table.
HOST_STALL_MS = 0.5
# A point whose callers sent a group of frames this late at p99 gave the agent bursts instead of a steady
# flow: it is flagged under the table (the inbound figures include the queue a burst makes).
CALLERS_LATE_MS = 1.0
REALTIME_PRIORITY = 10  # the agent's and the stand-in's, under --realtime (as the unit's)
# The callers, one above the stand-in that shares their core: equal real-time priorities never preempt each
# other on one CPU, so a busy stand-in held the callers' timer back until it blocked, 6 ms at p99 and up
# to 45 ms, and the groups missed meanwhile then left back to back.
CALLERS_PRIORITY = REALTIME_PRIORITY + 1
CALLER_SLOTS = 20  # the callers' frames leave in this many groups per 20 ms, as independent calls' do
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; Python does not export the name
_CMSG_HEADER = socket.CMSG_LEN(0)  # a cmsghdr's size: the time stamp follows it


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# the callers' side (its own process) ---------------------------------------------------------


class _Caller:
    """One synthetic caller's socket; arrivals are timed by the kernel, not by this busy process."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.arrivals: list[float] = []

    def readable(self) -> None:
        while True:
            try:
                _data, ancillary, _flags, _addr = self.sock.recvmsg(512, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            stamp = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    seconds, nanos = struct.unpack("qq", value[:16])
                    stamp = seconds + nanos / 1e9
            self.arrivals.append(stamp)


def _send_frames(
    slots: list[list[tuple[socket.socket, tuple[str, int]]]], seconds: float, law: str
) -> tuple[float, array[float]]:
    """Every caller's frames on the 20 ms clock, one group after another (runs in a thread of its own).

    The frames leave from a thread of their own, as each RTP sender has its clock, not from the loop
    that reads what the agent sends back (10,000 datagrams a second at 200 calls), which would hold
    a due group back behind the reads that came first. Returns the frames each caller sent per
    second (under 50 when this process could not keep pace) and how late each group after the
    warm-up left (s; negative: early).
    """
    silence = g711.silence(law)
    step = g711.FRAME_MS / 1000 / len(slots)
    sequence, timestamp = 0, 0
    due = started = time.monotonic()
    end = due + seconds
    measured = started + WARM_UP_S
    late = array("d")
    while time.monotonic() < end:
        # one packet per round for every caller: the agent times arrivals by the kernel, not by the packet
        packet = RtpPacket(PAYLOAD_TYPES[law], sequence & 0xFFFF, timestamp & 0xFFFFFFFF, 0, silence).encode()
        for slot in slots:
            now = time.monotonic()
            if due >= measured:
                late.append(now - due)
            for sock, target in slot:
                with contextlib.suppress(OSError):  # a full send buffer: the agent sees a lost frame
                    sock.sendto(packet, target)
            due += step
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sequence, timestamp = sequence + 1, timestamp + g711.FRAME_BYTES
    return sequence / (time.monotonic() - started), late


async def _generate(targets: list[tuple[str, int]], seconds: float, law: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    callers = []
    for target in targets:
        caller = _Caller()
        loop.add_reader(caller.sock.fileno(), caller.readable)
        callers.append((caller, target))
    # The agent learns where each call's audio comes from (as ARI tells it for Asterisk's side), then says go.
    print(json.dumps({"callers": [":".join(map(str, c.sock.getsockname()[:2])) for c, _ in callers]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    # Real calls start at random moments, so their frames reach the agent spread over the 20 ms,
    # not all at once: each caller sends in one of CALLER_SLOTS slots, 1 ms apart.
    slots = [[(c.sock, target) for c, target in callers[index::CALLER_SLOTS]] for index in range(CALLER_SLOTS)]
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # the sending thread gets the lock between two reads of this loop
    sending = loop.run_in_executor(None, _send_frames, slots, seconds, law)  # its thread exists from here on
    _step_below_the_pacer()  # this loop's reads, one real-time step below the sending thread
    send_rate, late = await sending
    jitter: list[float] = []
    worst = 0.0
    received = 0
    for caller, _ in callers:
        loop.remove_reader(caller.sock.fileno())
        caller.readable()
        caller.sock.close()
        start = caller.arrivals[0] + WARM_UP_S if caller.arrivals else 0
        times = [t for t in caller.arrivals if t >= start]
        received += len(caller.arrivals)
        for earlier, later in itertools.pairwise(times):
            gap = (later - earlier) * 1000
            jitter.append(abs(gap - g711.FRAME_MS))
            worst = max(worst, gap)
    return {
        "received": received,
        "send_rate": send_rate,
        "jitter_p50_ms": _percentile(jitter, 0.50),
        "jitter_p99_ms": _percentile(jitter, 0.99),
        "max_gap_ms": worst,
        "late_p99_ms": _percentile([value * 1000 for value in late], 0.99),
        "late_max_ms": max(late, default=0.0) * 1000,
    }


def generator_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="centralita.aicall.bench generator")
    parser.add_argument("--targets", required=True, help="host:port,host:port,...")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--law", default="ulaw")
    args = parser.parse_args(argv)
    targets = []
    for entry in args.targets.split(","):
        host, _, port = entry.rpartition(":")
        targets.append((host, int(port)))
    print(json.dumps(asyncio.run(_generate(targets, min(args.seconds, 600), args.law))), flush=True)
    return 0


# the agent's side (this process) ---------------------------------------------------------------


class _Timing:
    """What the benchmark keeps of each caller frame the agent reads: two operations a frame.

    The agent is measured on the core it runs on, so the measuring must not take much of it
    (stamping, matching and computing per frame had cost the agent a tenth to a quarter of its
    CPU, and lengthened the very queue being measured). Per ``recvmmsg``, the kernel's ancillary
    data of the batch (each datagram's arrival time stamp) and its senders' addresses are copied
    in one operation each; per frame, the time its handling returned is appended: by then a frame
    has been written to the model socket, unless it went to the writer task's queue, which notes
    it (:class:`_TimedOutbox`) and times it when written. Everything else is worked out after
    the point (:meth:`inbound_ms`).
    """

    SOURCE = _SOCKADDR_IN  # bytes kept per frame to tell its call: its sender's sockaddr_in

    def __init__(self, control: int = socket.CMSG_SPACE(16)) -> None:
        self.control = control  # bytes of ancillary data kept per frame
        self.controls = bytearray()  # each frame's ancillary data as the kernel wrote it
        self.sources = bytearray()  # each frame's sender
        self.done = array("q")  # when its handling returned (time_ns; CLOCK_REALTIME, as the stamps); -1: dropped
        self.start = 0  # frames before this one arrived during the warm-up

    def measure_from_now(self) -> None:
        self.start = len(self.done)

    def note(self, ancillary: bytes, source: bytes, done: int) -> None:
        """One frame read on its own (the paths without ``recvmmsg``), ``ancillary`` as ``recvmsg`` gave it."""
        self.controls += ancillary.ljust(self.control, b"\0")[: self.control]
        self.sources += source.ljust(self.SOURCE, b"\0")[: self.SOURCE]
        self.done.append(done)

    def inbound_ms(self, frames_per_message: int = 1) -> list[float]:
        """Each measured frame's arrival until its message was written, in ms.

        With several frames per message (``AICALL_INPUT_FRAMES``), a call's frames are written
        in groups of that many, in order: each frame waited until its group's last one was.
        """
        control, controls, sources, done = self.control, self.controls, self.sources, self.done
        latencies: list[float] = []
        groups: dict[bytes, list[tuple[int, int | None]]] = {}
        for index in range(min(len(done), len(controls) // control, len(sources) // self.SOURCE)):
            finished = done[index]
            if finished < 0:
                continue
            arrival = _arrival_ns(controls, index * control)
            if frames_per_message <= 1:
                if arrival is not None and index >= self.start:
                    latencies.append((finished - arrival) / 1e6)
                continue
            group = groups.setdefault(bytes(sources[index * self.SOURCE : (index + 1) * self.SOURCE]), [])
            group.append((index, arrival))
            if len(group) == frames_per_message:
                latencies.extend((finished - at) / 1e6 for frame, at in group if at is not None and frame >= self.start)
                group.clear()
        return latencies


_CMSG = struct.Struct("@Nii")  # struct cmsghdr: length, level, type; the data starts at CMSG_LEN(0)


def _arrival_ns(controls: bytes | bytearray, offset: int) -> int | None:
    """The ``SO_TIMESTAMPNS`` time stamp in the ancillary data at ``offset``, or None when there is none."""
    if offset + _CMSG_HEADER + 16 > len(controls):
        return None
    length, level, kind = _CMSG.unpack_from(controls, offset)
    if length < _CMSG_HEADER + 16 or level != socket.SOL_SOCKET or kind != SO_TIMESTAMPNS:
        return None
    seconds, nanos = struct.unpack_from("qq", controls, offset + _CMSG_HEADER)
    return seconds * 1_000_000_000 + nanos


class _TimedRtpPort(RtpPort):
    """The agent's shared port, keeping each datagram's arrival time stamp and when its handling returned.

    The same loops as :class:`RtpPort`'s, with room for each datagram's ancillary data (its
    ``SO_TIMESTAMPNS`` time stamp) and the :class:`_Timing` notes.
    """

    def __init__(self, timing: _Timing, **kwargs: Any) -> None:
        self.timing = timing  # before the port's set-up, which makes the batch
        super().__init__(**kwargs)

    def open(self) -> None:
        super().open()
        if self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def _datagram_batch(self) -> DatagramBatch:
        batch = DatagramBatch(self.READ_AT_ONCE, RECV_SIZE, control=self.timing.control)
        assert batch.controls is not None
        self._zeros = memoryview(bytes(len(batch.controls)))  # to clear the ancillary data after each read
        self._names = batch.sources.cast("B")  # the senders' sockaddr_in, as bytes
        return batch

    def _read_batches(self, batch: DatagramBatch) -> None:
        sock = self.sock
        if sock is None:
            return
        fd, calls, view, size = sock.fileno(), self._sources, batch.view, batch.size
        lengths, stride, offset, sources = batch.lengths, batch.length_stride, batch.length_offset, batch.sources
        controls, control, names, zeros = batch.controls, batch.control, self._names, self._zeros
        assert controls is not None
        keep_controls, keep_sources = self.timing.controls.extend, self.timing.sources.extend
        done, clock = self.timing.done.append, time.time_ns
        for _ in range(-(-self.BATCH // batch.count)):
            received = batch.receive(fd)
            if received < 0:
                if ctypes.get_errno() in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                log.warning("rtp: socket error %d", ctypes.get_errno())
                continue
            kept = received * control
            keep_controls(controls[:kept])
            controls[:kept] = zeros[:kept]  # a message the kernel gives no time stamp must not show an old one
            keep_sources(names[: received * _SOCKADDR_IN])
            for index in range(received):
                entry = calls.get(sources[2 * index])
                if entry is None:
                    self.unknown_packets += 1
                    done(-1)
                    continue
                start = index * size
                entry[0]._received(view[start : start + lengths[index * stride + offset]], entry[1])
                done(clock())

    def _read_each(self) -> None:
        sock = self.sock
        if sock is None:
            return
        receive, buffers, view, calls = sock.recvmsg_into, [self._buffer], self._view, self._calls
        ancillary_size, timing = self.timing.control, self.timing
        for _ in range(self.BATCH):
            try:
                size, ancillary, _flags, addr = receive(buffers, ancillary_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("rtp: socket error %s", exc)
                continue
            media = calls.get(addr)
            if media is None:
                self.unknown_packets += 1
                continue
            media._received(view[:size], addr)
            timing.note(_ancillary_bytes(ancillary), _sockaddr_in(*addr[:2]) or b"", time.time_ns())


def _ancillary_bytes(ancillary: list[tuple[int, int, bytes]]) -> bytes:
    """``recvmsg``'s first ancillary item laid out as the kernel writes it (a cmsghdr, then its data)."""
    if not ancillary:
        return b""
    level, kind, data = ancillary[0]
    return _CMSG.pack(socket.CMSG_LEN(len(data)), level, kind).ljust(_CMSG_HEADER, b"\0") + data


class _TimedRtpMedia(RtpMedia):
    """A call on its own socket (``--own-sockets``), timed as the shared port times its frames."""

    timing: _Timing | None = None

    async def start(self) -> None:
        await super().start()
        if self._reading is not None:
            self._reading.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def _readable(self) -> None:
        sock, timing = self._reading, self.timing
        if sock is None or timing is None:
            super()._readable()
            return
        try:
            data, ancillary, _flags, addr = sock.recvmsg(RECV_SIZE, timing.control)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("rtp %s: socket error %s", self.name, exc)
            return
        self._received(data, addr)
        timing.note(_ancillary_bytes(ancillary), _sockaddr_in(*addr[:2]) or b"", time.time_ns())


class _TimedOutbox(asyncio.Queue):
    """A model session's writer queue that notes which caller frame each queued audio message ends.

    Only the slow path goes through it (the socket's buffer backed up, or the writer busy): at
    that moment the port is handling that frame, whose :class:`_Timing` index is the next one.
    """

    def __init__(self, timing: _Timing, audio_prefix: str) -> None:
        super().__init__()
        self.timing = timing
        self.audio_prefix = audio_prefix
        self.frames: collections.deque[int] = collections.deque()  # the frame index of each queued audio message

    def put_nowait(self, item: Any) -> None:
        if isinstance(item, str) and item.startswith(self.audio_prefix):
            self.frames.append(len(self.timing.done))
        super().put_nowait(item)


class _TimedRealtime(RealtimeSession):
    """RealtimeSession whose writer task times the caller frames that waited in its queue."""

    def __init__(self, timing: _Timing, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._timing = timing

    def _attach(self, ws: Any) -> None:
        super()._attach(ws)  # the writer task starts on the loop's next turn, on this queue
        self._outbox = _TimedOutbox(self._timing, self._audio_prefix.decode("ascii"))

    async def _write(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                outbox = self._outbox
                message = await outbox.get()
                self._writing = True
                try:
                    await ws.send(message)
                finally:
                    self._writing = False
                if isinstance(outbox, _TimedOutbox) and message.startswith(outbox.audio_prefix) and outbox.frames:
                    index = outbox.frames.popleft()
                    if index < len(self._timing.done):
                        self._timing.done[index] = time.time_ns()
        except ConnectionClosed:
            return


def _cpu_times() -> tuple[int, int]:
    """(steal, all) jiffies of the host's CPUs so far, from /proc/stat (zeros where there is none)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return fields[7] if len(fields) > 7 else 0, sum(fields)


class _Collections:
    """The garbage collector's pauses while a point is measured: each holds the interpreter lock, pacer included."""

    def __init__(self) -> None:
        self.pauses = array("d")
        self._started = 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)

    def __enter__(self) -> _Collections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self)


class _Control:
    async def transfer(self, target: str) -> None:
        return None

    async def hangup(self) -> None:
        return None

    async def play_apology(self) -> None:
        return None


@dataclass
class Point:
    calls: int
    alive: int  # calls still up at the end of the measurement (all of them, unless the agent failed)
    frames_in: float  # frames each caller sent per second (50 when the callers' process kept pace)
    arrival_p50_ms: float  # from the arrival at the agent's socket (kernel time stamp) until written
    arrival_p99_ms: float
    outbound_p50_ms: float
    outbound_p99_ms: float
    clock_p50_ms: float  # the pass's start after its due time: the wake-up of the pacer's thread
    clock_p99_ms: float
    pass_p50_ms: float  # one pass over every call (the last call's frame leaves this long after the first)
    jitter_p50_ms: float
    jitter_p99_ms: float
    max_gap_ms: float
    gc_pauses: int  # collections while measured (each stops every thread of the agent, the pacer too)
    gc_longest_ms: float
    cpu_per_call_percent: float
    agent_cpu_percent: float
    load_average: float  # the host's 1-minute load when the point ended: other work skews every timing
    steal_percent: float  # CPU time the hypervisor gave to other machines while measured (share of all CPUs)
    # CPU ms of the same fixed work on the agent's core just before and after the point (see fixed_work_ms)
    fixed_work_before_ms: float = float("nan")
    fixed_work_after_ms: float = float("nan")
    # how late the callers sent a group of frames (p99 and the latest, ms): a late group comes as a burst
    callers_late_p99_ms: float = float("nan")
    callers_late_max_ms: float = float("nan")
    tls: bool = False  # the model sockets spoke TLS (wss://)


FIXED_WORK_LOOP = 300_000


def fixed_work_ms(rounds: int = 3) -> float:
    """The CPU time (ms) one fixed piece of pure-Python work takes on this core now, the fastest of ``rounds``.

    How fast the host runs the agent: on a shared host the same instructions take more time while
    other machines use the physical core beside it, which neither load nor steal shows. Lower is
    faster; the ratio of two figures is the ratio of the host's speeds.
    """
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        total = 0
        for value in range(FIXED_WORK_LOOP):
            total += value * value
        best = min(best, time.process_time() - started)
    return best * 1000


def _pin(cores: set[int] | None, realtime: bool = False, priority: int = REALTIME_PRIORITY):
    def prepare() -> None:
        if cores:
            os.sched_setaffinity(0, cores)
        if realtime:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))

    return prepare if cores or realtime else None


def _write_json(directory: str, name: str, data: Any) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return path


def _self_signed_certificate(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (P-256, one day) and its key, made with the openssl tool in ``directory``."""
    certificate, key = os.path.join(directory, "stand-in.pem"), os.path.join(directory, "stand-in.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", certificate],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return certificate, key


def _set_realtime(enabled: bool) -> None:
    """SCHED_RR for a bounded run, as ``CPUSchedulingPolicy=rr`` would give the agent's unit."""
    policy = os.SCHED_RR if enabled else os.SCHED_OTHER
    os.sched_setscheduler(0, policy, os.sched_param(REALTIME_PRIORITY if enabled else 0))


async def _read_json_line(process: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), within)
    if not line:
        raise RuntimeError("a benchmark helper exited without a result")
    return json.loads(line)


async def run_point(
    calls: int,
    seconds: float,
    law: str = "ulaw",
    pin: bool = True,
    realtime: bool = False,
    input_frames: int = 1,
    own_sockets: bool = False,
    tls: bool = False,
) -> Point:
    helper_cores = {1} if pin and (os.cpu_count() or 1) > 1 else None
    if helper_cores:
        os.sched_setaffinity(0, {0})
    if realtime:
        _set_realtime(True)
    before = fixed_work_ms()
    point: Point | None = None
    script = {"greeting": "x", "greeting_ms": int((seconds + WARM_UP_S + 20) * 1000), "send_rate": 1.0}
    workdir = tempfile.mkdtemp(prefix="centralita-aicall-bench-")
    served = ["--port", "0", "--script", _write_json(workdir, "script.json", script), "--no-validate"]
    served += ["--ping-interval", "10"]
    trusted = os.environ.get("SSL_CERT_FILE")
    if tls:  # the stand-in serves wss:// as the real service does; the model sockets trust its certificate only
        certificate, key = _self_signed_certificate(workdir)
        served += ["--certfile", certificate, "--keyfile", key]
        os.environ["SSL_CERT_FILE"] = certificate
    fake = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "centralita.fakes.realtime", *served,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=_pin(helper_cores, realtime),
    )  # fmt: skip
    pacer = Pacer()
    timing = _Timing()  # flat arrays: nothing per frame for the garbage collector to walk
    port = None if own_sockets else _TimedRtpPort(timing)  # as the agent: every call's RTP on one socket
    metrics = AicallMetrics()
    sessions: list[CallSession] = []
    tasks: list[asyncio.Task[CallRecord]] = []
    medias: list[RtpMedia] = []
    generator = None
    try:
        url = (await _read_json_line(fake, 20))["url"]
        config = SessionConfig("bench", "marin", law)
        for index in range(calls):
            media = _TimedRtpMedia(law, pacer, port=port, name=f"bench-{index}")
            media.timing = timing
            await media.start()
            medias.append(media)
            model = _TimedRealtime(timing, url=url, model="bench", api_key="bench", config=config)
            session = CallSession(
                record=CallRecord(f"bench-{index}", "caller", "did"),
                media=media,
                model=model,
                tools=ToolBox([]),
                control=_Control(),
                policy=CallPolicy(connect_timeout=20, input_frames=input_frames),
                metrics=metrics,
            )
            sessions.append(session)
            tasks.append(asyncio.get_running_loop().create_task(session.run()))
        deadline = time.monotonic() + 60
        # every call's model socket open before measuring (polled: set-up only)
        while any(s.model._ws is None for s in sessions) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        # Every call was set up within the last second or two, which a running agent never sees: the
        # objects of N set-ups at once make the collector's next full pass come within seconds, over
        # all of them. That pass is done now, before the callers start, as steady traffic (calls
        # starting and ending one by one) would have spread it; the GC column still shows any pass
        # that falls in the measured time.
        gc.collect()
        targets = ",".join(f"{m.local[0]}:{m.local[1]}" for m in medias)
        generator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "centralita.aicall.bench", "generator", "--targets", targets,
            "--seconds", str(seconds + WARM_UP_S), "--law", law,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            preexec_fn=_pin(helper_cores, realtime, CALLERS_PRIORITY),
        )  # fmt: skip
        callers = (await _read_json_line(generator, 20))["callers"]
        for media, caller in zip(medias, callers, strict=True):
            host, _, caller_port = caller.rpartition(":")
            media.set_remote(host, int(caller_port))  # as ARI's UNICASTRTP_LOCAL_ADDRESS/PORT does
        assert generator.stdin is not None
        generator.stdin.write(b"go\n")
        await generator.stdin.drain()
        await asyncio.sleep(WARM_UP_S)
        timing.measure_from_now()
        pacer.lateness = array("d")
        pacer.passes = []
        with _Collections() as collections_:
            steal, jiffies = _cpu_times()
            cpu, wall = time.process_time(), time.perf_counter()
            result = await _read_json_line(generator, seconds + 30)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            steal, jiffies = (now - before for now, before in zip(_cpu_times(), (steal, jiffies), strict=True))
        alive = sum(1 for s in sessions if not s.ended)
        outbound = pacer.lateness or []
        passes = pacer.passes or []
        pacer.lateness = pacer.passes = None
        arrival_ms = timing.inbound_ms(input_frames)
        outbound_ms = [v * 1000 for v in outbound]
        point = Point(
            calls=calls,
            alive=alive,
            frames_in=result["send_rate"],
            arrival_p50_ms=_percentile(arrival_ms, 0.5),
            arrival_p99_ms=_percentile(arrival_ms, 0.99),
            outbound_p50_ms=_percentile(outbound_ms, 0.5),
            outbound_p99_ms=_percentile(outbound_ms, 0.99),
            clock_p50_ms=_percentile([late * 1000 for late, _ in passes], 0.5),
            clock_p99_ms=_percentile([late * 1000 for late, _ in passes], 0.99),
            pass_p50_ms=_percentile([length * 1000 for _, length in passes], 0.5),
            jitter_p50_ms=result["jitter_p50_ms"],
            jitter_p99_ms=result["jitter_p99_ms"],
            max_gap_ms=result["max_gap_ms"],
            gc_pauses=len(collections_.pauses),
            gc_longest_ms=max(collections_.pauses, default=0.0) * 1000,
            cpu_per_call_percent=100 * cpu / wall / calls,
            agent_cpu_percent=100 * cpu / wall,
            load_average=os.getloadavg()[0],
            steal_percent=100 * steal / jiffies if jiffies else 0.0,
            fixed_work_before_ms=before,
            callers_late_p99_ms=result["late_p99_ms"],
            callers_late_max_ms=result["late_max_ms"],
            tls=tls,
        )
        return point
    finally:
        for session in sessions:
            session.caller_hung_up()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pacer.close()
        if port is not None:
            port.close()
        for process in (generator, fake):
            if process is not None and process.returncode is None:
                process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 10)
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        if tls:
            if trusted is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = trusted
        if point is not None:  # the agent's core idle again: how fast the host runs now
            point.fixed_work_after_ms = fixed_work_ms()
        if helper_cores:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        if realtime:
            _set_realtime(False)


def table(points: list[Point]) -> str:
    lines = [
        "| calls (alive) | frames in /s | in p50 / p99 ms "
        "| out p50 / p99 ms | clock late p50 / p99 ms | pass ms | jitter p50 / p99 ms | worst gap ms "
        "| GC pauses (longest ms) | CPU per call % | agent CPU % | host load | steal % "
        "| fixed work ms before / after | callers late p99 / max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.calls} ({p.alive}) | {p.frames_in:.1f} | {p.arrival_p50_ms:.2f} / {p.arrival_p99_ms:.2f} | "
            f"{p.outbound_p50_ms:.2f} / {p.outbound_p99_ms:.2f} | {p.clock_p50_ms:.2f} / {p.clock_p99_ms:.2f} | "
            f"{p.pass_p50_ms:.2f} | {p.jitter_p50_ms:.2f} / {p.jitter_p99_ms:.2f} | {p.max_gap_ms:.1f} | "
            f"{p.gc_pauses} ({p.gc_longest_ms:.1f}) | "
            f"{p.cpu_per_call_percent:.2f} | {p.agent_cpu_percent:.0f} | {p.load_average:.1f} | "
            f"{p.steal_percent:.1f} | {p.fixed_work_before_ms:.0f} / {p.fixed_work_after_ms:.0f} | "
            f"{p.callers_late_p99_ms:.2f} / {p.callers_late_max_ms:.1f} |"
        )
    good = [p for p in points if p.jitter_p99_ms < 2.0 and p.alive == p.calls and p.frames_in >= 49.5]
    if good:
        best = max(good, key=lambda p: p.calls)
        lines.append("")
        lines.append(f"Most calls measured with p99 pacing jitter under 2 ms: {best.calls} "
                     f"(agent CPU {best.agent_cpu_percent:.0f} % of one core).")  # fmt: skip
        quick = [p for p in good if p.arrival_p99_ms <= 1.0 and p.outbound_p99_ms <= 1.0]
        if quick:
            best = max(quick, key=lambda p: p.calls)
            lines.append(f"Most calls measured with both directions at most 1 ms at p99: {best.calls}.")
    flagged = (
        (
            [p.calls for p in points if p.clock_p99_ms >= HOST_STALL_MS],
            f"the pacer's real-time thread woke {HOST_STALL_MS} ms late or more at p99: the host took the core "
            "from the agent at times, and every timing of those points is the host's as much as the agent's.",
        ),
        (
            [p.calls for p in points if p.callers_late_p99_ms >= CALLERS_LATE_MS],
            f"the callers sent a group of frames {CALLERS_LATE_MS:g} ms late or more at p99: the agent got bursts "
            "instead of a steady flow, and the inbound figures of those points include the queue the bursts made.",
        ),
    )
    for calls, what in flagged:
        if calls:
            lines.append(f"At {', '.join(map(str, calls))} calls {what}")
    if any(p.tls for p in points):
        lines.append("The model sockets spoke TLS (wss://), as to the real service.")
    return "\n".join(lines)


def bench(
    calls: list[int],
    seconds: float,
    law: str = "ulaw",
    pin: bool = True,
    realtime: bool = False,
    input_frames: int = 1,
    own_sockets: bool = False,
    tls: bool = False,
) -> list[Point]:
    """Run every load point in turn (bounded: each lasts ``seconds`` plus set-up)."""
    g711.warm_up()
    gc.freeze()  # as the agent does after start-up
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as the agent does: the pacer's thread gets the lock quickly
    points = []
    for count in calls:
        point = asyncio.run(run_point(count, seconds, law, pin, realtime, input_frames, own_sockets, tls))
        print(json.dumps(point.__dict__), file=sys.stderr, flush=True)
        points.append(point)
    return points


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["generator"]:
        return generator_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m centralita.aicall.bench")
    parser.add_argument("--calls", default="25,50,100,200", help="comma-separated load points")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--law", default="ulaw", choices=("ulaw", "alaw"))
    parser.add_argument("--no-pin", action="store_true", help="do not pin the agent and the helpers to cores")
    parser.add_argument("--realtime", action="store_true", help="run under SCHED_RR (root; as the unit can)")
    parser.add_argument("--input-frames", type=int, default=1, choices=range(1, 6), help="as AICALL_INPUT_FRAMES")
    parser.add_argument(
        "--own-sockets", action="store_true", help="a UDP socket per call instead of the agent's one shared port"
    )
    parser.add_argument(
        "--tls", action="store_true", help="the stand-in serves wss:// (a certificate made for the run), as the service"
    )
    args = parser.parse_args(argv)
    counts = [min(int(c), 1000) for c in args.calls.split(",") if c.strip()]
    points = bench(
        counts,
        min(args.seconds, 120),
        args.law,
        not args.no_pin,
        args.realtime,
        args.input_frames,
        args.own_sockets,
        args.tls,
    )
    print(table(points))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
