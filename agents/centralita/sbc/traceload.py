"""The SBC's spool loader: Kamailio's spool files into the database.

Kamailio writes two kinds of spool file (file_out) and starts a new file of
each every few seconds; this loader takes the closed ones.

SIP traces (``traces_<time>.tsv``): every traced message is a line, and a
closed file goes in with one LOAD DATA LOCAL: no SQL text is built per message
in Kamailio's script or parsed by MariaDB, and traces wait on disk, not in
Kamailio's memory. A line: ``T`` then, tab-separated, the time (Unix
seconds.microseconds, UTC), direction, source address and port, destination
address and port, transport, the method of a request or the code of a reply
(the other field empty), CSeq, Call-ID and the message's bytes in base64.

Statements (``sql_<time>.sql``): the database writer's INSERTs of CDRs and
events (and carrier states, bans) that the database did not take, because it
was away or refused them. A line is ``S`` and the statement in base64, in
comma-separated pieces (each piece base64 of its own share of the text). They
are replayed in file order; then the CDRs among them are filed
(``CALL sbc_file_cdrs()``). They do not depend on their order relative to
what Kamailio wrote directly once the database was back: CDRs are keyed by
call, events, bans and carrier states carry the time they happened.

Empty lines are Kamailio's ticks that close a file in a quiet spell.

Each file is loaded in one transaction together with a row of
sip_trace_files naming it, and deleted only after the commit. A loader that
dies before the commit leaves nothing behind and loads the file again; one
that dies between the commit and the deletion finds the row and only deletes
the file. A line the database could not take (a wrong field, a cut last line,
a statement it refuses) is not dropped: it goes to ``quarantine/<file>`` and
the log names the file, the line and why; the rest of the file is loaded.

This file needs only Python 3.11+ and pymysql: the kamailio role installs it
on SBC hosts, which need not have the agents' venv. Settings come from the
environment (TRACELOAD_*), the unit's env file.
"""

from __future__ import annotations

import binascii
import dataclasses
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql

log = logging.getLogger("centralita.sbc.traceload")

# file_out names a file <name>_<unix time><extension>
FILE_RE = re.compile(r"^(?P<name>[A-Za-z0-9-]+)_(?P<ts>\d+)\.(?:tsv|sql)$")
# errors after which the same statement may well go in later: the connection (client errors 2xxx), the server
# going away or busy, a lock wait or deadlock (the transaction is gone): the file is tried again as a whole
RETRY_LATER = {1040, 1053, 1205, 1213, 1290, 1927, 4031}
FIELDS = 12
LOAD_SQL = (
    "LOAD DATA LOCAL INFILE %s INTO TABLE sip_traces CHARACTER SET utf8mb4"
    " FIELDS TERMINATED BY '\\t' ENCLOSED BY '' ESCAPED BY ''"
    " LINES STARTING BY 'T' TERMINATED BY '\\n'"
    " (@t, direction, src_ip, src_port, dst_ip, dst_port, transport, @m, @s, cseq, call_id, @b)"
    " SET captured_at = '1970-01-01' + INTERVAL @t SECOND_MICROSECOND, method = NULLIF(@m, ''),"
    " status_code = NULLIF(@s, ''), message = FROM_BASE64(@b)"
)
# a line after the first that is neither a trace ("T...") nor a tick (empty), and an empty line after
# the first (both patterns start with a plain byte, so re skips from line break to line break: a
# pattern that can match anywhere costs about ten times as much on a file of a second's traces)
ODD_LINE = re.compile(rb"\n[^T\n]")
EMPTY_LINE = re.compile(rb"\n(?=\n)")
WARNING_ROW = re.compile(r"\brow (\d+)\b")
# rounds of "the database warned about rows n, m: set them aside and load again"
MAX_ROUNDS = 3
# markers are needed only until their file is deleted; older ones go
MARKER_DAYS = 2

