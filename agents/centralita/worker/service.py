"""The worker's main loop: poll ``events`` every few seconds until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pymysql

from centralita.db import connect, describe_target
from centralita.metrics import Registry, serve_metrics
from centralita.worker.events import STATES, count_by_state, queue_settled_events
from centralita.worker.settings import WorkerSettings

log = logging.getLogger("centralita.worker")


class EventPoller:
    """Owns one MariaDB connection and reopens it after any database error.

    All methods block; the service runs them in a thread one at a time, so the
    connection is never used by two threads at once.
    """

    def __init__(self, settings: WorkerSettings, registry: Registry) -> None:
        self.settings = settings
        self._conn: pymysql.Connection | None = None
        self.polls = registry.counter("centralita_worker_polls_total", "Polls of the events table that succeeded")
        self.errors = registry.counter("centralita_worker_poll_errors_total", "Polls that failed on a DB error")
        self.queued = registry.counter(
            "centralita_worker_events_queued_total", "Events moved from new to pending delivery"
        )
        self.by_state = registry.gauge("centralita_worker_events", "Events per delivery state", labels=("state",))

    def poll(self) -> tuple[int, dict[str, int]]:
        """One pass: queue settled events, then count; returns (queued now, counts per state)."""
        if self._conn is None:
            self._conn = connect(self.settings)
        queued = queue_settled_events(self._conn, self.settings.pending_after_seconds, self.settings.batch_size)
        counts = count_by_state(self._conn)
        self.polls.inc()
        self.queued.inc(queued)
        for state in STATES:
            self.by_state.set(counts[state], state=state)
        return queued, counts

    def reset(self) -> None:
        """Drop the connection after an error; the next poll opens a fresh one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(pymysql.MySQLError, OSError):
                conn.close()


async def run(settings: WorkerSettings, stop: asyncio.Event, registry: Registry | None = None) -> None:
    """Poll until ``stop`` is set; a poll in progress finishes before the function returns."""
    registry = registry or Registry()
    poller = EventPoller(settings, registry)
    server: asyncio.AbstractServer | None = None
    if settings.metrics_port:
        server = await start_metrics(registry, settings.metrics_host, settings.metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    log.info(
        "polling events in %s every %.1f s (queue after %.1f s)",
        describe_target(settings),
        settings.poll_seconds,
        settings.pending_after_seconds,
    )
    failing = False
    last_counts: dict[str, int] | None = None
    try:
        while not stop.is_set():
            try:
                queued, counts = await asyncio.to_thread(poller.poll)
            except pymysql.MySQLError as exc:
                poller.errors.inc()
                await asyncio.to_thread(poller.reset)
                if not failing:
                    # One line per outage, not one per poll: the journal stays readable.
                    log.error(
                        "cannot poll events in %s: %s; retrying every %.1f s",
                        describe_target(settings),
                        exc,
                        settings.poll_seconds,
                    )
                failing = True
            else:
                if failing:
                    log.info("events table reachable again")
                    failing = False
                if queued or counts != last_counts:
                    log.info(
                        "queued %d event(s) for delivery; new=%d pending=%d delivered=%d failed=%d",
                        queued,
                        counts["new"],
                        counts["pending"],
                        counts["delivered"],
                        counts["failed"],
                    )
                last_counts = counts
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.poll_seconds)
    finally:
        await asyncio.to_thread(poller.reset)
        if server is not None:
            server.close()
            await server.wait_closed()
        log.info("worker stopped")


async def start_metrics(registry: Registry, host: str, port: int) -> asyncio.AbstractServer:
    """Serve /metrics, or stop the agent with one clear line when the address is taken."""
    try:
        return await serve_metrics(registry, host, port)
    except OSError as exc:
        raise SystemExit(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
