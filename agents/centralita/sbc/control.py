"""Live control of the SBC: apply database changes and read Kamailio's state.

Kamailio holds what each call needs in memory: the carrier list (dispatcher),
the source address list (customer IPs and the blacklist, permissions), and two
caches filled from the database on first use: each source's customers with
their limits (htable ``src``) and each (customer, number)'s normalisation,
dialing plan verdict and carrier order (htable ``route``), each (customer,
caller)'s caller number after the caller rules (htable ``cli``) and the digest
credentials of carriers that challenged (htable ``cauth``). The carriers' limits
(max_channels, max_cps) and from_domain travel with the carrier list. ``sync``
reloads the lists and empties the caches; it is what the panel calls after a
save, and what ``centralita kamailio sync`` runs. Only the minutes left of a
customer with a monthly cap are read from the database on every call.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from centralita.sbc.rpc import KamailioRpc, RpcError

__all__ = ["CACHE_FLUSHES", "RELOADS", "SbcStatus", "flush_route_cache", "read_status", "render_status", "sync"]

# (RPC method, parameters, what it reloads). Kamailio refuses a reload while one
# runs; each is retried a few times before the sync reports it.
RELOADS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("dispatcher.reload", (), "carriers (dispatcher)"),
    ("permissions.addressReload", (), "customer IPs and blacklist (permissions)"),
    ("htable.flush", ("src",), "customers and limits by source (cache)"),
    ("htable.flush", ("route",), "normalisation, dialing plans and carrier order by number (cache)"),
    ("htable.flush", ("cli",), "caller numbers after the caller rules (cache)"),
    ("htable.flush", ("cauth",), "carrier credentials (cache)"),
    ("htable.flush", ("mleft",), "capped customers' minutes left as Kamailio counts them (cache)"),
)
# What a rate change makes stale: the carrier order cached per number.
CACHE_FLUSHES: tuple[tuple[str, tuple[str, ...], str], ...] = (RELOADS[3],)
RELOAD_ATTEMPTS = 5
RELOAD_RETRY_S = 0.5


async def sync(rpc: KamailioRpc, steps: tuple[tuple[str, tuple[str, ...], str], ...] = RELOADS) -> list[str]:
    """Reload the in-memory tables and empty the caches; returns what was done, raises RpcError on the first failure."""
    done = []
    for method, params, what in steps:
        for attempt in range(1, RELOAD_ATTEMPTS + 1):
            try:
                await rpc.call(method, *params)
                break
            except RpcError as exc:
                if "ongoing reload" not in str(exc).lower() or attempt == RELOAD_ATTEMPTS:
                    raise
                await asyncio.sleep(RELOAD_RETRY_S)
        done.append(what)
    return done


async def flush_route_cache(rpc: KamailioRpc) -> list[str]:
    """After a rate change: the cached carrier orders are recomputed on the next call."""
    return await sync(rpc, CACHE_FLUSHES)


@dataclasses.dataclass
class SbcStatus:
    carriers: list[dict[str, Any]]
    dialogs: dict[str, Any]
    channels: dict[int, int]
    limits: dict[int, dict[str, Any]]
    banned: list[str]


# Dispatcher state flags as `dispatcher.list` shows them: first letter A(ctive),
# I(nactive), D(isabled); second P(robing) or X (not probing).
STATE_NAMES = {"A": "up", "I": "down", "D": "disabled"}


def _limit(attrs: dict[str, str], name: str) -> int | None:
    """A limit from the carrier's dispatcher attributes: empty (or absent) is unlimited."""
    value = attrs.get(name, "")
    return int(value) if value.isdigit() else None


def _attrs(dest: dict[str, Any]) -> dict[str, str]:
    """The carrier's dispatcher attributes ("duid=carrier3;mc=10;cps=;...") as a dict."""
    attrs = dest.get("ATTRS")
    body = attrs.get("BODY", "") if isinstance(attrs, dict) else attrs if isinstance(attrs, str) else ""
    pairs = (item.partition("=") for item in str(body).split(";") if item)
    return {key.strip(): value.strip() for key, _, value in pairs}


