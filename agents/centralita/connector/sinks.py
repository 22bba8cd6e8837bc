"""Sinks read CDRs from the spool and record, per sink, what was delivered.

A sink holds a batch until it is delivered or refused for good: network errors,
timeouts and 5xx are retried with backoff for as long as it takes (the spool
keeps everything meanwhile); a 4xx that names the data as the problem puts the
record in the dead-letter store with one clear log line. Records carry an
idempotency key (UniqueID:Sequence), so a batch re-sent after a crash between
"sent" and "marked" is recognised by the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pymysql

from centralita.asterisk.ami import Backoff
from centralita.connector.cdr import FIELD_NAMES, HOSTNAME, CdrRecord, wire_payload
from centralita.connector.http import ApiClient, HttpReply, TransportError
from centralita.connector.metrics import ConnectorMetrics
from centralita.connector.spool import DEAD, Spool, SpoolItem
from centralita.connector.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BATCH_PATH = "/mqs/cdr/batch"
SINGLE_PATH = "/mqs/cdr"


class SpoolSink:
    """The shared loop: wait for CDRs in the spool, hand them over, advance."""

    name = "sink"

    def __init__(self, spool: Spool, metrics: ConnectorMetrics) -> None:
        self.spool = spool
        self.metrics = metrics
        self.wake = asyncio.Event()
        self.cursor = 0  # highest spool id handed to this sink in this process
        self.poll_interval = 5.0  # a safety net; normally ``wake`` is set on every commit

    def notify(self) -> None:
        self.wake.set()

    async def _wait(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait for new CDRs; True if woken, False on timeout."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see centralita.connector.tasks
                await self.wake.wait()
        except TimeoutError:
            return False
        self.wake.clear()
        return True

    async def run(self) -> None:
        raise NotImplementedError


def api_payload(record: CdrRecord) -> dict[str, Any]:
    """The JSON of one CDR: every Asterisk field, plus the receiver's names for the main ones."""
    return wire_payload(record)


