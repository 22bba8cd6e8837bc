"""A SIP caller for the AI line: the lab tests and the demo call place their calls with it.

It plays the operator's provider: SIPp (from a lab peer host, the trunk's address)
does the signalling and this module does the media, so the call is measured where a
caller hears it. The caller's speech is made with espeak-ng and sox (8 kHz G.711),
sent at one 20 ms RTP frame per tick with digital silence in between, as a phone
does (or, for a phone with silence suppression, comfort-noise packets between the
utterances); what comes back is timed with the kernel's receive time stamps, so a busy
measuring process does not invent gaps. The result says whether the call was
answered, who hung up, how much non-silent audio came back and when, and the worst
gap between RTP packets toward the caller.

``python -m centralita.aicall.labcall --lab-name demo --lab-index 0`` (as root on
the lab host) places the demo call: one conversation with the assistant, then a
short report from what the caller heard and the call's record in MariaDB; it exits
non-zero when the assistant did not answer or no audio came back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from centralita.aicall import g711

DEFAULT_DID = "3241000752"
DEFAULT_PEER = "provider"
DEFAULT_VM = "centralita1"
PBX_PORT = 5080
SIP_PORT = 5060
PAYLOAD_TYPES = {"ulaw": 0, "alaw": 8}
ENCODINGS = {"ulaw": "PCMU", "alaw": "PCMA"}
COMFORT_NOISE_PT = 13  # RFC 3389, static in RFC 3551's audio/video profile
COMFORT_NOISE_LEVEL = 0x40  # the packet's one byte: the noise level, -64 dBov
FRAME_S = g711.FRAME_MS / 1000
AUDIBLE_RMS = 200.0  # linear RMS above which a frame is heard as sound (the agent's soft cue is ~1000)
WINDOW_JOIN_S = 0.1  # sound separated by less than this is one stretch of audio
GAP_LISTED_MS = 40.0  # inter-arrival gaps above this are listed in the result
MAX_LISTED_GAPS = 200
SIP_TRACE_CHARS = 20000
# Linux's SO_TIMESTAMPNS (also the control message's type); Python does not export the name
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class LabCallError(RuntimeError):
    """The call could not be placed at all (tools missing, SIPp failing to start, no answer to parse)."""


@dataclass
class Utterance:
    """The caller says ``text`` starting ``at`` seconds after the answer."""

    at: float
    text: str


@dataclass
class CallPlan:
    target: str  # Asterisk's address
    port: int = PBX_PORT
    did: str = DEFAULT_DID
    caller: str = "3001234567"
    local_ip: str = ""  # the caller's own address (the peer's); empty: the one routing picks toward target
    utterances: list[Utterance] = field(default_factory=list)
    hangup_after: float = 20.0  # the caller hangs up this long after the answer unless the far end does first
    answer_timeout: float = 15.0
    law: str = "ulaw"
    voice: str = "es-419"
    sip_port: int = SIP_PORT
    # A phone with silence suppression (VAD): between utterances it sends one comfort-noise packet
    # (RFC 3389: payload type 13, one byte of noise level) every this many seconds instead of 20 ms
    # frames of digital silence, and its offer lists 13 CN/8000. 0: digital silence, no CN offered.
    comfort_noise_every: float = 0.0

    def __post_init__(self) -> None:
        g711.check_law(self.law)
        if self.comfort_noise_every < 0:
            raise ValueError("comfort_noise_every must be 0 (off) or a number of seconds")
        if not re.fullmatch(r"[0-9+*#]{1,32}", self.did) or not re.fullmatch(r"[0-9+]{1,32}", self.caller):
            raise ValueError(f"DID {self.did!r} and caller {self.caller!r} must be dialable digits")
        if self.hangup_after <= 0 or self.answer_timeout <= 0:
            raise ValueError("hangup_after and answer_timeout must be positive")
        self.utterances = [u if isinstance(u, Utterance) else Utterance(**u) for u in self.utterances]

    @property
    def max_seconds(self) -> float:
        """Longest the whole call may take, setup and teardown included."""
        return self.answer_timeout + self.hangup_after + 20

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallPlan:
        return cls(**data)


@dataclass
class CallResult:
    answered: bool
    final_status: int | None  # SIP status of the INVITE's final answer
    ended_by: str  # caller (our BYE), remote (the PBX's BYE) or none (never answered)
    duration: float  # seconds from the answer to the end of the call
    packets_received: int
    packets_sent: int
    payload_types: list[int]
    audio_ms: int  # non-silent audio that reached the caller
    first_audio: float | None  # seconds after the answer
    worst_gap_ms: float  # the longest silence on the wire toward the caller (between any two packets)
    gaps: list[list[float]]  # [seconds after answer, gap ms] for every gap over GAP_LISTED_MS (capped)
    windows: list[list[float]]  # [start, end] of each stretch of sound heard, seconds after the answer
    speech: list[list[float]]  # [start, end] of each utterance as really sent, seconds after the answer
    first_packet: float | None
    last_packet: float | None
    remote_rtp: str
    sipp_returncode: int | None
    sip_trace: str = ""
    answered_wall: float | None = None  # the answer's wall-clock time (time.time()), to place gaps in time
    speech_planned: list[list[float]] = field(default_factory=list)  # [start, end] as the plan scheduled them
    sender_stalls: list[list[float]] = field(default_factory=list)  # [s after answer, ms] our sender fell behind
    comfort_noise_sent: int = 0  # comfort-noise packets among packets_sent

    def heard_between(self, start: float, end: float) -> float:
        """Seconds of sound heard between ``start`` and ``end`` (seconds after the answer)."""
        return sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.windows)

    def worst_gap_between(self, start: float, end: float) -> float:
        """The worst listed gap ending inside [start, end]; 0 when none passed GAP_LISTED_MS."""
        return max((gap for at, gap in self.gaps if start <= at <= end), default=0.0)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallResult:
        return cls(**data)


# -- audio ------------------------------------------------------------------------


def speech_audio(text: str, law: str = "ulaw", voice: str = "es-419") -> bytes:
    """``text`` spoken by espeak-ng, as 8 kHz G.711 (sox resamples and normalises it)."""
    g711.check_law(law)
    with tempfile.TemporaryDirectory(prefix="labcall-") as tmp:
        wav = Path(tmp) / "speech.wav"
        raw = Path(tmp) / "speech.raw"
        encoding = "u-law" if law == "ulaw" else "a-law"
        for argv in (
            ["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text],
            ["sox", str(wav), "-r", "8000", "-c", "1", "-e", encoding, "-t", "raw", str(raw), "gain", "-n", "-3"],
        ):
            try:
                subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
            except FileNotFoundError as exc:
                raise LabCallError(f"{argv[0]} is needed to make the caller's speech") from exc
            except subprocess.CalledProcessError as exc:
                raise LabCallError(f"{argv[0]} failed: {exc.stderr.strip()[:300]}") from exc
        return raw.read_bytes()


# -- SIP (SIPp) ---------------------------------------------------------------------

_SCENARIO = """<?xml version="1.0" encoding="UTF-8" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="Provider call to the AI line">
  <send retrans="500">
    <![CDATA[
      INVITE sip:{did}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Lab caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:{did}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:{caller}@[local_ip]:[local_port]
      Max-Forwards: 70
      User-Agent: Centralita lab caller
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 1 1 IN IP4 {media_ip}
      s=-
      c=IN IP4 {media_ip}
      t=0 0
      m=audio {media_port} RTP/AVP {formats}
      {rtpmaps}
      a=ptime:20
      a=sendrecv
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="403" optional="true" next="refused"/>
  <recv response="404" optional="true" next="refused"/>
  <recv response="480" optional="true" next="refused"/>
  <recv response="486" optional="true" next="refused"/>
  <recv response="488" optional="true" next="refused"/>
  <recv response="500" optional="true" next="refused"/>
  <recv response="503" optional="true" next="refused"/>
  <recv response="603" optional="true" next="refused"/>
  <recv response="200" rrs="true" timeout="{answer_ms}"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Lab caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:{did}@[remote_ip]:[remote_port]>[peer_tag_param]
      [routes]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: sip:{caller}@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <!-- Asterisk re-INVITEs when the call joins a bridge: answered with the same media. Then either
       the PBX hangs up (BYE) or the caller does when the hold time runs out. -->
  <label id="wait"/>
  <recv request="INVITE" optional="true" next="reinvite" timeout="{hold_ms}" ontimeout="hangup"/>
  <recv request="BYE" timeout="{hold_ms}" ontimeout="hangup"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
  <nop next="done"/>
  <label id="hangup"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Lab caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:{did}@[remote_ip]:[remote_port]>[peer_tag_param]
      [routes]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: sip:{caller}@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="481" optional="true" next="done"/>
  <recv response="200" crlf="true" next="done"/>
  <label id="reinvite"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: sip:{caller}@[local_ip]:[local_port]
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 1 2 IN IP4 {media_ip}
      s=-
      c=IN IP4 {media_ip}
      t=0 0
      m=audio {media_port} RTP/AVP {formats}
      {rtpmaps}
      a=ptime:20
      a=sendrecv
    ]]>
  </send>
  <recv request="ACK" next="wait"/>
  <label id="refused"/>
  <send>
    <![CDATA[
      ACK sip:{did}@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: "Lab caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <label id="done"/>
</scenario>
"""


def scenario(plan: CallPlan, media_ip: str, media_port: int) -> str:
    """The SIPp scenario of one call: the SDP offers our own RTP socket, so the media is ours to measure."""
    formats = [(PAYLOAD_TYPES[plan.law], ENCODINGS[plan.law])]
    if plan.comfort_noise_every:
        formats.append((COMFORT_NOISE_PT, "CN"))
    return _SCENARIO.format(
        did=plan.did,
        caller=plan.caller,
        media_ip=media_ip,
        media_port=media_port,
        formats=" ".join(str(pt) for pt, _ in formats),
        rtpmaps="\n      ".join(f"a=rtpmap:{pt} {name}/8000" for pt, name in formats),
        answer_ms=int(plan.answer_timeout * 1000),
        hold_ms=int(plan.hangup_after * 1000),
    )


@dataclass
class SipMessage:
    direction: str  # sent | received
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()


_BLOCK = re.compile(r"^-{10,} .*$", re.MULTILINE)


def sip_messages(trace: str) -> list[SipMessage]:
    """The messages of a SIPp ``-trace_msg`` file, in order."""
    found = []
    for block in _BLOCK.split(trace):
        head, _, body = block.strip().partition("\n")
        if not body.strip():
            continue
        if head.startswith("UDP message sent"):
            found.append(SipMessage("sent", body.strip()))
        elif head.startswith("UDP message received"):
            found.append(SipMessage("received", body.strip()))
    return found


def answer_sdp(messages: list[SipMessage]) -> tuple[int | None, str | None, int | None]:
    """(final status of the INVITE, the answer's media address, its port) from the message trace."""
    for message in messages:
        if message.direction != "received" or not message.first_line.startswith("SIP/2.0 "):
            continue
        if not re.search(r"^CSeq:\s*1 INVITE", message.text, re.MULTILINE | re.IGNORECASE):
            continue
        status = int(message.first_line.split()[1])
        if status < 200:
            continue
        address = re.search(r"^c=IN IP4 (\S+)", message.text, re.MULTILINE)
        port = re.search(r"^m=audio (\d+)", message.text, re.MULTILINE)
        if status == 200 and address and port:
            return status, address.group(1), int(port.group(1))
        return status, None, None
    return None, None, None


def remote_media(messages: list[SipMessage]) -> tuple[str, int] | None:
    """Where the PBX wants our RTP: the SDP of the latest INVITE or 200 OK it sent (re-INVITEs may move it)."""
    found = None
    for message in messages:
        line = message.first_line
        if message.direction != "received" or not (line.startswith("INVITE ") or line.startswith("SIP/2.0 200")):
            continue
        address = re.search(r"^c=IN IP4 (\S+)", message.text, re.MULTILINE)
        port = re.search(r"^m=audio (\d+)", message.text, re.MULTILINE)
        if address and port:
            found = (address.group(1), int(port.group(1)))
    return found


# -- RTP ------------------------------------------------------------------------------


class RtpEndpoint:
    """The caller's RTP socket: sends 20 ms frames on a clock, keeps every arrival with its kernel time."""

    def __init__(self, local_ip: str, law: str) -> None:
        self.law = law
        self.pt = PAYLOAD_TYPES[law]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((local_ip, 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.arrivals: list[tuple[float, int, bool]] = []  # (wall time, payload type, audible)
        self.sent = 0
        self.comfort_noise_sent = 0
        self.sent_at: dict[int, float] = {}  # frame index -> wall time it left, for the scheduled (speech) frames
        self.stalls: list[tuple[float, float]] = []  # (wall time, ms) each time this sender's clock fell behind
        self.remote: tuple[str, int] | None = None
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)

    def on_readable(self) -> None:
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ICMP port unreachable reported on the socket: nothing to read
            stamp = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    seconds, nanos = struct.unpack("qq", value[:16])
                    stamp = seconds + nanos / 1e9
            payload = _rtp_payload(data)
            if payload is None:
                continue
            pt, audio = payload
            audible = pt == self.pt and g711.rms(audio, self.law) > AUDIBLE_RMS
            self.arrivals.append((stamp, pt, audible))

    def send_frame(self, payload: bytes, marker: bool = False) -> None:
        self._send(self.pt, payload, marker)
        self._ts = (self._ts + len(payload)) & 0xFFFFFFFF

    def send_comfort_noise(self) -> None:
        """One comfort-noise packet (RFC 3389) at the current time stamp; the 20 ms it stands for pass as usual."""
        if self._send(COMFORT_NOISE_PT, bytes([COMFORT_NOISE_LEVEL])):
            self.comfort_noise_sent += 1
        self.skip_frame()

    def skip_frame(self) -> None:
        """20 ms with nothing sent (silence suppressed): the time stamp goes on, the sequence number does not."""
        self._ts = (self._ts + g711.FRAME_BYTES) & 0xFFFFFFFF

    def _send(self, pt: int, payload: bytes, marker: bool = False) -> bool:
        if self.remote is None:
            return False
        header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, self._seq, self._ts, self._ssrc)
        self._seq = (self._seq + 1) & 0xFFFF
        with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionRefusedError):
            self.sock.sendto(header + payload, self.remote)
            self.sent += 1
            return True
        return False

    async def send_loop(self, frames: dict[int, bytes], stop: asyncio.Event, comfort_noise_every: float = 0.0) -> None:
        """One frame every 20 ms on an absolute clock: speech where scheduled, digital silence elsewhere.

        With ``comfort_noise_every`` (seconds) the silence is suppressed as a phone with VAD does it:
        a comfort-noise packet as each silence begins and then one every ``comfort_noise_every``, and
        the first speech frame after a silence carries the marker bit (RFC 3551).

        A stalled process restarts its clock rather than bursting, so everything scheduled after a
        stall leaves that much later: the time each speech frame really left is kept, and each stall.
        """
        silence = g711.silence(self.law)
        noise_ticks = max(1, round(comfort_noise_every / FRAME_S)) if comfort_noise_every else 0
        quiet = 0  # ticks since the current silence began (comfort noise only)
        started = time.monotonic()
        index = 0
        while not stop.is_set():
            frame = frames.get(index)
            if frame is not None:
                self.send_frame(frame, marker=noise_ticks > 0 and quiet > 0)
                self.sent_at[index] = time.time()
                quiet = 0
            elif not noise_ticks:
                self.send_frame(silence)
            else:
                if quiet % noise_ticks == 0:
                    self.send_comfort_noise()
                else:
                    self.skip_frame()
                quiet += 1
            index += 1
            due = started + index * FRAME_S
            delay = due - time.monotonic()
            if delay < -2 * FRAME_S:
                self.stalls.append((time.time(), -delay * 1000))
                started = time.monotonic() - index * FRAME_S
                delay = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, delay))

    def close(self) -> None:
        self.sock.close()


