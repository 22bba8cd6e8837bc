"""The lab caller against a real SIP user agent: SIPp's UAS with RTP echo on 127.0.0.1.

What the caller says comes back through SIPp's echo, so the measurement of what a
caller hears (sound stretches, packet gaps, who hung up) is checked on real SIP and
RTP before the lab tests rely on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from centralita.aicall.labcall import CallPlan, Utterance, run_call

TOOLS = ("sipp", "espeak-ng", "sox")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def echo_uas(tmp_path: Path) -> Iterator[int]:
    """SIPp's built-in UAS answering one call and echoing its RTP; yields its SIP port."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} must be installed for the lab caller", pytrace=False)
    port, media = free_udp_port(), free_udp_port()
    argv = ["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(media)]
    argv += ["-rtp_echo", "-m", "1", "-timeout", "60s", "-nostdin"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)


def test_the_caller_hears_its_echoed_speech_and_hangs_up_when_its_time_is_up(echo_uas: int) -> None:
    plan = CallPlan(
        target="127.0.0.1",
        port=echo_uas,
        local_ip="127.0.0.1",
        sip_port=free_udp_port(),
        utterances=[Utterance(0.5, "Hola no tengo internet")],
        hangup_after=4,
    )
    result = asyncio.run(run_call(plan))

    assert result.answered and result.final_status == 200
    assert result.ended_by == "caller" and result.sipp_returncode == 0
    assert result.payload_types == [0]
    start, end = result.speech[0]
    assert result.heard_between(start, end + 0.3) >= 1.0, f"the echoed speech was heard: {result.windows}"
    assert result.heard_between(0, start) == 0 and result.heard_between(end + 0.5, 4) == 0, "silence was silent"
    assert result.first_audio is not None and start <= result.first_audio < start + 0.5
    assert result.packets_received >= 150 and result.packets_sent >= 190  # 50 packets a second both ways
    assert "BYE sip:" in result.sip_trace
