"""The termination SBC end to end: SIPp customers and carriers on their own peer
hosts, the real Kamailio and MariaDB in the lab VM, results read from the CDRs
and events the SBC wrote."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

NUMBER = "573001234567"
# The SBC cuts a call whose minutes run out at the remainder, never before, and late by less than this.
CUT_LATE_MS = 1000
RAW_INVITE = Path(__file__).resolve().parent / "scenarios" / "raw_invite.py"
RAW_CARRIER = Path(__file__).resolve().parent / "scenarios" / "raw_carrier.py"


SPOOL = "/var/spool/centralita/sbc"


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
    # the line the fail2ban kamailio filter matches
    assert f"SECURITY: unknown_source source={stranger} port=5060 method=INVITE" in log
    rows = world.q(
        "SELECT reject_reason, sip_code FROM sbc_cdrs WHERE source_ip = %s AND invite_at > UTC_TIMESTAMP() - INTERVAL"
        " 1 MINUTE",
        (stranger,),
    )
    assert rows and rows[-1]["reject_reason"] == "unknown_source"
    world.q("DELETE FROM sbc_cdrs WHERE source_ip = %s AND customer_id IS NULL", (stranger,))


def test_fail2ban_bans_a_source_that_keeps_sending_from_an_unknown_address(world, vm_exec, fail2ban_counts):
    """The kamailio jail matches the SECURITY line: five refused INVITEs, and the host is banned on every
    port until the ban is lifted."""
    stranger = world.add_peer("stranger")
    fail2ban_counts(stranger)
    world.reload()
    try:
        world.sipp("stranger", "sbc_customer.xml", world.sbc, calls=6, rate=6, timeout=20, extra=["-s", NUMBER])
        deadline = time.monotonic() + 30
        banned = "nft list set inet f2b-table addr-set-kamailio 2>/dev/null"
        while stranger not in vm_exec(banned, check=False):
            assert time.monotonic() < deadline, vm_exec("fail2ban-client status kamailio", check=False)
            time.sleep(1)
        probe = world.sipp("stranger", "sbc_customer.xml", world.sbc, calls=1, timeout=3, extra=["-s", NUMBER])
        received = _received_headers(world, probe)
        assert not [m for m in received if m.startswith("SIP/2.0 ")], received
    finally:
        # (the ban is lifted when the peer is removed)
        world.q("DELETE FROM sbc_cdrs WHERE source_ip = %s AND customer_id IS NULL", (stranger,))


def _received_headers(world, sipp_result) -> list[str]:
    """The header part of every message a SIPp peer received (its -trace_msg log), without the SDP."""
    blocks = world.messages(sipp_result).split("-----------------------------------------------")
    heads = [[*b.split("\n", 2), "", ""][1] for b in blocks]
    received = [b.split("bytes :", 1)[1] for b, head in zip(blocks, heads, strict=True) if "message received" in head]
    return [block.strip().split("\n\n", 1)[0] for block in received]


def test_neither_side_sees_the_other_sides_signalling_addresses(world, converge_sbc):
    """Topology hiding (turned on here): the customer finds no carrier address in what the SBC sends it, and
    the carrier no customer address in the Via, Record-Route and Contact headers; calls hung up by either
    side still end both legs (their in-dialog requests are routed by what the SBC encoded)."""
    converge_sbc(kamailio_topology_hiding=True)
    cust_ip = world.add_peer("cust")
    car_ip = world.add_peer("carrier1")
    customer = world.customer(cust_ip)
    world.carrier(car_ip)
    world.reload()

    uas = world.sipp.start("carrier1", "sbc_carrier_answer.xml", calls=1, timeout=30)
    by_carrier = call(world, "cust", scenario="sbc_customer_wait_bye.xml")
    assert by_carrier.ok, by_carrier.stdout[-2000:]
    carrier_side = uas.wait(10)
    assert carrier_side.ok
    uas = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)
    by_customer = call(world, "cust", hold_ms=500)
    assert by_customer.ok, by_customer.stdout[-2000:]
    assert uas.wait(10).ok

    cdrs = world.cdrs(customer, expect=2)
    assert [(c["disposition"], c["hangup_side"]) for c in cdrs] == [("answered", "callee"), ("answered", "caller")]
    to_customer = _received_headers(world, by_carrier) + _received_headers(world, by_customer)
    assert {h.split(None, 2)[1] for h in to_customer} >= {"180", "200"}, to_customer
    assert any(h.startswith("BYE ") for h in to_customer), "the carrier's BYE reached the customer"
    assert not [h for h in to_customer if car_ip in h], "a carrier address reached the customer"
    to_carrier = _received_headers(world, carrier_side)
    assert any(h.startswith("INVITE ") for h in to_carrier) and any(h.startswith("ACK ") for h in to_carrier)
    routing_headers = ("Via", "Record-Route", "Contact")
    routing = [line for h in to_carrier for line in h.splitlines() if line.split(":", 1)[0] in routing_headers]
    assert routing and not [line for line in routing if cust_ip in line], routing


def test_cdr_timings_follow_the_carrier_script(world):
    """Carrier: 180 after 300 ms, 200 after 2 s more, BYE 5 s after answering."""
    customer = world.one_route()
    uas = world.sipp.start("carrier1", "sbc_carrier_answer.xml", calls=1, timeout=30)

    result = call(world, "cust", scenario="sbc_customer_wait_bye.xml")

    assert result.ok, result.stdout[-2000:]
    assert uas.wait(10).ok
    (cdr,) = world.cdrs(customer)
    assert cdr["disposition"] == "answered"
    assert cdr["hangup_side"] == "callee"
    assert 280 <= int(cdr["pdd_ms"]) <= 450, cdr
    assert 1950 <= int(cdr["ring_ms"]) <= 2250, cdr
    assert 4950 <= int(cdr["billable_ms"]) <= 5400, cdr
    assert 7200 <= int(cdr["total_ms"]) <= 7900, cdr
    assert cdr["invite_at"] < cdr["progress_at"] < cdr["answer_at"] < cdr["end_at"]
    assert "." in cdr["invite_at"], "timestamps keep milliseconds"
    deadline = time.monotonic() + 20  # traces reach the database a spool period or two later
    while True:
        traces = world.q(
            "SELECT method, status_code, direction FROM sip_traces WHERE call_id = %s ORDER BY captured_at, id",
            (cdr["call_id"],),
        )
        if len(traces) >= 13 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    methods = {t["method"] for t in traces if t["method"]}
    codes = {t["status_code"] for t in traces if t["status_code"]}
    assert {"INVITE", "ACK", "BYE"} <= methods, traces
    assert {"180", "200"} <= codes, traces
    # Kamailio's own 100 Trying to the customer is in the ladder too, once
    trying = [t for t in traces if t["status_code"] == "100" and t["direction"] == "out"]
    assert len(trying) == 1, traces


def test_cps_over_the_limit_is_refused_with_503_and_alerted(world):
    customer = world.one_route(max_cps=2)
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=8, timeout=30)

    result = call(world, "cust", calls=8, rate=40, hold_ms=200)

    cdrs = world.cdrs(customer, expect=8)
    refused = [c for c in cdrs if c["reject_reason"] == "cps_exceeded"]
    assert refused, cdrs
    assert all(c["sip_code"] == "503" and c["disposition"] == "rejected" for c in refused)
    assert len(cdrs) - len(refused) >= 2
    assert "X-Centralita-Reason: cps_exceeded" in world.messages(result)
    assert len(world.wait_events(customer=customer, type_="cps_exceeded")) == 1
    # the refusal Kamailio made itself is traced with the INVITE it answers
    deadline = time.monotonic() + 20  # traces reach the database a spool period or two later
    while True:
        traces = world.q(
            "SELECT direction, method, status_code,"
            " LOCATE('X-Centralita-Reason: cps_exceeded', message) > 0 AS says_why"
            " FROM sip_traces WHERE call_id = %s ORDER BY captured_at, id",
            (refused[0]["call_id"],),
        )
        if len(traces) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [(t["direction"], t["method"] or t["status_code"]) for t in traces] == [("in", "INVITE"), ("out", "503")]
    assert traces[1]["says_why"] == "1", traces


def test_channel_limit_counts_calls_still_ringing(world):
    customer = world.one_route(max_channels=2)
    # this carrier rings for 2.3 s before answering: the third call arrives while two ring
    world.sipp.start("carrier1", "sbc_carrier_answer.xml", calls=2, timeout=30)

    result = call(world, "cust", calls=3, rate=20, scenario="sbc_customer_wait_bye.xml")

    cdrs = world.cdrs(customer, expect=3, timeout=20)
    assert sorted(c["reject_reason"] or "" for c in cdrs) == ["", "", "channels_exceeded"], cdrs
    assert "X-Centralita-Reason: channels_exceeded" in world.messages(result)
    assert world.wait_events(customer=customer, type_="channels_exceeded")


def test_exhausted_monthly_minutes_refuse_new_calls(world):
    customer = world.one_route(minutes_limit=10, minutes_used=10)

    result = call(world, "cust")

    (cdr,) = world.cdrs(customer)
    assert (cdr["reject_reason"], cdr["sip_code"]) == ("minutes_exhausted", "403")
    assert "X-Centralita-Reason: minutes_exhausted" in world.messages(result)
    assert len(world.wait_events(customer=customer, type_="minutes_exhausted")) == 1


def test_minutes_warning_is_raised_once_past_80_percent(world):
    customer = world.one_route(minutes_limit=1, minutes_used=0.79)
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)

    assert call(world, "cust", hold_ms=1500).ok

    world.cdrs(customer)
    (event,) = world.wait_events(customer=customer, type_="minutes_warning")
    assert event["severity"] == "warning"
    used = world.q("SELECT minutes_used FROM customers WHERE id = %s", (customer,))[0]["minutes_used"]
    assert float(used) == pytest.approx(0.79 + 2 / 60, abs=0.01)


def test_running_call_is_cut_when_the_minutes_run_out(world):
    customer = world.one_route(minutes_limit=1, minutes_used=1 - 3 / 60)
    uas = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)

    result = call(world, "cust", scenario="sbc_customer_wait_bye.xml", timeout=20)

    assert result.ok, result.stdout[-2000:]
    assert uas.wait(10).ok, "the carrier got the SBC's BYE"
    (cdr,) = world.cdrs(customer)
    assert cdr["hangup_side"] == "sbc"
    # never before the 3 s left (1 ms: the stored timestamps keep whole milliseconds); late by less than
    # CUT_LATE_MS (the cut timer looks ten times a second, then the BYEs go out)
    assert 3000 - 1 <= int(cdr["billable_ms"]) < 3000 + CUT_LATE_MS, cdr


def test_dialing_plan_allows_and_denies_by_longest_prefix(world):
    world.add_peer("cust")
    car_ip = world.add_peer("carrier1")
    plan = world.plan("deny", {"57": "allow", "573009": "deny"})
    customer = world.customer(world.lab.peer_address("cust"), plan=plan)
    world.carrier(car_ip)
    world.reload()
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)

    assert call(world, "cust", "573001234567").ok
    denied = call(world, "cust", "573009876543")
    elsewhere = call(world, "cust", "14155550100")

    cdrs = world.cdrs(customer, expect=3)
    by_number = {c["callee_original"]: c for c in cdrs}
    assert by_number["573001234567"]["disposition"] == "answered"
    assert by_number["573009876543"]["reject_reason"] == "dialing_plan"
    assert by_number["14155550100"]["reject_reason"] == "dialing_plan"
    assert "X-Centralita-Reason: dialing_plan" in world.messages(denied)
    assert "SIP/2.0 403" in world.messages(elsewhere)


def test_numbers_are_normalised_before_routing_and_both_reach_the_cdr(world):
    world.add_peer("cust")
    car_ip = world.add_peer("carrier1")
    customer = world.customer(world.lab.peer_address("cust"), tech_prefix="7777")
    world.q(
        "INSERT INTO normalization_rules (customer_id, match_type, pattern, strip_digits, prepend, priority)"
        " VALUES (%s, 'prefix', '0', 1, '57', 10)",
        (customer,),
    )
    world.carrier(car_ip, tech_prefix="99#")
    world.reload()
    uas = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=3, timeout=40)

    for dialled in ("777703001234567", "7777+573001234567", "77770057 3001234567".replace(" ", "")):
        assert call(world, "cust", dialled).ok

    cdrs = world.cdrs(customer, expect=3)
    assert [c["callee_original"] for c in cdrs] == ["777703001234567", "7777+573001234567", "77770057" + "3001234567"]
    assert {c["callee_normalized"] for c in cdrs} == {"573001234567"}
    assert {c["tech_prefix"] for c in cdrs} == {"7777"}
    uas.wait(10)
    assert "INVITE sip:99#573001234567@" in world.messages(uas), "the carrier gets its own tech prefix"


def test_lcr_tries_cheapest_first_never_below_sell_rate_and_priority_overrides(world):
    world.add_peer("cust")
    ips = [world.add_peer(f"carrier{i}") for i in range(3)]
    customer = world.customer(world.lab.peer_address("cust"), sell={"57": 0.025, "5730": 0.05})
    dear = world.carrier(ips[0], rates={"57": 0.03})
    cheap = world.carrier(ips[1], rates={"57": 0.01, "573": 0.015})
    middle = world.carrier(ips[2], rates={"57": 0.02})
    world.reload()
    for i in range(3):
        world.sipp.start(f"carrier{i}", "sbc_carrier_503.xml", calls=3, timeout=40)

    call(world, "cust", "573101234567")  # sell 0.025: the 0.03 carrier would lose money
    call(world, "cust", "573001234567")  # sell 0.05 for 5730: every carrier fits
    world.q("UPDATE carriers SET priority = 10 WHERE id = %s", (middle,))
    world.reload()  # as the panel does after a save: Kamailio holds carrier orders in memory
    call(world, "cust", "573001234567")

    first, second, third = world.cdrs(customer, expect=3)
    assert [t["carrier_id"] for t in world.tried(first)] == [cheap, middle]
    assert [t["carrier_id"] for t in world.tried(second)] == [cheap, middle, dear]
    assert [t["carrier_id"] for t in world.tried(third)] == [middle, cheap, dear]
    assert {t["code"] for cdr in (first, second, third) for t in world.tried(cdr)} == {503}
    assert third["sip_code"] == "503" and third["disposition"] == "failed"


def test_failover_to_the_next_carrier_after_503(world):
    world.add_peer("cust")
    bad = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    good = world.carrier(world.add_peer("carrier2"), rates={"57": 0.02})
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    world.sipp.start("carrier1", "sbc_carrier_503.xml", calls=1, timeout=30)
    world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=1, timeout=30)

    assert call(world, "cust").ok

    (cdr,) = world.cdrs(customer)
    assert cdr["disposition"] == "answered"
    assert world.tried(cdr) == [{"carrier_id": bad, "code": 503}, {"carrier_id": good, "code": 200}]
    assert int(cdr["carrier_id"]) == good


def test_rate_prefixes_longer_than_16_digits_route_and_bill_the_call(world):
    """A 20-digit prefix is the longest match of a 24-digit number: it sets the customer's sell rate (so
    the dearer carrier fits), gives the second carrier its route and prices the call on both sides."""
    long_prefix = "57300123456789012345"
    number = long_prefix + "6789"
    world.add_peer("cust")
    short = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    long = world.carrier(world.add_peer("carrier2"), rates={long_prefix: 0.02})
    customer = world.customer(world.lab.peer_address("cust"), sell={"57": 0.001, long_prefix: 0.05})
    world.reload()
    world.sipp.start("carrier1", "sbc_carrier_503.xml", calls=1, timeout=30)
    world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=1, timeout=30)

    assert call(world, "cust", number, hold_ms=2000).ok

    (cdr,) = world.cdrs(customer)
    assert world.tried(cdr) == [{"carrier_id": short, "code": 503}, {"carrier_id": long, "code": 200}]
    assert cdr["callee_normalized"] == number
    assert cdr["carrier_rate_prefix"] == long_prefix and cdr["customer_rate_prefix"] == long_prefix
    assert float(cdr["price"]) == pytest.approx(int(cdr["billed_seconds_price"]) / 60 * 0.05, abs=1e-6)
    assert float(cdr["cost"]) == pytest.approx(int(cdr["billed_seconds_cost"]) / 60 * 0.02, abs=1e-6)


@pytest.mark.parametrize(("code", "disposition"), [(486, "busy"), (603, "failed")])
def test_a_user_answer_goes_back_to_the_customer_without_failover(world, code, disposition):
    world.add_peer("cust")
    busy = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    world.carrier(world.add_peer("carrier2"), rates={"57": 0.02})
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    world.sipp.start("carrier1", f"sbc_carrier_{code}.xml", calls=1, timeout=30)
    second = world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=1, timeout=30)

    result = call(world, "cust")

    assert f"SIP/2.0 {code}" in world.messages(result)
    (cdr,) = world.cdrs(customer)
    assert (cdr["disposition"], cdr["sip_code"]) == (disposition, str(code))
    assert world.tried(cdr) == [{"carrier_id": busy, "code": code}]
    second.stop()
    assert "INVITE sip:" not in world.messages(second)


def test_invite_timeout_fails_over_marks_the_carrier_down_and_probing_brings_it_back(world):
    world.add_peer("cust")
    silent = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    good = world.carrier(world.add_peer("carrier2"), rates={"57": 0.02})
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    quiet = world.sipp.start("carrier1", "sbc_carrier_silent.xml", calls=1, timeout=30)
    world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=1, timeout=40)

    result = call(world, "cust", timeout=40)

    assert result.ok, result.stdout[-2000:]
    (cdr,) = world.cdrs(customer)
    assert world.tried(cdr) == [{"carrier_id": silent, "code": 408}, {"carrier_id": good, "code": 200}]
    assert int(cdr["pdd_ms"]) >= 14500, "the default INVITE timeout is 15 s"
    assert world.wait_events(carrier=silent, type_="carrier_down")
    assert world.q("SELECT state FROM carriers WHERE id = %s", (silent,))[0]["state"] == "down"

    quiet.stop()
    world.sipp.start("carrier1", "sbc_carrier_options.xml", calls=3, timeout=40)
    assert world.wait_events(carrier=silent, type_="carrier_recovered", timeout=30)
    # Kamailio writes the event and the carrier's state as two asynchronous queries.
    deadline = time.monotonic() + 10
    while world.q("SELECT state FROM carriers WHERE id = %s", (silent,))[0]["state"] != "up":
        assert time.monotonic() < deadline, "the carrier's state stayed down after carrier_recovered"
        time.sleep(0.2)


def test_blacklisted_source_is_refused_before_anything_else(world):
    cust_ip = world.add_peer("cust")
    car_ip = world.add_peer("carrier1")
    customer = world.customer(cust_ip)
    world.carrier(car_ip)
    world.blacklist(cust_ip)
    world.reload()

    result = call(world, "cust")

    assert "X-Centralita-Reason: blacklisted" in world.messages(result)
    assert world.cdrs(customer, timeout=2) == [], "refused before the customer was even looked up"
    rows = world.q(
        "SELECT reject_reason, customer_id, callee_normalized FROM sbc_cdrs WHERE source_ip = %s"
        " ORDER BY id DESC LIMIT 1",
        (cust_ip,),
    )
    assert rows[0]["reject_reason"] == "blacklisted"
    # nothing of a call the same Kamailio worker handled before
    assert rows[0]["customer_id"] is None and rows[0]["callee_normalized"] is None, rows[0]
    world.q("DELETE FROM sbc_cdrs WHERE source_ip = %s AND customer_id IS NULL", (cust_ip,))


def test_flood_from_one_source_is_banned_for_an_hour(world):
    scanner = world.add_peer("scanner")
    world.blacklisted.append(scanner)  # cleanup lifts the ban again and removes its event

    world.sipp("scanner", "sbc_flood.xml", world.sbc, calls=300, rate=300, timeout=10, extra=["-s", "100"])

    deadline = time.monotonic() + 5  # the database writer files the event within a tenth of a second or so
    while True:
        events = world.q(
            "SELECT * FROM events WHERE type = 'security_flood_detected' AND JSON_VALUE(payload, '$.ip') = %s",
            (scanner,),
        )
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(events) == 1, f"one ban, one event: {events}"
    (ban,) = world.q("SELECT * FROM ip_blacklist WHERE ip_addr = %s", (scanner,))
    assert ban["source"] == "flood"
    left = world.q("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(3), %s) AS s", (ban["expires_at"],))[0]["s"]
    assert 3500 <= int(left) <= 3600
    # banned: even a single request now goes unanswered (requests other hosts of the lab send to this
    # address, such as Asterisk's OPTIONS, are not answers)
    probe = world.sipp("scanner", "sbc_customer.xml", world.sbc, calls=1, timeout=3, extra=["-s", NUMBER])
    received = _received_headers(world, probe)
    assert not [m for m in received if m.startswith("SIP/2.0 ")], received


def test_channel_count_and_running_calls_survive_a_kamailio_restart(world, vm_exec):
    customer = world.one_route(max_channels=2)
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=2, timeout=60)
    held = world.sipp.start(
        "cust", "sbc_customer.xml", world.sbc, calls=2, rate=10, timeout=60, extra=["-s", NUMBER, "-d", "12000"]
    )
    time.sleep(3)

    vm_exec("systemctl restart kamailio")
    time.sleep(2)
    refused = world.sipp("cust", "sbc_customer.xml", world.sbc, calls=1, timeout=20, port=5070, extra=["-s", NUMBER])

    assert "X-Centralita-Reason: channels_exceeded" in world.messages(refused)
    assert held.wait(40).ok, "calls up before the restart are still bridged and hung up normally"
    cdrs = world.cdrs(customer, expect=3)
    answered = [c for c in cdrs if c["disposition"] == "answered"]
    assert len(answered) == 2, cdrs
    assert all(11500 <= int(c["billable_ms"]) <= 13500 for c in answered), answered


def test_a_restart_waits_for_a_ringing_call_and_the_restarted_kamailio_has_it(world, vm_exec):
    """Kamailio's stop drains: a call ringing when the restart begins is waited for, answered, written to
    the database, and restored by the restarted Kamailio (the carrier's BYE then writes its CDR); a call
    placed during the stop gets 503 draining, with its CDR."""
    customer = world.one_route()
    uas = world.sipp.start("carrier1", "sbc_carrier_answer.xml", calls=1, timeout=60)
    ringing = world.sipp.start(
        "cust", "sbc_customer_wait_bye.xml", world.sbc, calls=1, timeout=60, extra=["-s", NUMBER]
    )
    time.sleep(1.0)  # the carrier rings (180 at 300 ms) and answers at 2.3 s
    since = vm_exec("date +%s").strip()
    restart = threading.Thread(target=vm_exec, args=("systemctl restart kamailio",))
    restart.start()
    time.sleep(0.5)
    refused = world.sipp("cust", "sbc_customer.xml", world.sbc, calls=1, timeout=20, port=5070, extra=["-s", NUMBER])
    restart.join(90)
    assert not restart.is_alive(), "the restart ended"

    assert "X-Centralita-Reason: draining" in world.messages(refused)
    assert "Retry-After: 10" in world.messages(refused)
    assert ringing.wait(40).ok, "the call answered during the stop was hung up by the carrier after the restart"
    assert uas.wait(10).ok
    cdrs = world.cdrs(customer, expect=2, timeout=20)
    by_reason = {c["reject_reason"]: c for c in cdrs}
    assert set(by_reason) == {None, "draining"}, cdrs
    (kept, drained) = by_reason[None], by_reason["draining"]
    assert (kept["disposition"], kept["hangup_side"]) == ("answered", "callee"), kept
    assert 4950 <= int(kept["billable_ms"]) <= 5400, kept
    assert drained["sip_code"] == "503"
    journal = vm_exec(f"journalctl -u kamailio --since @{since} --no-pager", check=False)
    assert "stopping: new calls refused (503 draining); 1 ringing" in journal
    assert "stopping: drained in" in journal
    assert "Failed with result" not in journal, "the stop is a clean one"
    # the drain asks only for what Kamailio has (an RPC error reply is also logged as a bad SIP message)
    assert "parse_msg" not in journal and "Key name doesn't exist" not in journal, journal[-3000:]


def test_a_call_still_ringing_when_the_drain_ends_is_cancelled_and_keeps_its_cdr(world, vm_exec):
    customer = world.one_route()
    uas = world.sipp.start("carrier1", "sbc_carrier_ring.xml", calls=1, timeout=60)
    caller = world.sipp.start("cust", "sbc_customer.xml", world.sbc, calls=1, timeout=60, extra=["-s", NUMBER])
    time.sleep(1.0)
    try:
        # the unit's stop with a shorter wait for ringing calls
        drained = vm_exec(
            "runuser -u kamailio -- python3 /usr/local/lib/centralita/sbc-drain.py"
            " --rpc http://127.0.0.1:5071/RPC --seconds 1 --period 1"
        )
    finally:
        vm_exec("systemctl restart kamailio")  # as the stop goes on; the next Kamailio starts afresh

    assert "1 calls still ringing after 1 s: cancelled" in drained
    assert uas.wait(10).ok, "the carrier got the CANCEL"
    result = caller.wait(10)
    assert "SIP/2.0 487" in world.messages(result)
    (cdr,) = world.cdrs(customer)
    assert (cdr["sip_code"], cdr["hangup_side"]) == ("487", "sbc"), cdr


DB_AWAY_TABLE = "sbc_db_away"


def _forget_dialogs_ended_while_the_database_was_away(vm_exec) -> None:
    """Calls that ended while the database was away (and up to 5 s before: a dialog's row is deleted when
    its BYE's transaction is) leave their rows in the `dialog` table until Kamailio's housekeeping deletes
    them, within a minute (the test after these). A restart before that would bring them back until the
    keepalives found them gone, with OPTIONS and BYEs to the peers' addresses that a later test's SIPp
    would get. With no call up, every row is such a one."""
    vm_exec("mariadb centralita -e 'DELETE FROM dialog_vars; DELETE FROM dialog'")


def _wait_until_kamailio_answers(vm_exec, within: float = 30) -> None:
    """After a (re)start: until Kamailio answers over its control socket."""
    deadline = time.monotonic() + within
    while vm_exec("kamcmd core.uptime >/dev/null 2>&1 && echo up", check=False).strip() != "up":
        assert time.monotonic() < deadline, "Kamailio answers again after its restart"
        time.sleep(0.5)


def _refuse_kamailio_the_database(vm_exec) -> None:
    """From now on Kamailio's connections to MariaDB are refused (its own uid only: the test's queries and
    the other services go on), until the table DB_AWAY_TABLE is deleted."""
    vm_exec(
        f"nft add table inet {DB_AWAY_TABLE} && nft add chain inet {DB_AWAY_TABLE} out"
        " '{ type filter hook output priority 0; }'"
        f" && nft add rule inet {DB_AWAY_TABLE} out meta skuid kamailio tcp dport 3306 reject with tcp reset"
    )


def test_cdrs_written_while_the_database_is_away_are_kept_and_arrive_later(world, vm_exec):
    """A burst of 800 calls while MariaDB refuses Kamailio: the writer's batches (up to 100 CDRs, longer
    than one transformation buffer of Kamailio) go to the spool whole, and every CDR arrives once the
    database answers."""
    customer = world.one_route(max_cps=1000, max_channels=1000)
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=801, timeout=90)
    assert call(world, "cust").ok
    assert len(world.cdrs(customer)) == 1

    vm_exec("systemctl stop centralita-sbc-traceload")  # so the spool can be looked at
    _refuse_kamailio_the_database(vm_exec)
    try:
        call(world, "cust", calls=800, rate=800, hold_ms=200, timeout=60)  # whatever each call's end: its CDR
        time.sleep(3)
        assert len(world.cdrs(customer, timeout=0)) == 1, "the CDRs cannot have reached the database yet"
        pieces = vm_exec(f"cat {SPOOL}/sql_*.sql | awk -F, '{{ print NF }}' | sort -n | tail -1", check=False)
        assert int(pieces or 0) >= 2, "a batch longer than one piece of base64 was spooled"
    finally:
        vm_exec(f"nft delete table inet {DB_AWAY_TABLE}", check=False)
        _forget_dialogs_ended_while_the_database_was_away(vm_exec)
        vm_exec("systemctl start centralita-sbc-traceload")

    cdrs = world.cdrs(customer, expect=801, timeout=60)
    assert len(cdrs) == 801 and len({c["call_id"] for c in cdrs}) == 801, len(cdrs)
    journal = vm_exec("journalctl -u kamailio --since '-2 min' --no-pager", check=False)
    assert "database write failed; CDRs and events go to the spool" in journal
    assert "the database answers again" in journal
    assert vm_exec(f"ls {SPOOL}/quarantine 2>/dev/null | wc -l", check=False).strip() in ("", "0")


def test_cdrs_of_calls_made_while_the_database_is_away_outlive_a_kamailio_restart(world, vm_exec):
    """What Kamailio could not write goes to disk (the spool's statements files), not only to its memory: a
    Kamailio stopped while the database is away loses none of it, and the spool loader writes and files it
    once the database answers."""
    customer = world.one_route()
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=4, timeout=90)
    # a first call: Kamailio knows the customer and the route from memory while the database is away
    assert call(world, "cust").ok
    assert len(world.cdrs(customer)) == 1
    _refuse_kamailio_the_database(vm_exec)
    try:
        assert call(world, "cust", calls=3, rate=5).ok
        # a number Kamailio has no route for in memory needs the database: 503, not a refusal of the caller
        since = vm_exec("date +%s").strip()
        uncached = call(world, "cust", "573009999999")
        assert "X-Centralita-Reason: database_error" in world.messages(uncached)
        assert "SECURITY" not in vm_exec(f"journalctl -u kamailio --since @{since} --no-pager", check=False)
        deadline = time.monotonic() + 20
        while "S" not in vm_exec(f"cat {SPOOL}/sql_*.sql 2>/dev/null | cut -c1 | sort -u", check=False):
            assert time.monotonic() < deadline, "the CDRs were written to the spool"
            time.sleep(0.5)
        time.sleep(1)  # file_out writes the queued lines every few milliseconds
        vm_exec("systemctl stop kamailio")
        (stopped,) = world.q("SELECT UTC_TIMESTAMP(3) AS at")
        assert len(world.cdrs(customer, timeout=0)) == 1
    finally:
        vm_exec(f"nft delete table inet {DB_AWAY_TABLE}", check=False)
        # the rule also swallowed the stopped Kamailio's goodbyes to MariaDB, which would keep those
        # connections open for hours: they go, as they would have when the database came back
        vm_exec(
            "mariadb -N -e \"SELECT CONCAT('KILL ', id, ';') FROM information_schema.processlist"
            " WHERE user = 'centralita_kamailio'\" | mariadb -f",
            check=False,
        )
        _forget_dialogs_ended_while_the_database_was_away(vm_exec)
        vm_exec("systemctl start kamailio")
        _wait_until_kamailio_answers(vm_exec)

    cdrs = world.cdrs(customer, expect=5, timeout=30)
    answered = [c for c in cdrs if c["disposition"] == "answered"]
    assert len(answered) == 4, cdrs
    assert [(c["reject_reason"], c["sip_code"]) for c in cdrs if c not in answered] == [("database_error", "503")]
    assert all(c["end_at"] < stopped["at"] for c in cdrs), "each CDR has its call's own times, not the replay's"
    assert all(400 <= int(c["billable_ms"]) <= 1500 for c in answered), cdrs
    (left,) = world.q("SELECT COUNT(*) AS n FROM sbc_cdr_intake WHERE customer_id = %s", (customer,))
    assert int(left["n"]) == 0, "the replayed CDRs were filed"
    loader = vm_exec("journalctl -u centralita-sbc-traceload --since '-2 min' --no-pager", check=False)
    assert "statements written to the database after it was away" in loader


def test_the_row_of_a_call_that_ended_while_the_database_was_away_is_deleted_and_no_restart_brings_it_back(
    world, vm_exec
):
    """The dialog module deletes an ended call's row once, and while MariaDB refuses Kamailio that fails.
    Kamailio's housekeeping (every minute) deletes the rows of the calls it no longer has, and only those:
    a restart after it brings back the call still up and not the one that ended, and the customer's
    second channel is free."""
    customer = world.one_route(max_channels=2)
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=3, timeout=240, extra=["-aa"])
    # both sides answer the keepalives (in-dialog OPTIONS) of the call that stays up across the restart
    staying = world.sipp.start(
        "cust", "sbc_customer.xml", world.sbc, calls=1, timeout=200, extra=["-s", NUMBER, "-d", "150000", "-aa"]
    )
    ending = world.sipp.start(
        "cust", "sbc_customer.xml", world.sbc, calls=1, timeout=60, port=5070, extra=["-s", NUMBER, "-d", "12000"]
    )
    answered = "SELECT COUNT(*) AS n FROM dialog WHERE state = 4"
    deadline = time.monotonic() + 10
    while int(world.q(answered)[0]["n"]) != 2:
        assert time.monotonic() < deadline, "each answered call's row is written within a second or so"
        time.sleep(0.3)
    _refuse_kamailio_the_database(vm_exec)
    try:
        assert ending.wait(40).ok, "the call goes on and ends normally while the database is away"
        time.sleep(7)  # the dialog is freed 5 s after its BYE: the module's delete of its row fails then
        assert int(world.q(answered)[0]["n"]) == 2, "the ended call's row is still there"
    finally:
        vm_exec(f"nft delete table inet {DB_AWAY_TABLE}", check=False)
    since = vm_exec("date +%s").strip()

    deadline = time.monotonic() + 90
    while int(world.q(answered)[0]["n"]) != 1:
        assert time.monotonic() < deadline, "the housekeeping deleted the ended call's row"
        time.sleep(1)
    journal = vm_exec(f"journalctl -u kamailio --since @{since} --no-pager", check=False)
    assert "deleted the rows of 1 ended calls from the dialog table" in journal, "and kept the live call's"

    vm_exec("systemctl restart kamailio")
    _wait_until_kamailio_answers(vm_exec)
    assert vm_exec("kamcmd dlg.list", check=False).count("call-id") == 1, "the restarted Kamailio has the live call"
    second = world.sipp("cust", "sbc_customer.xml", world.sbc, calls=1, timeout=20, port=5070, extra=["-s", NUMBER])
    assert second.ok, "the customer's second channel is free"
    assert staying.wait(200).ok, "the call up across the restart is still bridged and hung up normally"
    cdrs = world.cdrs(customer, expect=3, timeout=30)
    assert [c["disposition"] for c in cdrs] == ["answered"] * 3, cdrs
    billable = sorted(int(c["billable_ms"]) for c in cdrs)
    assert 11500 <= billable[1] <= 13500 and 149500 <= billable[2] <= 151500, billable


def test_a_capped_customers_minutes_are_enforced_from_kamailios_own_count_while_the_database_is_away(world, vm_exec):
    """Kamailio counts a capped customer's calls off the time it last read: with the database away, a
    running call is cut at what is left after the calls ended since, the next call is refused as
    minutes_exhausted, and a customer Kamailio keeps no count for is refused as database_error. Every
    CDR arrives and is billed once the database answers."""
    customer = world.one_route(minutes_limit=1, minutes_used=1 - 8 / 60)
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=2, timeout=90)
    assert call(world, "cust", hold_ms=3000).ok
    (first,) = world.cdrs(customer)
    left_ms = 8000 - int(first["billable_ms"])
    since = vm_exec("date +%s").strip()
    _refuse_kamailio_the_database(vm_exec)
    try:
        cut = call(world, "cust", scenario="sbc_customer_wait_bye.xml", timeout=30)
        assert cut.ok, cut.stdout[-2000:]
        refused = call(world, "cust")
        assert "X-Centralita-Reason: minutes_exhausted" in world.messages(refused)
        vm_exec("kamcmd htable.flush mleft")  # as after a restart: Kamailio has no count of its own
        unknown = call(world, "cust")
        assert "X-Centralita-Reason: database_error" in world.messages(unknown)
        journal = vm_exec(f"journalctl -u kamailio --since @{since} --no-pager", check=False)
        assert f"customer {customer}'s monthly cap is enforced from Kamailio's own count" in journal
        assert len(world.cdrs(customer, timeout=0)) == 1
    finally:
        vm_exec(f"nft delete table inet {DB_AWAY_TABLE}", check=False)
        _forget_dialogs_ended_while_the_database_was_away(vm_exec)

    cdrs = world.cdrs(customer, expect=4, timeout=30)
    assert [(c["disposition"], c["reject_reason"], c["hangup_side"]) for c in cdrs[1:]] == [
        ("answered", None, "sbc"),
        ("rejected", "minutes_exhausted", "sbc"),
        ("rejected", "database_error", "sbc"),
    ], cdrs
    # never before what was left, late by less than CUT_LATE_MS (1 ms: stored times keep whole milliseconds)
    assert left_ms - 1 <= int(cdrs[1]["billable_ms"]) < left_ms + CUT_LATE_MS, (left_ms, cdrs[1])
    deadline = time.monotonic() + 30
    while intake := world.q("SELECT * FROM sbc_cdr_intake WHERE customer_id = %s", (customer,)):
        assert time.monotonic() < deadline, f"the replayed CDRs were filed: {intake}"
        time.sleep(0.5)
    # both calls billed (at the rate's increments, which Kamailio's own count leaves to the database)
    billed = [c["billed_seconds_price"] for c in world.cdrs(customer, expect=4)[:2]]
    used = world.q("SELECT minutes_used FROM customers WHERE id = %s", (customer,))[0]["minutes_used"]
    assert float(used) == pytest.approx(1 - 8 / 60 + sum(float(b) for b in billed) / 60, abs=0.0002), billed
    # the cap removed in the database: the next call goes through, though Kamailio's cached row says capped
    world.q("UPDATE customers SET monthly_minutes_limit = NULL WHERE id = %s", (customer,))
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)
    assert call(world, "cust").ok
    assert world.cdrs(customer, expect=5)[-1]["disposition"] == "answered"


def _raw_invite(world, peer: str, *, number: bytes, from_user: bytes, user_agent: bytes, call_id: bytes) -> str:
    """One INVITE with exactly these bytes from ``peer`` (SIPp cannot send them); the final answer's code."""
    argv = [sys.executable, str(RAW_INVITE), world.lab.peer_address(peer), world.sbc]
    argv += [value.hex() for value in (number, from_user, user_agent, call_id)]
    done = subprocess.run(world.lab.lab.peer_cmd(peer, argv), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_what_the_cdr_columns_cannot_hold_is_cut_and_no_cdr_or_trace_is_lost(world):
    """Bytes that are not UTF-8 and values longer than their columns, from a customer and from a scanner:
    each CDR is written with its text cut to length and other bytes as '?', the traces keep the bytes, and
    the writer goes on with the next call."""
    cust_ip = world.add_peer("cust")
    car_ip = world.add_peer("carrier1")
    stranger = world.add_peer("stranger")
    customer = world.customer(cust_ip)
    world.carrier(car_ip, rates={"57": 0.02})
    world.reload()
    tag = str(time.time_ns())
    odd_ua = b"Odd \xff\xfe phone " + b"v" * 300
    odd_caller = b"57\xe9" + b"1" * 80

    busy = world.sipp.start("carrier1", "sbc_carrier_486.xml", calls=1, timeout=30)
    code = _raw_invite(
        world, "cust", number=NUMBER.encode(), from_user=odd_caller, user_agent=odd_ua, call_id=f"odd-{tag}".encode()
    )
    assert code == "486"
    assert busy.wait(10).ok
    code = _raw_invite(
        world, "stranger", number=b"5" * 90, from_user=b"x", user_agent=odd_ua, call_id=f"scan-{tag}".encode()
    )
    assert code == "403"
    code = _raw_invite(
        world, "cust", number=NUMBER.encode(), from_user=b"5711", user_agent=b"ok", call_id=b"bad-\xff-" + tag.encode()
    )
    assert code == "400"
    answer = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)
    assert call(world, "cust").ok
    assert answer.wait(10).ok

    try:
        cdrs = world.cdrs(customer, expect=2)
        assert [cdr["sip_code"] for cdr in cdrs] == ["486", "200"], cdrs
        relayed = cdrs[0]
        assert relayed["call_id"] == f"odd-{tag}"
        assert relayed["caller"] == "57?" + "1" * 61
        assert relayed["user_agent"] == ("Odd ?? phone " + "v" * 300)[:255]
        assert relayed["callee_original"] == NUMBER

        (scan,) = world.q("SELECT * FROM sbc_cdrs WHERE call_id = %s", (f"scan-{tag}",))
        assert scan["reject_reason"] == "unknown_source" and scan["source_ip"] == stranger
        assert scan["callee_original"] == "5" * 64
        (bad,) = world.q("SELECT * FROM sbc_cdrs WHERE call_id = %s", (f"bad-?-{tag}",))
        assert bad["reject_reason"] == "bad_call_id" and bad["sip_code"] == "400"

        deadline = time.monotonic() + 15
        while True:
            (traces,) = world.q(
                "SELECT COUNT(*) AS n, SUM(LOCATE(X'fffe', message) > 0) AS raw FROM sip_traces WHERE call_id = %s",
                (f"odd-{tag}",),
            )
            if int(traces["n"]) >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert int(traces["n"]) >= 4, traces  # the INVITE and the 486, in and out
        assert int(traces["raw"] or 0) >= 2, traces  # the INVITE as received and as relayed, byte for byte
    finally:
        world.q("DELETE FROM sbc_cdrs WHERE call_id IN (%s, %s)", (f"scan-{tag}", f"bad-?-{tag}"))


def _traces(world, call_ids: list[str], *, at_least: int | list[int], timeout: float = 20) -> dict[str, dict]:
    """Per Call-ID: the trace rows stored (n) and those whose message holds the bytes FF FE (raw), once
    every Call-ID has ``at_least`` rows, or as many as the list gives each (traces are written
    asynchronously)."""
    wanted = dict(zip(call_ids, at_least if isinstance(at_least, list) else [at_least] * len(call_ids), strict=True))
    marks = ", ".join(["%s"] * len(call_ids))
    deadline = time.monotonic() + timeout
    while True:
        rows = world.q(
            "SELECT call_id, COUNT(*) AS n, SUM(LOCATE(X'fffe', message) > 0) AS raw FROM sip_traces"
            f" WHERE call_id IN ({marks}) GROUP BY call_id",
            call_ids,
        )
        found = {row["call_id"]: {"n": int(row["n"]), "raw": int(row["raw"] or 0)} for row in rows}
        if all(found.get(ci, {"n": 0})["n"] >= n for ci, n in wanted.items()) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_a_carrier_answer_whose_call_id_the_traces_cannot_hold_is_traced_and_no_trace_is_lost(world):
    """A carrier answers with a Call-ID of bytes that are not printable ASCII and longer than the column: its
    trace rows are stored with the Call-ID cut and '?' for those bytes, the messages keep their bytes, and
    the traces of the call and of the next normal call are all in the database."""
    cust_ip = world.add_peer("cust")
    car_ip = world.add_peer("carrier1")
    customer = world.customer(cust_ip)
    world.carrier(car_ip, rates={"57": 0.02})
    world.reload()
    tag = str(time.time_ns())
    odd_call_id = f"car-{tag}-".encode() + b"\xff\xfe-" + b"x" * 300
    stored_call_id = (f"car-{tag}-??-" + "x" * 300)[:255]

    carrier = subprocess.Popen(
        world.lab.lab.peer_cmd("carrier1", [sys.executable, str(RAW_CARRIER), car_ip, "486", odd_call_id.hex()]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert carrier.stdout is not None
        assert carrier.stdout.readline().strip() == "ready"
        code = _raw_invite(
            world, "cust", number=NUMBER.encode(), from_user=b"5711", user_agent=b"ok", call_id=f"rc-{tag}".encode()
        )
        assert code == "486"
        out, err = carrier.communicate(timeout=40)
        assert out.strip() == "acked", (out, err)
    finally:
        if carrier.poll() is None:
            carrier.terminate()
            carrier.wait(timeout=10)
    answer = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)
    assert call(world, "cust").ok
    assert answer.wait(10).ok

    cdrs = world.cdrs(customer, expect=2)
    assert [cdr["sip_code"] for cdr in cdrs] == ["486", "200"], cdrs
    assert cdrs[0]["call_id"] == f"rc-{tag}"
    next_call = cdrs[1]["call_id"]
    try:
        traces = _traces(world, [f"rc-{tag}", stored_call_id, next_call], at_least=[3, 2, 10])
        # the INVITE as received and as relayed, the customer's ACK
        assert traces.get(f"rc-{tag}", {"n": 0})["n"] >= 3, traces
        # the carrier's 486 as received and as relayed to the customer, byte for byte
        odd = traces.get(stored_call_id, {"n": 0, "raw": 0})
        assert odd["n"] >= 2 and odd["raw"] == odd["n"], traces
        # INVITE, 200, ACK, BYE, 200, each in and out
        assert traces.get(next_call, {"n": 0})["n"] >= 10, traces
    finally:
        world.q("DELETE FROM sip_traces WHERE call_id IN (%s, %s, %s)", (f"rc-{tag}", stored_call_id, next_call))