def _rtp_payload(data: bytes) -> tuple[int, bytes] | None:
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    count = data[0] & 0x0F
    offset = 12 + 4 * count
    if data[0] & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack("!H", data[offset + 2 : offset + 4])[0]
    end = len(data)
    if data[0] & 0x20 and end > offset:  # padding
        end -= data[-1]
    if end < offset:
        return None
    return data[1] & 0x7F, data[offset:end]


def schedule(utterances: list[tuple[float, bytes]], law: str) -> tuple[dict[int, bytes], list[list[float]]]:
    """Frames by index after the answer, and when each utterance is due to start and end."""
    frames: dict[int, bytes] = {}
    spans = []
    fill = g711.silence(law)[:1]
    for at, audio in utterances:
        first = round(at / FRAME_S)
        count = (len(audio) + g711.FRAME_BYTES - 1) // g711.FRAME_BYTES
        for n in range(count):
            chunk = audio[n * g711.FRAME_BYTES : (n + 1) * g711.FRAME_BYTES]
            frames[first + n] = chunk + fill * (g711.FRAME_BYTES - len(chunk))
        spans.append([round(first * FRAME_S, 3), round((first + count) * FRAME_S, 3)])
    return frames, spans


def sent_spans(planned: list[list[float]], sent_at: dict[int, float], answered_at: float) -> list[list[float]]:
    """When each utterance really left, seconds after the answer (as planned where it never left)."""
    spans = []
    for start, end in planned:
        first, last = round(start / FRAME_S), round(end / FRAME_S) - 1
        if first in sent_at and last in sent_at:
            spans.append([round(sent_at[first] - answered_at, 3), round(sent_at[last] + FRAME_S - answered_at, 3)])
        else:
            spans.append([start, end])
    return spans


