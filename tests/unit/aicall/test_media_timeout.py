"""The media timeout: a call Asterisk stops sending media for is hung up as ``media_timeout``.

The agent runs as the service runs it (``agent.run``) with Asterisk's side of ARI stood in
(``test_agent_failures``); the media come over real sockets: RTP datagrams from Asterisk's
address to the agent's shared port, or binary frames over a chan_websocket connection.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from typing import Any

import pytest
from aicall_harness import run
from centralita.aicall import g711
from centralita.aicall.media import CallerRtp, MediaPath, MediaWatch, Played, caller_was_quiet
from test_agent_failures import Lab, StubAri, _cleaned_up, _stasis_start
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

TIMEOUT = "1"  # AICALL_MEDIA_TIMEOUT_SECONDS for these calls


class CountingMedia(MediaPath):
    """A media path whose received frames the test counts itself."""

    async def start(self) -> None:
        return None

    def flush(self) -> Played:
        return Played(None, 0, 0)

    async def close(self) -> None:
        return None

    def receive(self, frames: int = 1) -> None:
        self._frames_in += frames


# the periodic check -------------------------------------------------------------------------


def test_a_path_without_frames_for_the_timeout_is_reported_once_halfway_then_as_silent() -> None:
    watch = MediaWatch(4.0)
    quiet, talking = CountingMedia("ulaw"), CountingMedia("ulaw")
    reports = []
    for step in range(9):  # a check every interval (1 s), over 8 s
        talking.receive()
        reports.append(watch.check([quiet, talking], now=100.0 + step))
    assert [bool(halfway) for halfway, _ in reports] == [False, False, True] + [False] * 6
    assert [silent for _, silent in reports][:4] == [[], [], [], []]
    assert all(silent == [quiet] for _, silent in reports[4:])
    assert all(talking not in halfway + silent for halfway, silent in reports)


def test_a_late_check_counts_as_two_intervals_so_the_agents_own_pause_ends_no_call() -> None:
    watch = MediaWatch(4.0)
    path = CountingMedia("ulaw")
    watch.check([path], now=0.0)
    # the event loop was held for a minute: the frames that came meanwhile are not read yet
    halfway, silent = watch.check([path], now=60.0)
    assert silent == [] and halfway == [path]
    path.receive(3000)  # read now
    assert watch.check([path], now=61.0) == ([], [])


def test_a_call_is_counted_from_the_first_check_that_sees_it_and_a_restart_counts_again() -> None:
    watch = MediaWatch(2.0)
    early, late = CountingMedia("ulaw"), CountingMedia("ulaw")
    now = 0.0
    for _ in range(8):
        now += watch.interval
        watch.check([early], now)
    # a call bridged after a long set-up starts with nothing counted
    halfway, silent = watch.check([early, late], now + watch.interval)
    assert late not in halfway + silent and silent == [early]
    watch.restart(early)
    assert watch.check([early, late], now + 2 * watch.interval) == ([], [])
    assert watch.check([late], now + 3 * watch.interval) == ([late], [])  # early forgotten, late halfway


# what Asterisk received from the caller ------------------------------------------------------

# ARI's rtp_statistics of a PJSIP caller's channel as Asterisk 22 answers it (the lab; fields trimmed)
STATISTICS = {
    "txcount": 178, "rxcount": 78, "txploss": 0, "rxploss": 0, "local_ssrc": 1131615797,
    "remote_ssrc": 4281213244, "txoctetcount": 28480, "rxoctetcount": 10095, "channel_uniqueid": "1795486690.0",
    "txjitter": 0.00075, "rxjitter": 0.0, "rtt": 0.0, "txmes": 0, "rxmes": 0,
}  # fmt: skip


def test_the_callers_packets_and_payload_octets_are_read_from_aris_rtp_statistics() -> None:
    assert CallerRtp.from_statistics(STATISTICS) == CallerRtp(78, 10095)
    assert CallerRtp.from_statistics({"rxcount": 5}) == CallerRtp(5, None)
    assert CallerRtp.from_statistics({"txcount": 5}) is None
    assert CallerRtp.from_statistics(["not", "a", "dict"]) is None


def test_no_rtp_comfort_noise_and_dtmf_events_are_quiet_and_audio_is_not() -> None:
    before = CallerRtp(1000, 160_000)
    assert caller_was_quiet(before, CallerRtp(1000, 160_000)), "on hold: nothing"
    # measured in the lab: each comfort-noise packet (RFC 3389, PT 13) adds one octet
    assert caller_was_quiet(before, CallerRtp(1010, 160_010)), "comfort noise every 200 ms"
    assert caller_was_quiet(before, CallerRtp(1500, 160_500)), "comfort noise every 20 ms"
    assert caller_was_quiet(before, CallerRtp(1020, 160_080)), "DTMF events (RFC 4733: four octets)"
    assert not caller_was_quiet(before, CallerRtp(1100, 176_000)), "G.711: 160 octets a frame"
    assert not caller_was_quiet(before, CallerRtp(1100, 162_000)), "G.729: 20 octets a frame"
    # a short word among the comfort noise of a long silence is audio too
    assert not caller_was_quiet(before, CallerRtp(1000 + 15 + 75, 160_000 + 15 * 160 + 75))


def test_a_silence_is_only_the_callers_own_when_asterisk_said_so_both_times() -> None:
    assert not caller_was_quiet(None, CallerRtp(1000, 0))
    assert not caller_was_quiet(CallerRtp(1000, 0), None)
    # packets came but their size is not reported: the caller may have talked
    assert not caller_was_quiet(CallerRtp(1000, None), CallerRtp(1010, None))
    # the counters started again (a new RTP session): nothing can be told
    assert not caller_was_quiet(CallerRtp(1000, 160_000), CallerRtp(10, 1_600))
    assert caller_was_quiet(CallerRtp(1000, None), CallerRtp(1000, None)), "no packets at all is enough"


# the agent --------------------------------------------------------------------------------


class WatchedAri(StubAri):
    """StubAri that also answers the caller's RTP statistics: the caller sends audio, only comfort noise
    (``comfort_noise``: five one-octet packets a second, as a phone with silence suppression), or nothing."""

    def __init__(
        self, rtp_sink: tuple[str, int], *, caller_sends: bool, media_port: int = 0, comfort_noise: bool = False
    ) -> None:
        super().__init__(rtp_sink)
        self.caller_sends = caller_sends
        self.comfort_noise = comfort_noise
        self.received = 1000
        self.octets = 1000 * 160
        self.asked = 0
        self.broken_first_answer = False
        self.base = f"http://127.0.0.1:{media_port}/ari"  # where chan_websocket's /media/ is

    async def request(self, method: str, path: str, params: Any = None, body: Any = None) -> Any:
        await self._step("request", method, path)
        assert path.endswith("/rtp_statistics"), path
        self.asked += 1
        if self.asked == 1 and self.broken_first_answer:
            raise RuntimeError("a reply no code path expects")
        if self.caller_sends:
            self.received += 50
            self.octets += 50 * 160
        elif self.comfort_noise:
            self.received += 5
            self.octets += 5
        return {"rxcount": self.received, "rxoctetcount": self.octets, "txcount": 0}

    async def external_media(self, media_id: str, host: str, codec: str, **options: Any) -> dict[str, Any]:
        if options.get("transport") == "websocket":
            await self._step("external_media", media_id)
            return {"channelvars": {"MEDIA_WEBSOCKET_CONNECTION_ID": media_id}}
        return await super().external_media(media_id, host, codec, **options)


class Asterisk:
    """Asterisk's media toward the agent, over RTP or chan_websocket, until :meth:`stop_media`."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.media_flowing = threading.Event()
        self.media_flowing.set()
        self.sent = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start_rtp(self, agent_port: tuple[str, int]) -> None:
        def send() -> None:
            sequence = 0
            while not self._done.wait(0.02):
                if self.media_flowing.is_set():
                    header = struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, 0x1234)
                    self.lab.sink.sendto(header + g711.silence("ulaw"), agent_port)
                    sequence = (sequence + 1) & 0xFFFF
                    self.sent += 1

        self._thread = threading.Thread(target=send, name="asterisk-rtp", daemon=True)
        self._thread.start()

    async def websocket_handler(self, ws: Any) -> None:
        await ws.send("MEDIA_START connection_id:c1 channel:WebSocket/c1 optimal_frame_size:160")
        try:
            while not self._done.is_set():
                if self.media_flowing.is_set():
                    await ws.send(g711.silence("ulaw"))
                    self.sent += 1
                await asyncio.sleep(0.02)
        except ConnectionClosed:  # the agent closed the media socket: this Asterisk is done too
            return

    def stop_media(self) -> None:
        self.media_flowing.clear()

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(5)


