"""Rate deck import: a carrier's buy rates or a customer's sell rates from CSV.

Carriers send decks of several hundred thousand prefixes. The whole file is
read and checked first (every bad line is reported with its number, and
nothing is written while any line is bad), then written in one transaction in
multi-row INSERT batches, so a deck is either entirely in force or not at all.
A row for a prefix and start date that already exists is updated in place,
so importing the same deck twice changes nothing.

CSV columns (a header line names them; order is free):
  prefix, rate                      required (rate per minute)
  destination, connection_fee, billing_initial, billing_increment,
  effective_from, effective_to      optional
``effective_from`` defaults to the ``--effective-from`` given for the deck
(default: now); dates are UTC, ``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM[:SS]``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import decimal
import io
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pymysql

__all__ = ["RateDeckError", "RateRow", "import_rates", "parse_deck", "resolve_owner"]

BATCH_ROWS = 5000
MAX_ERRORS_SHOWN = 20
PREFIX_CHARS = frozenset("0123456789")
COLUMN_ALIASES = {
    "rate": "rate",
    "rate_per_minute": "rate",
    "price": "rate",
    "prefix": "prefix",
    "code": "prefix",
    "destination": "destination",
    "name": "destination",
    "connection_fee": "connection_fee",
    "billing_initial": "billing_initial",
    "billing_increment": "billing_increment",
    "effective_from": "effective_from",
    "effective_to": "effective_to",
}


class RateDeckError(ValueError):
    """The deck cannot be imported; the message lists the offending lines."""


@dataclasses.dataclass(frozen=True)
class RateRow:
    prefix: str
    rate: decimal.Decimal
    destination: str | None
    connection_fee: decimal.Decimal
    billing_initial: int
    billing_increment: int
    effective_from: dt.datetime
    effective_to: dt.datetime | None


def _date(text: str) -> dt.datetime:
    text = text.strip()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise ValueError(f"date {text!r}: expected YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS] (UTC)")


def _money(text: str, name: str) -> decimal.Decimal:
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{name} {text!r} must be a number >= 0")
    if value >= 1_000_000:
        raise ValueError(f"{name} {text!r} is too large (at most 999999.999999)")
    return value.quantize(decimal.Decimal("0.000001"), rounding=decimal.ROUND_HALF_UP)


def _seconds(text: str, name: str, default: int, minimum: int) -> int:
    if not text.strip():
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a whole number of seconds") from None
    if not minimum <= value <= 3600:
        raise ValueError(f"{name} {value} must be between {minimum} and 3600")
    return value


def parse_deck(
    lines: Iterable[str], *, effective_from: dt.datetime, default_initial: int = 60, default_increment: int = 60
) -> list[RateRow]:
    """Every row of a CSV deck, or RateDeckError naming each bad line (nothing partial)."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise RateDeckError("the rate deck is empty") from None
    columns = []
    for name in header:
        key = name.strip().lower().replace(" ", "_")
        columns.append(COLUMN_ALIASES.get(key))
    missing = {"prefix", "rate"} - set(columns)
    if missing:
        raise RateDeckError(
            f"line 1: the header must name the columns {', '.join(sorted(missing))} (got {', '.join(header)})"
        )
    rows: list[RateRow] = []
    errors: list[str] = []
    seen: dict[tuple[str, dt.datetime], int] = {}
    for number, record in enumerate(reader, start=2):
        if not any(field.strip() for field in record):
            continue
        values = {col: field for col, field in zip(columns, record, strict=False) if col}
        try:
            row = _row(values, effective_from, default_initial, default_increment)
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
            continue
        key = (row.prefix, row.effective_from)
        if key in seen:
            errors.append(f"line {number}: prefix {row.prefix} appears again (first on line {seen[key]})")
            continue
        seen[key] = number
        rows.append(row)
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise RateDeckError(f"{len(errors)} bad line(s), nothing imported:\n  {shown}{more}")
    if not rows:
        raise RateDeckError("the rate deck has a header but no rates")
    return rows