def measure(arrivals: list[tuple[float, int, bool]], answered_at: float) -> dict[str, Any]:
    """What the caller got: sound stretches, total sound, and the gaps between packets."""
    times = sorted(a[0] for a in arrivals)
    gaps: list[list[float]] = []
    worst = 0.0
    for before, after in itertools.pairwise(times):
        gap = (after - before) * 1000
        worst = max(worst, gap)
        if gap > GAP_LISTED_MS and len(gaps) < MAX_LISTED_GAPS:
            gaps.append([round(after - answered_at, 3), round(gap, 1)])
    windows: list[list[float]] = []
    audible = sorted(a[0] - answered_at for a in arrivals if a[2])
    for at in audible:
        if windows and at - windows[-1][1] <= WINDOW_JOIN_S:
            windows[-1][1] = at + FRAME_S
        else:
            windows.append([at, at + FRAME_S])
    return {
        "audio_ms": len(audible) * g711.FRAME_MS,
        "first_audio": round(audible[0], 3) if audible else None,
        "worst_gap_ms": round(worst, 1),
        "gaps": gaps,
        "windows": [[round(s, 3), round(e, 3)] for s, e in windows],
        "first_packet": round(times[0] - answered_at, 3) if times else None,
        "last_packet": round(times[-1] - answered_at, 3) if times else None,
        "payload_types": sorted({a[1] for a in arrivals}),
    }


