"""Live control of the SBC: apply database changes and read Kamailio's state.

Kamailio reads customers, limits, dialing plans, normalisation rules and rates
from the database on every call, so those take effect at once. What it keeps
in memory is reloaded here: the carrier list (dispatcher) and the source
address list (customer IPs and the blacklist, permissions). ``sync`` is what
the panel calls after a save, and what ``centralita kamailio sync`` runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from centralita.sbc.rpc import KamailioRpc, RpcError

__all__ = ["RELOADS", "SbcStatus", "read_status", "render_status", "sync"]

# (RPC method, what it reloads). Kamailio refuses a reload while one runs; each
# is retried a few times before the sync reports it.
RELOADS: tuple[tuple[str, str], ...] = (
    ("dispatcher.reload", "carriers (dispatcher)"),
    ("permissions.addressReload", "customer IPs and blacklist (permissions)"),
)
RELOAD_ATTEMPTS = 5
RELOAD_RETRY_S = 0.5


async def sync(rpc: KamailioRpc) -> list[str]:
    """Reload every in-memory table; returns what was reloaded, raises RpcError on the first failure."""
    done = []
    for method, what in RELOADS:
        for attempt in range(1, RELOAD_ATTEMPTS + 1):
            try:
                await rpc.call(method)
                break
            except RpcError as exc:
                if "ongoing reload" not in str(exc).lower() or attempt == RELOAD_ATTEMPTS:
                    raise
                await asyncio.sleep(RELOAD_RETRY_S)
        done.append(what)
    return done


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
            rows.append(
                {
                    "carrier_id": setid,
                    "uri": dest.get("URI"),
                    "state": STATE_NAMES.get(flags[:1], flags or "?"),
                    "probing": flags[1:2] == "P",
                    "latency_ms": latency.get("AVG") if isinstance(latency, dict) else None,
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
    """Dispatcher targets, dialog counts, channels per customer (dialog profile) and flood bans.

    ``customers`` maps customer id -> its limits from the database (name, max_cps,
    max_channels, minutes); the channel count of each comes from Kamailio.
    """
    try:
        listing = await rpc.call("dispatcher.list")
    except RpcError as exc:
        if "no destination sets" not in str(exc).lower():
            raise
        listing = {}
    dialogs = await rpc.call("dlg.stats_active")
    channels: dict[int, int] = {}
    for cid in customers:
        size = await rpc.call("dlg.profile_get_size", "chan", str(cid))
        channels[cid] = int(size if not isinstance(size, dict) else size.get("size", 0))
    try:
        banned = _banned(await rpc.call("htable.dump", "ipban"))
    except RpcError:
        banned = []
    return SbcStatus(_carriers(listing), dialogs if isinstance(dialogs, dict) else {}, channels, customers, banned)


def render_status(status: SbcStatus) -> str:
    """The status as an operator reads it in a terminal."""
    lines = ["Carriers (dispatcher):"]
    if not status.carriers:
        lines.append("  none loaded")
    for row in status.carriers:
        probing = ", probing" if row["probing"] else ""
        lines.append(f"  carrier {row['carrier_id']:>5}  {row['uri']:<40} {row['state']}{probing}")
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
