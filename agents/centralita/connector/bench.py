"""The connector benchmark: CDRs per second from AMI through filters, spool and the batch sink.

The stand-in Asterisk and the stand-in API run in a child process, so the
connector (this process) has its core to itself. Each CDR carries its emission
time in UserField; the API stand-in notes when it accepted it, which gives the
end-to-end lag per CDR. The connector's own CPU time is measured too: on a busy
host the wall-clock rate says more about the neighbours than about the code,
while CDRs per CPU-second is what one core can sustain.

Every wait is bounded: a stand-in that never sees the connector log in, or a
run that never completes, ends the bench with an error instead of hanging.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from centralita.config import load_settings
from centralita.connector.service import Connector
from centralita.connector.settings import ConnectorSettings

LOGIN_TIMEOUT = 30.0
SETUP_TIMEOUT = 30.0


class BenchError(RuntimeError):
    """The benchmark could not run to the end (the message says which step)."""


@dataclass(frozen=True)
class BenchResult:
    count: int
    received: int
    seconds: float
    rate: float
    lag_p50: float
    lag_p99: float
    duplicates: int
    cpu_seconds: float
    offered: float = 0.0  # CDRs per second emitted; 0: one burst

    @property
    def lost(self) -> int:
        return self.count - self.received

    @property
    def rate_per_cpu(self) -> float:
        return self.received / self.cpu_seconds if self.cpu_seconds else 0.0


def run_timeout(count: int) -> float:
    """How long a run may take before it is declared stuck: generous, never unbounded."""
    return max(60.0, count / 200)


def _pin(cpu: int | None) -> None:
    """Keep a process on one core, so "CDRs per second on one core" is what is measured."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _cores() -> tuple[int | None, int | None]:
    """(connector core, stand-ins core): two different ones when the host has them."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def _stand_ins(pipe: Connection, count: int, csv_path: str, cpu: int | None, rate: float) -> None:
    _pin(cpu)
    from centralita.fakes.ami_server import FakeAmiServer, sample_cdr
    from centralita.fakes.cdr_api import FakeCdrApi

    async def main() -> None:
        api = FakeCdrApi()
        api.start()
        ami = FakeAmiServer(csv_path=Path(csv_path))
        await ami.start()
        try:
            pipe.send((ami.port, api.base_url))
            deadline = time.monotonic() + LOGIN_TIMEOUT
            while ami.clients == 0:
                if time.monotonic() > deadline:
                    pipe.send(("error", f"the connector did not log in to the stand-in AMI within {LOGIN_TIMEOUT}s"))
                    return
                await asyncio.sleep(0.05)
            if not await asyncio.to_thread(pipe.poll, SETUP_TIMEOUT):
                return  # the parent went away
            pipe.recv()  # go
            started = time.time()
            # A burst (rate 0) emits everything at once; a paced run emits 10 ms slices at ``rate``.
            chunk = max(1, int(rate / 100)) if rate else 500
            for first in range(0, count, chunk):
                if rate:
                    due = started + first / rate
                    await asyncio.sleep(max(0.0, due - time.time()))
                rows = [sample_cdr(n, userfield=f"{time.time():.6f}") for n in range(first, min(count, first + chunk))]
                ami.emit_many(rows)
                await asyncio.sleep(0)
            deadline = time.monotonic() + run_timeout(count)
            while api.count() < count and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # a late duplicate would show up now
            with api.lock:
                lags = [api.state.received_at[k] - float(r["userfield"]) for k, r in api.state.records.items()]
                finished = max(api.state.received_at.values(), default=started)
            pipe.send(("done", api.count(), finished - started, lags, api.summary()["duplicate_deliveries"]))
        finally:
            await ami.stop()
            api.stop()

    asyncio.run(main())


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _recv(pipe: Connection, timeout: float, what: str) -> object:  # noqa: ASYNC109
    if not await asyncio.to_thread(pipe.poll, timeout):
        raise BenchError(f"no {what} from the stand-ins within {timeout:.0f}s")
    message = pipe.recv()
    if isinstance(message, tuple) and message and message[0] == "error":
        raise BenchError(str(message[1]))
    return message


def run_bench(count: int = 20000, batch_size: int = 500, rate: float = 0.0) -> BenchResult:
    """One run: ``count`` CDRs as a burst (``rate`` 0) or paced at ``rate`` CDRs per second."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="connector-bench-") as tmp:
        base = Path(tmp)
        csv_path = base / "cdr-custom" / "centralita.csv"
        csv_path.parent.mkdir()
        parent, child = context.Pipe()
        connector_cpu, stand_ins_cpu = _cores()
        arguments = (child, count, str(csv_path), stand_ins_cpu, rate)
        process = context.Process(target=_stand_ins, args=arguments, daemon=True)
        process.start()
        before = os.sched_getaffinity(0) if connector_cpu is not None else None
        _pin(connector_cpu)
        try:

            async def drive() -> tuple[int, float, list[float], int, float]:
                ami_port, api_url = await _recv(parent, SETUP_TIMEOUT, "stand-in addresses")  # type: ignore[misc]
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
                connector = Connector(settings)
                stop = asyncio.Event()
                task = asyncio.create_task(connector.run(stop), name="bench-connector")
                try:
                    deadline = time.monotonic() + LOGIN_TIMEOUT
                    while connector.metrics.ami_connection_status.value() != 1:
                        if task.done() or time.monotonic() > deadline:
                            raise BenchError(f"the connector did not log in to the stand-in AMI in {LOGIN_TIMEOUT}s")
                        await asyncio.sleep(0.05)
                    cpu_before = _cpu_seconds()
                    parent.send("go")
                    message = await _recv(parent, run_timeout(count) + 10, "result")
                    cpu = _cpu_seconds() - cpu_before
                finally:
                    stop.set()
                    done, _ = await asyncio.wait({task}, timeout=30)
                    if not done:
                        task.cancel()
                        raise BenchError("the connector did not stop within 30s of being asked to")
                _tag, received, seconds, lags, duplicates = message  # type: ignore[misc]
                return received, seconds, lags, duplicates, cpu

            received, seconds, lags, duplicates, cpu = asyncio.run(drive())
        finally:
            if before is not None:
                os.sched_setaffinity(0, before)
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
    lags.sort()
    p50 = statistics.median(lags) if lags else 0.0
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0
    return BenchResult(
        count, received, seconds, received / seconds if seconds else 0.0, p50, p99, duplicates, cpu, rate
    )


TABLE_HEADER = (
    "| CDRs | offered | batch | CDR/s (wall) | CDR per CPU-second | lag p50 | lag p99 | lost | duplicates |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(result: BenchResult, batch_size: int) -> str:
    offered = f"{result.offered:,.0f}/s" if result.offered else "burst"
    return (
        f"| {result.count} | {offered} | {batch_size} | {result.rate:,.0f} | {result.rate_per_cpu:,.0f} | "
        f"{result.lag_p50 * 1000:,.0f} ms | {result.lag_p99 * 1000:,.0f} ms | {result.lost} | {result.duplicates} |"
    )