def batch_key(keys: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()
    return f"batch-{digest[:40]}"


class _Outcome:
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


def classify(reply: HttpReply) -> str:
    status = reply.status
    if 200 <= status < 300 or status == 409:  # 409: the receiver already holds this key
        return _Outcome.DELIVERED
    if status in (401, 403, 408, 425, 429) or status >= 500:
        return _Outcome.RETRY
    return _Outcome.REJECTED


class ApiSink(SpoolSink):
    """The HTTP API of seed 003, in batch or direct mode."""

    name = "api"

    def __init__(
        self,
        spool: Spool,
        metrics: ConnectorMetrics,
        client: ApiClient,
        *,
        mode: str = "batch",
        batch_size: int = 100,
        batch_timeout: float = 30.0,
        force_timeout: float = 5.0,
        max_concurrent: int = 10,
        batches_in_flight: int = 4,
        retry_max_delay: float = 60.0,
    ) -> None:
        super().__init__(spool, metrics)
        self.client = client
        self.mode = mode
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.force_timeout = force_timeout
        self.max_concurrent = max_concurrent
        self.batches_in_flight = batches_in_flight
        self.retry_max_delay = retry_max_delay

    async def run(self) -> None:
        if self.mode == "direct":
            await self._run_direct()
        else:
            await self._run_batch()

    # batch mode -----------------------------------------------------------

    async def _run_batch(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.batches_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []  # a spool error in a delivery stops the sink, as before
        try:
            while True:
                await slots.acquire()
                if failures:
                    raise failures[0]
                try:
                    items = await self.spool.fetch(self.name, self.cursor, self.batch_size)
                    if not items:
                        slots.release()
                        await self._wait(self.poll_interval)
                        continue
                    # A partial batch waits for more: sent when full, when no CDR came for
                    # CDR_BATCH_FORCE_TIMEOUT, or CDR_BATCH_TIMEOUT after it started.
                    started = loop.time()
                    while len(items) < self.batch_size:
                        left = self.batch_timeout - (loop.time() - started)
                        if left <= 0 or not await self._wait(min(self.force_timeout, left)):
                            break
                        more = await self.spool.fetch(self.name, items[-1].id, self.batch_size - len(items))
                        items.extend(more)
                except BaseException:
                    slots.release()
                    raise
                # Delivered in the background, so the next batch is read while this one is on
                # the wire; each batch is marked delivered on its own when the API confirms it.
                delivery = self._deliver_batch_slot(items, slots, failures)
                task = asyncio.create_task(delivery, name=f"cdr-batch-{items[0].id}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.cursor = items[-1].id
                if failures:
                    raise failures[0]
        finally:
            await cancel_and_wait(list(tasks))

    async def _deliver_batch_slot(
        self, items: list[SpoolItem], slots: asyncio.Semaphore, failures: list[BaseException]
    ) -> None:
        try:
            await self.deliver_batch(items)
        except Exception as exc:
            failures.append(exc)
        finally:
            slots.release()

    async def deliver_batch(self, items: list[SpoolItem]) -> None:
        """Send until delivered or refused; a refused batch is split to find the bad records."""
        backoff = Backoff(1.0, self.retry_max_delay)
        while True:
            # The spool holds each CDR's JSON already: the batch is joined, not re-encoded.
            body = ("[" + ",".join(item.wire for item in items) + "]").encode("utf-8")
            try:
                reply = await self.client.post_body(
                    BATCH_PATH, body, {"Idempotency-Key": batch_key([item.key for item in items])}
                )
            except TransportError as exc:
                await self._retry_later(backoff, len(items), f"CDR API unreachable ({exc})")
                continue
            self.metrics.api_request_duration.observe(reply.seconds, endpoint="batch")
            outcome = classify(reply)
            if outcome == _Outcome.DELIVERED:
                await self.spool.mark(self.name, [item.id for item in items])
                self.metrics.cdrs_sent.inc(len(items), sink=self.name)
                return
            if outcome == _Outcome.RETRY:
                await self._retry_later(backoff, len(items), self._why(reply))
                continue
            if len(items) == 1:
                await self._dead_letter(items[0], reply)
                return
            half = len(items) // 2
            await self.deliver_batch(items[:half])
            await self.deliver_batch(items[half:])
            return

    # direct mode ----------------------------------------------------------

    async def _run_direct(self) -> None:
        slots = asyncio.Semaphore(self.max_concurrent)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                items = await self.spool.fetch(self.name, self.cursor, self.max_concurrent * 4)
                if not items:
                    await self._wait(self.poll_interval)
                    continue
                for item in items:
                    await slots.acquire()
                    task = asyncio.create_task(self._deliver_one(item, slots), name=f"cdr-direct-{item.id}")
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    self.cursor = item.id
        finally:
            await cancel_and_wait(list(tasks))

    async def _deliver_one(self, item: SpoolItem, slots: asyncio.Semaphore) -> None:
        try:
            backoff = Backoff(1.0, self.retry_max_delay)
            while True:
                try:
                    reply = await self.client.post_body(
                        SINGLE_PATH, item.wire.encode("utf-8"), {"Idempotency-Key": item.key}
                    )
                except TransportError as exc:
                    await self._retry_later(backoff, 1, f"CDR API unreachable ({exc})")
                    continue
                self.metrics.api_request_duration.observe(reply.seconds, endpoint="single")
                outcome = classify(reply)
                if outcome == _Outcome.DELIVERED:
                    await self.spool.mark(self.name, [item.id])
                    self.metrics.cdrs_sent.inc(sink=self.name)
                    return
                if outcome == _Outcome.REJECTED:
                    await self._dead_letter(item, reply)
                    return
                await self._retry_later(backoff, 1, self._why(reply))
        finally:
            slots.release()

    # shared ---------------------------------------------------------------

    @staticmethod
    def _why(reply: HttpReply) -> str:
        if reply.status in (401, 403):
            return f"CDR API refused the key (HTTP {reply.status}): check API_KEY and REGION"
        return f"CDR API answered HTTP {reply.status}: {reply.body[:200]!r}"

    async def _retry_later(self, backoff: Backoff, count: int, why: str) -> None:
        self.metrics.cdrs_failed.inc(count, sink=self.name)
        delay = backoff.next_delay()
        log.warning("%s; %d CDR(s) kept in the spool, retrying in %.1fs", why, count, delay)
        await asyncio.sleep(delay)

    async def _dead_letter(self, item: SpoolItem, reply: HttpReply) -> None:
        error = f"HTTP {reply.status}: {reply.body[:500]}"
        await self.spool.mark(self.name, [item.id], DEAD, error)
        self.metrics.cdrs_dead_lettered.inc(sink=self.name)
        log.error(
            "CDR %s (linkedid %s, %s -> %s) refused by the API with HTTP %d: %s; kept as a dead letter, "
            "'centralita connector dead-letters' lists it and 'centralita connector requeue' retries it",
            item.record.key,
            item.record.linkedid,
            item.record.src,
            item.record.dst,
            reply.status,
            reply.body[:300],
        )


# The panel's CDR store -------------------------------------------------------

_DB_COLUMN = {"start": "start_time", "answer": "answer_time", "end": "end_time"}
_COLUMNS = FIELD_NAMES
_INSERT = (
    f"INSERT IGNORE INTO asterisk_cdrs ({', '.join(_DB_COLUMN.get(c, c) for c in _COLUMNS)}, host)"  # noqa: S608
    f" VALUES ({', '.join(['%s'] * (len(_COLUMNS) + 1))})"
)
# MariaDB errors that mean "this row is wrong", not "the server is away".
_DATA_ERRORS = (pymysql.err.DataError, pymysql.err.IntegrityError)


def _db_time(value: str | None) -> str | None:
    """ISO time with offset -> UTC 'YYYY-MM-DD HH:MM:SS.ffffff' for a DATETIME(6) column."""
    if value is None:
        return None
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def db_row(record: CdrRecord) -> tuple[Any, ...]:
    values = [getattr(record, c) for c in _COLUMNS]
    for index, name in enumerate(_COLUMNS):
        if name in ("start", "answer", "end"):
            values[index] = _db_time(values[index])
    return (*values, HOSTNAME)


class _MariaDbWriter:
    """One lazily opened connection, used from a single executor thread: a batch is
    written in one transaction, rolled back whole on any error."""

    connect_args: dict[str, Any]
    _conn: pymysql.connections.Connection | None

    def _db_init(self, connect_args: dict[str, Any]) -> None:
        self.connect_args = {**connect_args, "autocommit": False, "charset": "utf8mb4", "connect_timeout": 5}
        self.connect_args.setdefault("read_timeout", 30)
        self.connect_args.setdefault("write_timeout", 30)

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self._conn is None:
            self._conn = pymysql.connect(**self.connect_args)
        try:
            with self._conn.cursor() as cursor:
                cursor.executemany(sql, rows)
            self._conn.commit()
        except BaseException:
            with contextlib.suppress(pymysql.err.MySQLError, OSError):
                self._conn.rollback()
            raise

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.err.MySQLError, OSError):
                self._conn.close()
            self._conn = None


class MariaDbSink(_MariaDbWriter, SpoolSink):
    """Writes CDRs into ``asterisk_cdrs``, beside the SBC's CDRs in the panel.

    INSERT IGNORE on the (uniqueid, sequence) key makes a re-sent batch harmless.
    """

    name = "mariadb"

    def __init__(
        self, spool: Spool, metrics: ConnectorMetrics, connect_args: dict[str, Any], *, batch_size: int = 500
    ) -> None:
        super().__init__(spool, metrics)
        self._db_init(connect_args)
        self.batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdr-mariadb")
        self._conn: pymysql.connections.Connection | None = None

    async def run(self) -> None:
        try:
            while True:
                items = await self.spool.fetch(self.name, self.cursor, self.batch_size)
                if not items:
                    await self._wait(self.poll_interval)
                    continue
                await self.deliver(items)
                self.cursor = items[-1].id
        finally:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
            self._executor.shutdown(wait=False)

    async def deliver(self, items: list[SpoolItem]) -> None:
        backoff = Backoff(1.0, 30.0)
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._executor, self._insert, [db_row(i.record) for i in items])
            except _DATA_ERRORS as exc:
                if len(items) == 1:
                    await self.spool.mark(self.name, [items[0].id], DEAD, f"MariaDB: {exc}")
                    self.metrics.cdrs_dead_lettered.inc(sink=self.name)
                    log.error("CDR %s refused by MariaDB (%s); kept as a dead letter", items[0].record.key, exc)
                    return
                half = len(items) // 2
                await self.deliver(items[:half])
                await self.deliver(items[half:])
                return
            except (pymysql.err.MySQLError, OSError) as exc:
                self.metrics.cdrs_failed.inc(len(items), sink=self.name)
                delay = backoff.next_delay()
                log.warning("MariaDB CDR store unavailable (%s); retrying in %.1fs", exc, delay)
                await loop.run_in_executor(self._executor, self._close)
                await asyncio.sleep(delay)
                continue
            await self.spool.mark(self.name, [item.id for item in items])
            self.metrics.cdrs_sent.inc(len(items), sink=self.name)
            return

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        self._write(_INSERT, rows)


# The panel's recording list --------------------------------------------------------

_RECORDING_STATUS = {"uploaded": "uploaded", "deleted": "uploaded", "failed": "failed", "rejected": "failed"}
_RECORDING_UPSERT = (
    "INSERT INTO asterisk_recordings (uniqueid, linkedid, path, path_sha256, size_bytes, duration_seconds, status,"
    " error, attempts, uploaded_at, deleted_at, host) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON DUPLICATE KEY UPDATE uniqueid = VALUES(uniqueid), linkedid = VALUES(linkedid), size_bytes ="
    " VALUES(size_bytes), duration_seconds = VALUES(duration_seconds), status = VALUES(status), error ="
    " VALUES(error), attempts = VALUES(attempts), uploaded_at = VALUES(uploaded_at), deleted_at = VALUES(deleted_at)"
)


def _db_epoch(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def recording_row(state: dict[str, Any]) -> tuple[Any, ...]:
    """A spool ``recordings`` row as an ``asterisk_recordings`` row (times in UTC)."""
    path = str(state["path"])
    status = _RECORDING_STATUS.get(state["status"], "skipped")
    duration = state.get("duration")
    return (
        state.get("uniqueid"),
        state.get("linkedid"),
        path[:1024],
        hashlib.sha256(path.encode("utf-8")).hexdigest(),
        int(state["size"]),
        None if duration is None else round(float(duration), 2),
        status,
        (state.get("error") or None) and str(state["error"])[:1024],
        int(state.get("attempts") or 0),
        _db_epoch(state.get("uploaded_at")),
        _db_epoch(state.get("deleted_at")),
        HOSTNAME,
    )


class MariaDbRecordingSink(_MariaDbWriter):
    """Mirrors the recording watcher's state (kept in the spool) into ``asterisk_recordings``.

    The spool row is the truth; a row is flagged synced only when MariaDB took the
    version that was read, so a database outage delays the panel's list but loses
    nothing, and a restart picks up where it stopped.
    """

    name = "mariadb-recordings"

    def __init__(self, spool: Spool, connect_args: dict[str, Any], *, poll_interval: float = 5.0) -> None:
        self.spool = spool
        self._db_init(connect_args)
        self.poll_interval = poll_interval
        self.wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rec-mariadb")
        self._conn: pymysql.connections.Connection | None = None

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(1.0, 60.0)
        try:
            while True:
                rows = await self.spool.recordings_to_sync()
                if rows:
                    try:
                        await loop.run_in_executor(self._executor, self._upsert, [recording_row(r) for r in rows])
                    except (pymysql.err.MySQLError, OSError) as exc:
                        delay = backoff.next_delay()
                        log.warning("MariaDB recording list unavailable (%s); retrying in %.1fs", exc, delay)
                        await loop.run_in_executor(self._executor, self._close)
                        await asyncio.sleep(delay)
                        continue
                    backoff.reset()
                    await self.spool.mark_recordings_synced([(r["path"], r["updated_at"]) for r in rows])
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self.wake.wait()
                self.wake.clear()
        finally:
            await loop.run_in_executor(self._executor, self._close)
            self._executor.shutdown(wait=False)

    def _upsert(self, rows: list[tuple[Any, ...]]) -> None:
        self._write(_RECORDING_UPSERT, rows)
