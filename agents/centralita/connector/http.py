"""HTTP to the CDR API with ``requests`` on a small thread pool.

``requests`` blocks, so each call runs on one of the pool's threads (one Session
per thread, keeping connections alive) and the event loop only awaits it. Every
request has connect and read timeouts, so a thread is never held for ever.
"""

from __future__ import annotations

import asyncio
import mimetypes
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from centralita import __version__ as _version

USER_AGENT = f"centralita-connector/{_version}"


class TransportError(Exception):
    """No HTTP answer at all: refused, reset, DNS, TLS or timed out."""


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: str
    seconds: float


class ApiClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0, workers: int = 4) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cdr-http")
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update({"Authorization": f"Bearer {self._api_key}", "User-Agent": USER_AGENT})
            self._local.session = session
        return session

    async def _call(self, func: Callable[[], requests.Response]) -> HttpReply:
        def timed() -> HttpReply:
            started = time.perf_counter()
            try:
                response = func()
            except requests.RequestException as exc:
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
            return HttpReply(response.status_code, response.text[:2000], time.perf_counter() - started)

        return await asyncio.get_running_loop().run_in_executor(self._executor, timed)

    async def post_json(self, path: str, payload: Any, headers: Mapping[str, str] | None = None) -> HttpReply:
        target = self.base_url + path
        return await self._call(
            lambda: self._session().post(target, json=payload, headers=dict(headers or {}), timeout=self.timeout)
        )

    async def post_body(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> HttpReply:
        """POST JSON that is already serialised (the spool stores each CDR's JSON once)."""
        target = self.base_url + path
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        return await self._call(
            lambda: self._session().post(target, data=body, headers=all_headers, timeout=self.timeout)
        )

    async def post_file(
        self, path: str, fields: Mapping[str, str], file_field: str, file_path: Path, headers: Mapping[str, str]
    ) -> HttpReply:
        """Multipart upload; the file is streamed from disk by the worker thread."""
        target = self.base_url + path
        content_type = mimetypes.guess_type(file_path.name)[0] or "application/octet-stream"
        if file_path.suffix.lower() == ".gsm":
            content_type = "audio/x-gsm"

        def send() -> requests.Response:
            with file_path.open("rb") as handle:
                return self._session().post(
                    target,
                    data=dict(fields),
                    files={file_field: (file_path.name, handle, content_type)},
                    headers=dict(headers),
                    timeout=(self.timeout, max(self.timeout, 120.0)),
                )

        return await self._call(send)

    async def get(self, path: str) -> HttpReply:
        target = self.base_url + path
        return await self._call(lambda: self._session().get(target, timeout=self.timeout))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