def _route_source(target: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((target, 9))
        return probe.getsockname()[0]


async def run_call(plan: CallPlan) -> CallResult:
    """Place one call from this host (run it inside the peer's network namespace) and measure it."""
    local_ip = plan.local_ip or _route_source(plan.target)
    spoken = [(u.at, await asyncio.to_thread(speech_audio, u.text, plan.law, plan.voice)) for u in plan.utterances]
    frames, spans = schedule(spoken, plan.law)
    rtp = RtpEndpoint(local_ip, plan.law)
    loop = asyncio.get_running_loop()
    loop.add_reader(rtp.sock.fileno(), rtp.on_readable)
    stop = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    answered_at: float | None = None
    with tempfile.TemporaryDirectory(prefix="labcall-") as tmp:
        work = Path(tmp)
        (work / "call.xml").write_text(scenario(plan, local_ip, rtp.address[1]), encoding="utf-8")
        trace = work / "messages.log"
        errors = (work / "sipp.err").open("wb")
        argv = ["sipp", "-sf", str(work / "call.xml"), "-i", local_ip, "-p", str(plan.sip_port)]
        argv += ["-m", "1", "-r", "1", "-timeout", f"{int(plan.max_seconds)}s", "-timeout_error", "-nostdin"]
        argv += ["-trace_msg", "-message_file", str(trace), "-mp", str(rtp.address[1] + 2)]
        argv += [f"{plan.target}:{plan.port}"]
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=work,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=errors,  # a file: a chatty SIPp must never block on a full pipe
                )
            except FileNotFoundError as exc:
                raise LabCallError("sipp is needed to place the call") from exc
            deadline = time.monotonic() + plan.answer_timeout + 5
            status = None
            while proc.returncode is None and time.monotonic() < deadline:
                text = trace.read_text(encoding="utf-8", errors="replace") if trace.exists() else ""
                status, address, port = answer_sdp(sip_messages(text))
                if status is not None:
                    if address and port:
                        answered_at = time.time()
                        rtp.remote = (address, port)
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.01)
            if rtp.remote is not None:
                sender = loop.create_task(rtp.send_loop(frames, stop, plan.comfort_noise_every), name="labcall-rtp")
            until = time.monotonic() + plan.max_seconds
            while proc.returncode is None and time.monotonic() < until:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.2)
                if rtp.remote is not None and trace.exists():
                    rtp.remote = remote_media(sip_messages(trace.read_text(encoding="utf-8", errors="replace")))
            if proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 10)
            ended_at = time.time()
            await asyncio.sleep(0.1)  # the last packets in flight
        finally:
            stop.set()
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            loop.remove_reader(rtp.sock.fileno())
            rtp.on_readable()
            rtp.close()
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            errors.close()
        text = trace.read_text(encoding="utf-8", errors="replace") if trace.exists() else ""
        stderr = (work / "sipp.err").read_text(encoding="utf-8", errors="replace")[-4000:]
    messages = sip_messages(text)
    status, _, _ = answer_sdp(messages)
    ended_by = "none"
    if answered_at is not None:
        byes = [m for m in messages if m.first_line.startswith("BYE ")]
        ended_by = "remote" if any(m.direction == "received" for m in byes) else "caller" if byes else "none"
    reference = answered_at if answered_at is not None else time.time()
    arrivals = [a for a in rtp.arrivals if answered_at is None or a[0] <= ended_at + 0.05]
    stats = measure(arrivals, reference)
    return CallResult(
        answered=answered_at is not None,
        final_status=status,
        ended_by=ended_by,
        duration=round(ended_at - answered_at, 3) if answered_at is not None else 0.0,
        packets_received=len(arrivals),
        packets_sent=rtp.sent,
        comfort_noise_sent=rtp.comfort_noise_sent,
        speech=sent_spans(spans, rtp.sent_at, reference),
        speech_planned=spans,
        sender_stalls=[[round(at - reference, 3), round(ms, 1)] for at, ms in rtp.stalls],
        remote_rtp=f"{rtp.remote[0]}:{rtp.remote[1]}" if rtp.remote else "",
        sipp_returncode=proc.returncode if proc else None,
        sip_trace=(text + ("\nsipp stderr:\n" + stderr if stderr.strip() else ""))[-SIP_TRACE_CHARS:],
        answered_wall=answered_at,
        **stats,
    )


