"""Upload finished call recordings, linked to their CDR by UniqueID.

watchdog reports file activity from its own thread; the event loop is told with
``call_soon_threadsafe`` and decides when a file is finished: size and mtime
unchanged for RECORDING_STABILIZATION_TIME and, for a file named after a call's
UniqueID, that call's CDR in the spool (Asterisk raises it at hangup), waiting at
most RECORDING_CDR_WAIT for it. Each file's state lives in the
spool database, so a restart resumes: pending and failed uploads are retried,
and an uploaded file is never uploaded again. A file is deleted (when
RECORDING_DELETE_AFTER_UPLOAD is on) only after the API confirmed it and that
confirmation is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from centralita.asterisk.ami import Backoff
from centralita.connector.http import ApiClient, TransportError
from centralita.connector.metrics import ConnectorMetrics
from centralita.connector.settings import ConnectorSettings
from centralita.connector.spool import Spool
from centralita.connector.tasks import cancel_and_wait

log = logging.getLogger(__name__)

UPLOAD_PATH = "/mqs/recording"
# Asterisk UniqueIDs are "<epoch seconds>.<counter>", e.g. 1763812345.42; MixMonitor file
# names built from ${UNIQUEID} carry one.
UNIQUEID_RE = re.compile(r"(?<![\d.])(\d{10}\.\d+)(?![\d])")

PENDING, UPLOADED, FAILED, REJECTED, SKIPPED, DELETED = (
    "pending",
    "uploaded",
    "failed",
    "rejected",
    "skipped",
    "deleted",
)


def uniqueid_from_name(name: str) -> str | None:
    match = UNIQUEID_RE.search(name)
    return match.group(1) if match else None


# Durations from the file header ----------------------------------------------------


def wav_duration(head: bytes, file_size: int) -> float | None:
    """Seconds of a RIFF/WAVE file: data size over byte rate (fmt chunk)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    position, byte_rate = 12, None
    while position + 8 <= len(head):
        chunk_id, chunk_size = head[position : position + 4], struct.unpack_from("<I", head, position + 4)[0]
        body = position + 8
        if chunk_id == b"fmt " and body + 12 <= len(head):
            byte_rate = struct.unpack_from("<I", head, body + 8)[0]
        elif chunk_id == b"data":
            if not byte_rate:
                return None
            # A recording still open (or written by a crashed process) has size 0 or
            # 0xFFFFFFFF here: the bytes on disk are the truth then.
            available = file_size - body
            size = chunk_size if 0 < chunk_size <= available else available
            return size / byte_rate
        position = body + chunk_size + (chunk_size & 1)
    return None


