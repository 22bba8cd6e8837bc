"""The connector benchmark: CDRs per second from AMI through filters, spool and the batch sink.

The stand-in Asterisk and the stand-in API run in a child process, so the
connector (this process) has its core to itself. Each CDR carries its emission
time in UserField; the API stand-in notes when it accepted it, which gives the
end-to-end lag per CDR.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from centralita.config import load_settings
from centralita.connector.service import Connector
from centralita.connector.settings import ConnectorSettings


@dataclass(frozen=True)
class BenchResult:
    count: int
    received: int
    seconds: float
    rate: float
    lag_p50: float
    lag_p99: float
    duplicates: int


def _stand_ins(pipe: Connection, count: int, csv_path: str) -> None:
    from centralita.fakes.ami_server import FakeAmiServer, sample_cdr
    from centralita.fakes.cdr_api import FakeCdrApi

    async def main() -> None:
        api = FakeCdrApi()
        api.start()
        ami = FakeAmiServer(csv_path=Path(csv_path))
        await ami.start()
        pipe.send((ami.port, api.base_url))
        while ami.clients == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.to_thread(pipe.recv)  # go
        started = time.time()
        chunk = 500
        for first in range(0, count, chunk):
            rows = [sample_cdr(n, userfield=f"{time.time():.6f}") for n in range(first, min(count, first + chunk))]
            ami.emit_many(rows)
            await asyncio.sleep(0)
        deadline = time.monotonic() + max(60.0, count / 500)
        while api.count() < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        with api.lock:
            lags = [api.state.received_at[k] - float(r["userfield"]) for k, r in api.state.records.items()]
            finished = max(api.state.received_at.values(), default=started)
        pipe.send((api.count(), finished - started, lags, api.summary()["duplicate_deliveries"]))
        await ami.stop()
        api.stop()

    asyncio.run(main())


def run_bench(count: int = 20000, batch_size: int = 500) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="connector-bench-") as tmp:
        base = Path(tmp)
        csv_path = base / "cdr-custom" / "centralita.csv"
        csv_path.parent.mkdir()
        parent, child = multiprocessing.get_context("spawn").Pipe()
        process = multiprocessing.get_context("spawn").Process(
            target=_stand_ins, args=(child, count, str(csv_path)), daemon=True
        )
        process.start()
        try:
            ami_port, api_url = parent.recv()
            settings = load_settings(
                ConnectorSettings,
                environ={
                    "API_KEY": "sk_test",
                    "AMI_HOST": "127.0.0.1",
                    "AMI_PORT": str(ami_port),
                    "AMI_USERNAME": "connector",
                    "AMI_PASSWORD": "secret",
                    "CDR_API_BASE_URL": api_url,
                    "CDR_SPOOL_DIR": str(base / "spool"),
                    "CDR_BACKFILL_PATH": str(csv_path),
                    "CDR_BATCH_SIZE": str(batch_size),
                    "CDR_BATCH_TIMEOUT": "1",
                    "CDR_BATCH_FORCE_TIMEOUT": "0.2",
                    "MONITORING_ENABLED": "false",
                    "CDR_BACKFILL_INTERVAL": "3600",
                },
            )

            async def drive() -> tuple[int, float, list[float], int]:
                connector = Connector(settings)
                stop = asyncio.Event()
                task = asyncio.create_task(connector.run(stop))
                parent.send("go")
                result = await asyncio.to_thread(parent.recv)
                stop.set()
                await task
                return result

            received, seconds, lags, duplicates = asyncio.run(drive())
        finally:
            process.join(10)
            if process.is_alive():
                process.kill()
    lags.sort()
    p50 = statistics.median(lags) if lags else 0.0
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0
    return BenchResult(count, received, seconds, received / seconds if seconds else 0.0, p50, p99, duplicates)