# -- from the lab host ------------------------------------------------------------------


def place_call(lab: Any, plan: CallPlan, peer: str = DEFAULT_PEER) -> CallResult:
    """Place ``plan`` from the lab peer ``peer`` (a ``centralita.lab.core.Lab``); blocks until the call ends."""
    plan.local_ip = lab.address(peer)
    argv = lab.peer_cmd(peer, [sys.executable, "-m", "centralita.aicall.labcall", "call"])
    try:
        done = subprocess.run(
            argv,
            input=json.dumps(asdict(plan)),
            capture_output=True,
            text=True,
            timeout=plan.max_seconds + 60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabCallError(f"the call from {peer} did not finish within {plan.max_seconds + 60:.0f} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise LabCallError(f"the caller in {peer} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return CallResult.from_json(json.loads(lines[-1]))


def _call_main() -> int:
    """``labcall call``: read a CallPlan as JSON on stdin, place it, print the CallResult as JSON."""
    try:
        plan = CallPlan.from_json(json.load(sys.stdin))
    except (ValueError, TypeError) as exc:
        print(f"labcall: bad call plan: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run_call(plan))
    except LabCallError as exc:
        print(f"labcall: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result)))
    return 0


# -- the demo ---------------------------------------------------------------------------

STAND_IN_PORT = 8765
# The model stand-ins the agents role runs on the VM: unit name -> loopback port.
STAND_IN_PORTS = {"fake-realtime": STAND_IN_PORT, "fake-live": 8768}
DEMO_CALLER = "3001234567"  # the demo ISP's customer Ana Gomez (the MikroTik stand-in's data)
DEMO_SCRIPT: dict[str, Any] = {
    "greeting": "Hola, soy el asistente virtual de soporte. ¿En qué le puedo ayudar?",
    "greeting_ms": 2500,
    "think_ms": 200,
    "turns": [
        {
            "transcript": "Hola, no tengo internet en mi casa.",
            "tool": "find_customer",
            "arguments": {"phone": DEMO_CALLER},
            "after_tool": "Encontré su servicio a nombre de Ana Gómez. Su conexión está activa y su equipo responde.",
            "after_tool_ms": 4000,
        },
        {
            "transcript": "Gracias, eso es todo.",
            "tool": "end_call",
            "arguments": {"reason": "resuelto"},
            "after_tool": "Con gusto. Que tenga un buen día.",
            "after_tool_ms": 2000,
        },
    ],
}
DEMO_UTTERANCES = [Utterance(4.0, "Hola no tengo internet en mi casa"), Utterance(13.0, "Gracias eso es todo")]

_VM_PY = "import json, sys, urllib.request\n"


def stand_in_request(lab: Any, vm: str, path: str, stand_in: str = "fake-realtime") -> dict[str, Any] | None:
    """GET a control path of a model stand-in on the VM (its key from its env file); None if it is not there."""
    port = STAND_IN_PORTS[stand_in]
    code = (
        "key = ''\n"
        f"with open('/etc/centralita/{stand_in}.env') as f:\n"
        "    for line in f:\n"
        "        if line.startswith('OPENAI_API_KEY='):\n"
        "            key = line.split('=', 1)[1].strip().strip(chr(34) + chr(39))\n"
        f"req = urllib.request.Request('http://127.0.0.1:{port}' + sys.argv[1])\n"
        "if key: req.add_header('Authorization', 'Bearer ' + key)\n"
        "try:\n"
        "    sys.stdout.write(urllib.request.urlopen(req, timeout=10).read().decode())\n"
        "except Exception as exc:\n"
        "    sys.stdout.write(json.dumps({'unreachable': str(exc)}))\n"
    )
    out = lab.exec(vm, f"python3 -c {shlex.quote(_VM_PY + code)} {shlex.quote(path)}", timeout=30, check=False)
    try:
        data = json.loads(out)
    except ValueError:
        return None
    return None if "unreachable" in data else data


def vm_rows(lab: Any, vm: str, sql: str) -> list[dict[str, str | None]]:
    """Rows of a query in the VM's ``centralita`` schema (values as strings)."""
    out = lab.exec(vm, f"mariadb --batch --default-character-set=utf8mb4 centralita -e {shlex.quote(sql)}")
    lines = [line for line in out.split("\n") if line]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, (_unescape(v) for v in row.split("\t")), strict=False)) for row in lines[1:]]


def _unescape(field: str) -> str | None:
    """A field of ``mariadb --batch`` output (NULL, and backslash escapes for tab, newline, backslash)."""
    if field == "NULL":
        return None
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "0": "\0"}.get(m.group(1), m.group(1)), field)


