"""The lab caller as a phone with silence suppression: comfort noise (RFC 3389) between its utterances."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time

from centralita.aicall import g711
from centralita.aicall.labcall import CallPlan, RtpEndpoint, scenario, schedule


def _sent(comfort_noise_every: float, seconds: float) -> list[tuple[bool, int, int, int, bytes]]:
    """(marker, payload type, sequence, time stamp, payload) of every packet the caller sent in ``seconds``,
    speaking five frames from 0.2 s on."""

    async def scenario() -> list[bytes]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind(("127.0.0.1", 0))
            sink.setblocking(False)
            rtp = RtpEndpoint("127.0.0.1", "ulaw")
            rtp.remote = sink.getsockname()
            frames, _ = schedule([(0.2, g711.tone(100, "ulaw"))], "ulaw")
            stop = asyncio.Event()
            sender = asyncio.get_running_loop().create_task(rtp.send_loop(frames, stop, comfort_noise_every))
            await asyncio.sleep(seconds)
            stop.set()
            await sender
            rtp.close()
            received = []
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:
                try:
                    received.append(sink.recv(2048))
                except BlockingIOError:
                    if received:
                        break
                    await asyncio.sleep(0.01)
            return received

    packets = []
    for data in asyncio.run(scenario()):
        first, second, sequence, stamp, _ = struct.unpack("!BBHII", data[:12])
        assert first == 0x80
        packets.append((bool(second & 0x80), second & 0x7F, sequence, stamp, data[12:]))
    return packets


def test_between_utterances_the_caller_sends_one_comfort_noise_packet_per_period_on_the_audio_clock() -> None:
    packets = _sent(comfort_noise_every=0.1, seconds=0.55)
    kinds = [pt for _, pt, _, _, _ in packets]
    # silence from 0 to 0.2 s (CN at 0 and 0.1 s), five speech frames, then silence again (CN at once, then 0.1 s on)
    assert kinds[:7] == [13, 13, 0, 0, 0, 0, 0] and kinds[7:9] == [13, 13], kinds
    assert all(payload == b"\x40" for _, pt, _, _, payload in packets if pt == 13), "one byte: the noise level"
    assert all(len(payload) == g711.FRAME_BYTES for _, pt, _, _, payload in packets if pt == 0)
    sequences = [sequence for _, _, sequence, _, _ in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(sequences)), "no sequence gaps"
    stamps = [stamp - packets[0][3] for _, _, _, stamp, _ in packets[:9]]
    # the time stamp counts the suppressed 20 ms frames too: 8 kHz samples since the first packet
    assert stamps == [0, 800, 1600, 1760, 1920, 2080, 2240, 2400, 3200]
    assert [marker for marker, *_ in packets[:9]] == [False, False, True] + [False] * 6, "a talkspurt's first frame"


def test_without_comfort_noise_the_caller_sends_digital_silence_every_20_ms() -> None:
    packets = _sent(comfort_noise_every=0.0, seconds=0.3)
    assert {pt for _, pt, _, _, _ in packets} == {0}
    assert len(packets) >= 12 and not any(marker for marker, *_ in packets)


def test_the_offer_lists_comfort_noise_only_for_a_caller_that_sends_it() -> None:
    plain = scenario(CallPlan(target="192.0.2.1"), "192.0.2.100", 40000)
    with_cn = scenario(CallPlan(target="192.0.2.1", comfort_noise_every=0.2), "192.0.2.100", 40000)
    for text in (plain, with_cn):
        assert text.count("a=rtpmap:0 PCMU/8000") == 2, "the INVITE and the answer to a re-INVITE"
    assert plain.count("m=audio 40000 RTP/AVP 0\n") == 2 and "CN/8000" not in plain
    assert with_cn.count("m=audio 40000 RTP/AVP 0 13\n") == 2 and with_cn.count("a=rtpmap:13 CN/8000") == 2