async def _wait_for(condition: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.02)


async def _media_lab(
    monkeypatch: pytest.MonkeyPatch, media: str, *, caller_sends: bool, comfort_noise: bool = False
) -> tuple[Lab, Asterisk, Any]:
    env = {"AICALL_MEDIA_TIMEOUT_SECONDS": TIMEOUT, "AICALL_MEDIA": media}
    lab = Lab(monkeypatch, **env)
    asterisk = Asterisk(lab)
    server = None
    port = 0
    if media == "websocket":
        server = await serve(asterisk.websocket_handler, "127.0.0.1", 0, subprotocols=["media"])
        port = server.sockets[0].getsockname()[1]
    sink = lab.sink.getsockname()
    lab.ari = WatchedAri(sink, caller_sends=caller_sends, media_port=port, comfort_noise=comfort_noise)
    lab.agent.ari = lab.ari  # type: ignore[assignment]
    await lab.start()
    await lab.agent.on_event(_stasis_start())
    await lab.until_running("1795.1")
    if media == "rtp":
        asterisk.start_rtp(lab.agent.rtp_port.local)
    return lab, asterisk, server


@pytest.mark.parametrize("media", ["rtp", "websocket"])
def test_a_call_whose_media_stops_while_the_caller_talks_is_hung_up_as_media_timeout(monkeypatch, media) -> None:
    async def scenario() -> tuple[Lab, Asterisk]:
        lab, asterisk, server = await _media_lab(monkeypatch, media, caller_sends=True)
        try:
            session = lab.agent.sessions["1795.1"]
            await _wait_for(lambda: session.media.frames_in >= 100, "two seconds of media")  # past the timeout
            assert not session.ended, "a call with media flowing is not timed out"
            asterisk.stop_media()
            await lab.until_saved()
            await _wait_for(lambda: _cleaned_up(lab.ari), "the call's clean-up in Asterisk")
            await _wait_for(lambda: not lab.agent._calls, "the call's task to finish")
            assert lab.agent.sessions == {}
        finally:
            asterisk.close()
            await lab.stop()
            if server is not None:
                server.close()
                await server.wait_closed()
        return lab, asterisk

    lab, _ = run(scenario())
    [record] = lab.store.saved
    assert record.end_reason == "media_timeout" and record.media_kind == media
    assert lab.agent.metrics.calls.value(reason="media_timeout") == 1
    assert lab.agent.metrics.active_calls.value() == 0
    assert lab.models[0].closed
    assert lab.ari.asked >= 2, "Asterisk was asked whether the caller's RTP still came"


