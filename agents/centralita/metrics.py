"""Prometheus metrics: counters, gauges and histograms with labels, and the
text exposition format (version 0.0.4) served over HTTP.

Kept in-house because the agents need only these three types and an endpoint;
updates are plain dict operations under one lock, cheap on the audio and CDR
hot paths.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import threading
from collections.abc import Iterable, Sequence

_lock = threading.Lock()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labels)

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def _labelstr(self, key: tuple[str, ...], extra: str = "") -> str:
        parts = [f'{n}="{_escape(v)}"' for n, v in zip(self.labelnames, key, strict=True)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        key = self._key(labels)
        with _lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        return [f"{self.name}{self._labelstr(k)} {_fmt(v)}" for k, v in sorted(self._values.items())]


class Gauge(Counter):
    kind = "gauge"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with _lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with _lock:
            self._values[key] = float(value)


DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(self.buckets, value)
        with _lock:
            row = self._data.get(key)
            if row is None:
                row = self._data[key] = [0.0] * (len(self.buckets) + 3)
            row[index] += 1  # per-bucket count; cumulated at exposition
            row[-2] += value
            row[-1] += 1

    def count(self, **labels: str) -> int:
        row = self._data.get(self._key(labels))
        return int(row[-1]) if row else 0

    def samples(self) -> list[str]:
        lines = []
        for key, row in sorted(self._data.items()):
            running = 0.0
            for bound, count in zip((*self.buckets, math.inf), row[: len(self.buckets) + 1], strict=True):
                running += count
                le = 'le="' + _fmt(bound) + '"'  # no backslash inside an f-string: Python 3.11
                lines.append(f"{self.name}_bucket{self._labelstr(key, le)} {_fmt(running)}")
            lines.append(f"{self.name}_sum{self._labelstr(key)} {_fmt(row[-2])}")
            lines.append(f"{self.name}_count{self._labelstr(key)} {_fmt(row[-1])}")
        return lines


class Registry:
    """The metrics of one agent process."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help_text, labels))  # type: ignore[return-value]

    def histogram(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Iterable[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        return self._add(Histogram(name, help_text, labels, buckets))  # type: ignore[return-value]

    def exposition(self) -> str:
        lines: list[str] = []
        with _lock:
            for metric in self._metrics.values():
                lines.extend(metric.header())
                lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


async def serve_metrics(registry: Registry, host: str, port: int) -> asyncio.AbstractServer:
    """Serve ``GET /metrics`` on host:port from the running event loop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path.split(b"?")[0] in (b"/metrics", b"/"):
                body = registry.exposition().encode()
                status = b"200 OK"
            else:
                body, status = b"not found\n", b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a scraper that went away mid-request needs no answer
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
