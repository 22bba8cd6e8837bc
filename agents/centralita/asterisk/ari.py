"""An asyncio client for Asterisk's REST Interface (ARI), shared by the agents.

REST calls are ``requests`` calls in worker threads (``asyncio.to_thread``): ARI
answers in milliseconds on the same host, a connection pool keeps sockets warm, and
every call has a timeout, so the event loop never waits on Asterisk. The events
websocket reconnects forever with a growing, jittered delay: an Asterisk restart
must never need an agent restart, and ``on_connect`` lets the agent reconcile its
calls with what Asterisk still has after every (re)connection. One event the agent
cannot handle (a frame that is not a JSON object, a handler that fails) is logged
and skipped: it must not end the stream that every call depends on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

log = logging.getLogger("centralita.asterisk.ari")

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
ConnectHandler = Callable[[], Awaitable[None]]
STABLE_AFTER_S = 10.0


class AriError(RuntimeError):
    """ARI refused a request or could not be reached."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail  # ARI's own words (its JSON ``message``), when it answered


class AriNotFound(AriError):
    """The channel, bridge or playback no longer exists (usually: the caller hung up)."""


def _reason(reply: requests.Response) -> str:
    """ARI's JSON ``message``, or the text of an HTML error page, on one short line."""
    try:
        message = reply.json().get("message")
    except (ValueError, AttributeError):
        message = None
    text = message or re.sub(r"<[^>]+>", " ", reply.text)
    return " ".join(text.split())[:160]


def _ari_base(url: str) -> str:
    base = url.rstrip("/")
    return base if base.endswith("/ari") else base + "/ari"


