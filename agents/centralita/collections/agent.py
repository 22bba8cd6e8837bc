"""The collections agent process: ARI events in, calls it cannot handle yet hung up cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pymysql

from centralita.collections.ari_events import Backoff, run_event_stream
from centralita.collections.ari_rest import AriRequestError, hangup_channel, make_session
from centralita.collections.settings import CollectionsSettings
from centralita.db import connection, describe_target
from centralita.metrics import Registry, serve_metrics

log = logging.getLogger("centralita.collections")


class CollectionsAgent:
    """Reacts to the Stasis application's events; owns every task it starts."""

    def __init__(self, settings: CollectionsSettings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry or Registry()
        self._session = make_session(settings.ari_user, settings.ari_password)
        self._tasks: set[asyncio.Task[None]] = set()
        self.events = self.registry.counter(
            "centralita_collections_ari_events_total", "ARI events received", labels=("type",)
        )
        self.hangups = self.registry.counter(
            "centralita_collections_unhandled_hangups_total", "Channels hung up because no flow handles them yet"
        )
        self.connected = self.registry.gauge(
            "centralita_collections_ari_connected", "1 while the ARI events websocket is open"
        )

    async def handle_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        self.events.inc(type=kind)
        if kind == "StasisStart":
            self._on_stasis_start(event)
        elif kind in ("StasisEnd", "ChannelDestroyed"):
            channel = event.get("channel") or {}
            log.debug("%s channel=%s cause=%s", kind, channel.get("id"), event.get("cause_txt"))

    def _on_stasis_start(self, event: dict[str, Any]) -> None:
        channel = event.get("channel") or {}
        channel_id = channel.get("id")
        caller = (channel.get("caller") or {}).get("number", "")
        exten = (channel.get("dialplan") or {}).get("exten", "")
        log.info(
            "StasisStart channel=%s name=%s caller=%s exten=%s args=%s",
            channel_id,
            channel.get("name"),
            caller,
            exten,
            event.get("args", []),
        )
        if not channel_id:
            log.warning("StasisStart without a channel id: %.300r", event)
            return
        log.info("channel=%s: no collections flow handles this call yet; hanging up", channel_id)
        self._spawn(self._hangup(channel_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hangup(self, channel_id: str) -> None:
        try:
            hung_up = await asyncio.to_thread(
                hangup_channel,
                self._session,
                self.settings.ari_url,
                channel_id,
                timeout=self.settings.request_timeout_seconds,
            )
        except AriRequestError as exc:
            log.error("channel=%s: hangup failed: %s", channel_id, exc)
            return
        if hung_up:
            self.hangups.inc()
        else:
            log.info("channel=%s: already gone before hangup", channel_id)

    async def check_database(self) -> None:
        """Log at start whether MariaDB answers; the dialer needs it, but ARI events must flow regardless."""

        def ping() -> None:
            with connection(self.settings) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")

        try:
            await asyncio.to_thread(ping)
        except pymysql.MySQLError as exc:
            log.warning("MariaDB %s not reachable yet: %s", describe_target(self.settings), exc)
        else:
            log.info("MariaDB %s reachable", describe_target(self.settings))

    async def run(self, stop: asyncio.Event) -> None:
        server: asyncio.AbstractServer | None = None
        if self.settings.metrics_port:
            server = await start_metrics(self.registry, self.settings.metrics_host, self.settings.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.settings.metrics_port)
        try:
            await self.check_database()
            await run_event_stream(
                ari_url=self.settings.ari_url,
                app=self.settings.ari_app,
                user=self.settings.ari_user,
                password=self.settings.ari_password,
                handle=self.handle_event,
                stop=stop,
                backoff=Backoff(self.settings.reconnect_min_seconds, self.settings.reconnect_max_seconds),
                open_timeout=self.settings.request_timeout_seconds,
                on_state=lambda up: self.connected.set(1 if up else 0),
            )
        finally:
            await self._drain()
            self._session.close()
            if server is not None:
                server.close()
                await server.wait_closed()
            log.info("collections agent stopped")

    async def _drain(self) -> None:
        """Let hangups in flight finish (each is bounded by the request timeout), then cancel stragglers."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, late = await asyncio.wait(pending, timeout=self.settings.request_timeout_seconds + 1)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def start_metrics(registry: Registry, host: str, port: int) -> asyncio.AbstractServer:
    """Serve /metrics, or stop the agent with one clear line when the address is taken."""
    try:
        return await serve_metrics(registry, host, port)
    except OSError as exc:
        raise SystemExit(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
