"""Benchmark: N synthetic calls through one agent process.

Three processes, as in production: this one runs N call sessions exactly as the
agent does (RTP media, the shared pacer, one Realtime websocket per call, the call
state machine), the Realtime stand-in runs in a second process and streams a reply
to every call at real-time pace, and an RTP generator in a third process plays N
callers (20 ms frames in, paced frames out) and measures what a caller receives.

Measured per load point:
- inbound added latency: a caller frame sent by its caller until its
  ``input_audio_buffer.append`` is written to the model socket (p50/p99): the kernel, the
  wait for the event loop, the call logic and the framing (the callers put their send time
  in the RTP SSRC, on the host's monotonic clock);
- the same from the frame's arrival at the agent's socket (the kernel's receive time stamp,
  ``SO_TIMESTAMPNS``) until that write: what the agent itself adds, without the callers'
  own delays between taking their time stamp and ``sendto``;
- outbound added latency: a frame's due time on the 20 ms clock until it is sent (p50/p99);
- outbound pacing jitter at the callers: |inter-arrival - 20 ms| (p50/p99, worst gap);
- the callers' real send rate (frames per call and second): a busy helper core sends fewer than
  50, which lightens the agent's load, so such a point never counts as carried;
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
    PAYLOAD_TYPES,
    RECV_SIZE,
    SWITCH_INTERVAL_S,
    DatagramBatch,
    Pacer,
    RtpMedia,
    RtpPacket,
    RtpPort,
)
from centralita.aicall.session import CallPolicy, CallSession
from centralita.aicall.tools.base import ToolBox

log = logging.getLogger("centralita.aicall.bench")

WARM_UP_S = 2.0
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
    silence = g711.silence(law)
    # Real calls start at random moments, so their frames reach the agent spread over the 20 ms,
    # not all at once: each caller sends in one of CALLER_SLOTS slots, 1 ms apart.
    slots = [callers[index::CALLER_SLOTS] for index in range(CALLER_SLOTS)]
    step = g711.FRAME_MS / 1000 / CALLER_SLOTS
    sequence, timestamp = 0, 0
    due = started = loop.time()
    end = due + seconds
    while loop.time() < end:
        # one packet per round, only its SSRC rewritten per caller: the send time (see _TimedRtpMedia)
        packet = bytearray(
            RtpPacket(PAYLOAD_TYPES[law], sequence & 0xFFFF, timestamp & 0xFFFFFFFF, 0, silence).encode()
        )
        for slot in slots:
            for caller, target in slot:
                packet[8:12] = _clock_us().to_bytes(4, "big")
                caller.sock.sendto(packet, target)
            due += step
            await asyncio.sleep(max(0.0, due - loop.time()))
        sequence, timestamp = sequence + 1, timestamp + g711.FRAME_BYTES
    send_rate = sequence / (loop.time() - started)  # under 50 when this process could not keep pace
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


def _clock_us() -> int:
    """The host's monotonic clock in µs, 32 bits: shared by the callers' process and this one."""
    return (time.monotonic_ns() // 1000) & 0xFFFFFFFF


def _wall_us() -> int:
    """The host's real-time clock in µs, 32 bits: the clock of the kernel's receive time stamps."""
    return (time.time_ns() // 1000) & 0xFFFFFFFF


class _TimedRtpPort(RtpPort):
    """The agent's shared port, reading each datagram with the kernel's time of its arrival.

    The same loops as :class:`RtpPort`'s, with room for each datagram's ancillary data (its
    ``SO_TIMESTAMPNS`` time stamp): the arrival goes to the call's model session beside the send time.
    """

    def open(self) -> None:
        super().open()
        if self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def _datagram_batch(self) -> DatagramBatch:
        return DatagramBatch(self.READ_AT_ONCE, RECV_SIZE, control=socket.CMSG_SPACE(16))

    def _read_batches(self, batch: DatagramBatch) -> None:
        sock = self.sock
        if sock is None:
            return
        fd, calls, view, size = sock.fileno(), self._sources, batch.view, batch.size
        lengths, stride, offset, sources = batch.lengths, batch.length_stride, batch.length_offset, batch.sources
        controls, control = batch.controls, batch.control
        assert controls is not None
        for _ in range(-(-self.BATCH // batch.count)):
            received = batch.receive(fd)
            if received < 0:
                if ctypes.get_errno() in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                log.warning("rtp: socket error %d", ctypes.get_errno())
                continue
            for index in range(received):
                entry = calls.get(sources[2 * index])
                if entry is None:
                    self.unknown_packets += 1
                    continue
                media = entry[0]
                model = getattr(media, "model", None)
                if model is not None and batch.control_length(index) >= _CMSG_HEADER + 16:  # a cmsghdr, a timespec
                    seconds, nanos = struct.unpack_from("qq", controls, index * control + _CMSG_HEADER)
                    model.arrived_at.append((seconds * 1_000_000 + nanos // 1000) & 0xFFFFFFFF)
                start = index * size
                media._received(view[start : start + lengths[index * stride + offset]], entry[1])

    def _read_each(self) -> None:
        sock = self.sock
        if sock is None:
            return
        receive, buffers, view, calls = sock.recvmsg_into, [self._buffer], self._view, self._calls
        ancillary_size = socket.CMSG_SPACE(16)
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
            model = getattr(media, "model", None)
            if model is not None and ancillary:
                seconds, nanos = struct.unpack_from("qq", ancillary[0][2])
                model.arrived_at.append((seconds * 1_000_000 + nanos // 1000) & 0xFFFFFFFF)
            media._received(view[:size], addr)


class _TimedRtpMedia(RtpMedia):
    """RtpMedia that notes when each caller frame was sent: the callers put that time in the SSRC."""

    model: _TimedRealtime | None = None

    def _received(self, data: bytes | memoryview, addr: tuple[str, int]) -> None:
        model = self.model
        if model is not None and len(data) >= 12:
            model.sent_at.append(int.from_bytes(data[8:12], "big"))
        super()._received(data, addr)


class _TimedRealtime(RealtimeSession):
    """RealtimeSession that times each caller frame until its write to the model socket.

    From the caller's send (its time stamp in the SSRC): the callers' own delay before ``sendto``,
    the kernel, the wait for the event loop to read the socket, the call logic and the framing.
    From the kernel's time stamp of its arrival at the agent's socket: the same without the
    callers' part. A frame that goes through the writer task is timed when the task wrote it.
    """

    def __init__(self, latencies: array, arrival_latencies: array, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent_at: collections.deque[int] = collections.deque(maxlen=100)
        self.arrived_at: collections.deque[int] = collections.deque(maxlen=100)
        self._stamps: collections.deque[tuple[list[int], list[int]] | None] = collections.deque()
        self._latencies = latencies
        self._arrival_latencies = arrival_latencies

    def _send(self, event: dict[str, Any]) -> None:
        self._stamps.append(None)
        super()._send(event)

    def _done(self, sent: list[int], arrived: list[int]) -> None:
        now, wall = _clock_us(), _wall_us()
        self._latencies.extend(((now - at) & 0xFFFFFFFF) / 1e6 for at in sent)
        self._arrival_latencies.extend(((wall - at) & 0xFFFFFFFF) / 1e6 for at in arrived)

    def send_audio(self, audio: bytes) -> None:
        # Runs for every caller frame: the timing itself is kept to a few operations, since its CPU
        # counts in the agent's column.
        sent_at, arrived_at = self.sent_at, self.arrived_at
        if self._ws is None:
            sent_at.clear()
            arrived_at.clear()
            return
        outbox = self._outbox
        queued = outbox.qsize()
        super().send_audio(audio)
        if len(audio) <= g711.FRAME_BYTES:  # one frame per message (the default)
            if sent_at:
                at = sent_at.popleft()
                arrived = [arrived_at.popleft()] if arrived_at else []
                if outbox.qsize() > queued:
                    self._stamps.append(([at], arrived))  # went through the writer task: timed when written
                else:  # written at once
                    self._latencies.append(((_clock_us() - at) & 0xFFFFFFFF) / 1e6)
                    if arrived:
                        self._arrival_latencies.append(((_wall_us() - arrived[0]) & 0xFFFFFFFF) / 1e6)
            return
        frames = len(audio) // g711.FRAME_BYTES  # AICALL_INPUT_FRAMES: the oldest waited longest
        sent = [sent_at.popleft() for _ in range(min(frames, len(sent_at)))]
        arrived = [arrived_at.popleft() for _ in range(min(frames, len(arrived_at)))]
        if outbox.qsize() > queued:
            self._stamps.append((sent, arrived))
        else:
            self._done(sent, arrived)

    async def _write(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                message = await self._outbox.get()
                stamp = self._stamps.popleft() if self._stamps else None
                self._writing = True
                try:
                    await ws.send(message)
                finally:
                    self._writing = False
                if stamp is not None:
                    self._done(*stamp)
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
    inbound_p50_ms: float  # from the caller's send
    inbound_p99_ms: float
    arrival_p50_ms: float  # from the arrival at the agent's socket (kernel time stamp)
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


def _pin(cores: set[int] | None, realtime: bool = False):
    def prepare() -> None:
        if cores:
            os.sched_setaffinity(0, cores)
        if realtime:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))

    return prepare if cores or realtime else None


def _set_realtime(enabled: bool) -> None:
    """SCHED_RR for a bounded run, as ``CPUSchedulingPolicy=rr`` would give the agent's unit."""
    policy = os.SCHED_RR if enabled else os.SCHED_OTHER
    os.sched_setscheduler(0, policy, os.sched_param(10 if enabled else 0))


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
) -> Point:
    helper_cores = {1} if pin and (os.cpu_count() or 1) > 1 else None
    if helper_cores:
        os.sched_setaffinity(0, {0})
    if realtime:
        _set_realtime(True)
    script = {"greeting": "x", "greeting_ms": int((seconds + WARM_UP_S + 20) * 1000), "send_rate": 1.0}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(script, handle)
    fake = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "centralita.fakes.realtime", "--port", "0", "--script", handle.name,
        "--no-validate", "--ping-interval", "10",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=_pin(helper_cores, realtime),
    )  # fmt: skip
    pacer = Pacer()
    port = None if own_sockets else _TimedRtpPort()  # as the agent: every call's RTP on one socket
    metrics = AicallMetrics()
    inbound = array("d")  # flat arrays: samples the garbage collector never walks
    arrival = array("d")
    sessions: list[CallSession] = []
    tasks: list[asyncio.Task[CallRecord]] = []
    medias: list[RtpMedia] = []
    generator = None
    try:
        url = (await _read_json_line(fake, 20))["url"]
        config = SessionConfig("bench", "marin", law)
        for index in range(calls):
            media = _TimedRtpMedia(law, pacer, port=port, name=f"bench-{index}")
            await media.start()
            medias.append(media)
            model = _TimedRealtime(inbound, arrival, url=url, model="bench", api_key="bench", config=config)
            media.model = model
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
        targets = ",".join(f"{m.local[0]}:{m.local[1]}" for m in medias)
        generator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "centralita.aicall.bench", "generator", "--targets", targets,
            "--seconds", str(seconds + WARM_UP_S), "--law", law,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            preexec_fn=_pin(helper_cores, realtime),
        )  # fmt: skip
        callers = (await _read_json_line(generator, 20))["callers"]
        for media, caller in zip(medias, callers, strict=True):
            host, _, caller_port = caller.rpartition(":")
            media.set_remote(host, int(caller_port))  # as ARI's UNICASTRTP_LOCAL_ADDRESS/PORT does
        assert generator.stdin is not None
        generator.stdin.write(b"go\n")
        await generator.stdin.drain()
        await asyncio.sleep(WARM_UP_S)
        del inbound[:]
        del arrival[:]
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
        inbound_ms = [v * 1000 for v in inbound]
        arrival_ms = [v * 1000 for v in arrival]
        outbound_ms = [v * 1000 for v in outbound]
        return Point(
            calls=calls,
            alive=alive,
            frames_in=result["send_rate"],
            inbound_p50_ms=_percentile(inbound_ms, 0.5),
            inbound_p99_ms=_percentile(inbound_ms, 0.99),
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
        )
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
        os.unlink(handle.name)
        if helper_cores:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        if realtime:
            _set_realtime(False)


