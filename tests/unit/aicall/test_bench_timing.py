"""The AI calls benchmark's inbound timing: kernel arrival stamps and handling times, worked out after a point."""

from __future__ import annotations

import asyncio
import socket
import struct

from aicall_harness import run
from centralita.aicall import g711
from centralita.aicall.bench import (
    SO_TIMESTAMPNS,
    Point,
    _ancillary_bytes,
    _arrival_ns,
    _TimedOutbox,
    _TimedRtpPort,
    _Timing,
    fixed_work_ms,
    table,
)
from centralita.aicall.rtp import Pacer, RtpMedia, RtpPacket

SECOND = 1_000_000_000


def stamp(ns: int) -> bytes:
    """Ancillary data as the kernel writes an ``SO_TIMESTAMPNS`` time stamp of ``ns``."""
    return _ancillary_bytes([(socket.SOL_SOCKET, SO_TIMESTAMPNS, struct.pack("qq", ns // SECOND, ns % SECOND))])


def source(port: int) -> bytes:
    return struct.pack("!HH4s8x", socket.AF_INET, port, socket.inet_aton("127.0.0.1"))


def test_each_frame_counts_from_its_arrival_until_its_handling_returned_after_the_warm_up() -> None:
    timing = _Timing()
    base = 1_700_000_000 * SECOND
    timing.note(stamp(base), source(4000), base + 900_000)  # warm-up: not counted
    timing.measure_from_now()
    timing.note(stamp(base + 20_000_000), source(4000), base + 20_250_000)
    timing.note(stamp(base + 21_000_000), source(4002), -1)  # no call claimed its sender: dropped
    timing.note(b"", source(4000), base + 40_100_000)  # no time stamp: cannot be timed
    timing.note(stamp(base + 41_000_000), source(4002), base + 42_500_000)

    assert timing.inbound_ms() == [0.25, 1.5]


def test_with_two_frames_a_message_each_frame_waits_until_its_calls_next_frame_is_written() -> None:
    timing = _Timing()
    base = 1_700_000_000 * SECOND
    frames = [  # (call, arrival ms, handling returned ms): calls interleaved, each written every second frame
        (4000, 0.0, 0.1), (4002, 0.5, 0.6), (4000, 20.0, 20.3), (4002, 20.5, 20.7), (4000, 40.0, 40.1),
    ]  # fmt: skip
    for port, arrived, done in frames:
        timing.note(stamp(base + int(arrived * 1e6)), source(port), base + int(done * 1e6))

    # call 4000: frames at 0 and 20 ms written at 20.3 ms; call 4002: 0.5 and 20.5 written at 20.7 ms;
    # call 4000's frame at 40 ms waits for a partner that never came
    assert sorted(round(value, 3) for value in timing.inbound_ms(2)) == [0.2, 0.3, 20.2, 20.3]


def test_ancillary_data_of_another_kind_is_not_taken_for_a_time_stamp() -> None:
    other = _ancillary_bytes([(socket.SOL_IP, socket.IP_TTL, struct.pack("qq", 1, 2))])
    assert _arrival_ns(other, 0) is None
    assert _arrival_ns(b"", 0) is None
    assert _arrival_ns(stamp(5 * SECOND + 7), 0) == 5 * SECOND + 7


def test_a_frame_queued_behind_the_writer_is_noted_with_its_own_index() -> None:
    async def scenario() -> tuple[list[int], int]:
        timing = _Timing()
        timing.done.extend([1, 2, 3])  # three frames handled so far: the port handles the fourth
        outbox = _TimedOutbox(timing, '{"type":"input_audio_buffer.append"')
        outbox.put_nowait('{"type":"response.create"}')  # not audio: no frame of its own
        outbox.put_nowait('{"type":"input_audio_buffer.append","audio":"AAAA"}')
        return list(outbox.frames), outbox.qsize()

    frames, queued = run(scenario())
    assert frames == [3]
    assert queued == 2


def test_the_timed_port_keeps_the_kernels_arrival_of_every_datagram_it_hands_a_call() -> None:
    async def scenario() -> tuple[list[float], int, int]:
        timing = _Timing()
        pacer = Pacer()
        port = _TimedRtpPort(timing)
        media = RtpMedia("ulaw", pacer, port=port, name="bench-0")
        heard: list[bytes] = []
        media.on_audio(heard.append)
        await media.start()
        caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        caller.bind(("127.0.0.1", 0))
        media.set_remote(*caller.getsockname()[:2])
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        packet = RtpPacket(0, 1, 0, 7, g711.silence("ulaw")).encode()
        assert port.local is not None
        for _ in range(5):
            caller.sendto(packet, port.local)
        stranger.sendto(packet, port.local)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if len(timing.done) == 6:
                break
        await media.close()
        port.close()
        await pacer.close()
        caller.close()
        stranger.close()
        return timing.inbound_ms(), len(heard), port.unknown_packets

    latencies, heard, unknown = run(scenario())
    assert heard == 5
    assert unknown == 1
    assert len(latencies) == 5, "the stranger's datagram is not timed"
    assert all(0 <= value < 1000 for value in latencies), latencies


def point(calls: int, inbound_p99: float, outbound_p99: float, clock_p99: float) -> Point:
    return Point(
        calls=calls, alive=calls, frames_in=50.0, arrival_p50_ms=0.1, arrival_p99_ms=inbound_p99,
        outbound_p50_ms=0.2, outbound_p99_ms=outbound_p99, clock_p50_ms=0.03, clock_p99_ms=clock_p99,
        pass_p50_ms=0.2, jitter_p50_ms=0.01, jitter_p99_ms=0.1, max_gap_ms=21.0, gc_pauses=8,
        gc_longest_ms=0.5, cpu_per_call_percent=0.2, agent_cpu_percent=40.0, load_average=1.0, steal_percent=0.0,
    )  # fmt: skip


def test_the_table_names_the_most_calls_within_1_ms_each_way_and_the_points_the_host_stalled() -> None:
    text = table([point(150, 0.5, 0.3, 0.08), point(200, 0.8, 0.35, 0.09), point(250, 2.0, 1.2, 0.9)])

    assert "Most calls measured with p99 pacing jitter under 2 ms: 250" in text
    assert "Most calls measured with both directions at most 1 ms at p99: 200." in text
    assert "At 250 calls the pacer's real-time thread woke 0.5 ms late or more at p99" in text
    assert "At 150" not in text and "At 200" not in text


def test_each_point_says_how_fast_the_host_ran_a_fixed_piece_of_work_before_and_after_it() -> None:
    sample = point(200, 0.8, 0.35, 0.09)
    sample.fixed_work_before_ms, sample.fixed_work_after_ms = 14.2, 21.7
    sample.callers_late_p99_ms, sample.callers_late_max_ms = -0.31, 0.4

    row = table([sample]).splitlines()[2]

    assert row.endswith("| 14 / 22 | -0.31 / 0.4 |"), row


def test_the_table_flags_the_points_whose_callers_sent_their_frames_in_bursts() -> None:
    steady, bursty = point(200, 0.7, 0.3, 0.09), point(250, 1.8, 0.3, 0.09)
    steady.callers_late_p99_ms, steady.callers_late_max_ms = -0.2, 0.1
    bursty.callers_late_p99_ms, bursty.callers_late_max_ms = 6.0, 45.0

    text = table([steady, bursty])

    assert "At 250 calls the callers sent a group of frames 1 ms late or more at p99" in text
    assert "At 200" not in text
    assert 0 < fixed_work_ms(rounds=1) < 10_000
