"""The AI calls benchmark end to end, small: its three processes, real sockets, one short point.

What is checked is that every figure of a point comes from the run (the callers' frames reached
the agent and were timed, the stand-in's reply reached the callers, the callers report how late
they sent), not how fast anything was.
"""

from __future__ import annotations

import gc
import math
import os
import sys

from centralita.aicall.bench import Point, bench, table


def short_point(**options: bool) -> Point:
    switch = sys.getswitchinterval()
    try:
        (point,) = bench([4], seconds=1.0, pin=False, **options)
    finally:  # the benchmark sets up its process as the agent's: this one goes on with other tests
        sys.setswitchinterval(switch)
        gc.unfreeze()
    return point


def test_a_short_point_times_the_frames_of_every_call_both_ways_and_the_callers_own_sends() -> None:
    point = short_point()

    assert point.calls == 4 and point.alive == 4, "every call is still up when the point ends"
    assert 40 <= point.frames_in <= 55, point.frames_in
    for name in ("arrival_p50_ms", "arrival_p99_ms", "outbound_p50_ms", "outbound_p99_ms", "jitter_p99_ms"):
        value = getattr(point, name)
        assert math.isfinite(value) and value >= 0, (name, value)
    assert point.arrival_p50_ms <= point.arrival_p99_ms
    assert point.max_gap_ms >= 15, "the callers heard paced frames about 20 ms apart"
    assert math.isfinite(point.callers_late_p99_ms) and point.callers_late_max_ms >= point.callers_late_p99_ms
    assert point.cpu_per_call_percent > 0
    assert "| 4 (4) |" in table([point])


def test_with_tls_the_calls_reach_the_stand_in_over_wss_with_a_certificate_made_for_the_run() -> None:
    trusted = os.environ.get("SSL_CERT_FILE")

    point = short_point(tls=True)

    assert point.tls and point.alive == 4, "every call's model socket opened over TLS and stayed up"
    assert math.isfinite(point.arrival_p99_ms) and math.isfinite(point.jitter_p99_ms)
    assert "The model sockets spoke TLS (wss://)" in table([point])
    assert os.environ.get("SSL_CERT_FILE") == trusted, "the run's certificate is trusted only during the run"
