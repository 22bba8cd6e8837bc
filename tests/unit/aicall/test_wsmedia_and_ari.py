"""chan_websocket control handling and the ARI events loop's reconnection, against local websocket
servers that speak the same frames (the real-Asterisk runs are the lab tests)."""

from __future__ import annotations

import asyncio
import json

from aicall_harness import run
from centralita.aicall import g711
from centralita.aicall.wsmedia import WebsocketMedia, parse_control
from centralita.asterisk.ari import AriClient
from websockets.asyncio.server import serve


def test_control_messages_parse_in_plain_text_and_json() -> None:
    plain = parse_control("MEDIA_START connection_id:abc channel:WebSocket/abc/0x1 optimal_frame_size:160")
    assert plain == {"event": "MEDIA_START", "connection_id": "abc", "channel": "WebSocket/abc/0x1",
                     "optimal_frame_size": "160"}  # fmt: skip
    assert parse_control('{"event": "MEDIA_XOFF", "channel_id": "1.2"}')["event"] == "MEDIA_XOFF"
    assert parse_control("MEDIA_MARK_PROCESSED correlation_id:item_1@800")["correlation_id"] == "item_1@800"


def test_websocket_media_marks_flushes_in_order_and_reports_what_was_played() -> None:
    """The server plays Asterisk: it acknowledges marks of audio it has 'played' and records commands."""
    frames: list[object] = []

    async def asterisk(ws) -> None:
        await ws.send("MEDIA_START connection_id:c1 channel:WebSocket/c1 optimal_frame_size:160")
        await ws.send(g711.tone(20, "ulaw"))  # the caller's audio
        async for message in ws:
            frames.append(message)
            if isinstance(message, str) and message.startswith("MARK_MEDIA") and len(frames) < 8:
                await ws.send("MEDIA_MARK_PROCESSED " + message.split(" ", 1)[1])

    async def scenario() -> tuple:
        async with serve(asterisk, "127.0.0.1", 0, subprotocols=["media"]) as server:
            port = server.sockets[0].getsockname()[1]
            media = WebsocketMedia("ulaw", f"ws://127.0.0.1:{port}/media/c1")
            heard: list[bytes] = []
            media.on_audio(heard.append)
            await media.start()
            media.play(g711.tone(2000, "ulaw"), "item_1")
            media.play(g711.tone(600, "ulaw"), "item_2")  # a second reply queued behind the first
            await asyncio.sleep(0.3)
            played = media.flush()
            await asyncio.sleep(0.2)
            start = media.media_start
            await media.close()
            return played, heard, start

    played, heard, start = run(scenario())
    assert start["optimal_frame_size"] == "160" and len(heard[0]) == 160
    commands = [f for f in frames if isinstance(f, str)]
    assert "FLUSH_MEDIA" in commands
    flush_at = frames.index("FLUSH_MEDIA")
    assert all((isinstance(f, str) and f.startswith("MARK_MEDIA correlation_id:silence")) or not isinstance(f, str)
               for f in frames[flush_at + 1 :] if f != "FLUSH_MEDIA"), "only silence follows the flush"  # fmt: skip
    assert played.item_id == "item_1" and played.played_ms == 300  # three acknowledged 100 ms marks
    assert played.played_ms + played.dropped_ms == 2600
    (first, second) = played.cuts
    assert first.item_id == "item_1" and first.played_ms == 300 and first.dropped_ms == 1700
    assert (second.item_id, second.played_ms, second.dropped_ms) == ("item_2", 0, 600), "dropped unheard"


def test_ari_events_reconnect_after_asterisk_goes_away_and_report_each_connection() -> None:
    events: list[dict] = []
    connections: list[int] = []

    async def asterisk(ws) -> None:
        assert ws.request.path.startswith("/ari/events?app=centralita-ai")
        assert ws.request.headers["Authorization"].startswith("Basic ")
        await ws.send(json.dumps({"type": "StasisStart", "channel": {"id": f"c{len(connections)}"}}))
        await ws.close()  # Asterisk restarting

    async def scenario() -> None:
        async with serve(asterisk, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            ari = AriClient(
                f"http://127.0.0.1:{port}", "u", "p", "centralita-ai", reconnect_min=0.05, reconnect_max=0.1
            )

            async def on_event(event: dict) -> None:
                events.append(event)

            async def on_connect() -> None:
                connections.append(1)

            task = asyncio.create_task(ari.run_events(on_event, on_connect))
            while len(connections) < 3:
                await asyncio.sleep(0.02)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            ari.close()

    run(scenario())
    assert len(connections) >= 3 and len(events) >= 3
    assert {e["type"] for e in events} == {"StasisStart"}