def wait_for_record(lab: Any, vm: str, caller: str, since: float, timeout: float = 30) -> dict[str, Any] | None:
    """The aicall record of ``caller``'s latest call started after ``since`` (with its transcript and tools)."""
    if not caller.isdigit():
        raise ValueError("caller must be digits")
    deadline = time.monotonic() + timeout
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since - 5))
    # the caller is digits, the time is formatted here and the id an int: nothing to escape
    latest = f"SELECT * FROM aicall_calls WHERE caller = '{caller}' AND started_at >= '{started}'"  # noqa: S608
    while True:
        rows = vm_rows(lab, vm, latest + " ORDER BY id DESC LIMIT 1")
        if rows and rows[0].get("ended_at"):
            record: dict[str, Any] = dict(rows[0])
            call_id = int(record["id"])
            where = f" WHERE call_id = {call_id} ORDER BY seq"
            transcript = "SELECT role, text, progress FROM aicall_transcript" + where  # noqa: S608
            tools = "SELECT name, arguments, result, outcome, duration_ms FROM aicall_tool_calls" + where  # noqa: S608
            turns = "SELECT latency_ms, interrupted, played_ms FROM aicall_turns" + where  # noqa: S608
            record["transcript"] = vm_rows(lab, vm, transcript)
            record["tools"] = vm_rows(lab, vm, tools)
            record["turns"] = vm_rows(lab, vm, turns)
            return record
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def demo_report(result: CallResult, record: dict[str, Any] | None, target: str, peer_address: str) -> list[str]:
    lines = [f"Demo call to the AI line {target} from the provider ({peer_address})"]
    if not result.answered:
        lines.append(f"  answered: no (SIP final status {result.final_status})")
        return lines
    lines.append(f"  answered: yes; call lasted {result.duration:.1f} s, ended by the {_ENDED_BY[result.ended_by]}")
    heard = result.audio_ms / 1000
    first = f", first audio {result.first_audio:.2f} s after the answer" if result.first_audio is not None else ""
    lines.append(f"  assistant audio heard: {heard:.1f} s{first}; worst RTP gap {result.worst_gap_ms:.0f} ms")
    if record is None:
        lines.append("  call record: not found in aicall_calls (the agent did not write it)")
        return lines
    lines.append(
        f"  call record: aicall_calls.id {record['id']} (uid {record['call_uid']}), end reason {record['end_reason']}"
        + (f", recording {record['recording_path']}" if record.get("recording_path") else "")
    )
    lines.append("  what was said:")
    for row in record["transcript"] or []:
        mark = " (while waiting)" if row.get("progress") == "1" else ""
        lines.append(f"    {row['role']}: {row['text']}{mark}")
    if not record["transcript"]:
        lines.append("    (no transcript lines)")
    tools = record["tools"] or []
    lines.append("  tool calls:" + ("" if tools else " none"))
    for row in tools:
        found = (row.get("result") or "").replace("\n", " ")
        found = found if len(found) <= 100 else found[:97] + "..."
        lines.append(f"    {row['name']}({row['arguments']}) -> {row['outcome']} in {row['duration_ms']} ms: {found}")
    return lines