def table(points: list[Point]) -> str:
    lines = [
        "| calls (alive) | frames in /s | in from send p50 / p99 ms | in from arrival p50 / p99 ms "
        "| out p50 / p99 ms | clock late p50 / p99 ms | pass ms | jitter p50 / p99 ms | worst gap ms "
        "| GC pauses (longest ms) | CPU per call % | agent CPU % | host load | steal % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.calls} ({p.alive}) | {p.frames_in:.1f} | {p.inbound_p50_ms:.2f} / {p.inbound_p99_ms:.2f} | "
            f"{p.arrival_p50_ms:.2f} / {p.arrival_p99_ms:.2f} | "
            f"{p.outbound_p50_ms:.2f} / {p.outbound_p99_ms:.2f} | {p.clock_p50_ms:.2f} / {p.clock_p99_ms:.2f} | "
            f"{p.pass_p50_ms:.2f} | {p.jitter_p50_ms:.2f} / {p.jitter_p99_ms:.2f} | {p.max_gap_ms:.1f} | "
            f"{p.gc_pauses} ({p.gc_longest_ms:.1f}) | "
            f"{p.cpu_per_call_percent:.2f} | {p.agent_cpu_percent:.0f} | {p.load_average:.1f} | {p.steal_percent:.1f} |"
        )
    good = [p for p in points if p.jitter_p99_ms < 2.0 and p.alive == p.calls and p.frames_in >= 49.5]
    if good:
        best = max(good, key=lambda p: p.calls)
        lines.append("")
        lines.append(f"Most calls measured with p99 pacing jitter under 2 ms: {best.calls} "
                     f"(agent CPU {best.agent_cpu_percent:.0f} % of one core).")  # fmt: skip
    return "\n".join(lines)


def bench(
    calls: list[int],
    seconds: float,
    law: str = "ulaw",
    pin: bool = True,
    realtime: bool = False,
    input_frames: int = 1,
    own_sockets: bool = False,
) -> list[Point]:
    """Run every load point in turn (bounded: each lasts ``seconds`` plus set-up)."""
    g711.warm_up()
    gc.freeze()  # as the agent does after start-up
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as the agent does: the pacer's thread gets the lock quickly
    points = []
    for count in calls:
        point = asyncio.run(run_point(count, seconds, law, pin, realtime, input_frames, own_sockets))
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
    args = parser.parse_args(argv)
    counts = [min(int(c), 1000) for c in args.calls.split(",") if c.strip()]
    points = bench(
        counts, min(args.seconds, 120), args.law, not args.no_pin, args.realtime, args.input_frames, args.own_sockets
    )
    print(table(points))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