def _row(values: dict[str, str], effective_from: dt.datetime, initial: int, increment: int) -> RateRow:
    prefix = values.get("prefix", "").strip().lstrip("+")
    if not prefix or len(prefix) > 32 or not set(prefix) <= PREFIX_CHARS:
        raise ValueError(f"prefix {values.get('prefix', '')!r} must be 1-32 digits")
    starts = _date(values["effective_from"]) if values.get("effective_from", "").strip() else effective_from
    ends = _date(values["effective_to"]) if values.get("effective_to", "").strip() else None
    if ends is not None and ends <= starts:
        raise ValueError(f"effective_to {ends} is not after effective_from {starts}")
    destination = values.get("destination", "").strip() or None
    if destination is not None and len(destination) > 128:
        raise ValueError("destination is longer than 128 characters")
    return RateRow(
        prefix=prefix,
        rate=_money(values.get("rate", ""), "rate"),
        destination=destination,
        connection_fee=_money(values.get("connection_fee", "") or "0", "connection_fee"),
        billing_initial=_seconds(values.get("billing_initial", ""), "billing_initial", initial, 0),
        billing_increment=_seconds(values.get("billing_increment", ""), "billing_increment", increment, 1),
        effective_from=starts,
        effective_to=ends,
    )


def resolve_owner(conn: pymysql.Connection, kind: str, name_or_id: str) -> int:
    """The id of the carrier or customer named (or numbered) ``name_or_id``."""
    table = {"carrier": "carriers", "customer": "customers"}[kind]
    with conn.cursor() as cur:
        if name_or_id.isdigit():
            cur.execute(f"SELECT id FROM {table} WHERE id = %s OR name = %s", (int(name_or_id), name_or_id))  # noqa: S608
        else:
            cur.execute(f"SELECT id FROM {table} WHERE name = %s", (name_or_id,))  # noqa: S608
        found = cur.fetchall()
    if len(found) != 1:
        raise RateDeckError(f"no single {kind} named or numbered {name_or_id!r}")
    row = found[0]
    return int(row["id"] if isinstance(row, dict) else row[0])


def _batches(rows: list[RateRow], size: int) -> Iterator[list[RateRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@dataclasses.dataclass(frozen=True)
class ImportResult:
    rows: int
    replaced: int
    seconds: float


def import_rates(
    conn: pymysql.Connection, kind: str, owner_id: int, rows: list[RateRow], *, replace: bool = False
) -> ImportResult:
    """Write ``rows`` for one carrier or customer in a single transaction.

    ``replace`` first removes every rate the owner had, for a deck that
    supersedes the previous one entirely; otherwise rows are added, and a row
    with the same prefix and start date is updated.
    """
    table, owner_col = {"carrier": ("carrier_rates", "carrier_id"), "customer": ("customer_rates", "customer_id")}[kind]
    # table and column names come from the fixed mapping above, never from input
    sql = (
        f"INSERT INTO {table} ({owner_col}, prefix, destination, rate_per_minute, connection_fee, billing_initial,"  # noqa: S608
        " billing_increment, effective_from, effective_to) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON DUPLICATE KEY UPDATE destination = VALUES(destination), rate_per_minute = VALUES(rate_per_minute),"
        " connection_fee = VALUES(connection_fee), billing_initial = VALUES(billing_initial),"
        " billing_increment = VALUES(billing_increment), effective_to = VALUES(effective_to)"
    )
    started = time.monotonic()
    replaced = 0
    conn.begin()
    try:
        with conn.cursor() as cur:
            if replace:
                replaced = cur.execute(f"DELETE FROM {table} WHERE {owner_col} = %s", (owner_id,))  # noqa: S608
            for batch in _batches(rows, BATCH_ROWS):
                cur.executemany(
                    sql,
                    [
                        (owner_id, r.prefix, r.destination, r.rate, r.connection_fee, r.billing_initial,
                         r.billing_increment, r.effective_from, r.effective_to)
                        for r in batch
                    ],
                )  # fmt: skip
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return ImportResult(len(rows), replaced, time.monotonic() - started)


def read_deck(path: str | Path, **kwargs) -> list[RateRow]:
    """parse_deck on a file (UTF-8, a BOM tolerated)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    return parse_deck(io.StringIO(text, newline=""), **kwargs)