class AriClient:
    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        app: str,
        *,
        timeout: float = 5.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 10.0,
        pool_size: int = 32,
    ) -> None:
        self.base = _ari_base(url)
        self.app = app
        self.timeout = timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._auth = (user, password)
        self._session = requests.Session()
        self._session.auth = self._auth
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self.connected = asyncio.Event()
        self.connections = 0

    # REST ------------------------------------------------------------------------------

    def _request_blocking(self, method: str, path: str, params: dict[str, Any] | None, body: Any) -> Any:
        url = self.base + path
        try:
            reply = self._session.request(method, url, params=params, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise AriError(f"{method} {path}: Asterisk not reachable: {exc}") from exc
        if reply.status_code == 404:
            detail = _reason(reply)
            raise AriNotFound(f"{method} {path}: not found ({detail})", 404, detail)
        if reply.status_code >= 400:
            detail = _reason(reply)
            raise AriError(f"{method} {path}: HTTP {reply.status_code} {detail}", reply.status_code, detail)
        if not reply.content:
            return None
        try:
            return reply.json()
        except ValueError as exc:
            raise AriError(f"{method} {path}: a reply that is not JSON") from exc

    async def request(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return await asyncio.to_thread(self._request_blocking, method, path, clean or None, body)

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{quote(channel_id, safe='')}/answer")

    async def hangup(self, channel_id: str, reason: str = "normal") -> bool:
        """True when ARI hung the channel up, False when it was already gone."""
        try:
            await self.request("DELETE", f"/channels/{quote(channel_id, safe='')}", {"reason": reason})
        except AriNotFound:
            return False
        return True

    async def get_channel(self, channel_id: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", f"/channels/{quote(channel_id, safe='')}")
        except AriNotFound:
            return None

    async def get_variable(self, channel_id: str, variable: str) -> str | None:
        """The variable's value, or None when it is not set.

        Asterisk answers 404 both for a variable that is not set ("Provided variable was
        not found") and for a channel that is gone ("Provided channel was not found"); the
        second raises :class:`AriNotFound`, because the caller has hung up.
        """
        try:
            reply = await self.request(
                "GET", f"/channels/{quote(channel_id, safe='')}/variable", {"variable": variable}
            )
        except AriNotFound as exc:
            if "variable" in exc.detail.lower():
                return None
            raise
        except AriError as exc:
            if exc.status == 400:  # older versions' answer for a variable that is not set
                return None
            raise
        return (reply or {}).get("value") or None

    async def continue_in_dialplan(self, channel_id: str, context: str, extension: str, priority: int = 1) -> None:
        await self.request(
            "POST",
            f"/channels/{quote(channel_id, safe='')}/continue",
            {"context": context, "extension": extension, "priority": priority},
        )

    async def create_bridge(self, bridge_id: str, kind: str = "mixing", name: str = "") -> dict[str, Any]:
        return await self.request("POST", "/bridges", {"type": kind, "bridgeId": bridge_id, "name": name or bridge_id})

    async def add_to_bridge(self, bridge_id: str, *channel_ids: str) -> None:
        await self.request(
            "POST", f"/bridges/{quote(bridge_id, safe='')}/addChannel", {"channel": ",".join(channel_ids)}
        )

    async def destroy_bridge(self, bridge_id: str) -> bool:
        try:
            await self.request("DELETE", f"/bridges/{quote(bridge_id, safe='')}")
        except AriNotFound:
            return False
        return True

    async def external_media(
        self,
        channel_id: str,
        external_host: str,
        media_format: str,
        *,
        encapsulation: str = "rtp",
        transport: str = "udp",
        connection_type: str | None = None,
        direction: str = "both",
        data: str | None = None,
    ) -> dict[str, Any]:
        """Create an externalMedia channel in this app; the reply's ``channelvars`` say where to send media."""
        params = {
            "app": self.app,
            "channelId": channel_id,
            "external_host": external_host,
            "format": media_format,
            "encapsulation": encapsulation,
            "transport": transport,
            "connection_type": connection_type,
            "direction": direction,
            "data": data,
        }
        return await self.request("POST", "/channels/externalMedia", params)

    async def play(self, target: str, media: str, playback_id: str, *, on: str = "channels") -> dict[str, Any]:
        return await self.request(
            "POST", f"/{on}/{quote(target, safe='')}/play/{quote(playback_id, safe='')}", {"media": media}
        )

    async def originate(self, endpoint: str, **params: Any) -> dict[str, Any]:
        return await self.request("POST", "/channels", {"endpoint": endpoint, "app": self.app, **params})

    async def channels(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/channels") or []

    async def bridges(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/bridges") or []

    # events ------------------------------------------------------------------------------

    def events_url(self) -> str:
        parts = urlsplit(self.base)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        query = urlencode({"app": self.app, "subscribeAll": "false"})
        return urlunsplit((scheme, parts.netloc, parts.path + "/events", query, ""))

    async def run_events(self, on_event: EventHandler, on_connect: ConnectHandler | None = None) -> None:
        """Deliver events until cancelled, reconnecting after every loss."""
        delay = self.reconnect_min
        auth = "Basic " + base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode("ascii")
        while True:
            started = time.monotonic()
            try:
                async with connect(
                    self.events_url(),
                    additional_headers={"Authorization": auth},
                    open_timeout=self.timeout,
                    ping_interval=10,
                    ping_timeout=10,
                    max_size=8 * 2**20,
                ) as ws:
                    self.connections += 1
                    self.connected.set()
                    log.info("ARI events connected (%s, app %s)", urlsplit(self.base).netloc, self.app)
                    if on_connect is not None:
                        try:
                            await on_connect()
                        except Exception:  # a bug there must not stop the events every call needs
                            log.exception("ARI events: the reconnection handler failed")
                    async for message in ws:
                        await self._deliver(message, on_event)
            except InvalidStatus as exc:
                log.error("ARI events refused: HTTP %s (check the ARI user and app)", exc.response.status_code)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("ARI events connection lost: %s", exc)
            self.connected.clear()
            if time.monotonic() - started > STABLE_AFTER_S:
                delay = self.reconnect_min
            wait = delay * random.uniform(0.8, 1.2)
            log.info("ARI events: reconnecting in %.1f s", wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.reconnect_max)

    @staticmethod
    async def _deliver(message: str | bytes, on_event: EventHandler) -> None:
        """Hand one frame to the handler; a frame or an event the agent cannot handle is logged and skipped."""
        try:
            event = json.loads(message)
        except ValueError:
            log.warning("ARI sent a frame that is not JSON: %.80r", message)
            return
        if not isinstance(event, dict):
            log.warning("ARI sent JSON that is not an event object, skipped: %.80r", message)
            return
        try:
            await on_event(event)
        except Exception:
            log.exception("ARI event %.40r: the handler failed; the event is skipped", event.get("type"))

    def close(self) -> None:
        self._session.close()
