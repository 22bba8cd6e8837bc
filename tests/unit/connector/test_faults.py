"""Fault tests against the stand-in Asterisk (AMI + cdr_custom CSV) and the stand-in CDR API.

The receiver must end with every CDR exactly once whatever breaks on the way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from centralita.asterisk.ami import AmiAuthError, AmiClient, AmiConnection
from centralita.connector.service import Connector
from centralita.fakes.ami_server import FakeAmiServer, sample_cdr
from centralita.fakes.cdr_api import FakeCdrApi


def keys_for(numbers) -> set[str]:
    return {f"{1763800000 + n // 1000}.{n}:{n}" for n in numbers}


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def start_connector(make_settings, tmp_path: Path, ami: FakeAmiServer, api: FakeCdrApi, **extra: str):
    settings = make_settings(tmp_path, ami.port, api.base_url, **extra)
    connector = Connector(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    await wait_until(lambda: ami.clients >= 1, 10, "the connector to log in")
    return connector, stop, task


def test_burst_of_20000_cdrs_arrives_exactly_once(tmp_path, csv_path, settings_factory):
    async def scenario():
        ami = FakeAmiServer(csv_path=csv_path, fragment=True)
        await ami.start()
        api = FakeCdrApi()
        api.start()
        try:
            connector, stop, task = await start_connector(
                settings_factory, tmp_path, ami, api, CDR_BATCH_SIZE="500", AMI_PING_TIMEOUT="5"
            )
            ami.emit_many([sample_cdr(n) for n in range(20000)])
            await wait_until(lambda: api.count() >= 20000, 90, "20000 CDRs at the API")
            await asyncio.sleep(0.5)
            stop.set()
            await task
            return api.keys(), api.summary(), connector.metrics.cdrs_processed.value()
        finally:
            await ami.stop()
            api.stop()

    keys, summary, processed = asyncio.run(scenario())
    assert keys == keys_for(range(20000))
    assert summary["duplicate_deliveries"] == 0
    assert processed == 20000


def test_api_down_then_up_loses_nothing(tmp_path, csv_path, settings_factory):
    async def scenario():
        ami = FakeAmiServer(csv_path=csv_path)
        await ami.start()
        api = FakeCdrApi()
        api.start()
        try:
            connector, stop, task = await start_connector(settings_factory, tmp_path, ami, api)
            ami.emit_many([sample_cdr(n) for n in range(200)])
            await wait_until(lambda: api.count() >= 200, 20, "the first CDRs")
            api.stop()
            ami.emit_many([sample_cdr(n) for n in range(200, 1200)])
            await asyncio.sleep(2)
            failed_while_down = connector.metrics.cdrs_failed.value(sink="api")
            api.fail_next(3, 503)
            api.start()
            await wait_until(lambda: api.count() >= 1200, 30, "the CDRs kept while the API was down")
            stop.set()
            await task
            return api.keys(), api.summary(), failed_while_down
        finally:
            await ami.stop()
            api.stop()

    keys, summary, failed_while_down = asyncio.run(scenario())
    assert keys == keys_for(range(1200))
    assert summary["duplicate_deliveries"] == 0
    assert failed_while_down > 0


def test_refused_cdr_goes_to_dead_letters_and_the_rest_is_delivered(tmp_path, csv_path, settings_factory):
    async def scenario():
        ami = FakeAmiServer(csv_path=csv_path)
        await ami.start()
        api = FakeCdrApi()
        api.start()
        bad = next(iter(keys_for([37])))
        api.reject(bad)
        try:
            connector, stop, task = await start_connector(settings_factory, tmp_path, ami, api)
            ami.emit_many([sample_cdr(n) for n in range(100)])
            await wait_until(lambda: api.count() >= 99, 20, "the good CDRs")
            await wait_until(lambda: connector.metrics.cdrs_dead_lettered.value(sink="api") == 1, 5, "dead letter")
            letters = await connector.spool.dead_letters("api")
            stop.set()
            await task
            return api.keys(), letters, bad
        finally:
            await ami.stop()
            api.stop()

    keys, letters, bad = asyncio.run(scenario())
    assert keys == keys_for(range(100)) - {bad}
    assert [record.key for _id, record, _error in letters] == [bad]
    assert letters[0][2].startswith("HTTP 400")


def test_ami_restart_recovers_cdrs_raised_while_disconnected(tmp_path, csv_path, settings_factory):
    async def scenario():
        ami = FakeAmiServer(csv_path=csv_path)
        await ami.start()
        api = FakeCdrApi()
        api.start()
        try:
            connector, stop, task = await start_connector(settings_factory, tmp_path, ami, api)
            ami.emit_many([sample_cdr(n) for n in range(300)])
            await wait_until(lambda: api.count() >= 300, 20, "CDRs before the restart")
            await ami.stop()
            ami.emit_many([sample_cdr(n) for n in range(300, 600)])  # CSV only: nobody on AMI
            await asyncio.sleep(0.5)
            await ami.start()
            await wait_until(lambda: ami.clients >= 1, 15, "the reconnect")
            ami.emit_many([sample_cdr(n) for n in range(600, 700)])
            await wait_until(lambda: api.count() >= 700, 20, "all CDRs")
            stop.set()
            await task
            return api.keys(), api.summary(), connector.metrics.cdrs_backfilled.value()
        finally:
            await ami.stop()
            api.stop()

    keys, summary, backfilled = asyncio.run(scenario())
    assert keys == keys_for(range(700))
    assert summary["duplicate_deliveries"] == 0
    assert backfilled >= 300


def test_half_open_ami_is_detected_by_ping_and_the_client_reconnects():
    async def scenario():
        ami = FakeAmiServer()
        await ami.start()
        states: list[bool] = []
        client = AmiClient(
            "127.0.0.1",
            ami.port,
            "connector",
            "secret",
            on_event=lambda _m: None,
            on_state=states.append,
            ping_interval=0.2,
            ping_timeout=0.3,
        )
        task = asyncio.create_task(client.run())
        try:
            await wait_until(lambda: client.connects == 1, 5, "first login")
            ami.silent = True
            await wait_until(lambda: states.count(False) >= 1, 5, "the half-open connection to be noticed")
            ami.silent = False
            await wait_until(lambda: client.connects >= 2, 10, "a new login")
            return states
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ami.stop()

    states = asyncio.run(scenario())
    assert states[:3] == [True, False, True]


def test_wrong_ami_secret_is_an_auth_error():
    async def scenario():
        ami = FakeAmiServer()
        await ami.start()
        try:
            await AmiConnection.open("127.0.0.1", ami.port, "connector", "wrong", timeout=2)
        finally:
            await ami.stop()

    try:
        asyncio.run(scenario())
    except AmiAuthError as exc:
        assert "refused" in str(exc)
    else:
        raise AssertionError("login with a wrong secret succeeded")


def _env_file(tmp_path: Path, ami_port: int, api_url: str) -> Path:
    path = tmp_path / "connector.env"
    path.write_text(
        "\n".join(
            [
                "API_KEY=sk_test",
                "AMI_HOST=127.0.0.1",
                f"AMI_PORT={ami_port}",
                "AMI_USERNAME=connector",
                "AMI_PASSWORD=secret",
                f"CDR_API_BASE_URL={api_url}",
                f"CDR_SPOOL_DIR={tmp_path / 'spool'}",
                f"CDR_BACKFILL_PATH={tmp_path / 'cdr-custom' / 'centralita.csv'}",
                "CDR_TIMEZONE=America/Bogota",
                "CDR_BATCH_SIZE=200",
                "CDR_BATCH_IN_FLIGHT=4",
                "CDR_BATCH_TIMEOUT=0.5",
                "CDR_BATCH_FORCE_TIMEOUT=0.2",
                "MONITORING_ENABLED=false",
                "API_RETRY_MAX_DELAY=0.5",
                "CDR_BACKFILL_INTERVAL=1",
                "AMI_PING_TIMEOUT=5",
            ]
        )
        + "\n"
    )
    return path


def test_sigkill_mid_batch_then_restart_delivers_every_cdr_once(tmp_path, csv_path, settings_factory):
    async def scenario():
        ami = FakeAmiServer(csv_path=csv_path)
        await ami.start()
        api = FakeCdrApi()
        api.delay = 0.05  # batches are in flight when the kill lands
        api.start()
        env_file = _env_file(tmp_path, ami.port, api.base_url)
        command = [sys.executable, "-m", "centralita.connector", "--env-file", str(env_file)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        first = await asyncio.create_subprocess_exec(*command, env=env, stderr=asyncio.subprocess.DEVNULL)
        second = None
        try:
            await wait_until(lambda: ami.clients >= 1, 20, "the connector process to log in")
            ami.emit_many([sample_cdr(n) for n in range(5000)])
            await wait_until(lambda: api.count() >= 1000, 30, "deliveries to start")
            first.kill()  # SIGKILL: no cleanup at all
            await first.wait()
            ami.emit_many([sample_cdr(n) for n in range(5000, 6000)])  # raised while it is dead
            second = await asyncio.create_subprocess_exec(*command, env=env, stderr=asyncio.subprocess.DEVNULL)
            await wait_until(lambda: api.count() >= 6000, 60, "every CDR after the restart")
            await asyncio.sleep(1)
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 15) == 0
            return api.keys(), api.summary()
        finally:
            for process in (first, second):
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()
            await ami.stop()
            api.stop()

    keys, summary = asyncio.run(scenario())
    assert keys == keys_for(range(6000))
    # The batches sent but not yet marked when the kill landed (at most CDR_BATCH_IN_FLIGHT
    # of CDR_BATCH_SIZE) are sent again with the same idempotency keys; the receiver
    # recognises them, so it still holds each CDR once.
    assert summary["records"] == 6000
    assert summary["duplicate_keys"] <= 4 * 200
