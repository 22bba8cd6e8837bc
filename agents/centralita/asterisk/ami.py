"""An asyncio client for the Asterisk Manager Interface (AMI).

Written in-house because the public Python AMI libraries mishandle reconnects and
split reads. What matters here:

* Messages are decoded only when whole (a blank line ends one), so an event cut
  across two TCP reads is never half-parsed.
* The reader never waits on a consumer: events go to a synchronous callback that
  must be cheap (the connector puts them on a queue). Asterisk drops an AMI
  client that reads slowly, losing events.
* Every action carries an ActionID and its response is matched by it.
* A Ping with a reply deadline detects a half-open connection (a host that went
  away without a FIN), which TCP alone notices only after many minutes.
* The connection is re-established with exponential backoff and jitter, so many
  agents do not stampede an Asterisk that just restarted.
* Deadlines use ``asyncio.timeout``, never ``asyncio.wait_for``: on Python 3.11
  ``wait_for`` swallows a cancellation that lands as the awaited thing completes,
  and a task that ignores its cancellation keeps a shutdown waiting for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

BANNER_PREFIX = "Asterisk Call Manager/"
_END = b"\r\n\r\n"


class AmiError(Exception):
    """AMI refused an action or the connection failed."""


class AmiAuthError(AmiError):
    """The manager user or secret was refused: retrying will not help until it is fixed."""


class AmiMessage:
    """One AMI message: its headers in order, plus first-value lookup by name.

    Keys are matched case-insensitively because Asterisk versions differ in case
    (``ActionID`` / ``ActionId``); repeated keys (``Output:`` lines of a Command
    response, ``ChanVariable``) are kept in ``headers``. The lookup tables are
    built on first use: a burst of Cdr events only ever needs :meth:`as_dict`.
    """

    __slots__ = ("_exact", "_index", "headers")

    def __init__(self, headers: list[tuple[str, str]] | None = None) -> None:
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self._exact: dict[str, str] | None = None
        self._index: dict[str, str] | None = None

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> AmiMessage:
        return cls(list(pairs))

    def __repr__(self) -> str:
        return f"AmiMessage({self.headers!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AmiMessage) and other.headers == self.headers

    __hash__ = None  # type: ignore[assignment] - mutable, compared by content

    def _lookup(self) -> dict[str, str]:
        if self._index is None:
            # reversed: the first of repeated keys wins, as Asterisk's own astman_get_header does
            self._index = {key.lower(): value for key, value in reversed(self.headers)}
        return self._index

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._lookup().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return self._lookup()[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._lookup()

    def all(self, key: str) -> list[str]:
        low = key.lower()
        return [v for k, v in self.headers if k.lower() == low]

    def as_dict(self) -> dict[str, str]:
        """First value of each key, with Asterisk's own spelling of the key."""
        if self._exact is None:
            self._exact = dict(reversed(self.headers))
        return self._exact

    def first(self, key: str) -> str | None:
        """:meth:`get` for a key usually spelled as given: tries that spelling before any other."""
        value = self.as_dict().get(key)
        return value if value is not None else self.get(key)

    @property
    def event(self) -> str | None:
        return self.first("Event")

    @property
    def response(self) -> str | None:
        return self.first("Response")

    @property
    def action_id(self) -> str | None:
        return self.first("ActionID")


