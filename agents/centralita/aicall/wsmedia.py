"""chan_websocket media (Asterisk 22.6+): Asterisk owns the playout clock.

The agent connects to ``/media/<connection id>`` on Asterisk's HTTP server (the
externalMedia channel was created with ``transport=websocket, connection_type=server``).
Binary frames carry G.711 both ways; Asterisk re-times what we send into 20 ms frames
and fills silence itself. Text frames carry control: ``FLUSH_MEDIA`` drops Asterisk's
queue on barge-in, ``MARK_MEDIA`` after each chunk comes back as
``MEDIA_MARK_PROCESSED`` when that point was played, which is what ``played_ms``
reports, and ``MEDIA_XOFF``/``MEDIA_XON`` tell us to hold back when its queue fills.
Both the legacy plain-text control format and the JSON one are understood.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from centralita.aicall import g711
from centralita.aicall.media import Cut, MediaPath, Played

log = logging.getLogger("centralita.aicall.wsmedia")

CHUNK_BYTES = g711.FRAME_BYTES * 5  # 100 ms per send and per mark: the barge-in accounting grain
AHEAD_MS = 400  # how far ahead of the playout point audio is handed to Asterisk
SILENCE_AHEAD_MS = 60  # below this much queued in Asterisk, silence is sent so the caller's RTP never stops
SILENCE_ITEM = "silence"


def parse_control(message: str) -> dict[str, Any]:
    """``MEDIA_START connection_id:x optimal_frame_size:160`` or its JSON form -> a dict with ``event``."""
    text = message.strip()
    if text.startswith("{"):
        data = json.loads(text)
        data.setdefault("event", data.get("type", ""))
        return data
    name, _, rest = text.partition(" ")
    fields: dict[str, Any] = {"event": name}
    for part in rest.split():
        key, sep, value = part.partition(":")
        if sep:
            fields[key] = value
    return fields


class WebsocketMedia(MediaPath):
    kind = "websocket"

    def __init__(self, law: str, url: str, *, user: str = "", password: str = "", name: str = "") -> None:
        super().__init__(law)
        self.url = url
        self.name = name
        self._auth = (user, password)
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._xoff = False
        self._sent: dict[str, int] = {}  # bytes handed to Asterisk per reply
        self._confirmed: dict[str, int] = {}  # bytes Asterisk reported played (marks)
        self._outstanding = 0  # bytes sent but not yet confirmed played
        self._marks = 0
        self.media_start: dict[str, Any] = {}
        self.flushes = 0
        self._flush_pending = False

    async def start(self) -> None:
        headers = {}
        if self._auth[0]:
            token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self._ws = await connect(
            self.url, subprotocols=["media"], additional_headers=headers, open_timeout=5, ping_interval=10
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._reader(self._ws), name=f"wsmedia-read-{self.name}"),
            loop.create_task(self._writer(self._ws), name=f"wsmedia-write-{self.name}"),
        ]

    def _after_queue(self) -> None:
        self._wake.set()

    async def _reader(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    self._frames_in += 1
                    self._deliver(message)
                    continue
                self._control(parse_control(message))
        except ConnectionClosed:
            log.info("media websocket %s closed", self.name)

    def _control(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "MEDIA_START":
            self.media_start = event
        elif kind == "MEDIA_XOFF":
            self._xoff = True
        elif kind == "MEDIA_XON":
            self._xoff = False
            self._wake.set()
        elif kind == "MEDIA_MARK_PROCESSED":
            item, _, count = str(event.get("correlation_id", "")).rpartition("@")
            if item and count.isdigit():
                done = int(count)
                self._outstanding -= max(0, done - self._confirmed.get(item, 0))
                self._confirmed[item] = max(done, self._confirmed.get(item, 0))
                self._wake.set()
        elif kind == "QUEUE_DRAINED":
            self._outstanding = 0
            self._wake.set()

    async def _writer(self, ws: ClientConnection) -> None:
        silence = g711.silence(self.law, CHUNK_BYTES // g711.FRAME_BYTES)
        try:
            while True:
                if self._flush_pending:
                    # ordered with the audio: nothing sent before the flush survives it, nothing after is lost
                    self._flush_pending = False
                    await ws.send("FLUSH_MEDIA")
                    self._outstanding = 0
                    continue
                ahead = g711.duration_ms(self._outstanding)
                if self._xoff or ahead >= AHEAD_MS:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                taken = self.playout.take(CHUNK_BYTES)
                if taken is None:
                    if ahead >= SILENCE_AHEAD_MS:
                        self._wake.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), g711.FRAME_MS / 1000)
                        continue
                    # Asterisk sends the caller nothing while we send nothing: keep a little silence queued
                    taken = (silence, SILENCE_ITEM)
                data, item = taken
                if item != SILENCE_ITEM:
                    self._mark_start(item)
                await ws.send(data)
                self._sent[item] = self._sent.get(item, 0) + len(data)
                self._outstanding += len(data)
                self._marks += 1
                await ws.send(f"MARK_MEDIA correlation_id:{item}@{self._sent[item]}")
                self.stats.sent(item != SILENCE_ITEM)
        except ConnectionClosed:
            return

    def flush(self) -> Played:
        item = self.playout.current
        queued = self.playout.clear()
        unplayed = self._outstanding
        self._outstanding = 0
        if self._ws is not None and unplayed:
            self.flushes += 1
            self._flush_pending = True
            self._wake.set()
        played = g711.duration_ms(self._confirmed.get(item, 0)) if item else 0
        # every reply that lost audio: sent to Asterisk but not reported played (when the flush dropped
        # Asterisk's queue), or still queued here
        lost: dict[str, int] = {}
        if unplayed > 0:
            for sent_item, sent in self._sent.items():
                if sent_item != SILENCE_ITEM and sent > self._confirmed.get(sent_item, 0):
                    lost[sent_item] = sent - self._confirmed.get(sent_item, 0)
        for cut in queued.cuts:
            lost[cut.item_id] = lost.get(cut.item_id, 0) + cut.dropped_ms * g711.SAMPLE_RATE // 1000
        cuts = tuple(
            Cut(lost_item, g711.duration_ms(self._confirmed.get(lost_item, 0)), g711.duration_ms(size))
            for lost_item, size in lost.items()
        )
        return Played(item, played, queued.dropped_ms + g711.duration_ms(unplayed), cuts)

    def played_ms(self, item_id: str) -> int:
        return g711.duration_ms(self._confirmed.get(item_id, 0))

    @property
    def queued_ms(self) -> int:
        return self.playout.queued_ms + g711.duration_ms(max(0, self._outstanding))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
        self._tasks = []
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
            self._ws = None
