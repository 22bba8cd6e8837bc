"""The recording watcher against real files, real watchdog and the stand-in CDR API over HTTP.

Audio files are real: WAV and GSM made by sox, speech by espeak-ng, MP3 built
from genuine MPEG-1 layer III frame headers (sox here has no MP3 encoder).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from centralita.connector.cdr import record_from_fields, resolve_timezone
from centralita.connector.http import ApiClient
from centralita.connector.metrics import ConnectorMetrics
from centralita.connector.recordings import (
    DELETED,
    FAILED,
    REJECTED,
    SKIPPED,
    UPLOADED,
    RecordingWatcher,
    audio_duration,
    uniqueid_from_name,
)
from centralita.connector.spool import Spool
from centralita.fakes.ami_server import sample_cdr
from centralita.fakes.cdr_api import FakeCdrApi

ZONE = resolve_timezone("UTC")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed to make real audio files (apt-get install {name})", pytrace=False)
    return path


def sox_audio(path: Path, seconds: float, rate: int = 8000) -> Path:
    """A real recording as Asterisk would write it: 8 kHz mono (WAV 16-bit, or raw GSM)."""
    subprocess.run(
        [_tool("sox"), "-n", "-r", str(rate), "-c", "1", *(["-b", "16"] if path.suffix == ".wav" else []), str(path),
         "synth", str(seconds), "sine", "440"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return path


def speech_wav(path: Path, text: str = "hola, buenas tardes, le habla la central") -> Path:
    subprocess.run([_tool("espeak-ng"), "-v", "es", "-w", str(path), text], check=True, capture_output=True, timeout=30)
    return path


def mp3_file(path: Path, frames: int, *, id3: bool = True) -> Path:
    """CBR MPEG-1 layer III, 128 kbit/s, 44.1 kHz: 417-byte frames of 1152 samples each."""
    header = bytes([0xFF, 0xFB, 0x90, 0x64])
    frame = header + bytes(417 - len(header))
    tag = b""
    if id3:
        body = b"TIT2" + (6).to_bytes(4, "big") + b"\x00\x00" + b"\x00call"
        size = len(body)
        tag = b"ID3\x04\x00\x00" + bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
        tag += body
    path.write_bytes(tag + frame * frames)
    return path


def soxi_seconds(path: Path) -> float:
    done = subprocess.run([_tool("soxi"), "-D", str(path)], check=True, capture_output=True, text=True, timeout=30)
    return float(done.stdout)


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Rig:
    """A watcher over ``watch`` with its spool in ``state``, uploading to a stand-in API."""

    def __init__(self, tmp_path: Path, api: FakeCdrApi, make_settings, **env: str) -> None:
        self.watch = tmp_path / "monitor"
        self.watch.mkdir(exist_ok=True)
        settings_env = {
            "RECORDING_WATCHER_ENABLED": "true",
            "RECORDING_WATCH_PATHS": str(self.watch),
            "RECORDING_STABILIZATION_TIME": "0.4",
            "RECORDING_CDR_WAIT": "0",
            "RECORDING_MIN_FILE_SIZE": "1024",
        }
        settings_env.update(env)
        self.settings = make_settings(tmp_path, 5038, api.base_url, **settings_env)
        self.api = api
        self.metrics = ConnectorMetrics.create()
        self.spool = Spool(self.settings.cdr_spool_dir)
        self.client = ApiClient(api.base_url, "sk_test", timeout=5)
        self.watcher: RecordingWatcher | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> RecordingWatcher:
        await self.spool.open()
        self.watcher = RecordingWatcher(
            self.settings, self.spool, self.client, self.metrics, tick=0.05, retry_initial=0.3, retry_check=0.1
        )
        self.task = asyncio.create_task(self.watcher.run())
        await asyncio.sleep(0.3)  # the observer is scheduled
        return self.watcher

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=10)
            assert self.task.done(), "the watcher did not stop"
        self.client.close()
        await self.spool.close()

    async def status(self, path: Path) -> str | None:
        state = await self.spool.recording(str(path))
        return state["status"] if state else None

    async def wait_status(self, path: Path, status: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while (current := await self.status(path)) != status:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path.name}: status {current!r}, expected {status!r}")
            await asyncio.sleep(0.05)


@pytest.fixture
def api():
    server = FakeCdrApi()
    server.start()
    yield server
    server.stop()


def uploads(api: FakeCdrApi) -> list[dict]:
    with api.lock:
        return list(api.state.recordings)


# -- durations read from the file headers -------------------------------------------------


def test_wav_gsm_and_speech_durations_come_from_the_header_and_match_sox(tmp_path):
    wav = sox_audio(tmp_path / "a.wav", 3.5)
    gsm = sox_audio(tmp_path / "a.gsm", 2.0)
    speech = speech_wav(tmp_path / "speech.wav")

    assert audio_duration(wav) == pytest.approx(3.5, abs=0.01)
    assert audio_duration(gsm) == pytest.approx(2.0, abs=0.03)  # raw GSM: no header, 33 bytes per 20 ms
    assert audio_duration(speech) == pytest.approx(soxi_seconds(speech), abs=0.01)


def test_mp3_duration_skips_the_id3_tag_and_counts_constant_bitrate_frames(tmp_path):
    mp3 = mp3_file(tmp_path / "call.mp3", frames=115)  # 115 x 26.12 ms

    assert audio_duration(mp3) == pytest.approx(115 * 1152 / 44100, abs=0.02)


def test_wav_still_being_written_uses_the_bytes_on_disk(tmp_path):
    wav = sox_audio(tmp_path / "open.wav", 2.0)
    data = bytearray(wav.read_bytes())
    data[40:44] = b"\xff\xff\xff\xff"  # what a recorder that has not closed the file leaves there
    wav.write_bytes(bytes(data))

    assert audio_duration(wav) == pytest.approx(2.0, abs=0.01)


def test_uniqueid_is_found_in_mixmonitor_names_but_not_in_other_numbers():
    assert uniqueid_from_name("1763812345.42.wav") == "1763812345.42"
    assert uniqueid_from_name("out-3001234567-1763812345.7.gsm") == "1763812345.7"
    assert uniqueid_from_name("queue-200.wav") is None


# -- the watcher --------------------------------------------------------------------------


def test_finished_recording_is_uploaded_once_linked_to_its_cdr(tmp_path, api, settings_factory):
    async def scenario():
        rig = Rig(tmp_path, api, settings_factory)
        await rig.start()
        try:
            cdr = record_from_fields(sample_cdr(5, uniqueid="1763812345.42", linkedid="1763812300.1"), ZONE)
            await rig.spool.add([(cdr, None)], "ami")
            path = sox_audio(rig.watch / "1763812345.42.wav", 2.0)
            await rig.wait_status(path, UPLOADED)
            await asyncio.sleep(0.6)  # later events for the same file must not upload it again
            return path, uploads(api), rig.metrics.recordings_uploaded.value()
        finally:
            await rig.stop()

    path, received, uploaded = asyncio.run(scenario())
    assert len(received) == 1 and uploaded == 1
    (upload,) = received
    assert upload["recording_id"] == "1763812345.42"
    assert upload["call_id"] == "1763812345.42"
    assert upload["linkedid"] == "1763812300.1"
    assert upload["filename"] == "1763812345.42.wav"
    assert upload["size"] == path.stat().st_size
    assert float(upload["duration"]) == pytest.approx(2.0, abs=0.01)
    assert path.exists()  # RECORDING_DELETE_AFTER_UPLOAD is off by default


def test_stable_recording_of_a_call_still_up_waits_for_the_calls_cdr(tmp_path, api, settings_factory):
    async def scenario():
        rig = Rig(tmp_path, api, settings_factory, RECORDING_CDR_WAIT="30")
        await rig.start()
        try:
            waiting = sox_audio(rig.watch / "1763812345.90.wav", 2.0)
            orphan = sox_audio(rig.watch / "monitor-no-call.wav", 2.0)  # no UniqueID in the name: no CDR to wait for
            await rig.wait_status(orphan, UPLOADED)
            await asyncio.sleep(1.5)  # stable for well over RECORDING_STABILIZATION_TIME
            before_cdr = await rig.status(waiting)
            cdr = record_from_fields(sample_cdr(90, uniqueid="1763812345.90", linkedid="1763812345.89"), ZONE)
            await rig.spool.add([(cdr, None)], "ami")  # the call hung up
            await rig.wait_status(waiting, UPLOADED)
            return before_cdr, [u["linkedid"] for u in uploads(api) if u["recording_id"] == "1763812345.90"]
        finally:
            await rig.stop()

    before_cdr, linked = asyncio.run(scenario())
    assert before_cdr is None
    assert linked == ["1763812345.89"]


def test_recording_whose_cdr_never_comes_is_uploaded_after_the_wait(tmp_path, api, settings_factory):
    async def scenario():
        rig = Rig(tmp_path, api, settings_factory, RECORDING_CDR_WAIT="1.5")
        await rig.start()
        try:
            path = sox_audio(rig.watch / "1763812345.91.wav", 2.0)
            started = time.monotonic()
            await rig.wait_status(path, UPLOADED)
            return time.monotonic() - started
        finally:
            await rig.stop()

    assert asyncio.run(scenario()) >= 1.4


def test_recording_is_uploaded_only_after_it_stops_growing(tmp_path, api, settings_factory):
    async def scenario():
        rig = Rig(tmp_path, api, settings_factory, RECORDING_STABILIZATION_TIME="0.8")
        await rig.start()
        try:
            source = sox_audio(tmp_path / "source.wav", 4.0).read_bytes()
            path = rig.watch / "1763812345.50.wav"
            with path.open("wb") as handle:  # MixMonitor appends as the call goes on
                for start in range(0, len(source), 8000):
                    handle.write(source[start : start + 8000])
                    handle.flush()
                    await asyncio.sleep(0.15)
                    assert uploads(api) == [], "uploaded while still being written"
            await rig.wait_status(path, UPLOADED)
            return uploads(api), len(source)
        finally:
            await rig.stop()

    received, size = asyncio.run(scenario())
    assert [r["size"] for r in received] == [size]


def test_include_exclude_size_and_duration_rules_choose_what_is_uploaded(tmp_path, api, settings_factory):
    async def scenario():
        rig = Rig(
            tmp_path,
            api,
            settings_factory,
            RECORDING_INCLUDE_PATTERNS="queue-,out-",
            RECORDING_EXCLUDE_PATTERNS="test,temp",
            RECORDING_MIN_DURATION="2",
            RECORDING_FILE_EXTENSIONS=".wav,.gsm,.mp3",
        )
        await rig.start()
        try:
            w = rig.watch
            wanted = [sox_audio(w / "queue-1763812345.1.wav", 3), sox_audio(w / "out-1763812345.2.gsm", 3)]
            wanted.append(mp3_file(w / "out-1763812345.3.mp3", frames=120))
            short = sox_audio(w / "queue-1763812345.4.wav", 1)
            tiny = w / "out-1763812345.5.wav"
            tiny.write_bytes(sox_audio(tmp_path / "t.wav", 0.01).read_bytes()[:500])
            for name in ("queue-test-1763812345.6.wav", "other-1763812345.7.wav", "out-1763812345.8.txt"):
                sox_audio(tmp_path / "x.wav", 3)
                shutil.copy(tmp_path / "x.wav", w / name)
            for path in wanted:
                await rig.wait_status(path, UPLOADED)
            await rig.wait_status(short, SKIPPED)
            await rig.wait_status(tiny, SKIPPED)
            await asyncio.sleep(0.8)
            reasons = {p.name: (await rig.spool.recording(str(p)))["error"] for p in (short, tiny)}
            ignored = [await rig.status(w / n) for n in ("queue-test-1763812345.6.wav", "other-1763812345.7.wav")]
            return sorted(r["filename"] for r in uploads(api)), reasons, ignored
        finally:
            await rig.stop()

    uploaded, reasons, ignored = asyncio.run(scenario())
    assert uploaded == ["out-1763812345.2.gsm", "out-1763812345.3.mp3", "queue-1763812345.1.wav"]
    assert reasons == {"queue-1763812345.4.wav": "too_short", "out-1763812345.5.wav": "too_small"}
    assert ignored == [None, None]  # excluded by name: never even looked at


def test_existing_files_are_processed_only_when_asked_and_old_ones_are_skipped(tmp_path, api, settings_factory):
    async def scenario(process_existing: str):
        sub = tmp_path / process_existing
        sub.mkdir()
        rig = Rig(sub, api, settings_factory, RECORDING_PROCESS_EXISTING=process_existing, RECORDING_MAX_AGE_HOURS="12")
        fresh = sox_audio(rig.watch / f"1763812345.{len(process_existing)}1.wav", 2)
        old = sox_audio(rig.watch / f"1763812345.{len(process_existing)}2.wav", 2)
        day_ago = time.time() - 86400
        os.utime(old, (day_ago, day_ago))
        await rig.start()
        try:
            if process_existing == "true":
                await rig.wait_status(fresh, UPLOADED)
                await rig.wait_status(old, SKIPPED)
            else:
                await asyncio.sleep(1.2)
            return await rig.status(fresh), await rig.status(old), (await rig.spool.recording(str(old)) or {})
        finally:
            await rig.stop()

    assert asyncio.run(scenario("false"))[:2] == (None, None)
    fresh, old, old_state = asyncio.run(scenario("true"))
    assert (fresh, old, old_state["error"]) == (UPLOADED, SKIPPED, "too_old")


def test_file_is_deleted_only_after_the_api_confirmed_it_and_failures_are_retried(tmp_path, api, settings_factory):
    async def scenario():
        rig = Rig(tmp_path, api, settings_factory, RECORDING_DELETE_AFTER_UPLOAD="true")
        api.fail_next(2, 503)
        await rig.start()
        try:
            path = sox_audio(rig.watch / "1763812345.60.wav", 2)
            await rig.wait_status(path, FAILED)
            exists_after_failure = path.exists()
            await rig.wait_status(path, DELETED, timeout=15)
            state = await rig.spool.recording(str(path))
            return exists_after_failure, path.exists(), state, uploads(api), rig.metrics.recordings_failed.value()
        finally:
            await rig.stop()

    exists_after_failure, exists_now, state, received, failures = asyncio.run(scenario())
    assert exists_after_failure and not exists_now
    assert failures == 2 and state["attempts"] == 3
    assert state["uploaded_at"] is not None and state["deleted_at"] >= state["uploaded_at"]
    assert [r["recording_id"] for r in received] == ["1763812345.60"]


def test_recording_the_api_refuses_is_kept_on_disk_and_not_deleted(tmp_path, api, settings_factory):
    async def scenario():
        rig = Rig(tmp_path, api, settings_factory, RECORDING_DELETE_AFTER_UPLOAD="true")
        api.fail_next(1, 400)
        await rig.start()
        try:
            path = sox_audio(rig.watch / "1763812345.70.wav", 2)
            await rig.wait_status(path, REJECTED)
            await asyncio.sleep(0.5)
            return path.exists(), (await rig.spool.recording(str(path)))["error"]
        finally:
            await rig.stop()

    exists, error = asyncio.run(scenario())
    assert exists and error.startswith("HTTP 400")


def test_state_on_disk_lets_a_restart_resume_failed_uploads_and_skip_done_ones(tmp_path, api, settings_factory):
    async def first_run():
        rig = Rig(tmp_path, api, settings_factory, RECORDING_PROCESS_EXISTING="true")
        await rig.start()
        try:
            done = sox_audio(rig.watch / "1763812345.80.wav", 2)
            await rig.wait_status(done, UPLOADED)
            api.stop()  # the API goes away
            waiting = sox_audio(rig.watch / "1763812345.81.wav", 2)
            await rig.wait_status(waiting, FAILED)
            return done, waiting
        finally:
            await rig.stop()

    async def second_run(done: Path, waiting: Path):
        api.start()
        rig = Rig(tmp_path, api, settings_factory, RECORDING_PROCESS_EXISTING="true")
        await rig.start()
        try:
            await rig.wait_status(waiting, UPLOADED, timeout=15)
            await asyncio.sleep(0.8)
            return await rig.status(done)
        finally:
            await rig.stop()

    done, waiting = asyncio.run(first_run())
    assert asyncio.run(second_run(done, waiting)) == UPLOADED
    assert sorted(r["recording_id"] for r in uploads(api)) == ["1763812345.80", "1763812345.81"]
