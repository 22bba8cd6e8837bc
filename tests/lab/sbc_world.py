"""Test data for the SBC lab tests: customers, carriers and rates made through SQL
(as the panel makes them) and applied through Kamailio's RPC, removed afterwards."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SIP_PORT = 5060


class SbcWorld:
    """What one test created in the SBC's tables; ``cleanup()`` removes all of it."""

    def __init__(self, lab: Any, add_peer: Any, sipp: Any) -> None:
        self.lab = lab
        self.add_peer = add_peer
        self.sipp = sipp
        self.tag = uuid.uuid4().hex[:8]
        self.customers: list[int] = []
        self.carriers: list[int] = []
        self.plans: list[int] = []
        self.blacklisted: list[str] = []

    @property
    def sbc(self) -> str:
        return f"{self.lab.address}:{SIP_PORT}"

    def q(self, sql: str, params: Iterable[Any] | None = None) -> list[dict]:
        return self.lab.db_query(sql, tuple(params) if params is not None else None)

    def insert(self, sql: str, params: Iterable[Any]) -> int:
        rows = self.q(sql + "; SELECT LAST_INSERT_ID() AS id", params)
        return int(rows[0]["id"])

    # -- data ----------------------------------------------------------------

    def customer(
        self,
        ip: str,
        *,
        prefix_len: int = 32,
        tech_prefix: str = "",
        max_cps: int = 50,
        max_channels: int = 50,
        minutes_limit: int | None = None,
        minutes_used: float = 0,
        plan: int | None = None,
        allow_loss: bool = False,
        sell: dict[str, float] | None = None,
    ) -> int:
        cid = self.insert(
            "INSERT INTO customers (name, max_cps, max_channels, monthly_minutes_limit, minutes_used,"
            " minutes_period_start, dialing_plan_id, lcr_allow_loss) VALUES (%s, %s, %s, %s, %s,"
            " DATE_FORMAT(UTC_DATE(), '%%Y-%%m-01'), %s, %s)",
            (f"test-{self.tag}-{len(self.customers)}", max_cps, max_channels, minutes_limit, minutes_used, plan,
             allow_loss),
        )  # fmt: skip
        self.customers.append(cid)
        self.q(
            "INSERT INTO customer_ips (customer_id, ip_addr, prefix_len, tech_prefix) VALUES (%s, %s, %s, %s)",
            (cid, ip, prefix_len, tech_prefix),
        )
        for prefix, rate in (sell if sell is not None else {"57": 0.05}).items():
            self.q(
                "INSERT INTO customer_rates (customer_id, prefix, rate_per_minute, billing_initial, billing_increment,"
                " effective_from) VALUES (%s, %s, %s, 1, 1, UTC_TIMESTAMP() - INTERVAL 1 DAY)",
                (cid, prefix, rate),
            )
        return cid

    def carrier(
        self,
        host: str,
        *,
        rates: dict[str, float] | None = None,
        priority: int = 0,
        port: int = SIP_PORT,
        tech_prefix: str = "",
        strip_digits: int = 0,
    ) -> int:
        # a stale row from an interrupted run may hold the same target
        self.q("DELETE FROM carriers WHERE host = %s AND port = %s AND name LIKE 'test-%%'", (host, port))
        cid = self.insert(
            "INSERT INTO carriers (name, host, port, priority, state, tech_prefix, strip_digits)"
            " VALUES (%s, %s, %s, %s, 'up', %s, %s)",
            (f"test-{self.tag}-c{len(self.carriers)}", host, port, priority, tech_prefix, strip_digits),
        )
        self.carriers.append(cid)
        for prefix, rate in (rates if rates is not None else {"57": 0.01}).items():
            self.q(
                "INSERT INTO carrier_rates (carrier_id, prefix, rate_per_minute, billing_initial, billing_increment,"
                " effective_from) VALUES (%s, %s, %s, 1, 1, UTC_TIMESTAMP() - INTERVAL 1 DAY)",
                (cid, prefix, rate),
            )
        return cid

    def plan(self, default_action: str, rules: dict[str, str]) -> int:
        pid = self.insert(
            "INSERT INTO dialing_plans (name, default_action) VALUES (%s, %s)",
            (f"test-{self.tag}-p{len(self.plans)}", default_action),
        )
        self.plans.append(pid)
        for prefix, action in rules.items():
            self.q(
                "INSERT INTO dialing_plan_rules (dialing_plan_id, prefix, action) VALUES (%s, %s, %s)",
                (pid, prefix, action),
            )
        return pid

    def blacklist(self, ip: str, minutes: int = 60) -> None:
        self.q(
            "INSERT INTO ip_blacklist (ip_addr, prefix_len, reason, source, expires_at) VALUES (%s, 32, 'test',"
            " 'manual', UTC_TIMESTAMP(3) + INTERVAL %s MINUTE) ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at)",
            (ip, minutes),
        )
        self.blacklisted.append(ip)

    def reload(self) -> None:
        """What ``centralita kamailio sync`` does after the panel writes: reload the tables Kamailio caches."""
        self.lab.exec("kamcmd dispatcher.reload && kamcmd permissions.addressReload", timeout=30)

    # -- reading results ---------------------------------------------------

    def cdrs(self, customer: int, *, expect: int = 1, timeout: float = 10) -> list[dict]:
        """The customer's CDRs, once at least ``expect`` were written (CDRs are written asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.q("SELECT * FROM sbc_cdrs WHERE customer_id = %s ORDER BY id", (customer,))
            if len(rows) >= expect or time.monotonic() > deadline:
                return rows
            time.sleep(0.3)

    def events(self, *, customer: int | None = None, carrier: int | None = None, type_: str) -> list[dict]:
        if customer is not None:
            return self.q("SELECT * FROM events WHERE customer_id = %s AND type = %s", (customer, type_))
        return self.q("SELECT * FROM events WHERE carrier_id = %s AND type = %s", (carrier, type_))

    def wait_events(self, timeout: float = 15, **kwargs: Any) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.events(**kwargs)
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.5)

    @staticmethod
    def tried(cdr: dict) -> list[dict]:
        return json.loads(cdr["carriers_tried"] or "[]")

    @staticmethod
    def messages(result: Any) -> str:
        """SIPp's message trace of a run (-trace_msg), for header checks."""
        return "\n".join(p.read_text(errors="replace") for p in Path(result.workdir).glob("*_messages.log"))

    # -- cleanup -------------------------------------------------------------

    def cleanup(self) -> None:
        for cid in self.customers:
            self.q("DELETE FROM sbc_cdrs WHERE customer_id = %s", (cid,))
            self.q("DELETE FROM events WHERE customer_id = %s", (cid,))
        for cid in self.carriers:
            self.q("DELETE FROM events WHERE carrier_id = %s", (cid,))
        if self.customers:
            self.q(f"DELETE FROM customers WHERE id IN ({','.join(map(str, self.customers))})")
        if self.carriers:
            self.q(f"DELETE FROM carriers WHERE id IN ({','.join(map(str, self.carriers))})")
        if self.plans:
            self.q(f"DELETE FROM dialing_plans WHERE id IN ({','.join(map(str, self.plans))})")
        for ip in self.blacklisted:
            self.q("DELETE FROM ip_blacklist WHERE ip_addr = %s", (ip,))
            self.lab.exec(f"kamcmd htable.delete ipban {ip}", check=False)
        self.reload()