_TIME = re.compile(rb"\d{1,12}\.\d{1,6}")
_ADDR = re.compile(rb"[0-9A-Fa-f.:\[\]]{1,45}")
_PORT = re.compile(rb"\d{1,5}")
_METHOD = re.compile(rb"[A-Za-z]{1,32}")
_CODE = re.compile(rb"[1-6]\d\d")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_TRANSPORTS = {b"udp", b"tcp", b"tls", b"ws", b"wss"}


class SettingError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Settings:
    spool_dir: Path
    db_user: str
    db_password: str
    db_name: str
    db_host: str = "127.0.0.1"
    db_port: int = 3306
    db_socket: str = ""
    # names this host's files in sip_trace_files (several SBCs may share a database)
    origin: str = ""
    poll_seconds: float = 0.5

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        def need(name: str) -> str:
            value = env.get(name, "")
            if not value:
                raise SettingError(f"{name} is required")
            return value

        def number(name: str, default: float, kind: type) -> Any:
            text = env.get(name, "")
            if not text:
                return default
            try:
                value = kind(text)
            except ValueError:
                raise SettingError(f"{name}={text!r}: expected a {kind.__name__}") from None
            if value <= 0:
                raise SettingError(f"{name}={text!r}: expected a number above 0")
            return value

        spool = Path(need("TRACELOAD_SPOOL_DIR"))
        if not spool.is_absolute():
            raise SettingError(f"TRACELOAD_SPOOL_DIR={spool}: expected an absolute path")
        origin = env.get("TRACELOAD_ORIGIN", "") or socket.gethostname()
        if len(origin) > 64:
            raise SettingError(f"TRACELOAD_ORIGIN={origin!r}: at most 64 characters")
        return cls(
            spool_dir=spool,
            db_user=need("TRACELOAD_DB_USER"),
            db_password=env.get("TRACELOAD_DB_PASSWORD", ""),
            db_name=need("TRACELOAD_DB_NAME"),
            db_host=env.get("TRACELOAD_DB_HOST", "") or "127.0.0.1",
            db_port=number("TRACELOAD_DB_PORT", 3306, int),
            db_socket=env.get("TRACELOAD_DB_SOCKET", ""),
            origin=origin,
            poll_seconds=number("TRACELOAD_POLL_SECONDS", 0.5, float),
        )

    def connect(self) -> pymysql.Connection:
        where: dict[str, Any] = (
            {"unix_socket": self.db_socket} if self.db_socket else {"host": self.db_host, "port": self.db_port}
        )
        conn = pymysql.connect(
            user=self.db_user,
            password=self.db_password,
            database=self.db_name,
            charset="utf8mb4",
            autocommit=False,
            local_infile=True,
            connect_timeout=5,
            read_timeout=120,
            write_timeout=120,
            **where,
        )
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
        return conn


def line_problem(line: bytes) -> str | None:
    """Why the database must not get this trace line (without its newline), or None."""
    if not line.startswith(b"T"):
        return "not a trace line (it does not start with T)"
    fields = line[1:].split(b"\t")
    if len(fields) != FIELDS:
        return f"{len(fields)} fields, not {FIELDS}"
    t, direction, src_ip, src_port, dst_ip, dst_port, transport, method, code, cseq, call_id, message = fields
    checks = [
        (_TIME.fullmatch(t), "time"),
        (direction in (b"in", b"out"), "direction"),
        (_ADDR.fullmatch(src_ip), "source address"),
        (_PORT.fullmatch(src_port) and int(src_port) < 65536, "source port"),
        (_ADDR.fullmatch(dst_ip), "destination address"),
        (_PORT.fullmatch(dst_port) and int(dst_port) < 65536, "destination port"),
        (transport in _TRANSPORTS, "transport"),
        ((method == b"") != (code == b""), "method or reply code (exactly one)"),
        (method == b"" or _METHOD.fullmatch(method), "method"),
        (code == b"" or _CODE.fullmatch(code), "reply code"),
        (len(cseq) <= 64 and _PRINTABLE.fullmatch(cseq), "CSeq (at most 64 printable characters)"),
        (0 < len(call_id) <= 255 and _PRINTABLE.fullmatch(call_id), "Call-ID (1-255 printable characters)"),
    ]
    for ok, what in checks:
        if not ok:
            return f"bad {what}"
    try:
        binascii.a2b_base64(message, strict_mode=True)
    except binascii.Error as exc:
        return f"message is not base64 ({exc})"
    return None


