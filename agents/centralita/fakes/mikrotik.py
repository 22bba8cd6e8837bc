"""A stand-in for MikroTik RouterOS v7's REST API (and an operator API in front of it).

It serves the paths the assistant's tools use with RouterOS's own JSON shapes: every
value a string, ids as ``*1``, kebab-case keys, query-string filters on equality,
basic auth, ``{"error": 401, "message": "Unauthorized"}`` style errors, and ``POST
/rest/ping`` answering one object per echo after about a second each, as a router
does. ``POST /api/<operation>`` plays the operator's own HTTP API (``MIKROTIK_API_URL``)
by asking this same router over REST. Per-path delays simulate a slow router and
per-path failures a broken one.

Run as a service, it is steered over its own paths (loopback only, no auth, as the
other stand-ins): ``GET /_stand-in/state`` gives the delays, failures and the latest
requests; ``POST /_stand-in/behaviour`` with ``{"delays": {"api/ping": 15},
"failures": {"api/find_customer": 503}}`` replaces both (paths as in ``delays``).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from centralita.fakes import send_json

log = logging.getLogger("centralita.fakes.mikrotik")

CONTROL_PREFIX = "/_stand-in/"
MAX_REQUESTS_KEPT = 1000
OPERATOR_API_WAIT_S = 120.0


def demo_network() -> dict[str, list[dict[str, str]]]:
    """A small ISP: three PPPoE customers, one cut for non-payment, one offline."""
    secrets = [
        {"name": "ana.gomez", "service": "pppoe", "profile": "20M", "remote-address": "100.64.0.11",
         "disabled": "false", "comment": "Ana Gomez tel 300 123 4567"},
        {"name": "luis.perez", "service": "pppoe", "profile": "10M", "remote-address": "100.64.0.12",
         "disabled": "true", "comment": "Luis Perez tel 3105550000 corte por mora"},
        {"name": "carla.ruiz", "service": "pppoe", "profile": "50M", "remote-address": "100.64.0.13",
         "disabled": "false", "comment": "Carla Ruiz tel 3209876543"},
    ]  # fmt: skip
    for index, row in enumerate(secrets, start=1):
        row.update({".id": f"*{index}", "password": "x", "routes": "", "limit-bytes-in": "0", "limit-bytes-out": "0"})
    active = [
        {".id": "*80000001", "name": "ana.gomez", "service": "pppoe", "caller-id": "AA:BB:CC:00:00:11",
         "address": "100.64.0.11", "uptime": "3d4h12m9s", "encoding": "", "session-id": "0x81000001",
         "limit-bytes-in": "0", "limit-bytes-out": "0", "radius": "false"},
    ]  # fmt: skip
    queues = [
        {".id": "*1", "name": "ana.gomez", "target": "100.64.0.11/32", "max-limit": "20000000/20000000",
         "rate": "1830400/9650200", "bytes": "1234567890/9876543210", "disabled": "false", "dynamic": "false"},
        {".id": "*2", "name": "carla.ruiz", "target": "100.64.0.13/32", "max-limit": "50000000/50000000",
         "rate": "0/0", "bytes": "0/0", "disabled": "false", "dynamic": "false"},
    ]  # fmt: skip
    interfaces = [
        {".id": "*1", "name": "ether1-uplink", "type": "ether", "running": "true", "disabled": "false",
         "last-link-up-time": "2026-11-01 08:00:00", "mtu": "1500", "rx-byte": "99999999", "tx-byte": "88888888"},
        {".id": "*2", "name": "sfp-north", "type": "ether", "running": "false", "disabled": "false",
         "last-link-down-time": "2026-11-22 06:10:00", "mtu": "1500", "rx-byte": "0", "tx-byte": "0"},
        {".id": "*3", "name": "<pppoe-ana.gomez>", "type": "pppoe-in", "running": "true", "disabled": "false",
         "dynamic": "true", "mtu": "1480", "rx-byte": "1234567890", "tx-byte": "9876543210"},
    ]  # fmt: skip
    return {"ppp/secret": secrets, "ppp/active": active, "queue/simple": queues, "interface": interfaces}


@dataclass
class FakeMikrotik:
    """``with FakeMikrotik() as router:`` serves on ``router.url`` from a background thread."""

    user: str = "api"
    password: str = "secret"  # noqa: S105 - the stand-in's own test credential
    host: str = "127.0.0.1"
    port: int = 0
    tables: dict[str, list[dict[str, str]]] = field(default_factory=demo_network)
    delays: dict[str, float] = field(default_factory=dict)  # path ("ping", "ppp/secret", "api/...") -> seconds
    failures: dict[str, int] = field(default_factory=dict)  # path -> HTTP status answered instead
    echo_interval: float = 1.0  # a router sends one echo per second
    requests: list[tuple[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> FakeMikrotik:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        fake = self

        class Handler(_Handler):
            router = fake

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-mikrotik", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ping(self, address: str, count: int) -> list[dict[str, str]]:
        online = {row.get("address") for row in self.tables.get("ppp/active", [])}
        replies, received = [], 0
        for seq in range(count):
            time.sleep(self.echo_interval)
            ok = address in online
            received += int(ok)
            row = {"seq": str(seq), "host": address, "sent": str(seq + 1), "received": str(received),
                   "packet-loss": str(100 - received * 100 // (seq + 1))}  # fmt: skip
            if ok:
                row.update({"size": "56", "ttl": "64", "time": "4ms120us"})
                row.update({"min-rtt": "3ms900us", "avg-rtt": "4ms120us", "max-rtt": "4ms400us"})
            else:
                row["status"] = "timeout"
            replies.append(row)
        return replies


class _Handler(BaseHTTPRequestHandler):
    router: FakeMikrotik
    server_version = "RouterOS-fake"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake mikrotik: " + format, *args)

    def _reply(self, status: int, body: Any) -> None:
        send_json(self, status, body)

    def _error(self, status: int, message: str, detail: str | None = None) -> None:
        body: dict[str, Any] = {"error": status, "message": message}
        if detail:
            body["detail"] = detail
        self._reply(status, body)

    def _authorised(self) -> bool:
        expected = base64.b64encode(f"{self.router.user}:{self.router.password}".encode()).decode()
        if self.headers.get("Authorization") == f"Basic {expected}":
            return True
        self._error(401, "Unauthorized")
        return False

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def _delay(self, path: str) -> bool:
        """Wait as configured for ``path``; False (after answering the configured error) when it must fail."""
        if path in self.router.delays:
            time.sleep(self.router.delays[path])
        status = self.router.failures.get(path)
        if status is not None:
            self._error(status, "Internal Server Error" if status >= 500 else "Bad Request", "failure set by the test")
            return False
        return True

    def _note(self, method: str) -> None:
        self.router.requests.append((method, self.path))
        del self.router.requests[:-MAX_REQUESTS_KEPT]

    def _control(self, method: str, action: str) -> None:
        if action == "state" and method == "GET":
            state = {
                "delays": self.router.delays,
                "failures": self.router.failures,
                "requests": [list(r) for r in self.router.requests[-100:]],
            }
            self._reply(200, state)
            return
        if action == "behaviour" and method == "POST":
            try:
                body = self._body()
                delays = {str(k): float(v) for k, v in (body.get("delays") or {}).items()}
                failures = {str(k): int(v) for k, v in (body.get("failures") or {}).items()}
            except (ValueError, TypeError, AttributeError) as exc:
                expected = "expected {'delays': {path: seconds}, 'failures': {path: status}}"
                self._error(400, "Bad Request", f"{expected}: {exc}")
                return
            if any(not 400 <= status <= 599 for status in failures.values()):
                self._error(400, "Bad Request", "a failure is an HTTP status from 400 to 599")
                return
            self.router.delays, self.router.failures = delays, failures
            log.info("stand-in: delays %s, failures %s", delays, failures)
            self._reply(200, {"delays": delays, "failures": failures})
            return
        self._error(404, "Not Found", f"no control path {method} {action}")

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith(CONTROL_PREFIX):
            self._control("GET", parts.path[len(CONTROL_PREFIX) :].strip("/"))
            return
        self._note("GET")
        if not parts.path.startswith("/rest/"):
            self._error(404, "Not Found")
            return
        if not self._authorised():
            return
        path = parts.path[len("/rest/") :].strip("/")
        if not self._delay(path):
            return
        table_name, _, item_id = path.partition("/*")
        table = self.router.tables.get(table_name)
        if table is None:
            self._error(404, "Not Found", "no such command or directory")
            return
        if item_id:
            rows = [row for row in table if row.get(".id") == "*" + item_id]
            if rows:
                self._reply(200, rows[0])
            else:
                self._error(404, "Not Found", "no such item")
            return
        filters = {k: v[0] for k, v in parse_qs(parts.query).items() if not k.startswith(".")}
        rows = [row for row in table if all(row.get(k) == v for k, v in filters.items())]
        self._reply(200, copy.deepcopy(rows))

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith(CONTROL_PREFIX):
            self._control("POST", parts.path[len(CONTROL_PREFIX) :].strip("/"))
            return
        self._note("POST")
        try:
            body = self._body()
        except ValueError:
            self._error(400, "Bad Request", "JSON parse error")
            return
        if parts.path.startswith("/api/"):
            self._operator_api(parts.path[len("/api/") :], body)
            return
        if not self._authorised():
            return
        if parts.path.rstrip("/") != "/rest/ping":
            self._error(404, "Not Found")
            return
        if not self._delay("ping"):
            return
        address = body.get("address")
        if not address:
            self._error(400, "Bad Request", "missing value(s) of argument(s) address")
            return
        try:
            count = int(body.get("count", "4"))
        except ValueError:
            self._error(400, "Bad Request", "invalid value for argument count")
            return
        self._reply(200, self.router.ping(address, count))

    def _operator_api(self, operation: str, body: dict[str, Any]) -> None:
        from centralita.aicall.tools.base import ToolError
        from centralita.aicall.tools.mikrotik import Router, RouterOsBackend

        if not self._delay("api/" + operation):
            return
        # as long as a ping of the largest count may take: the operator API waits for the router's answer
        router = Router("core", self.router.url, self.router.user, self.router.password)
        backend = RouterOsBackend([router], request_timeout=OPERATOR_API_WAIT_S)
        calls = {
            "find_customer": lambda: backend.find_customer(body.get("phone"), body.get("ip"), body.get("pppoe_user")),
            "customer_status": lambda: backend.customer_status(body.get("pppoe_user", "")),
            "ping": lambda: backend.ping(body.get("pppoe_user"), body.get("ip"), int(body.get("count", 4))),
            "interface_status": lambda: backend.interface_status(body.get("name", ""), body.get("router")),
        }
        call = calls.get(operation)
        if call is None:
            self._reply(404, {"error": f"unknown operation {operation}"})
            return
        try:
            self._reply(200, asyncio.run(call()))
        except ToolError as exc:
            self._reply(200, {"error": str(exc)})


def main(argv: list[str] | None = None) -> int:
    """Serve the RouterOS stand-in as its own process (offline demo)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m centralita.fakes.mikrotik", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--user", default=os.environ.get("MIKROTIK_USER") or "api")
    parser.add_argument(
        "--password-file", help="a file holding the API password (default: $MIKROTIK_PASSWORD, else the stand-in's own)"
    )
    args = parser.parse_args(argv)
    router = FakeMikrotik(user=args.user, host=args.host, port=args.port)
    if os.environ.get("MIKROTIK_PASSWORD"):
        router.password = os.environ["MIKROTIK_PASSWORD"]
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as handle:
            router.password = handle.read().strip()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    router.start()
    print(json.dumps({"url": router.url}), flush=True)
    stopped.wait()
    router.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