_MP3_BITRATES = {
    # (version_bits, layer_bits) -> kbit/s table for index 1..14
    3: (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1 layer III
    2: (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2/2.5 layer III
}


def mp3_duration(head: bytes, file_size: int) -> float | None:
    """Seconds of a constant-bit-rate MP3, from the first frame header (after any ID3v2 tag)."""
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        start = 10 + size
    for position in range(start, max(start, len(head) - 4)):
        if head[position] == 0xFF and (head[position + 1] & 0xE0) == 0xE0:
            version = (head[position + 1] >> 3) & 0x03
            layer = (head[position + 1] >> 1) & 0x03
            index = (head[position + 2] >> 4) & 0x0F
            if layer != 1 or index in (0, 15) or version == 1:
                continue
            kbps = _MP3_BITRATES[3 if version == 3 else 2][index - 1]
            return (file_size - position) * 8 / (kbps * 1000)
    return None


def gsm_duration(file_size: int) -> float:
    """Raw GSM 06.10 as Asterisk writes it: 33-byte frames of 20 ms."""
    return file_size / 1650


def audio_duration(path: Path) -> float | None:
    """Duration read from the file itself; None when the format is not understood."""
    size = path.stat().st_size
    suffix = path.suffix.lower()
    if suffix == ".gsm":
        return gsm_duration(size)
    with path.open("rb") as handle:
        head = handle.read(64 * 1024)
    if suffix in (".wav", ".wav49") or head[:4] == b"RIFF":
        return wav_duration(head, size)
    if suffix == ".mp3":
        return mp3_duration(head, size)
    return None


# Selection --------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingRules:
    extensions: tuple[str, ...]
    min_size: int
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    min_duration: float
    max_age_hours: float

    @classmethod
    def from_settings(cls, s: ConnectorSettings) -> RecordingRules:
        return cls(
            tuple(e.lower() for e in s.recording_file_extensions),
            s.recording_min_file_size,
            tuple(s.recording_include_patterns),
            tuple(s.recording_exclude_patterns),
            s.recording_min_duration,
            s.recording_max_age_hours,
        )

    def wanted_name(self, path: Path) -> bool:
        """Cheap checks on the name alone (before a file is even finished)."""
        name = path.name
        if name.startswith(".") or path.suffix.lower() not in self.extensions:
            return False
        if self.include and not any(p in name for p in self.include):
            return False
        return not any(p in name for p in self.exclude)

    def skip_reason(self, path: Path, now: float) -> str | None:
        """Why a finished file is not uploaded, or None (blocking: reads the header)."""
        stat = path.stat()
        if stat.st_size < self.min_size:
            return "too_small"
        if self.max_age_hours and now - stat.st_mtime > self.max_age_hours * 3600:
            return "too_old"
        if self.min_duration > 0:
            duration = audio_duration(path)
            if duration is not None and duration < self.min_duration:
                return "too_short"
        return None


class _Handler(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, seen: Callable[[Path], None]) -> None:
        self._loop = loop
        self._seen = seen

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        target = getattr(event, "dest_path", "") or event.src_path
        if isinstance(target, bytes):
            target = os.fsdecode(target)
        self._loop.call_soon_threadsafe(self._seen, Path(target))


class RecordingWatcher:
    def __init__(
        self,
        settings: ConnectorSettings,
        spool: Spool,
        api: ApiClient,
        metrics: ConnectorMetrics,
        *,
        tick: float = 0.25,
        retry_initial: float = 5.0,
        retry_maximum: float = 600.0,
        retry_check: float = 5.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.api = api
        self.metrics = metrics
        self.rules = RecordingRules.from_settings(settings)
        self.tick = tick
        self.retry_initial = retry_initial
        self.retry_maximum = retry_maximum
        self.retry_check = retry_check
        self._on_change = on_change or (lambda: None)
        self._watching: dict[Path, tuple[int, float, float]] = {}  # path -> (size, mtime, unchanged since)
        self._ready: asyncio.Queue[Path] = asyncio.Queue()
        self.hostname = socket.gethostname()

    def seen(self, path: Path) -> None:
        if self.rules.wanted_name(path) and path not in self._watching:
            self._watching[path] = (-1, -1.0, 0.0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        observer = Observer()
        handler = _Handler(loop, self.seen)
        for directory in self.settings.recording_watch_paths:
            if not directory.is_dir():
                log.error("recording directory %s does not exist (RECORDING_WATCH_PATHS): not watched", directory)
                continue
            observer.schedule(handler, str(directory), recursive=True)
        observer.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._resume()
            if self.settings.recording_process_existing:
                for path in await asyncio.to_thread(self._existing_files):
                    self.seen(path)
            tasks = [
                asyncio.create_task(self._stabilise_loop(), name="recordings-stabilise"),
                asyncio.create_task(self._upload_loop(), name="recordings-upload"),
                asyncio.create_task(self._retry_loop(), name="recordings-retry"),
            ]
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(tasks)
            observer.stop()
            await asyncio.to_thread(observer.join, 5)

    def _existing_files(self) -> list[Path]:
        found: list[Path] = []
        for directory in self.settings.recording_watch_paths:
            if directory.is_dir():
                found += [p for p in directory.rglob("*") if p.is_file() and self.rules.wanted_name(p)]
        return found

    async def _resume(self) -> None:
        for status in (PENDING, FAILED):
            for row in await self.spool.recordings_with_status(status):
                path = Path(row["path"])
                if path.exists():  # noqa: ASYNC240
                    await self._ready.put(path)
        for row in await self.spool.recordings_with_status(UPLOADED):
            if self.settings.recording_delete_after_upload and Path(row["path"]).exists():  # noqa: ASYNC240
                await self._delete(Path(row["path"]))

    async def _stabilise_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            if not self._watching:
                continue
            now = time.monotonic()
            stats = await asyncio.to_thread(_stat_many, list(self._watching))
            for path, stat in stats.items():
                if stat is None:
                    self._watching.pop(path, None)
                    continue
                size, mtime, since = self._watching[path]
                if (stat.st_size, stat.st_mtime) != (size, mtime):
                    self._watching[path] = (stat.st_size, stat.st_mtime, now)
                elif now - since >= self.settings.recording_stabilization_time:
                    if now - since < self.settings.recording_cdr_wait and await self._call_still_up(path):
                        continue
                    self._watching.pop(path, None)
                    await self._ready.put(path)

    async def _call_still_up(self, path: Path) -> bool:
        """A file named after a call whose CDR has not arrived yet belongs to a call still up.

        MixMonitor writes in bursts, so a live call's file can sit unchanged for longer
        than the stabilisation time; Asterisk raises the CDR only at hangup, which makes
        it the reliable "finished" signal. RECORDING_CDR_WAIT bounds the wait for files
        whose CDR never comes (CDRs disabled, a name that only looks like a UniqueID).
        """
        uniqueid = uniqueid_from_name(path.name)
        return uniqueid is not None and await self.spool.linkedid_of(uniqueid) is None

    async def _upload_loop(self) -> None:
        while True:
            path = await self._ready.get()
            await self.process(path)

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retry_check)
            now = time.time()
            for row in await self.spool.recordings_with_status(FAILED):
                if row["next_try"] <= now and Path(row["path"]).exists():  # noqa: ASYNC240
                    await self._ready.put(Path(row["path"]))

    async def process(self, path: Path) -> str:
        """Decide about one finished file and upload it; returns the resulting status."""
        key = str(path)
        try:
            stat = await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            return "gone"
        state = await self.spool.recording(key)
        if (
            state
            and state["status"] in (UPLOADED, DELETED, REJECTED, SKIPPED)
            and (
                state["size"],
                state["mtime"],
            )
            == (stat.st_size, stat.st_mtime)
        ):
            return state["status"]
        if state and state["status"] == FAILED and state["next_try"] > time.time():
            return FAILED
        reason = await asyncio.to_thread(self.rules.skip_reason, path, time.time())
        if reason is not None:
            self.metrics.recordings_skipped.inc(reason=reason)
            await self.spool.save_recording(key, size=stat.st_size, mtime=stat.st_mtime, status=SKIPPED, error=reason)
            self._on_change()
            log.info("recording %s skipped (%s)", path, reason)
            return SKIPPED
        uniqueid = uniqueid_from_name(path.name)
        attempts = (state or {}).get("attempts", 0) + 1
        linkedid = await self.spool.linkedid_of(uniqueid) if uniqueid else None
        duration = await asyncio.to_thread(_safe_duration, path)
        await self.spool.save_recording(
            key,
            size=stat.st_size,
            mtime=stat.st_mtime,
            uniqueid=uniqueid,
            linkedid=linkedid or uniqueid,
            duration=duration,
            status=PENDING,
            attempts=attempts,
        )
        return await self._upload(path, uniqueid, linkedid, duration, attempts)

    async def _upload(
        self, path: Path, uniqueid: str | None, linkedid: str | None, duration: float | None, attempts: int
    ) -> str:
        key = str(path)
        fields = {
            "recording_id": uniqueid or path.name,
            "call_id": uniqueid or "",
            "linkedid": linkedid or uniqueid or "",
            "file_name": path.name,
        }
        if duration is not None:
            fields["duration"] = f"{duration:.2f}"
        headers = {
            "X-Asterisk-Hostname": self.hostname,
            "Idempotency-Key": "rec-" + hashlib.sha256(f"{self.hostname}:{key}".encode()).hexdigest()[:40],
        }
        try:
            reply = await self.api.post_file(UPLOAD_PATH, fields, "audio", path, headers)
        except (TransportError, OSError) as exc:
            return await self._failed(path, attempts, f"upload failed: {exc}")
        self.metrics.api_request_duration.observe(reply.seconds, endpoint="recording")
        if 200 <= reply.status < 300 or reply.status == 409:
            await self.spool.save_recording(key, status=UPLOADED, error=None, uploaded_at=time.time())
            self._on_change()
            self.metrics.recordings_uploaded.inc()
            log.info("recording %s uploaded (call %s)", path, uniqueid or "unknown")
            if self.settings.recording_delete_after_upload:
                await self._delete(path)
            return UPLOADED
        if reply.status in (401, 403, 408, 425, 429) or reply.status >= 500:
            return await self._failed(path, attempts, f"HTTP {reply.status}: {reply.body[:200]}")
        self.metrics.recordings_failed.inc()
        await self.spool.save_recording(key, status=REJECTED, error=f"HTTP {reply.status}: {reply.body[:500]}")
        self._on_change()
        log.error(
            "recording %s refused by the API with HTTP %d (%s); kept on disk", path, reply.status, reply.body[:200]
        )
        return REJECTED

    async def _failed(self, path: Path, attempts: int, error: str) -> str:
        self.metrics.recordings_failed.inc()
        backoff = Backoff(self.retry_initial, self.retry_maximum)
        backoff.attempt = min(attempts - 1, 10)
        delay = backoff.next_delay()
        await self.spool.save_recording(str(path), status=FAILED, error=error, next_try=time.time() + delay)
        self._on_change()
        log.warning("recording %s: %s; retrying in %.0fs", path, error, delay)
        return FAILED

    async def _delete(self, path: Path) -> None:
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("recording %s uploaded but could not be deleted: %s", path, exc)
            return
        await self.spool.save_recording(str(path), status=DELETED, deleted_at=time.time())
        self._on_change()


def _stat_many(paths: Iterable[Path]) -> dict[Path, os.stat_result | None]:
    out: dict[Path, os.stat_result | None] = {}
    for path in paths:
        try:
            out[path] = path.stat()
        except FileNotFoundError:
            out[path] = None
    return out


def _safe_duration(path: Path) -> float | None:
    with contextlib.suppress(OSError, struct.error):
        return audio_duration(path)
    return None