def numbered_lines(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """A spool file's lines that are not empty, with their numbers (from 1) and whether the line is cut
    short: the last one, when the file does not end with a line break (Kamailio stopped while writing)."""
    lines = data.split(b"\n")
    cut_last = lines[-1] != b""
    if not cut_last:
        lines.pop()
    for number, line in enumerate(lines, 1):
        if line:
            yield number, line, cut_last and number == len(lines)


def statement_of(line: bytes) -> tuple[bytes | None, str]:
    """The SQL statement of a statements file's line (without its newline), or None and why not. It stays
    bytes: pymysql sends bytes as they are, so MariaDB gets exactly what Kamailio would have sent (bytes of a
    SIP message that are not UTF-8 included) and treats them as it does when Kamailio writes directly."""
    if not line.startswith(b"S"):
        return None, "not a statement line (it does not start with S)"
    # Kamailio writes a long statement's base64 in comma-separated pieces; an empty one is a piece it could
    # not encode, and the statement without it must not run
    pieces = line[1:].split(b",")
    if not all(pieces):
        return None, "a piece of the statement is missing (empty base64)"
    try:
        raw = b"".join(binascii.a2b_base64(piece, strict_mode=True) for piece in pieces)
    except binascii.Error as exc:
        return None, f"statement is not base64 ({exc})"
    if not raw.strip():
        return None, "empty statement"
    return raw, ""


def _retry_later(exc: pymysql.MySQLError) -> bool:
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    return 2000 <= code < 3000 or code in RETRY_LATER


class Loader:
    def __init__(self, settings: Settings, connect: Callable[[], pymysql.Connection] | None = None) -> None:
        self.s = settings
        self._connect = connect or settings.connect
        self.conn: pymysql.Connection | None = None
        self.work = settings.spool_dir / ".loading"
        self.quarantine = settings.spool_dir / "quarantine"
        self._markers_swept = 0.0

    # -- the spool ------------------------------------------------------------

    def closed_files(self) -> list[Path]:
        """Spool files Kamailio is done with, oldest first: of each name's files all but the newest
        (file_out writes only to the newest; it closes a file before it opens the next)."""
        newest: dict[str, int] = {}
        found: list[tuple[int, str, Path]] = []
        for path in self.s.spool_dir.iterdir():
            m = FILE_RE.match(path.name)
            if not m or not path.is_file():
                continue
            ts = int(m["ts"])
            found.append((ts, m["name"], path))
            newest[m["name"]] = max(ts, newest.get(m["name"], ts))
        return [path for ts, name, path in sorted(found) if ts < newest[name]]

    def _db(self) -> pymysql.Connection:
        if self.conn is None:
            self.conn = self._connect()
        return self.conn

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except pymysql.Error:
                pass
            self.conn = None

    # -- one file -----------------------------------------------------------------

    def load_file(self, path: Path) -> int:
        """Loads one closed spool file and deletes it; the rows it loaded."""
        conn = self._db()
        size = path.stat().st_size
        with conn.cursor() as cur:
            cur.execute("SELECT bytes FROM sip_trace_files WHERE origin = %s AND file = %s", (self.s.origin, path.name))
            marker = cur.fetchone()
        conn.rollback()
        if marker is not None:
            if int(marker[0]) == size:
                log.info("%s was loaded before (the loader stopped before deleting it): deleted", path)
                path.unlink()
                return 0
            log.error(
                "%s: a file of this name (%d bytes) was loaded before and this one has %d bytes: "
                "not loaded, moved to %s",
                path,
                int(marker[0]),
                size,
                self.quarantine,
            )
            self._quarantine_whole(path)
            return 0
        data = path.read_bytes()
        if path.suffix == ".sql":
            return self._replay(conn, path, data, size)
        if data.endswith(b"\n") or not data:
            if data[:1] in (b"T", b"\n", b"") and not ODD_LINE.search(data):
                # every line is a trace or a tick: the traces are the lines that are not empty
                expected = data.count(b"\n") - len(EMPTY_LINE.findall(data)) - data.startswith(b"\n")
                if expected == 0:
                    path.unlink()  # ticks only: nothing for the database
                    return 0
                rows, warnings = self._load(conn, str(path))
                if rows == expected and warnings == 0:
                    self._commit(conn, path, size, rows, 0)
                    path.unlink()
                    return rows
                conn.rollback()
        return self._load_line_by_line(conn, path, data, size)

    def _load(self, conn: pymysql.Connection, filename: str) -> tuple[int, int]:
        with conn.cursor() as cur:
            cur.execute(LOAD_SQL, (filename,))
            return cur.rowcount, cur.warning_count

    def _commit(self, conn: pymysql.Connection, path: Path, size: int, rows: int, refused: int) -> None:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO sip_trace_files (origin, file, bytes, row_count, refused) VALUES (%s, %s, %s, %s, %s)",
                (self.s.origin, path.name, size, rows, refused),
            )
        conn.commit()

    def _load_line_by_line(self, conn: pymysql.Connection, path: Path, data: bytes, size: int) -> int:
        """The slow way, for a file with a line the database would not take whole: every line is checked,
        the bad ones are set aside (with the reason in the log) and the rest loaded."""
        good: list[tuple[int, bytes]] = []
        bad: list[tuple[int, bytes, str]] = []
        for number, line, cut in numbered_lines(data):
            if cut:
                bad.append((number, line, "cut short (no end of line)"))
                continue
            problem = line_problem(line)
            if problem:
                bad.append((number, line, problem))
            else:
                good.append((number, line))
        self.work.mkdir(mode=0o750, exist_ok=True)
        part = self.work / path.name
        for _ in range(MAX_ROUNDS):
            part.write_bytes(b"".join(line + b"\n" for _, line in good))
            rows, warnings = self._load(conn, str(part)) if good else (0, 0)
            if rows == len(good) and warnings == 0:
                break
            refused = self._warned_rows(conn)
            conn.rollback()
            if not refused:
                break
            for index in sorted(refused, reverse=True):
                if 0 < index <= len(good):
                    number, line = good.pop(index - 1)
                    bad.append((number, line, refused[index]))
        else:
            rows, warnings = -1, -1
        if rows != len(good) or warnings != 0:
            conn.rollback()
            part.unlink(missing_ok=True)
            log.error("%s: the database takes none of its lines whole; the file is kept in %s", path, self.quarantine)
            self._quarantine_whole(path)
            return 0
        bad.sort()
        self._write_quarantine(path, bad)
        self._commit(conn, path, size, rows, len(bad))
        part.unlink(missing_ok=True)
        path.unlink()
        return rows

    def _replay(self, conn: pymysql.Connection, path: Path, data: bytes, size: int) -> int:
        """Runs a statements file's statements in one transaction, then files the CDRs among them; the
        statements that went in. One the database refuses goes to the quarantine with its reason."""
        done = 0
        cdrs = False
        bad: list[tuple[int, bytes, str]] = []
        for number, line, cut in numbered_lines(data):
            if cut:
                bad.append((number, line, "cut short (no end of line)"))
                continue
            statement, problem = statement_of(line)
            if statement is None:
                bad.append((number, line, problem))
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute(statement)
            except pymysql.MySQLError as exc:
                if _retry_later(exc):
                    conn.rollback()
                    raise
                bad.append((number, line, f"refused by the database: {exc.args[-1]} ({exc.args[0]})"))
                continue
            done += 1
            cdrs = cdrs or statement.startswith(b"INSERT INTO sbc_cdr_intake ")
        if done == 0 and not bad:
            conn.rollback()
            path.unlink()  # ticks only
            return 0
        self._write_quarantine(path, bad)
        self._commit(conn, path, size, done, len(bad))
        path.unlink()
        if done:
            log.info("%s: %d statements written to the database after it was away", path.name, done)
        if cdrs:
            self._file_cdrs(conn)
        return done

    @staticmethod
    def _file_cdrs(conn: pymysql.Connection) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("CALL sbc_file_cdrs()")
            conn.commit()
        except pymysql.MySQLError as exc:
            conn.rollback()
            if _retry_later(exc):
                raise
            log.warning("filing the replayed CDRs failed (Kamailio's housekeeping files them within a minute): %s", exc)

    @staticmethod
    def _warned_rows(conn: pymysql.Connection) -> dict[int, str]:
        with conn.cursor() as cur:
            cur.execute("SHOW WARNINGS")
            found: dict[int, str] = {}
            for _level, _code, message in cur.fetchall():
                m = WARNING_ROW.search(message)
                if m:
                    found.setdefault(int(m[1]), f"refused by the database: {message}")
            return found

    def _write_quarantine(self, path: Path, bad: list[tuple[int, bytes, str]]) -> None:
        if not bad:
            return
        for number, _line, why in bad:
            log.error("%s line %d refused: %s; kept in %s", path, number, why, self.quarantine / path.name)
        self.quarantine.mkdir(mode=0o750, exist_ok=True)
        # written whole, under the file's own name: a loader that starts the file again writes the same
        part = self.quarantine / f".{path.name}"
        part.write_bytes(b"".join(b"%d\t%s\n" % (number, line) for number, line, _ in bad))
        part.replace(self.quarantine / path.name)

    def _quarantine_whole(self, path: Path) -> None:
        self.quarantine.mkdir(mode=0o750, exist_ok=True)
        path.replace(self.quarantine / path.name)

    # -- the loop ------------------------------------------------------------------

    def run_once(self) -> int:
        """Loads every closed file; the number of files handled."""
        handled = 0
        for path in self.closed_files():
            rows = self.load_file(path)
            handled += 1
            log.debug("%s: %d rows", path, rows)
        self._sweep_markers()
        return handled

    def _sweep_markers(self) -> None:
        if time.monotonic() - self._markers_swept < 3600:
            return
        conn = self._db()
        with conn.cursor() as cur:
            cur.execute(
                "DELETE FROM sip_trace_files WHERE origin = %s AND loaded_at < UTC_TIMESTAMP() - INTERVAL %s DAY",
                (self.s.origin, MARKER_DAYS),
            )
        conn.commit()
        self._markers_swept = time.monotonic()

    def run_forever(self) -> None:
        failing = False
        while True:
            try:
                handled = self.run_once()
                if failing:
                    log.info("the database takes the spool again")
                    failing = False
            except (pymysql.Error, OSError) as exc:
                self._drop_connection()
                if not failing:
                    log.error("loading the spool failed (files are kept and tried again): %s", exc)
                    failing = True
                time.sleep(2)
                continue
            if handled == 0:
                time.sleep(self.s.poll_seconds)


def _name_process(name: bytes) -> None:
    """The process's name as ps and pgrep show it (the benchmark counts its CPU by it)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("TRACELOAD_LOG_LEVEL", "INFO"), format="%(levelname)s %(message)s")
    try:
        settings = Settings.from_env(dict(os.environ))
    except SettingError as exc:
        print(f"sbc-traceload: {exc}", file=sys.stderr)
        return 2
    _name_process(b"sbc-traceload")
    loader = Loader(settings)
    for stale in loader.work.glob("*") if loader.work.is_dir() else []:
        stale.unlink()  # a part of a file whose loading stopped: the file itself is still in the spool
    log.info("loading the spool %s into %s as %s", settings.spool_dir, settings.db_name, settings.origin)
    try:
        loader.run_forever()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
