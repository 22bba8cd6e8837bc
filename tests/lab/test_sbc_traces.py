"""SIP traces through Kamailio's spool files and the trace loader, in the lab VM: the whole ladder of a
call reaches sip_traces, and files written while the loader is stopped outlive a Kamailio restart; with a
Homer collector set, every message also goes to it over HEP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

NUMBER = "573001234567"
SPOOL = "/var/spool/centralita/sbc"
HEP_COLLECTOR = Path(__file__).resolve().parent / "scenarios" / "hep_collector.py"


@pytest.fixture
def world(sbc_world):
    return sbc_world


def _ladder(world, call_id: str, done, timeout: float = 20) -> list[tuple[str, str, str, str]]:
    """The call's trace rows in order as (direction, method or code, source, destination), once ``done``
    says they are all there (a trace reaches the database a spool period or two after it was written)."""
    deadline = time.monotonic() + timeout
    while True:
        found = world.q(
            "SELECT direction, IFNULL(method, status_code) AS what, src_ip, dst_ip FROM sip_traces"
            " WHERE call_id = %s ORDER BY captured_at, id",
            (call_id,),
        )
        ladder = [(r["direction"], r["what"], r["src_ip"], r["dst_ip"]) for r in found]
        if done(ladder) or time.monotonic() > deadline:
            return ladder
        time.sleep(0.5)


def test_the_whole_ladder_of_a_failed_over_call_arrives_through_the_spool(world):
    cust = world.add_peer("cust")
    car1 = world.add_peer("carrier1")
    car2 = world.add_peer("carrier2")
    world.carrier(car1, rates={"57": 0.01})
    world.carrier(car2, rates={"57": 0.02})
    customer = world.customer(cust)
    world.reload()
    world.sipp.start("carrier1", "sbc_carrier_503.xml", calls=1, timeout=30)
    world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=1, timeout=30)

    result = world.sipp("cust", "sbc_customer.xml", world.sbc, calls=1, timeout=30, extra=["-s", NUMBER])

    assert result.ok, result.stdout[-2000:]
    (cdr,) = world.cdrs(customer)
    sbc = world.sbc.split(":")[0]
    expected = [
        ("in", "INVITE", cust, sbc),
        ("out", "100", sbc, cust),  # Kamailio's own
        ("out", "INVITE", sbc, car1),
        ("in", "503", car1, sbc),
        ("out", "INVITE", sbc, car2),
        ("in", "200", car2, sbc),
        ("out", "200", sbc, cust),
        ("in", "ACK", cust, sbc),
        ("out", "ACK", sbc, car2),
        ("in", "BYE", cust, sbc),
        ("out", "BYE", sbc, car2),
        ("in", "200", car2, sbc),  # the answer to an in-dialog request, as received and as relayed
        ("out", "200", sbc, cust),
    ]
    # in this order, each once (the carrier's 180 and 100 Trying, if any, come in between)
    ladder = _ladder(world, cdr["call_id"], lambda steps: [s for s in steps if s in expected] == expected)
    assert [step for step in ladder if step in expected] == expected, "\n".join(map(str, ladder))
    (row,) = world.q(
        "SELECT cseq, LOCATE(CONCAT('Call-ID: ', call_id), message) > 0 AS whole FROM sip_traces"
        " WHERE call_id = %s AND method = 'INVITE' AND direction = 'in'",
        (cdr["call_id"],),
    )
    assert row["cseq"] == "1 INVITE" and row["whole"] == "1", row


def test_spool_files_outlive_a_kamailio_restart_and_are_loaded_after_it(world, vm_exec):
    cust = world.add_peer("cust")
    car = world.add_peer("carrier1")
    world.carrier(car)
    customer = world.customer(cust)
    world.reload()
    vm_exec("systemctl stop centralita-sbc-traceload")
    try:
        world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)
        assert world.sipp("cust", "sbc_customer.xml", world.sbc, calls=1, timeout=30, extra=["-s", NUMBER]).ok
        (cdr,) = world.cdrs(customer)
        time.sleep(3)  # the call's file is closed and the next one started
        before = {name for name in vm_exec(f"ls {SPOOL}").split() if name.endswith(".tsv")}
        vm_exec("systemctl restart kamailio")
        # kept across the restart, owned by kamailio and readable by no one else
        listing = vm_exec(f"stat -c '%n %U %a' {SPOOL}/traces_*.tsv").splitlines()
        assert before <= {line.split()[0].rsplit("/", 1)[-1] for line in listing}, (before, listing)
        assert all(line.split()[1:] == ["kamailio", "640"] for line in listing), listing
        assert world.q("SELECT COUNT(*) AS n FROM sip_traces WHERE call_id = %s", (cdr["call_id"],))[0]["n"] == "0"
    finally:
        vm_exec("systemctl start centralita-sbc-traceload")
    wanted = {("in", "INVITE"), ("out", "INVITE"), ("in", "ACK"), ("out", "ACK"), ("in", "BYE"), ("out", "BYE")}
    ladder = _ladder(world, cdr["call_id"], lambda steps: wanted <= {s[:2] for s in steps})
    assert wanted <= {s[:2] for s in ladder}, ladder
    # nothing was set aside, and the loaded files are gone
    assert vm_exec(f"ls {SPOOL}/quarantine 2>/dev/null | wc -l", check=False).strip() in ("", "0")
    deadline = time.monotonic() + 10
    while before & set(vm_exec(f"ls {SPOOL}").split()):
        assert time.monotonic() < deadline, "loaded spool files are deleted"
        time.sleep(0.5)


def _method_or_code(message: str) -> str:
    first = message.split(" ", 2)
    return first[1] if first[0].startswith("SIP/") else first[0]


def test_with_a_homer_collector_set_every_message_of_a_call_goes_to_it_over_hep(world, converge_sbc):
    cust = world.add_peer("cust")
    car = world.add_peer("carrier1")
    homer = world.add_peer("homer")
    world.carrier(car)
    customer = world.customer(cust)
    # a second customer with 2 s of minutes left: the SBC cuts its call with BYEs of its own
    short = world.customer(world.add_peer("cust2"), minutes_limit=1, minutes_used=1 - 2 / 60)
    converge_sbc(kamailio_homer_uri=f"sip:{homer}:9060", kamailio_hep_capture_id=2301)
    world.reload()
    collector = subprocess.Popen(
        world.lab.lab.peer_cmd("homer", [sys.executable, str(HEP_COLLECTOR), homer, "9060", "25"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening" in (collector.stdout.readline() if collector.stdout else "")
        world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=2, timeout=30)
        assert world.sipp("cust", "sbc_customer.xml", world.sbc, calls=1, timeout=30, extra=["-s", NUMBER]).ok
        (cdr,) = world.cdrs(customer)
        assert world.sipp("cust2", "sbc_customer_wait_bye.xml", world.sbc, calls=1, timeout=20, extra=["-s", NUMBER]).ok
        (cut,) = world.cdrs(short)
        assert cut["hangup_side"] == "sbc"
        out, _ = collector.communicate(timeout=60)
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait()
    packets = [json.loads(line) for line in out.splitlines()]
    assert not [p for p in packets if "error" in p], packets
    mine = [p for p in packets if f"Call-ID: {cdr['call_id']}" in p.get("payload", "")]
    assert mine, packets
    assert {(p["capture_id"], p["protocol_type"], p["ip_protocol"], p["ip_family"]) for p in mine} == {
        (2301, 1, 17, 2)
    }, "capture id as set, SIP over UDP, IPv4"
    seen = {(_method_or_code(p["payload"]), p["src_ip"], p["dst_ip"]) for p in mine}
    sbc = world.sbc.split(":")[0]
    # both legs, as received and as sent: the INVITE, its answers, the ACK, the BYE and its 200
    for what in ("INVITE", "ACK", "BYE"):
        assert {(what, cust, sbc), (what, sbc, car)} <= seen, (what, sorted(seen))
    for what in ("180", "200"):
        assert {(what, car, sbc), (what, sbc, cust)} <= seen, (what, sorted(seen))
    assert ("100", sbc, cust) in seen, "Kamailio's own replies too"
    answers = [p for p in mine if p["payload"].startswith("SIP/2.0 200")]
    bye_answers = {(p["src_ip"], p["dst_ip"]) for p in answers if " BYE\r\n" in p["payload"]}
    assert bye_answers == {(car, sbc), (sbc, cust)}, "the BYE's answer, as received and as relayed"
    assert all(abs(p["time_sec"] - time.time()) < 120 for p in mine), "each with the time it was captured"
    # the requests Kamailio makes itself: the BYEs that cut a call whose minutes ran out
    cust2 = world.lab.peer_address("cust2")
    own = {
        (_method_or_code(p["payload"]), p["src_ip"], p["dst_ip"])
        for p in packets
        if f"Call-ID: {cut['call_id']}" in p.get("payload", "")
    }
    assert {("BYE", sbc, cust2), ("BYE", sbc, car)} <= own, sorted(own)
