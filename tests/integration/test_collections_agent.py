"""The collections agent: its ARI events loop, settings and process behaviour.

Asterisk itself runs only in the lab VMs (Debian's host release has no package),
so what needs a live Stasis application is covered by the lab tests; here the
agent meets real sockets that refuse or never answer, which is exactly what it
sees while Asterisk restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from centralita.collections.agent import CollectionsAgent
from centralita.collections.ari_events import Backoff, events_url, parse_event
from centralita.collections.settings import CollectionsSettings
from centralita.config import ConfigError, load_settings

PROCESS_TIMEOUT_S = 20
ARI_PASSWORD = "ari-pass"

# A StasisStart as Asterisk 22 sends it (fields trimmed to those the agent reads, plus some it ignores).
STASIS_START = {
    "type": "StasisStart",
    "timestamp": "2026-11-22T19:30:00.123-0500",
    "args": ["campaign=7", "attempt=41"],
    "channel": {
        "id": "1732300000.42",
        "name": "PJSIP/provider-00000007",
        "state": "Up",
        "protocol_id": "a84b4c76e66710@10.213.0.100",
        "caller": {"name": "", "number": "3241000752"},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "collections", "exten": "3001234567", "priority": 1, "app_name": "Stasis"},
        "creationtime": "2026-11-22T19:29:58.001-0500",
        "language": "es",
    },
    "asterisk_id": "52:54:00:12:34:56",
    "application": "centralita-collections",
}


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(**overrides: str) -> CollectionsSettings:
    environ = {
        "DB_USER": "collections",
        "DB_SOCKET": "/nonexistent/mysqld.sock",
        "COLLECTIONS_ARI_USER": "centralita",
        "COLLECTIONS_ARI_PASSWORD": ARI_PASSWORD,
        "COLLECTIONS_ARI_URL": f"http://127.0.0.1:{_closed_port()}",
        "COLLECTIONS_METRICS_PORT": "0",
        "COLLECTIONS_REQUEST_TIMEOUT_SECONDS": "2",
    }
    environ.update(overrides)
    return load_settings(CollectionsSettings, environ=environ)


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "COLLECTIONS_", "CENTRALITA_"))}
    env.update(
        DB_USER="collections",
        DB_SOCKET="/nonexistent/mysqld.sock",
        COLLECTIONS_ARI_USER="centralita",
        COLLECTIONS_ARI_PASSWORD=ARI_PASSWORD,
        COLLECTIONS_METRICS_PORT="0",
    )
    env.update(overrides)
    return env


@pytest.mark.parametrize(
    ("ari_url", "app", "expected"),
    [
        (
            "http://127.0.0.1:8088",
            "centralita-collections",
            "ws://127.0.0.1:8088/ari/events?app=centralita-collections&subscribeAll=false",
        ),
        ("https://pbx.example.net/", "c", "wss://pbx.example.net/ari/events?app=c&subscribeAll=false"),
        ("http://10.213.0.10:8088/ari", "a b", "ws://10.213.0.10:8088/ari/events?app=a%20b&subscribeAll=false"),
    ],
)
def test_events_url_follows_the_http_scheme_and_appends_ari(ari_url: str, app: str, expected: str) -> None:
    assert events_url(ari_url, app) == expected


def test_backoff_doubles_up_to_the_maximum_with_bounded_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, (1, 2, 4, 8, 8, 8), strict=True):
        assert 0.8 * base <= delay <= min(8.0, 1.2 * base)
    backoff.reset()
    assert 0.8 <= backoff.next_delay() <= 1.2


@pytest.mark.parametrize("frame", ["not json", "[1, 2]", '{"no_type": 1}', '{"type": 5}'])
def test_frames_that_are_not_ari_events_are_dropped_with_a_warning(
    frame: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="centralita.collections.ari"):
        assert parse_event(frame) is None
    assert "ignoring" in caplog.text


def test_ari_event_frame_is_parsed() -> None:
    assert parse_event(json.dumps(STASIS_START)) == STASIS_START


def test_stasis_start_is_logged_and_a_failed_hangup_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    """With ARI's REST side down the hangup cannot succeed: the failure is logged with the channel, not raised."""
    agent = CollectionsAgent(_settings())

    async def scenario() -> None:
        await agent.handle_event(STASIS_START)
        await agent._drain()

    with caplog.at_level(logging.INFO, logger="centralita.collections"):
        asyncio.run(scenario())
    assert "StasisStart channel=1732300000.42 name=PJSIP/provider-00000007 caller=3241000752" in caplog.text
    assert "channel=1732300000.42: no collections flow handles this call yet; hanging up" in caplog.text
    assert re.search(
        r"channel=1732300000\.42: hangup failed: DELETE http://127\.0\.0\.1:\d+/ari/channels/", caplog.text
    )
    assert agent.events.value(type="StasisStart") == 1
    assert agent.hangups.value() == 0


