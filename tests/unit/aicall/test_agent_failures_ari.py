"""The ARI client on what Asterisk may send: frames that are not events, events a handler fails on,
and the two different 404s of a channel variable read."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from aicall_harness import run
from centralita.asterisk.ari import AriClient, AriNotFound
from centralita.fakes import send_json
from websockets.asyncio.server import serve


def test_frames_that_are_not_events_and_failing_handlers_do_not_stop_the_event_stream(caplog) -> None:
    frames = [
        "[]",
        '"StasisStart"',
        "42",
        "not json at all",
        json.dumps({"type": "ChannelVarset", "channel": {"id": "c0"}}),  # the handler fails on this one
        json.dumps({"type": "StasisStart", "channel": {"id": "c1"}}),
    ]
    delivered: list[dict] = []
    connections: list[int] = []

    async def asterisk(ws) -> None:
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    async def scenario() -> None:
        async with serve(asterisk, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            ari = AriClient(f"http://127.0.0.1:{port}", "u", "p", "centralita-ai", reconnect_min=0.05)

            async def on_event(event: dict) -> None:
                delivered.append(event)
                if event["type"] == "ChannelVarset":
                    raise KeyError("value")

            async def on_connect() -> None:
                connections.append(1)

            task = asyncio.create_task(ari.run_events(on_event, on_connect))
            while len(delivered) < 2:  # the events have no signal of their own
                await asyncio.sleep(0.01)
            assert not task.done()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            ari.close()

    with caplog.at_level("WARNING", logger="centralita.asterisk.ari"):
        run(scenario())
    assert [e["type"] for e in delivered] == ["ChannelVarset", "StasisStart"]
    assert connections == [1], "the event stream was dropped and reconnected"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not an event object" in m for m in messages) == 3
    assert any("ChannelVarset" in m and "handler failed" in m for m in messages)


class _Asterisk(BaseHTTPRequestHandler):
    """``GET /ari/channels/<id>/variable`` as Asterisk 22 answers it."""

    channels: ClassVar[dict[str, dict[str, str]]] = {
        "1795.1": {"MIXMONITOR_FILENAME": "/var/spool/asterisk/monitor/1795.1.wav"}
    }

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        channel = parts.path.split("/")[3]
        variable = parse_qs(parts.query)["variable"][0]
        if channel not in self.channels:
            self._answer(404, {"message": "Provided channel was not found"})
        elif variable not in self.channels[channel]:
            self._answer(404, {"message": "Provided variable was not found"})
        else:
            self._answer(200, {"value": self.channels[channel][variable]})

    def _answer(self, status: int, body: dict) -> None:
        send_json(self, status, body)

    def log_message(self, *args: object) -> None:
        return None


def test_a_variable_that_is_not_set_is_none_but_a_channel_that_is_gone_is_not_found() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Asterisk)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ari = AriClient(f"http://127.0.0.1:{server.server_address[1]}", "u", "p", "centralita-ai")

    async def read(channel: str, variable: str) -> str | None:
        return await ari.get_variable(channel, variable)

    try:
        assert run(read("1795.1", "MIXMONITOR_FILENAME")).endswith("1795.1.wav")
        assert run(read("1795.1", "NOT_SET")) is None
        with pytest.raises(AriNotFound, match="channel was not found"):
            run(read("1795.2", "MIXMONITOR_FILENAME"))  # the caller hung up meanwhile
    finally:
        ari.close()
        server.shutdown()
        server.server_close()
