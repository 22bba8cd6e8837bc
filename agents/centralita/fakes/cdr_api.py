"""A stand-in for the remote CDR API (seed 003's API-Regional): a real HTTP server.

Endpoints, under any base path (``/v1`` or none):

* ``POST .../mqs/cdr/batch``: JSON array of CDR objects -> 202 ``{"queued_count", "job_ids", "duplicates"}``
* ``POST .../mqs/cdr``: one CDR object -> 202
* ``POST .../mqs/recording``: multipart form (``audio`` file + ``recording_id``, ``call_id``, ``linkedid``) -> 202
* ``GET .../health`` -> 200
* ``GET .../_stand-in/state`` -> counts; ``GET .../_stand-in/records`` -> every CDR and recording it holds
  (for lab tests that look for one call)

``Authorization: Bearer <key>`` is checked (401 otherwise). Every CDR must carry
``uniqueid``, ``sequence`` and ``idempotency_key`` (400 otherwise). The server
keeps what it accepted, keyed by the idempotency key, and counts keys it saw
again (a retry after a lost reply, or a duplicate the sender should not have
made). Faults: :meth:`fail_next` answers N requests with a status, :meth:`reject`
refuses given keys with 400, ``delay`` slows every answer, :meth:`stop` takes it
down (connections refused, kept-alive ones cut) and :meth:`start` brings it back
on the same port.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from centralita.fakes import send_json


@dataclass
class Received:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    received_at: dict[str, float] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    recordings: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    batches: int = 0
    bodies_total: int = 0


class FakeCdrApi:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = "sk_test") -> None:
        self.host, self.port, self.api_key = host, port, api_key
        self.state = Received()
        self.lock = threading.Lock()
        self.delay = 0.0
        self._fail: list[int] = []
        self._rejected: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # control ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> None:
        api = self

        class Handler(_Handler):
            owner = api

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Go down: stop listening and cut every open connection (as a crashed receiver would)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self.lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def fail_next(self, count: int, status: int = 503) -> None:
        with self.lock:
            self._fail.extend([status] * count)

    def reject(self, *keys: str) -> None:
        with self.lock:
            self._rejected.update(keys)

    def keys(self) -> set[str]:
        with self.lock:
            return set(self.state.records)

    def count(self) -> int:
        with self.lock:
            return len(self.state.records)

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= count:
                return True
            time.sleep(0.05)
        return self.count() >= count

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "records": len(self.state.records),
                "duplicate_keys": len(self.state.duplicates),
                "duplicate_deliveries": sum(self.state.duplicates.values()),
                "requests": self.state.requests,
                "batches": self.state.batches,
                "recordings": len(self.state.recordings),
            }

    # request handling (handler threads) ------------------------------------------

    def _next_fault(self) -> int | None:
        with self.lock:
            return self._fail.pop(0) if self._fail else None

    def accept(self, records: list[Any]) -> tuple[int, dict[str, Any]]:
        for record in records:
            if not isinstance(record, dict):
                return 400, {"error": "each CDR must be a JSON object"}
            missing = [k for k in ("uniqueid", "sequence", "idempotency_key") if k not in record]
            if missing:
                return 400, {"error": f"missing fields: {', '.join(missing)}"}
        now = time.time()
        with self.lock:
            refused = [r["idempotency_key"] for r in records if r["idempotency_key"] in self._rejected]
            if refused:
                return 400, {"error": "invalid CDR", "keys": refused}
            duplicates = 0
            for record in records:
                key = record["idempotency_key"]
                if key in self.state.records:
                    self.state.duplicates[key] = self.state.duplicates.get(key, 0) + 1
                    duplicates += 1
                else:
                    self.state.records[key] = record
                    self.state.received_at[key] = now
            self.state.batches += 1
            job = f"job-{self.state.batches}"
        return 202, {"queued_count": len(records) - duplicates, "duplicates": duplicates, "job_ids": [job]}


class _Handler(BaseHTTPRequestHandler):
    owner: FakeCdrApi
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.owner.lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner.lock:
            self.owner._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        send_json(self, status, body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/health"):
            self._send(200, {"status": "ok"})
        elif self.path.rstrip("/").endswith("/_stand-in/state"):
            self._send(200, self.owner.summary())
        elif self.path.rstrip("/").endswith("/_stand-in/records"):
            with self.owner.lock:
                body = {
                    "records": list(self.owner.state.records.values()),
                    "recordings": list(self.owner.state.recordings),
                }
            self._send(200, body)
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        owner = self.owner
        body = self._body()
        with owner.lock:
            owner.state.requests += 1
        if owner.delay:
            time.sleep(owner.delay)
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/_stand-in/fail"):
            plan = json.loads(body or b"{}")
            owner.fail_next(int(plan.get("count", 1)), int(plan.get("status", 503)))
            self._send(200, {"ok": True})
            return
        if self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            self._send(401, {"error": "invalid API key"})
            return
        fault = owner._next_fault()
        if fault is not None:
            self._send(fault, {"error": f"injected HTTP {fault}"})
            return
        if path.endswith("/mqs/cdr/batch") or path.endswith("/mqs/cdr"):
            try:
                payload = json.loads(body)
            except ValueError:
                self._send(400, {"error": "body is not JSON"})
                return
            records = payload if path.endswith("/batch") else [payload]
            if not isinstance(records, list):
                self._send(400, {"error": "a batch is a JSON array"})
                return
            status, answer = owner.accept(records)
            self._send(status, answer)
        elif path.endswith("/mqs/recording"):
            self._recording(body)
        else:
            self._send(404, {"error": "not found"})

    def _recording(self, body: bytes) -> None:
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            self._send(400, {"error": "expected multipart/form-data"})
            return
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, Any] = {}
        audio: bytes | None = None
        filename = None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "audio":
                audio = part.get_payload(decode=True)
                filename = part.get_filename()
            elif name:
                fields[name] = part.get_content().strip() if part.get_content_maintype() == "text" else ""
        if audio is None or not fields.get("recording_id"):
            self._send(400, {"error": "audio file and recording_id are required"})
            return
        with self.owner.lock:
            self.owner.state.recordings.append(
                {**fields, "filename": filename, "size": len(audio), "host": self.headers.get("X-Asterisk-Hostname")}
            )
        self._send(202, {"recording_id": fields["recording_id"], "status": "queued"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stand-in CDR API (API-Regional shape) for tests and the demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--api-key", default="sk_test")
    args = parser.parse_args(argv)
    api = FakeCdrApi(args.host, args.port, args.api_key)
    api.start()
    print(f"stand-in CDR API on {api.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        api.stop()


if __name__ == "__main__":
    main()
