"""The lab caller's own account of when it spoke: the frames' real departures, not the plan."""

from __future__ import annotations

import asyncio
import socket
import time

from centralita.aicall import g711
from centralita.aicall.labcall import RtpEndpoint, schedule, sent_spans


def test_spans_come_from_the_frames_departures_and_fall_back_to_the_plan_when_unsent() -> None:
    speech = g711.tone(300, "ulaw")  # 15 frames
    _, planned = schedule([(1.0, speech), (5.0, speech)], "ulaw")
    assert planned == [[1.0, 1.3], [5.0, 5.3]]
    answered = 1000.0
    # the first utterance left 0.4 s late (a stall before it); the second never left
    sent_at = {index: answered + 0.4 + index * 0.02 for index in range(50, 65)}
    assert sent_spans(planned, sent_at, answered) == [[1.4, 1.7], [5.0, 5.3]]


def test_a_stalled_sender_shifts_what_follows_and_says_so() -> None:
    async def scenario() -> tuple[RtpEndpoint, float]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind(("127.0.0.1", 0))
            rtp = RtpEndpoint("127.0.0.1", "ulaw")
            rtp.remote = sink.getsockname()
            frames, _ = schedule([(0.2, g711.tone(100, "ulaw"))], "ulaw")
            stop = asyncio.Event()
            started = time.time()
            sender = asyncio.get_running_loop().create_task(rtp.send_loop(frames, stop))
            await asyncio.sleep(0.05)
            time.sleep(0.3)  # the whole process stalls: the loop cannot send meanwhile
            await asyncio.sleep(0.5)
            stop.set()
            await sender
            rtp.close()
            return rtp, started

    rtp, started = asyncio.run(scenario())
    assert [ms >= 250 for _, ms in rtp.stalls] == [True]
    assert sorted(rtp.sent_at) == list(range(10, 15))  # the speech's five frames, due from 0.2 s on
    # due 0.2 s after the start, the speech left after the stall (0.05 s to 0.35 s): later by that much
    assert rtp.sent_at[10] - started >= 0.45
