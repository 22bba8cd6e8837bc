"""A small ARI events websocket loop: connect, hand each event to a callback, reconnect with backoff.

Asterisk restarts (package upgrades, a crash) must not need a restart of the
agent, so the loop never gives up; the delay between attempts grows so a
stopped Asterisk is not hammered, and shrinks again once a connection holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

log = logging.getLogger("centralita.collections.ari")

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]

# A connection that stayed up this long was healthy: the next failure starts the backoff from the minimum again.
STABLE_AFTER_S = 10.0


def events_url(ari_url: str, app: str) -> str:
    """The events websocket of ``app`` under Asterisk's HTTP server ``ari_url`` (http -> ws, https -> wss)."""
    parts = urlsplit(ari_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path.endswith("/ari") else parts.path + "/ari"
    query = f"app={quote(app, safe='')}&subscribeAll=false"
    return urlunsplit((scheme, parts.netloc, path + "/events", query, ""))


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class Backoff:
    """Exponential delays between ``minimum`` and ``maximum`` seconds with +-20 % jitter.

    The jitter keeps several agents that lost the same Asterisk from reconnecting in lockstep.
    """

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._next = minimum
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        base = self._next
        self._next = min(self.maximum, self._next * 2)
        return min(self.maximum, base * self._rng.uniform(0.8, 1.2))

    def reset(self) -> None:
        self._next = self.minimum


async def run_event_stream(
    *,
    ari_url: str,
    app: str,
    user: str,
    password: str,
    handle: EventHandler,
    stop: asyncio.Event,
    backoff: Backoff,
    open_timeout: float = 10.0,
    on_state: Callable[[bool], None] | None = None,
) -> None:
    """Keep the events websocket of ``app`` open until ``stop`` is set, calling ``handle`` per event.

    ``handle`` runs inline, in arrival order (ARI's order matters: StasisStart
    before ChannelDtmfReceived before StasisEnd); it must not block, so
    long work belongs in tasks it owns.
    """
    target = events_url(ari_url, app)
    headers = {"Authorization": basic_auth(user, password)}
    while not stop.is_set():
        started = time.monotonic()
        try:
            await _one_connection(target, headers, handle, stop, open_timeout, on_state)
        except InvalidStatus as exc:
            code = exc.response.status_code
            hint = " (check COLLECTIONS_ARI_USER/PASSWORD and ari.conf)" if code in (401, 403) else ""
            log.error("ARI refused the events websocket %s: HTTP %d%s", target, code, hint)
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.warning("ARI events websocket %s unavailable: %s", target, exc or type(exc).__name__)
        finally:
            if on_state is not None:
                on_state(False)
        if stop.is_set():
            break
        if time.monotonic() - started >= STABLE_AFTER_S:
            backoff.reset()
        delay = backoff.next_delay()
        log.info("reconnecting to ARI in %.1f s", delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)


async def _one_connection(
    target: str,
    headers: dict[str, str],
    handle: EventHandler,
    stop: asyncio.Event,
    open_timeout: float,
    on_state: Callable[[bool], None] | None,
) -> None:
    async with connect(
        target,
        additional_headers=headers,
        open_timeout=open_timeout,
        ping_interval=20,
        ping_timeout=20,
        close_timeout=5,
        max_size=4 * 1024 * 1024,
    ) as ws:
        log.info("connected to ARI events %s", target)
        if on_state is not None:
            on_state(True)
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                receiver = asyncio.create_task(ws.recv())
                done, _ = await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, WebSocketException):
                        await receiver
                    return
                message = receiver.result()
                event = parse_event(message)
                if event is None:
                    continue
                try:
                    await handle(event)
                except Exception:
                    # One broken event must not drop the websocket and every other call with it.
                    log.exception("handling ARI %s failed", event["type"])
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper


def parse_event(message: str | bytes) -> dict[str, Any] | None:
    """An ARI event as a dict, or None (logged) when the frame is not a JSON object with a type."""
    try:
        event = json.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("ignoring a non-JSON ARI frame (%s): %.200r", exc, message)
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        log.warning("ignoring an ARI frame without an event type: %.200r", message)
        return None
    return event
