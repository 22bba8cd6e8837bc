"""A JSON-RPC 2.0 client for Kamailio's ``jsonrpcs`` module over HTTP.

Kamailio answers JSON-RPC on an HTTP listener bound to loopback (or to the
panel's host); the panel and ``centralita kamailio`` use it to reload tables and
read dispatcher, dialog and limit state without a restart. Plain asyncio
streams keep this free of extra dependencies, and every wait has a timeout: a
Kamailio that stops answering must not hang the panel or a CLI run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.parse
from typing import Any

__all__ = ["KamailioRpc", "RpcError"]

MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class RpcError(RuntimeError):
    """Kamailio could not be reached, or it answered the call with an error."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class KamailioRpc:
    """Calls JSON-RPC methods on one Kamailio (``url`` like ``http://127.0.0.1:5071/RPC``)."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"Kamailio JSON-RPC URL {url!r}: expected http://HOST:PORT/PATH")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.timeout = timeout
        self._ids = itertools.count(1)

    async def call(self, method: str, *params: Any) -> Any:
        """The ``result`` of ``method``; raises RpcError on transport errors and RPC errors."""
        request_id = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": request_id}).encode()
        try:
            status, payload = await asyncio.wait_for(self._post(body), self.timeout)
        except TimeoutError:
            raise RpcError(f"{method}: Kamailio at {self.url} did not answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise RpcError(f"{method}: cannot reach Kamailio at {self.url}: {exc}") from exc
        try:
            answer = json.loads(payload)
        except ValueError as exc:
            # jsonrpcs answers RPC errors with a JSON body and an HTTP error status; anything
            # else (a proxy's error page, a wrong port) is a transport problem
            if status != 200:
                raise RpcError(f"{method}: HTTP {status} from {self.url}: {payload[:200]!r}") from None
            raise RpcError(f"{method}: Kamailio sent something that is not JSON: {payload[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise RpcError(f"{method}: unexpected JSON-RPC answer {answer!r:.200}")
        if "error" in answer:
            error = answer["error"] or {}
            raise RpcError(f"{method}: {error.get('message', error)}", code=error.get("code"))
        return answer.get("result")

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await writer.drain()
            return parse_http_response(await reader.read(MAX_RESPONSE_BYTES))
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def parse_http_response(raw: bytes) -> tuple[int, bytes]:
    """Status code and body of an HTTP/1.x response read to the end of the connection."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise RpcError(f"incomplete HTTP response from Kamailio: {raw[:200]!r}")
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
        raise RpcError(f"not an HTTP response: {lines[0][:100]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = _dechunk(body)
    elif b"content-length" in headers:
        length = int(headers[b"content-length"])
        if len(body) < length:
            raise RpcError(f"HTTP body cut short: {len(body)} of {length} bytes")
        body = body[:length]
    return int(status_line[1]), body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)