def decode_text(raw: bytes) -> str:
    """UTF-8 when it is (Asterisk passes caller names through as received), else Latin-1.

    Latin-1 never fails, so a caller name from an old ISDN gateway still arrives
    readable instead of as replacement characters or a crash.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# "Key: value" lines. findall runs in C; a message with any other kind of line (free
# text after a Command response) takes the line-by-line path instead.
_HEADER_LINE = re.compile(r"([^\r\n:]+):[ ]?([^\r\n]*)")


def parse_text(text: str) -> AmiMessage:
    """Parse one decoded message (without its terminating blank line)."""
    text = text.strip("\r\n")
    pairs = _HEADER_LINE.findall(text)
    if len(pairs) == text.count("\r\n") + 1 and "\r\n\r\n" not in text:
        return AmiMessage(pairs)
    headers: list[tuple[str, str]] = []
    for line in text.split("\r\n"):
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            # Old Asterisk versions append free text lines to Command responses.
            headers.append(("Output", line))
            continue
        headers.append((key, value[1:] if value.startswith(" ") else value))
    return AmiMessage(headers)


def parse_message(raw: bytes) -> AmiMessage:
    """Parse one message (without its terminating blank line)."""
    return parse_text(decode_text(raw))


class AmiParser:
    """Incremental decoder: feed it bytes as they arrive, get whole messages back.

    All the whole messages in the buffer are cut off and decoded in one go: the
    per-message work is then one C-level regex pass, which is what keeps a burst
    of thousands of Cdr events per second from falling behind.
    """

    def __init__(self, max_message: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> list[AmiMessage]:
        buffer = self._buffer
        buffer += data
        end = buffer.rfind(_END)
        if end < 0:
            if len(buffer) > self._max:
                raise AmiError(f"AMI message larger than {self._max} bytes without an end")
            return []
        block = bytes(buffer[:end])
        del buffer[: end + 4]
        if len(buffer) > self._max:
            raise AmiError(f"AMI message larger than {self._max} bytes without an end")
        try:
            texts = block.decode("utf-8").split("\r\n\r\n")
        except UnicodeDecodeError:  # one message is not UTF-8: decide message by message
            texts = [decode_text(raw) for raw in block.split(_END)]
        return [parse_text(text) for text in texts if text.strip("\r\n")]

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)


def encode_action(name: str, fields: dict[str, str | int | Iterable[str]]) -> bytes:
    """Serialise an action; a list value becomes repeated headers (``Variable:``)."""
    lines = [f"Action: {name}"]
    for key, value in fields.items():
        values = [value] if isinstance(value, (str, int)) else list(value)
        for item in values:
            text = str(item)
            if "\r" in text or "\n" in text:
                raise ValueError(f"AMI header {key} must not contain a line break")
            lines.append(f"{key}: {text}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


@dataclass
class _Pending:
    future: asyncio.Future[AmiMessage]
    events: list[AmiMessage] = field(default_factory=list)
    list_done: asyncio.Future[list[AmiMessage]] | None = None


EventCallback = Callable[[AmiMessage], None]
StateCallback = Callable[[bool], None]


class AmiConnection:
    """One logged-in AMI session. Use :class:`AmiClient` for a session that comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_event: EventCallback) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._parser = AmiParser()
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{random.getrandbits(32):08x}-"
        self.version = ""
        self.last_received = asyncio.get_running_loop().time()
        self._read_task: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        events: Iterable[str] = ("cdr",),
        on_event: EventCallback | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - one deadline for connect, banner and login
    ) -> AmiConnection:
        """Connect, read the banner and log in; raise AmiError (AmiAuthError if refused)."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        except (OSError, TimeoutError) as exc:
            raise AmiError(f"cannot connect to AMI at {host}:{port}: {exc or 'timed out'}") from exc
        connection = cls(reader, writer, on_event or (lambda _m: None))
        try:
            async with asyncio.timeout(timeout):
                banner = await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError) as exc:
            writer.close()
            raise AmiError(f"no AMI banner from {host}:{port}") from exc
        text = decode_text(banner).strip()
        if not text.startswith(BANNER_PREFIX):
            writer.close()
            raise AmiError(f"{host}:{port} is not AMI (banner {text[:60]!r})")
        connection.version = text[len(BANNER_PREFIX) :]
        connection._read_task = asyncio.create_task(connection._read_loop(), name=f"ami-read-{host}:{port}")
        event_mask = ",".join(events) if events else "off"
        try:
            reply = await connection.action(
                "Login", {"Username": username, "Secret": secret, "Events": event_mask}, timeout=timeout
            )
        except AmiError:
            await connection.close()
            raise
        if (reply.response or "").lower() != "success":
            await connection.close()
            raise AmiAuthError(f"AMI login as {username!r} refused: {reply.get('Message', 'no reason given')}")
        return connection

    async def _read_loop(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    error = AmiError("AMI connection closed by Asterisk")
                    break
                self.last_received = asyncio.get_running_loop().time()
                for message in self._parser.feed(data):
                    self._dispatch(message)
        except asyncio.CancelledError:
            error = AmiError("AMI connection closed")
            raise
        except (OSError, AmiError) as exc:
            error = exc if isinstance(exc, AmiError) else AmiError(f"AMI read failed: {exc}")
        finally:
            self._fail_pending(error or AmiError("AMI connection closed"))
            if not self.closed.done():
                self.closed.set_result(error)
            self._writer.close()

    def _dispatch(self, message: AmiMessage) -> None:
        pending = None
        if self._pending:  # most messages are events while no action is outstanding
            action_id = message.action_id
            pending = self._pending.get(action_id) if action_id else None
        if pending is None:
            if message.event is not None:
                try:
                    self._on_event(message)
                except Exception:  # a consumer bug must not kill the session
                    log.exception("AMI event handler failed on %s", message.event)
            return
        if message.response is not None:
            if not pending.future.done():
                pending.future.set_result(message)
            if pending.list_done is None or (message.response or "").lower() != "success":
                self._pending.pop(action_id, None)
            return
        if message.event is not None and pending.list_done is not None:
            if (message.get("EventList") or "").lower() == "complete":
                self._pending.pop(action_id, None)
                if not pending.list_done.done():
                    pending.list_done.set_result(pending.events)
            else:
                pending.events.append(message)

    def _fail_pending(self, error: BaseException) -> None:
        for pending in self._pending.values():
            for future in (pending.future, pending.list_done):
                if future is not None and not future.done():
                    future.set_exception(AmiError(str(error)))
        self._pending.clear()

    def _send(self, name: str, fields: dict[str, str | int | Iterable[str]], list_action: bool) -> _Pending:
        if self.closed.done():
            raise AmiError("AMI connection is closed")
        action_id = f"{self._prefix}{next(self._ids)}"
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), list_done=loop.create_future() if list_action else None)
        self._pending[action_id] = pending
        self._writer.write(encode_action(name, {"ActionID": action_id, **fields}))
        return pending

    async def action(
        self,
        name: str,
        fields: dict[str, str | int | Iterable[str]] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> AmiMessage:
        """Send an action and wait (at most ``timeout``) for its response."""
        pending = self._send(name, fields or {}, list_action=False)
        try:
            async with asyncio.timeout(timeout):
                await self._writer.drain()
                return await pending.future
        except TimeoutError as exc:
            raise AmiError(f"AMI action {name} got no response within {timeout}s") from exc
        except (OSError, ConnectionError) as exc:
            raise AmiError(f"AMI action {name} failed: {exc}") from exc

    async def list_action(
        self,
        name: str,
        fields: dict[str, str | int | Iterable[str]] | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> tuple[AmiMessage, list[AmiMessage]]:
        """An action answered by an event list (``EventList: start`` ... ``Complete``)."""
        pending = self._send(name, fields or {}, list_action=True)
        assert pending.list_done is not None
        try:
            async with asyncio.timeout(timeout):
                await self._writer.drain()
                response = await pending.future
                if (response.response or "").lower() != "success":
                    return response, []
                return response, await pending.list_done
        except TimeoutError as exc:
            raise AmiError(f"AMI action {name} did not complete within {timeout}s") from exc

    async def ping(self, timeout: float = 5.0) -> float:  # noqa: ASYNC109
        """Round trip of a Ping in seconds; AmiError when no Pong comes back in time."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await self.action("Ping", timeout=timeout)
        if (reply.response or "").lower() != "success":
            raise AmiError(f"AMI Ping refused: {reply.get('Message')}")
        return loop.time() - started

    async def close(self, logoff: bool = False) -> None:
        """Close the session; with ``logoff`` say goodbye first (bounded wait)."""
        if logoff and not self.closed.done():
            with contextlib.suppress(AmiError, OSError):
                await self.action("Logoff", timeout=1.0)
        if self._read_task is not None:
            self._read_task.cancel()
            # asyncio.wait, not ``await task`` under suppress(CancelledError): that would
            # also swallow a cancellation aimed at the caller and leave it running.
            await asyncio.wait({self._read_task}, timeout=1.0)
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()