def test_agent_reconnects_with_growing_delays_and_stops_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    agent = CollectionsAgent(
        _settings(COLLECTIONS_RECONNECT_MIN_SECONDS="0.1", COLLECTIONS_RECONNECT_MAX_SECONDS="0.5")
    )

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(1.5)
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, timeout=5)
        return time.monotonic() - started

    with caplog.at_level(logging.INFO, logger="centralita.collections"):
        stop_latency = asyncio.run(scenario())
    delays = [float(d) for d in re.findall(r"reconnecting to ARI in ([\d.]+) s", caplog.text)]
    assert len(delays) >= 3
    assert delays[0] <= 0.2
    assert max(delays) <= 0.5
    assert delays[2] > delays[0]
    assert stop_latency < 1.0
    assert agent.connected.value() == 0
    assert "collections agent stopped" in caplog.text


def test_agent_process_survives_asterisk_being_down_and_exits_0_on_sigterm() -> None:
    env = _env(COLLECTIONS_ARI_URL=f"http://127.0.0.1:{_closed_port()}", COLLECTIONS_RECONNECT_MIN_SECONDS="0.2")
    process = subprocess.Popen(
        [sys.executable, "-m", "centralita.collections"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    assert process.poll() is None, "the agent must keep retrying while Asterisk is down"
    process.send_signal(signal.SIGTERM)
    try:
        _, log = process.communicate(timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=PROCESS_TIMEOUT_S)
        pytest.fail("the collections agent ignored SIGTERM")
    assert process.returncode == 0, log
    assert "ARI events websocket ws://127.0.0.1:" in log
    assert "reconnecting to ARI in" in log
    assert ARI_PASSWORD not in log
    assert "collections agent stopped" in log


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"COLLECTIONS_ARI_URL": "ftp://pbx"}, "COLLECTIONS_ARI_URL: expected a URL"),
        ({"COLLECTIONS_ARI_URL": "ws://pbx:8088"}, "COLLECTIONS_ARI_URL: expected an http(s):// URL"),
        ({"COLLECTIONS_ARI_USER": ""}, "COLLECTIONS_ARI_USER: required setting is missing"),
        ({"COLLECTIONS_ARI_APP": "bad app!"}, "COLLECTIONS_ARI_APP: expected a Stasis application name"),
        (
            {"COLLECTIONS_RECONNECT_MIN_SECONDS": "20", "COLLECTIONS_RECONNECT_MAX_SECONDS": "5"},
            "COLLECTIONS_RECONNECT_MIN_SECONDS: expected a value <= COLLECTIONS_RECONNECT_MAX_SECONDS",
        ),
    ],
)
def test_agent_bad_setting_exits_2_naming_the_variable(overrides: dict[str, str], expected: str) -> None:
    env = _env(**overrides)
    if overrides.get("COLLECTIONS_ARI_USER") == "":
        del env["COLLECTIONS_ARI_USER"]
    result = subprocess.run(
        [sys.executable, "-m", "centralita.collections"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert ARI_PASSWORD not in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_keep_the_ari_password_out_of_errors() -> None:
    with pytest.raises(ConfigError) as error:
        _settings(COLLECTIONS_ARI_PASSWORD=ARI_PASSWORD, COLLECTIONS_REQUEST_TIMEOUT_SECONDS="x")
    assert "COLLECTIONS_REQUEST_TIMEOUT_SECONDS" in str(error.value)
    assert ARI_PASSWORD not in str(error.value)
