"""Recover CDRs that AMI never delivered, from Asterisk's cdr_custom CSV.

Asterisk does not queue Cdr events for a manager client that is away (connector
restarting, AMI down, a SIGKILL between reading an event and committing it), but
cdr_custom writes every CDR to a file regardless. The connector reads that file
from where it last stopped (offset per inode, so log rotation is followed) and
commits the lines to the spool; the (uniqueid, sequence) key drops the ones AMI
already delivered.

The asterisk role writes this mapping to cdr_custom.conf (one line)::

    [mappings]
    centralita.csv => ${CSV_QUOTE(${CDR(accountcode)})},${CSV_QUOTE(${CDR(src)})},
      ${CSV_QUOTE(${CDR(dst)})},${CSV_QUOTE(${CDR(dcontext)})},${CSV_QUOTE(${CDR(clid)})},
      ${CSV_QUOTE(${CDR(channel)})},${CSV_QUOTE(${CDR(dstchannel)})},${CSV_QUOTE(${CDR(lastapp)})},
      ${CSV_QUOTE(${CDR(lastdata)})},${CSV_QUOTE(${CDR(start)})},${CSV_QUOTE(${CDR(answer)})},
      ${CSV_QUOTE(${CDR(end)})},${CSV_QUOTE(${CDR(duration)})},${CSV_QUOTE(${CDR(billsec)})},
      ${CSV_QUOTE(${CDR(disposition)})},${CSV_QUOTE(${CDR(amaflags)})},${CSV_QUOTE(${CDR(uniqueid)})},
      ${CSV_QUOTE(${CDR(userfield)})},${CSV_QUOTE(${CDR(linkedid)})},${CSV_QUOTE(${CDR(sequence)})}

i.e. the fields of :data:`centralita.connector.cdr.FIELD_NAMES`, in that order. A
21st column, ``peeraccount`` (which the role also maps into the Cdr event as
PeerAccount), is accepted and ignored; any other column count is an error that
names the mapping.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, tzinfo
from pathlib import Path

from centralita.asterisk.ami import decode_text
from centralita.connector.cdr import FIELD_NAMES, CdrError, CdrRecord, record_from_fields
from centralita.connector.spool import Spool

log = logging.getLogger(__name__)

CSV_MAPPING = ",".join(f"${{CSV_QUOTE(${{CDR({name})}})}}" for name in FIELD_NAMES)


def format_csv_line(values: dict[str, str]) -> str:
    """One line as cdr_custom writes it with :data:`CSV_MAPPING` (used by the AMI stand-in)."""
    return ",".join('"' + str(values.get(name, "")).replace('"', '""') + '"' for name in FIELD_NAMES) + "\n"


# Columns the reader accepts after FIELD_NAMES and does not keep.
OPTIONAL_TRAILING = ("peeraccount",)


def parse_csv_line(line: str, zone: tzinfo) -> CdrRecord:
    rows = list(csv.reader([line]))
    found = len(rows[0]) if rows else 0
    if not len(FIELD_NAMES) <= found <= len(FIELD_NAMES) + len(OPTIONAL_TRAILING):
        raise CdrError(
            f"expected {len(FIELD_NAMES)} CSV fields (the cdr_custom mapping: {', '.join(FIELD_NAMES)}"
            f" [, {', '.join(OPTIONAL_TRAILING)}]), found {found}"
        )
    return record_from_fields(dict(zip(FIELD_NAMES, rows[0][: len(FIELD_NAMES)], strict=True)), zone)


def rotated_files(path: Path) -> list[Path]:
    """The live file and its rotated siblings (``centralita.csv.1``), oldest first; compressed ones skipped."""
    if not path.parent.is_dir():
        return []
    siblings = [
        p
        for p in path.parent.iterdir()
        if p.name == path.name or (p.name.startswith(path.name + ".") and not p.name.endswith((".gz", ".xz", ".zst")))
    ]
    return sorted(siblings, key=lambda p: p.stat().st_mtime)


class Backfill:
    def __init__(
        self,
        path: Path,
        zone: tzinfo,
        spool: Spool,
        *,
        max_age_hours: float = 24.0,
        chunk_lines: int = 2000,
    ) -> None:
        self.path = path
        self.zone = zone
        self.spool = spool
        self.max_age = max_age_hours * 3600
        self.chunk_lines = chunk_lines
        self.invalid = 0

    async def scan(self, commit: Callable[[list[CdrRecord]], Awaitable[object]]) -> int:
        """Read every file from its checkpoint, hand records to ``commit`` in chunks; return lines read.

        The checkpoint moves only after ``commit`` returned, so a crash re-reads
        (and the spool's key ignores) at most one chunk.
        """
        total = 0
        for file in await asyncio.to_thread(rotated_files, self.path):
            try:
                stat = await asyncio.to_thread(os.stat, file)
            except FileNotFoundError:
                continue
            offset = await self.spool.backfill_offset(stat.st_ino)
            if offset > stat.st_size:  # truncated in place: start again
                offset = 0
            while offset < stat.st_size:
                lines, offset_after = await asyncio.to_thread(self._read_chunk, file, offset)
                if not lines:
                    break
                records = await asyncio.to_thread(self._parse, lines, file)
                if records:
                    await commit(records)
                await self.spool.set_backfill_offset(stat.st_ino, str(file), offset_after)
                total += len(lines)
                offset = offset_after
        return total

    def _read_chunk(self, file: Path, offset: int) -> tuple[list[bytes], int]:
        """Whole lines only: a line Asterisk is still writing is left for the next scan."""
        lines: list[bytes] = []
        with file.open("rb") as handle:
            handle.seek(offset)
            while len(lines) < self.chunk_lines:
                line = handle.readline()
                if not line.endswith(b"\n"):
                    break
                lines.append(line)
                offset += len(line)
        return lines, offset

    def _parse(self, lines: list[bytes], file: Path) -> list[CdrRecord]:
        cutoff = time.time() - self.max_age if self.max_age else None
        records: list[CdrRecord] = []
        for raw in lines:
            text = decode_text(raw).rstrip("\r\n")
            if not text.strip():
                continue
            try:
                record = parse_csv_line(text, self.zone)
            except CdrError as exc:
                self.invalid += 1
                log.error("back-fill: %s: unreadable CDR line (%s): %r", file, exc, text[:200])
                continue
            if cutoff is not None and record.end and datetime.fromisoformat(record.end).timestamp() < cutoff:
                continue
            records.append(record)
        return records
