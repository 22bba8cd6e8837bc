"""A stand-in Asterisk for the CDR connector: AMI over TCP plus the cdr_custom CSV.

It speaks the AMI wire protocol the way Asterisk does (banner, Login with an
``Events:`` class mask, ActionID on every response, Ping/Pong, Logoff/Goodbye,
``Cdr`` events in the ``cdr`` class with the LinkedID and Sequence mappings) and,
like Asterisk with cdr_custom, appends every CDR to a CSV file whether or not a
manager client is connected. Faults for tests: restart (drop every session and
refuse connections for a while), go silent (half-open: stop answering, keep the
socket), and write events in arbitrary fragments (split reads).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from centralita.asterisk.ami import AmiMessage, AmiParser
from centralita.connector.backfill import format_csv_line

log = logging.getLogger(__name__)

BANNER = b"Asterisk Call Manager/10.0.0\r\n"
CDR_HEADERS = (
    ("AccountCode", "accountcode"),
    ("Source", "src"),
    ("Destination", "dst"),
    ("DestinationContext", "dcontext"),
    ("CallerID", "clid"),
    ("Channel", "channel"),
    ("DestinationChannel", "dstchannel"),
    ("LastApplication", "lastapp"),
    ("LastData", "lastdata"),
    ("StartTime", "start"),
    ("AnswerTime", "answer"),
    ("EndTime", "end"),
    ("Duration", "duration"),
    ("BillableSeconds", "billsec"),
    ("Disposition", "disposition"),
    ("AMAFlags", "amaflags"),
    ("UniqueID", "uniqueid"),
    ("UserField", "userfield"),
    ("LinkedID", "linkedid"),
    ("Sequence", "sequence"),
)


def sample_cdr(n: int, *, base: float | None = None, **overrides: str) -> dict[str, str]:
    """A plausible answered call; ``n`` makes UniqueID and Sequence unique."""
    start = datetime.fromtimestamp(base if base is not None else time.time()) - timedelta(seconds=60)
    answer = start + timedelta(seconds=5)
    end = answer + timedelta(seconds=30)
    uniqueid = f"{1763800000 + n // 1000}.{n}"
    values = {
        "accountcode": "acme",
        "src": "3001234567",
        "dst": "100",
        "dcontext": "from-trunk",
        "clid": '"José Núñez" <3001234567>',
        "channel": f"PJSIP/provider-{n:08x}",
        "dstchannel": f"PJSIP/100-{n:08x}",
        "lastapp": "Dial",
        "lastdata": "PJSIP/100,30",
        "start": start.strftime("%Y-%m-%d %H:%M:%S"),
        "answer": answer.strftime("%Y-%m-%d %H:%M:%S"),
        "end": end.strftime("%Y-%m-%d %H:%M:%S"),
        "duration": "35",
        "billsec": "30",
        "disposition": "ANSWERED",
        "amaflags": "DOCUMENTATION",
        "uniqueid": uniqueid,
        "userfield": "",
        "linkedid": uniqueid,
        "sequence": str(n),
    }
    values.update(overrides)
    return values


def cdr_event_bytes(values: dict[str, str]) -> bytes:
    lines = ["Event: Cdr", "Privilege: cdr,all"]
    lines += [f"{header}: {values.get(name, '')}" for header, name in CDR_HEADERS]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


@dataclass(eq=False)
class _Session:
    writer: asyncio.StreamWriter
    events: set[str] = field(default_factory=set)
    logged_in: bool = False


class FakeAmiServer:
    """Run with :meth:`start` / :meth:`stop` on a loop; emit CDRs with :meth:`emit_cdr`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str = "connector",
        secret: str = "secret",  # noqa: S107
        csv_path: Path | None = None,
        fragment: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.username, self.secret = username, secret
        self.csv_path = csv_path
        self.fragment = fragment
        self.silent = False  # half-open: read nothing, answer nothing
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.logins = 0
        self.actions: list[str] = []
        self.emitted = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for session in list(self._sessions):
            session.writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restart(self, down_for: float = 0.5) -> None:
        """Like ``core restart now``: every session drops, the port refuses for a while."""
        await self.stop()
        await asyncio.sleep(down_for)
        await self.start()

    @property
    def clients(self) -> int:
        return sum(1 for s in self._sessions if s.logged_in)

    def emit_cdr(self, values: dict[str, str]) -> int:
        """Raise one CDR: CSV line always (cdr_custom), AMI event to sessions subscribed to ``cdr``."""
        self.emitted += 1
        if self.csv_path is not None:
            with self.csv_path.open("a", encoding="utf-8") as handle:
                handle.write(format_csv_line(values))
        payload = cdr_event_bytes(values)
        delivered = 0
        for session in list(self._sessions):
            if session.logged_in and ("cdr" in session.events or "on" in session.events or "all" in session.events):
                self._write(session, payload)
                delivered += 1
        return delivered

    def emit_many(self, rows: Iterator[dict[str, str]] | list[dict[str, str]]) -> None:
        """Many CDRs with one CSV open (a burst)."""
        rows = list(rows)
        if self.csv_path is not None:
            with self.csv_path.open("a", encoding="utf-8") as handle:
                handle.writelines(format_csv_line(values) for values in rows)
        self.emitted += len(rows)
        for session in list(self._sessions):
            if session.logged_in and "cdr" in session.events:
                self._write(session, b"".join(cdr_event_bytes(values) for values in rows))

    def _write(self, session: _Session, payload: bytes) -> None:
        if self.silent:
            return
        if not self.fragment:
            session.writer.write(payload)
            return
        position = 0
        while position < len(payload):  # arbitrary cuts, even inside a UTF-8 character
            step = random.randint(1, 97)
            session.writer.write(payload[position : position + step])
            position += step

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        session = _Session(writer)
        self._sessions.add(session)
        parser = AmiParser()
        try:
            writer.write(BANNER)
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for message in parser.feed(data):
                    if self.silent:
                        continue
                    if not self._answer(session, message):
                        await writer.drain()
                        return
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._sessions.discard(session)
            self._tasks.discard(task)
            writer.close()

    def _answer(self, session: _Session, message: AmiMessage) -> bool:
        action = (message.get("Action") or "").lower()
        self.actions.append(action)
        action_id = message.get("ActionID")
        head = f"ActionID: {action_id}\r\n" if action_id else ""

        def reply(text: str) -> None:
            session.writer.write((text.replace("{id}", head) + "\r\n").encode("utf-8"))

        if action == "login":
            if message.get("Username") == self.username and message.get("Secret") == self.secret:
                session.logged_in = True
                mask = (message.get("Events") or "on").lower()
                session.events = {part.strip() for part in mask.split(",")} if mask != "off" else set()
                self.logins += 1
                reply("Response: Success\r\n{id}Message: Authentication accepted\r\n")
                session.writer.write(b"Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n")
            else:
                reply("Response: Error\r\n{id}Message: Authentication failed\r\n")
            return True
        if not session.logged_in:
            reply("Response: Error\r\n{id}Message: Permission denied\r\n")
            return True
        if action == "ping":
            reply(f"Response: Success\r\n{{id}}Ping: Pong\r\nTimestamp: {time.time():.6f}\r\n")
        elif action == "logoff":
            reply("Response: Goodbye\r\n{id}Message: Thanks for all the fish.\r\n")
            return False
        elif action == "coresettings":
            reply("Response: Success\r\n{id}AMIversion: 10.0.0\r\nAsteriskVersion: 22.10.1\r\nSystemName: \r\n")
        else:
            reply("Response: Error\r\n{id}Message: Invalid/unknown command\r\n")
        return True


async def _main(args: argparse.Namespace) -> None:
    server = FakeAmiServer(
        args.host, args.port, username=args.username, secret=args.secret, csv_path=args.csv, fragment=args.fragment
    )
    await server.start()
    log.info("stand-in AMI on %s:%d", server.host, server.port)
    counter = itertools.count(1)
    try:
        while True:
            await asyncio.sleep(1 / args.rate if args.rate else 3600)
            if args.rate:
                server.emit_cdr(sample_cdr(next(counter)))
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stand-in Asterisk AMI + cdr_custom CSV for the CDR connector")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5038)
    parser.add_argument("--username", default="connector")
    parser.add_argument("--secret", default="secret")
    parser.add_argument("--csv", type=Path, help="append CDRs here as cdr_custom does")
    parser.add_argument("--rate", type=float, default=0.0, help="CDRs per second to raise (0: none)")
    parser.add_argument("--fragment", action="store_true", help="write events in random fragments")
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
