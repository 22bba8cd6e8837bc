"""The CDR record: every field of Asterisk's ``Cdr`` AMI event, with times made absolute.

Asterisk formats CDR times as ``YYYY-MM-DD HH:MM:SS`` in the server's local time
zone without saying which; the connector converts them with the configured zone
so a receiver in another country, or a DST change, never shifts a call.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import socket
import zlib
from collections.abc import Mapping
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

# AMI header -> record attribute, in the order of the Cdr event, then the two mappings
# cdr_manager.conf adds (linkedid => LinkedID, sequence => Sequence).
AMI_FIELDS: tuple[tuple[str, str], ...] = (
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
FIELD_NAMES: tuple[str, ...] = tuple(name for _, name in AMI_FIELDS)


class CdrError(ValueError):
    """A CDR that cannot be understood; the message says which field and why."""


def resolve_timezone(name: str) -> tzinfo:
    """The zone CDR times are written in: a tz database name, or the host's own zone when empty."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise CdrError(f"unknown time zone {name!r}") from exc
    host = _host_zone_name()
    if host:
        try:
            return ZoneInfo(host)
        except (ZoneInfoNotFoundError, ValueError):
            log.debug("host zone %s not in the tz database; using the current offset", host)
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local


def _host_zone_name() -> str | None:
    """The host's zone name from /etc/localtime, so DST is handled (a fixed offset would not)."""
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        return None
    marker = "/zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else None


def _fast_time(text: str) -> datetime:
    """``YYYY-MM-DD HH:MM:SS`` without strptime, which costs more than the rest of a CDR."""
    if len(text) != 19 or text[4] != "-" or text[7] != "-" or text[10] != " " or text[13] != ":" or text[16] != ":":
        raise ValueError(text)
    return datetime(
        int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]), int(text[17:19])
    )


@functools.lru_cache(maxsize=8192)
def parse_time(text: str, zone: tzinfo) -> str | None:
    """Asterisk local time text -> ISO 8601 with offset; None for an empty time (not answered).

    Cached: the CDRs of a burst share their seconds (calls end together), and the
    conversion is the dearest part of a record.
    """
    text = text.strip()
    if not text:
        return None
    try:
        naive = _fast_time(text)
    except ValueError:
        try:  # cdr_custom with the ``f`` option, or an already absolute time
            return datetime.fromisoformat(text).astimezone(zone).isoformat()
        except ValueError:
            pass
        try:
            seconds = float(text)
        except ValueError as exc:
            raise CdrError(f"time {text!r} is not 'YYYY-MM-DD HH:MM:SS'") from exc
        if seconds <= 0:
            return None
        return datetime.fromtimestamp(seconds, zone).isoformat()
    return naive.replace(tzinfo=zone).isoformat()


@dataclasses.dataclass(frozen=True, slots=True)
class CdrRecord:
    """One CDR as Asterisk produced it; ``sequence`` and ``uniqueid`` identify it for ever."""

    accountcode: str
    src: str
    dst: str
    dcontext: str
    clid: str
    channel: str
    dstchannel: str
    lastapp: str
    lastdata: str
    start: str | None
    answer: str | None
    end: str | None
    duration: int
    billsec: int
    disposition: str
    amaflags: str
    uniqueid: str
    userfield: str
    linkedid: str
    sequence: int

    @property
    def key(self) -> str:
        """The idempotency key: a CDR is uniquely named by UniqueID and Sequence."""
        return f"{self.uniqueid}:{self.sequence}"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELD_NAMES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CdrRecord:
        return cls(**{name: data[name] for name in FIELD_NAMES})


HOSTNAME = socket.gethostname()


def wire_payload(record: CdrRecord) -> dict[str, Any]:
    """The JSON object of one CDR as receivers get it: every Asterisk field, plus the
    receiver's names for the main ones and the idempotency key."""
    data = record.as_dict()
    data.update(call_id=record.uniqueid, calldate=record.start, idempotency_key=record.key, host_name=HOSTNAME)
    return data