class Backoff:
    """Exponential backoff with full jitter: delay drawn from [base, min(cap, base*2^n)]."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return random.uniform(min(self.initial, ceiling), ceiling)

    def reset(self) -> None:
        self.attempt = 0


class AmiClient:
    """A session that stays up: reconnects with backoff, pings, and reports its state.

    ``on_connect`` runs after every successful login (the connector back-fills the
    CDRs raised while it was away); it is awaited before events are relied upon.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        events: Iterable[str] = ("cdr",),
        on_event: EventCallback,
        on_state: StateCallback | None = None,
        on_connect: Callable[[AmiConnection], object] | None = None,
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._username, self._secret = username, secret
        self._events = tuple(events)
        self._on_event = on_event
        self._on_state = on_state or (lambda _up: None)
        self._on_connect = on_connect
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff()
        self.connection: AmiConnection | None = None
        self.connected = asyncio.Event()
        self.connects = 0

    async def run(self) -> None:
        """Keep a session up until cancelled."""
        try:
            while True:
                try:
                    connection = await AmiConnection.open(
                        self.host,
                        self.port,
                        self._username,
                        self._secret,
                        events=self._events,
                        on_event=self._on_event,
                        timeout=self.connect_timeout,
                    )
                except AmiAuthError as exc:
                    delay = max(self.backoff.next_delay(), min(self.backoff.maximum, 10.0))
                    log.error("%s; fix the AMI user in manager.conf or AMI_USERNAME/AMI_PASSWORD", exc)
                    await asyncio.sleep(delay)
                    continue
                except AmiError as exc:
                    delay = self.backoff.next_delay()
                    log.warning("%s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                await self._serve(connection)
        finally:
            await self._drop()

    async def _serve(self, connection: AmiConnection) -> None:
        self.connection = connection
        self.connects += 1
        log.info("AMI connected to %s:%d (Asterisk Call Manager %s)", self.host, self.port, connection.version)
        self.backoff.reset()
        self.connected.set()
        self._on_state(True)
        try:
            if self._on_connect is not None:
                result = self._on_connect(connection)
                if asyncio.iscoroutine(result):
                    await result
            while not connection.closed.done():
                done, _ = await asyncio.wait({connection.closed}, timeout=self.ping_interval)
                if done:
                    break
                try:
                    await connection.ping(self.ping_timeout)
                except AmiError as exc:
                    # A Pong queued behind a burst of events is late, not lost: only a
                    # connection that delivered nothing during the wait is half-open.
                    quiet_for = asyncio.get_running_loop().time() - connection.last_received
                    if not connection.closed.done() and quiet_for < self.ping_timeout:
                        continue
                    log.warning("AMI at %s:%d did not answer Ping (%s): reconnecting", self.host, self.port, exc)
                    break
            if connection.closed.done() and connection.closed.result() is not None:
                log.warning("%s", connection.closed.result())
        finally:
            await self._drop()

    async def _drop(self) -> None:
        connection, self.connection = self.connection, None
        if connection is None:
            return
        self.connected.clear()
        self._on_state(False)
        await connection.close()

    async def action(
        self,
        name: str,
        fields: dict[str, str | int | Iterable[str]] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> AmiMessage:
        """Run an action on the current session; AmiError when there is none."""
        if self.connection is None:
            raise AmiError("not connected to AMI")
        return await self.connection.action(name, fields, timeout=timeout)
