"""The connector process: AMI -> spool -> sinks, plus back-fill, recordings and metrics.

Order of things for one CDR: the AMI reader hands the event to a queue and goes
back to reading; the spool writer parses and filters it and commits it (fsync)
together with whatever else arrived meanwhile; only then are the sinks woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence

from centralita.asterisk.ami import AmiClient, AmiConnection, AmiMessage
from centralita.config import describe
from centralita.connector.backfill import Backfill
from centralita.connector.cdr import CdrError, CdrRecord, record_from_event, resolve_timezone
from centralita.connector.filters import CdrFilter
from centralita.connector.http import ApiClient
from centralita.connector.metrics import ConnectorMetrics
from centralita.connector.recordings import RecordingWatcher
from centralita.connector.settings import ConnectorSettings
from centralita.connector.sinks import ApiSink, MariaDbRecordingSink, MariaDbSink, SpoolSink
from centralita.connector.spool import Spool, free_bytes
from centralita.connector.tasks import cancel_and_wait
from centralita.metrics import serve_metrics

log = logging.getLogger(__name__)

WRITE_CHUNK = 2000
SHUTDOWN_TIMEOUT = 10.0


def build_filter(settings: ConnectorSettings) -> CdrFilter:
    return CdrFilter(
        enabled=settings.cdr_filter_enabled,
        queue_attempts=settings.cdr_filter_queue_attempts,
        zero_duration=settings.cdr_filter_zero_duration,
        internal_only=settings.cdr_filter_internal_only,
        min_duration=settings.cdr_filter_min_duration,
        exclude_dst=frozenset(settings.cdr_filter_exclude_dst),
        internal_pattern=settings.cdr_filter_internal_pattern,
    )


class Connector:
    def __init__(self, settings: ConnectorSettings, metrics: ConnectorMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ConnectorMetrics.create()
        self.zone = resolve_timezone(settings.cdr_timezone)
        self.filter = build_filter(settings)
        self.spool = Spool(settings.cdr_spool_dir)
        self.queue: asyncio.Queue[AmiMessage | None] = asyncio.Queue()  # None: stop the writer
        self.sinks: list[SpoolSink] = []
        self.api: ApiClient | None = None
        self.backfill = Backfill(
            settings.cdr_backfill_path, self.zone, self.spool, max_age_hours=settings.cdr_backfill_max_age_hours
        )
        self._backfill_lock = asyncio.Lock()
        self._invalid_log = settings.cdr_spool_dir / "invalid-cdr-events.log"

    # intake -----------------------------------------------------------------

    def on_event(self, message: AmiMessage) -> None:
        """Called by the AMI reader for every event: must not wait, so it only enqueues."""
        if message.event == "Cdr":
            self.queue.put_nowait(message)

    def on_state(self, up: bool) -> None:
        self.metrics.ami_connection_status.set(1 if up else 0)
        if up:
            self.metrics.ami_reconnects.inc()

    async def commit(self, records: Sequence[CdrRecord], source: str) -> int:
        entries = [(record, self.filter.reason(record)) for record in records]
        new = await self.spool.add(entries, source)
        for _record, reason in new:
            if reason is not None:
                self.metrics.cdr_filtered.inc(reason=reason)
        self.metrics.cdrs_processed.inc(len(new))
        if source == "backfill" and new:
            self.metrics.cdrs_backfilled.inc(len(new))
        if any(reason is None for _r, reason in new):
            for sink in self.sinks:
                sink.notify()
        return len(new)

    async def write_loop(self) -> None:
        """Move events from the queue to the spool, many per commit (one fsync per group).

        The next group is parsed while the previous one is being committed on the
        spool's thread (fsync releases the GIL), but groups are committed strictly in
        order and a group's sinks are woken only after its own commit. A ``None`` in
        the queue ends the loop once everything before it is committed: shutdown
        never cancels a group half-way.
        """
        committing: asyncio.Task[int] | None = None
        try:
            while True:
                first = await self.queue.get()
                messages: list[AmiMessage] = []
                done = first is None
                if first is not None:
                    messages.append(first)
                while not done and len(messages) < WRITE_CHUNK and not self.queue.empty():
                    message = self.queue.get_nowait()
                    if message is None:
                        done = True
                    else:
                        messages.append(message)
                records = await self._parse(messages)
                if committing is not None:
                    await committing
                committing = asyncio.create_task(self.commit(records, "ami"), name="spool-commit")
                self.metrics.cdr_queue_depth.set(self.queue.qsize())
                if done:
                    break
        finally:
            if committing is not None:
                # Records taken off the queue are committed even if this loop is cancelled.
                await asyncio.shield(committing)

    async def _parse(self, messages: list[AmiMessage]) -> list[CdrRecord]:
        records: list[CdrRecord] = []
        zone = self.zone
        for message in messages:
            try:
                records.append(record_from_event(message.as_dict(), zone))
            except CdrError as exc:
                self.metrics.cdrs_invalid.inc()
                log.error("unreadable Cdr event (%s); kept in %s", exc, self._invalid_log)
                await asyncio.to_thread(self._keep_invalid, message)
        return records

    async def _write(self, messages: list[AmiMessage]) -> None:
        await self.commit(await self._parse(messages), "ami")
        self.metrics.cdr_queue_depth.set(self.queue.qsize())

    def _keep_invalid(self, message: AmiMessage) -> None:
        with self._invalid_log.open("a", encoding="utf-8") as handle:
            handle.write("".join(f"{k}: {v}\n" for k, v in message.headers) + "\n")

    async def drain(self) -> None:
        """On shutdown: whatever was read from AMI goes to the spool before exit."""
        messages: list[AmiMessage] = []
        while not self.queue.empty():
            message = self.queue.get_nowait()
            if message is not None:
                messages.append(message)
        if messages:
            await self._write(messages)

    # back-fill ---------------------------------------------------------------

    async def run_backfill(self) -> int:
        if not self.settings.cdr_backfill_enabled:
            return 0
        async with self._backfill_lock:
            before = self.backfill.invalid
            recovered_before = self.metrics.cdrs_backfilled.value()
            try:
                lines = await self.backfill.scan(lambda records: self.commit(records, "backfill"))
            except OSError as exc:
                log.error("back-fill from %s failed: %s", self.settings.cdr_backfill_path, exc)
                return 0
            if self.backfill.invalid > before:
                self.metrics.cdrs_invalid.inc(self.backfill.invalid - before)
            recovered = int(self.metrics.cdrs_backfilled.value() - recovered_before)
            if recovered:
                log.info("back-fill recovered %d CDR(s) that AMI had not delivered", recovered)
            return lines

    async def on_connect(self, _connection: AmiConnection) -> None:
        # Events raised while we were away exist only in the CSV: read it now.
        await self.run_backfill()

    async def backfill_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cdr_backfill_interval)
            await self.run_backfill()

    # housekeeping ------------------------------------------------------------

    async def stats_loop(self, interval: float = 2.0) -> None:
        while True:
            for sink in self.sinks:
                stats = await self.spool.stats(sink.name)
                self.metrics.spool_depth.set(stats.depth, sink=sink.name)
                age = time.time() - stats.oldest_received_at if stats.oldest_received_at else 0.0
                self.metrics.spool_oldest_age.set(age, sink=sink.name)
                self.metrics.spool_dead.set(stats.dead, sink=sink.name)
            self.metrics.cdr_queue_depth.set(self.queue.qsize())
            await asyncio.sleep(interval)

    async def prune_loop(self) -> None:
        retention = self.settings.cdr_spool_retention_days * 86400
        while True:
            removed = await self.spool.prune([s.name for s in self.sinks], time.time() - retention)
            if removed:
                log.info("spool: forgot %d delivered CDR(s) older than %s days", removed, retention / 86400)
            free = await asyncio.to_thread(free_bytes, self.settings.cdr_spool_dir)
            if free < self.settings.cdr_spool_min_free_mb * 1024 * 1024:
                log.error(
                    "spool disk %s has only %d MB free (CDR_SPOOL_MIN_FREE_MB=%d): free space before it fills",
                    self.settings.cdr_spool_dir,
                    free // (1024 * 1024),
                    self.settings.cdr_spool_min_free_mb,
                )
            await asyncio.sleep(3600)

    # wiring ------------------------------------------------------------------

    def _make_sinks(self) -> None:
        s = self.settings
        if s.cdr_api_enabled:
            self.api = ApiClient(s.api_base_url, s.api_key, timeout=s.api_timeout, workers=max(2, s.cdr_max_concurrent))
            self.sinks.append(
                ApiSink(
                    self.spool,
                    self.metrics,
                    self.api,
                    mode=s.cdr_mode,
                    batch_size=s.cdr_batch_size,
                    batch_timeout=s.cdr_batch_timeout,
                    force_timeout=s.cdr_batch_force_timeout,
                    max_concurrent=s.cdr_max_concurrent,
                    batches_in_flight=s.cdr_batch_in_flight,
                    retry_max_delay=s.api_retry_max_delay,
                )
            )
        if s.db_enabled:
            self.sinks.append(MariaDbSink(self.spool, self.metrics, self._db_args()))

    def _db_args(self) -> dict[str, object]:
        s = self.settings
        args: dict[str, object] = {"user": s.db_user, "password": s.db_password, "database": s.db_name}
        if s.db_socket:
            args["unix_socket"] = s.db_socket
        else:
            args.update(host=s.db_host, port=s.db_port)
        return args

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then drain what was read and close everything."""
        s = self.settings
        log.info("connector starting: %s", describe(s))
        await self.spool.open()
        self._make_sinks()
        tasks: list[asyncio.Task[None]] = []
        server: asyncio.AbstractServer | None = None
        ami = AmiClient(
            s.ami_host,
            s.ami_port,
            s.ami_username,
            s.ami_password,
            events=("cdr",),
            on_event=self.on_event,
            on_state=self.on_state,
            on_connect=self.on_connect,
            ping_interval=s.ami_ping_interval,
            ping_timeout=s.ami_ping_timeout,
        )
        self.metrics.ami_connection_status.set(0)
        ami_task: asyncio.Task[None] | None = None
        try:
            if s.monitoring_enabled:
                server = await serve_metrics(self.metrics.registry, s.monitoring_host, s.monitoring_port)
            await self.run_backfill()  # before AMI: what happened while the connector was down
            writer = asyncio.create_task(self.write_loop(), name="spool-writer")
            tasks.append(writer)
            tasks += [asyncio.create_task(sink.run(), name=f"sink-{sink.name}") for sink in self.sinks]
            tasks.append(asyncio.create_task(self.stats_loop(), name="stats"))
            tasks.append(asyncio.create_task(self.prune_loop(), name="prune"))
            if s.cdr_backfill_enabled:
                tasks.append(asyncio.create_task(self.backfill_loop(), name="backfill"))
            if s.recording_watcher_enabled:
                if self.api is None:
                    log.error("RECORDING_WATCHER_ENABLED needs the CDR API (CDR_API_ENABLED=true); not watching")
                else:
                    recording_db = MariaDbRecordingSink(self.spool, self._db_args()) if s.db_enabled else None
                    watcher = RecordingWatcher(
                        s, self.spool, self.api, self.metrics, on_change=recording_db.notify if recording_db else None
                    )
                    tasks.append(asyncio.create_task(watcher.run(), name="recordings"))
                    if recording_db is not None:
                        tasks.append(asyncio.create_task(recording_db.run(), name="recordings-mariadb"))
            ami_task = asyncio.create_task(ami.run(), name="ami")
            stopper = asyncio.create_task(stop.wait(), name="stop")
            done, _ = await asyncio.wait({stopper, ami_task, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            # AMI first: nothing new arrives while what was read is written down.
            await cancel_and_wait([stopper, ami_task], SHUTDOWN_TIMEOUT)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            self.queue.put_nowait(None)  # the writer commits what was read, then ends
            await asyncio.wait({writer}, timeout=SHUTDOWN_TIMEOUT)
            await cancel_and_wait([writer], SHUTDOWN_TIMEOUT)
            await self.drain()
        finally:
            await cancel_and_wait([*([ami_task] if ami_task else []), *tasks], SHUTDOWN_TIMEOUT)
            if server is not None:
                server.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                        await server.wait_closed()
            if self.api is not None:
                self.api.close()
            await self.spool.close()
            log.info("connector stopped")


async def run_connector(settings: ConnectorSettings) -> None:
    """Entry point for ``python -m centralita.connector``: SIGTERM/SIGINT stop it cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Connector(settings).run(stop)
