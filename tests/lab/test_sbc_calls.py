"""The termination SBC end to end: SIPp customers and carriers on their own peer
hosts, the real Kamailio and MariaDB in the lab VM, results read from the CDRs
and events the SBC wrote."""

from __future__ import annotations

import pytest

NUMBER = "573001234567"


@pytest.fixture
def world(sbc_world):
    """The conftest's SbcWorld: test rows in the SBC tables, removed afterwards."""
    return sbc_world


def call(world, peer: str, number: str = NUMBER, *, calls: int = 1, rate: float = 10, hold_ms: int = 500,
         timeout: int = 30, scenario: str = "sbc_customer.xml"):  # fmt: skip
    return world.sipp(
        peer, scenario, world.sbc, calls=calls, rate=rate, timeout=timeout, extra=["-s", number, "-d", str(hold_ms)]
    )


def test_known_customer_ip_is_routed_to_the_carrier_and_billed(world):
    cust_ip = world.add_peer("cust")
    car_ip = world.add_peer("carrier1")
    customer = world.customer(cust_ip, sell={"57": 0.06})
    carrier = world.carrier(car_ip, rates={"57": 0.02})
    world.reload()
    uas = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)

    result = call(world, "cust", hold_ms=2000)

    assert result.ok, result.stdout[-2000:]
    assert uas.wait(10).ok
    (cdr,) = world.cdrs(customer)
    assert cdr["disposition"] == "answered"
    assert cdr["sip_code"] == "200"
    assert int(cdr["carrier_id"]) == carrier
    assert cdr["source_ip"] == cust_ip
    assert cdr["hangup_side"] == "caller"
    assert 1900 <= int(cdr["billable_ms"]) <= 2600
    assert int(cdr["billed_seconds_price"]) in (2, 3)
    assert float(cdr["price"]) == pytest.approx(int(cdr["billed_seconds_price"]) / 60 * 0.06, abs=1e-6)
    assert float(cdr["cost"]) == pytest.approx(int(cdr["billed_seconds_cost"]) / 60 * 0.02, abs=1e-6)
    assert world.tried(cdr) == [{"carrier_id": carrier, "code": 200}]


def test_unknown_source_ip_gets_403_logged_for_fail2ban(world, vm_exec):
    stranger = world.add_peer("stranger")
    world.reload()

    result = call(world, "stranger")

    assert result.ok, result.stdout[-2000:]
    assert "SIP/2.0 403" in world.messages(result)
    log = vm_exec("journalctl -u kamailio --no-pager -n 200 -o cat")
    assert f"SBC: unauthorized source {stranger}:5060 for INVITE" in log
    rows = world.q(
        "SELECT reject_reason, sip_code FROM sbc_cdrs WHERE source_ip = %s AND invite_at > UTC_TIMESTAMP() - INTERVAL"
        " 1 MINUTE",
        (stranger,),
    )
    assert rows and rows[-1]["reject_reason"] == "unknown_source"
    world.q("DELETE FROM sbc_cdrs WHERE source_ip = %s AND customer_id IS NULL", (stranger,))