def wire_json(record: CdrRecord) -> str:
    """:func:`wire_payload` serialised once, when the CDR enters the spool: sinks send it as stored."""
    return json.dumps(wire_payload(record), ensure_ascii=False, separators=(",", ":"))


_warned_no_sequence = False


def _time(values: Mapping[str, str], name: str, uniqueid: str, zone: tzinfo) -> str | None:
    text = values.get(name)
    try:
        return parse_time("" if text is None else str(text), zone)
    except CdrError as exc:
        raise CdrError(f"CDR {uniqueid}: {name}: {exc}") from exc


def _seconds(values: Mapping[str, str], name: str, uniqueid: str) -> int:
    text = str(values.get(name) or "").strip()
    if not text:
        return 0
    try:
        return int(text)
    except ValueError as exc:
        raise CdrError(f"CDR {uniqueid}: {name} {text!r} is not a whole number") from exc


def record_from_fields(values: Mapping[str, str], zone: tzinfo) -> CdrRecord:
    """Build a record from attribute-named text values (AMI or CSV back-fill)."""
    uniqueid = (values.get("uniqueid") or "").strip()
    if not uniqueid:
        raise CdrError("UniqueID is empty")
    get = values.get
    return CdrRecord(
        accountcode=str(get("accountcode") or ""),
        src=str(get("src") or ""),
        dst=str(get("dst") or ""),
        dcontext=str(get("dcontext") or ""),
        clid=str(get("clid") or ""),
        channel=str(get("channel") or ""),
        dstchannel=str(get("dstchannel") or ""),
        lastapp=str(get("lastapp") or ""),
        lastdata=str(get("lastdata") or ""),
        start=_time(values, "start", uniqueid, zone),
        answer=_time(values, "answer", uniqueid, zone),
        end=_time(values, "end", uniqueid, zone),
        duration=_seconds(values, "duration", uniqueid),
        billsec=_seconds(values, "billsec", uniqueid),
        disposition=str(get("disposition") or ""),
        amaflags=str(get("amaflags") or ""),
        uniqueid=uniqueid,
        userfield=str(get("userfield") or ""),
        linkedid=str(get("linkedid") or "") or uniqueid,
        sequence=_sequence(str(get("sequence") or ""), values),
    )


def _sequence(text: str, values: Mapping[str, str]) -> int:
    """The CDR's Sequence; without the cdr_manager mapping, a stable stand-in from its content.

    The stand-in is negative so it can never collide with a real Sequence, and it
    is derived from fields that do not change between AMI and the CSV back-fill.
    """
    global _warned_no_sequence
    text = text.strip()
    if text:
        try:
            return int(text)
        except ValueError as exc:
            raise CdrError(f"CDR {values.get('uniqueid')}: Sequence {text!r} is not a whole number") from exc
    if not _warned_no_sequence:
        _warned_no_sequence = True
        log.warning(
            "CDR events carry no Sequence: add 'sequence => Sequence' to [mappings] in cdr_manager.conf; "
            "using a content hash to tell CDRs of one call apart"
        )
    basis = "|".join(str(values.get(n, "")) for n in ("uniqueid", "dst", "dstchannel", "start", "end", "lastapp"))
    return -1 - (zlib.crc32(basis.encode("utf-8")) & 0x7FFFFFFF)


def record_from_event(event: Mapping[str, str], zone: tzinfo) -> CdrRecord:
    """Build a record from a ``Cdr`` event's headers (as returned by AmiMessage.as_dict()).

    Asterisk spells the headers as in :data:`AMI_FIELDS`; other spellings are found
    case-insensitively, more slowly.
    """
    values = {name: event.get(header) for header, name in AMI_FIELDS}
    if None in values.values():
        lowered = {key.lower(): value for key, value in event.items()}
        values = {name: lowered.get(header.lower(), "") for header, name in AMI_FIELDS}
    return record_from_fields(values, zone)  # type: ignore[arg-type]