def test_a_failing_check_is_logged_and_the_watch_goes_on(monkeypatch, caplog) -> None:
    async def scenario() -> Lab:
        lab, asterisk, _ = await _media_lab(monkeypatch, "rtp", caller_sends=True)
        lab.ari.broken_first_answer = True
        try:
            session = lab.agent.sessions["1795.1"]
            await _wait_for(lambda: session.media.frames_in >= 10, "the caller's first frames")
            asterisk.stop_media()
            await lab.until_saved()
        finally:
            asterisk.close()
            await lab.stop()
        return lab

    with caplog.at_level("ERROR", logger="centralita.aicall.agent"):
        lab = run(scenario())
    assert [record.end_reason for record in lab.store.saved] == ["media_timeout"]
    assert any("media watch: the check failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("comfort_noise", [False, True], ids=["no_rtp", "comfort_noise_only"])
def test_a_caller_who_sends_no_audio_keeps_the_call_though_no_media_comes_from_asterisk(
    monkeypatch, comfort_noise
) -> None:
    async def scenario() -> Lab:
        lab, asterisk, _ = await _media_lab(monkeypatch, "rtp", caller_sends=False, comfort_noise=comfort_noise)
        try:
            session = lab.agent.sessions["1795.1"]
            await _wait_for(lambda: session.media.frames_in >= 10, "the caller's first frames")
            asterisk.stop_media()  # on hold or comfort noise only: Asterisk's two-party bridge relays nothing
            await _wait_for(lambda: lab.ari.asked >= 4, "two full timeouts of silence looked into")
            assert not session.ended and "1795.1" in lab.agent.sessions
            asterisk.media_flowing.set()  # back from hold
            frames = session.media.frames_in
            await _wait_for(lambda: session.media.frames_in > frames + 50, "media again")
            assert not session.ended
        finally:
            asterisk.close()
            await lab.stop()
        return lab

    lab = run(scenario())
    [record] = lab.store.saved
    assert record.end_reason == "agent_stopped"
    assert lab.agent.metrics.calls.value(reason="media_timeout") == 0


def test_a_long_set_up_and_a_stalled_event_loop_do_not_time_a_call_out(monkeypatch) -> None:
    async def scenario() -> Lab:
        lab = Lab(monkeypatch, AICALL_MEDIA_TIMEOUT_SECONDS=TIMEOUT)
        lab.ari = WatchedAri(lab.sink.getsockname(), caller_sends=True)
        lab.agent.ari = lab.ari  # type: ignore[assignment]
        asterisk = Asterisk(lab)
        await lab.start()
        lab.ari.holds["add_to_bridge"] = asyncio.Event()
        await lab.agent.on_event(_stasis_start())
        try:
            await lab.ari.entered["add_to_bridge"].wait()
            await asyncio.sleep(3)  # three timeouts of set-up without any media
            assert lab.ari.asked == 0 and "request" not in lab.ari.names()
            lab.ari.holds["add_to_bridge"].set()
            await lab.until_running("1795.1")
            asterisk.start_rtp(lab.agent.rtp_port.local)
            session = lab.agent.sessions["1795.1"]
            await _wait_for(lambda: session.media.frames_in >= 10, "media")
            time.sleep(3)  # the event loop itself stalls for three timeouts while the frames queue up
            await _wait_for(lambda: session.media.frames_in >= 200, "the queued frames and more")
            assert not session.ended and lab.ari.asked == 0
        finally:
            asterisk.close()
            await lab.stop()
        return lab

    lab = run(scenario())
    [record] = lab.store.saved
    assert record.end_reason == "agent_stopped"


def test_rtp_from_asterisk_counts_every_datagram_of_the_call_comfort_noise_too() -> None:
    async def scenario() -> tuple[int, int]:
        from centralita.aicall.rtp import Pacer, RtpMedia, RtpPort

        pacer = Pacer()
        port = RtpPort("127.0.0.1", None, max_calls=4)
        asterisk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        asterisk.bind(("127.0.0.1", 0))
        media = RtpMedia("ulaw", pacer, port=port, name="c1")
        await media.start()
        media.set_remote(*asterisk.getsockname())
        try:
            for payload_type in (0, 0, 13):  # two audio frames and one comfort noise packet
                asterisk.sendto(struct.pack("!BBHII", 0x80, payload_type, 1, 160, 7) + bytes(160), port.local)
            await _wait_for(lambda: media.frames_in == 3, "three datagrams")
            return media.received_packets, media.frames_in
        finally:
            await media.close()
            await pacer.close()
            port.close()
            asterisk.close()

    assert run(scenario()) == (2, 3)