_ENDED_BY = {"caller": "caller", "remote": "assistant side", "none": "nobody"}


def demo_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m centralita.aicall.labcall",
        description="Place the demo call into the AI line of a lab (as root on the lab host) and report it.",
    )
    parser.add_argument("--lab-name", default="demo")
    parser.add_argument("--lab-index", type=int, default=0)
    parser.add_argument("--vm", default=DEFAULT_VM)
    parser.add_argument("--peer", default=DEFAULT_PEER, help="the peer host on the trunk's address")
    parser.add_argument("--did", default=DEFAULT_DID)
    parser.add_argument("--port", type=int, default=PBX_PORT, help="Asterisk's SIP port")
    parser.add_argument("--seconds", type=float, default=40.0, help="hang up after this long at the latest")
    args = parser.parse_args(argv)

    from centralita.lab.core import Lab
    from centralita.lab.host import LabError

    try:
        lab = Lab(args.lab_name, args.lab_index)
        if args.vm not in lab.state.machines:
            print(f"lab {args.lab_name} has no VM {args.vm}: bring the lab up and converge it first", file=sys.stderr)
            return 2
        lab.add_peer(args.peer)
        lab.exec(args.vm, f"ip neigh flush to {lab.address(args.peer)}", check=False)
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        print(f"lab {args.lab_name}: {exc}", file=sys.stderr)
        return 2
    target = lab.address(args.vm)
    trunk = target.rsplit(".", 1)[0] + ".100"
    if lab.address(args.peer) != trunk:
        print(
            f"the peer {args.peer} is {lab.address(args.peer)}, but the trunk is identified by {trunk}", file=sys.stderr
        )
        return 2
    previous = stand_in_request(lab, args.vm, "/_stand-in/script")
    if previous is not None:  # the offline demo: the Realtime stand-in plays the model
        stand_in_request(lab, args.vm, "/_stand-in/script?set=" + _quote(json.dumps(DEMO_SCRIPT)))
    plan = CallPlan(
        target=target, port=args.port, did=args.did, caller=DEMO_CALLER, utterances=DEMO_UTTERANCES,
        hangup_after=args.seconds,
    )  # fmt: skip
    started = time.time()
    try:
        result = place_call(lab, plan, args.peer)
    except LabCallError as exc:
        print(f"the demo call could not be placed: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            stand_in_request(lab, args.vm, "/_stand-in/script?set=" + _quote(json.dumps(previous["script"])))
    record = wait_for_record(lab, args.vm, DEMO_CALLER, started) if result.answered else None
    print("\n".join(demo_report(result, record, f"{args.did}@{target}:{args.port}", lab.address(args.peer))))
    if not result.answered or result.audio_ms == 0:
        print("FAILED: the assistant did not answer or no audio came back", file=sys.stderr)
        return 1
    if record is None:
        print("FAILED: the call has no record in aicall_calls", file=sys.stderr)
        return 1
    return 0


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["call"]:
        return _call_main()
    if os.geteuid() != 0:
        print("the demo call needs root (it enters the lab's network namespaces)", file=sys.stderr)
        return 2
    return demo_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