def _carriers(listing: Any) -> list[dict[str, Any]]:
    """Flatten `dispatcher.list` (RECORDS -> SET -> TARGETS -> DEST) into one row per carrier."""
    rows = []
    if not isinstance(listing, dict):
        return rows
    for record in listing.get("RECORDS") or []:
        dest_set = record.get("SET", record) if isinstance(record, dict) else {}
        setid = dest_set.get("ID")
        for target in dest_set.get("TARGETS") or []:
            dest = target.get("DEST", target) if isinstance(target, dict) else {}
            flags = str(dest.get("FLAGS", ""))
            latency = dest.get("LATENCY")
            attrs = _attrs(dest)
            rows.append(
                {
                    "carrier_id": setid,
                    "uri": dest.get("URI"),
                    "state": STATE_NAMES.get(flags[:1], flags or "?"),
                    "probing": flags[1:2] == "P",
                    "latency_ms": latency.get("AVG") if isinstance(latency, dict) else None,
                    "max_channels": _limit(attrs, "mc"),
                    "max_cps": _limit(attrs, "cps"),
                    "from_domain": attrs.get("fd") or None,
                    "channels": 0,
                }
            )
    return rows


def _banned(dump: Any) -> list[str]:
    """Addresses in the flood-ban htable (`htable.dump ipban`)."""
    out = []
    for slot in dump if isinstance(dump, list) else []:
        for item in slot.get("slot", []) if isinstance(slot, dict) else []:
            if isinstance(item, dict) and item.get("name"):
                out.append(str(item["name"]))
    return sorted(out)


async def read_status(rpc: KamailioRpc, customers: dict[int, dict[str, Any]]) -> SbcStatus:
    """Dispatcher targets with their calls and limits, dialog counts, channels per customer and flood bans.

    ``customers`` maps customer id -> its limits from the database (name, max_cps,
    max_channels, minutes); the channel count of each comes from Kamailio.
    """
    try:
        listing = await rpc.call("dispatcher.list")
    except RpcError as exc:
        if "no destination sets" not in str(exc).lower():
            raise
        listing = {}
    carriers = _carriers(listing)
    for row in carriers:
        size = await rpc.call("dlg.profile_get_size", "carr", str(row["carrier_id"]))
        row["channels"] = int(size if not isinstance(size, dict) else size.get("size", 0))
    dialogs = await rpc.call("dlg.stats_active")
    channels: dict[int, int] = {}
    for cid in customers:
        size = await rpc.call("dlg.profile_get_size", "chan", str(cid))
        channels[cid] = int(size if not isinstance(size, dict) else size.get("size", 0))
    try:
        banned = _banned(await rpc.call("htable.dump", "ipban"))
    except RpcError:
        banned = []
    return SbcStatus(carriers, dialogs if isinstance(dialogs, dict) else {}, channels, customers, banned)


def _or_unlimited(limit: int | None) -> str:
    return "unlimited" if limit is None else str(limit)


def render_status(status: SbcStatus) -> str:
    """The status as an operator reads it in a terminal."""
    lines = ["Carriers (dispatcher):"]
    if not status.carriers:
        lines.append("  none loaded")
    for row in status.carriers:
        probing = ", probing" if row["probing"] else ""
        channels = f"channels {row.get('channels', 0)}/{_or_unlimited(row.get('max_channels'))}"
        cps = f"cps max {_or_unlimited(row.get('max_cps'))}"
        lines.append(f"  carrier {row['carrier_id']:>5}  {row['uri']:<40} {row['state']}{probing}  {channels}  {cps}")
    d = status.dialogs
    lines.append(
        "Dialogs: "
        + ", ".join(f"{k} {d[k]}" for k in ("starting", "connecting", "answering", "ongoing", "all") if k in d)
    )
    lines.append("Customers (channels in use / limits):")
    if not status.limits:
        lines.append("  none active")
    for cid, info in sorted(status.limits.items()):
        minutes = info.get("monthly_minutes_limit")
        used = info.get("minutes_used")
        minutes_text = f"minutes {float(used):.1f}/{minutes}" if minutes is not None else "minutes unlimited"
        lines.append(
            f"  {cid:>5} {info.get('name', ''):<24} channels {status.channels.get(cid, 0)}/{info.get('max_channels')}"
            f"  cps max {info.get('max_cps')}  {minutes_text}"
        )
    lines.append("Banned for flooding: " + (", ".join(status.banned) if status.banned else "none"))
    return "\n".join(lines)
