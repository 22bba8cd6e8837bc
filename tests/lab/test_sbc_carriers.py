"""What the SBC does per carrier, end to end through the real Kamailio: channel and
CPS limits (a carrier at a limit is passed over, all of them at a limit is a 503
with its CDR and event), caller-number rules, from_domain, and digest
authentication when a carrier challenges the INVITE."""

from __future__ import annotations

import hashlib
import json
import re
import time

import pytest

NUMBER = "573001234567"
CALLER = "5712345678"  # the From user of sbc_customer.xml
PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def world(sbc_world):
    return sbc_world


def call(world, peer: str, number: str = NUMBER, *, calls: int = 1, rate: float = 10, hold_ms: int = 500,
         timeout: int = 30, scenario: str = "sbc_customer.xml", port: int = 5060):  # fmt: skip
    return world.sipp(
        peer, scenario, world.sbc, calls=calls, rate=rate, timeout=timeout, port=port,
        extra=["-s", number, "-d", str(hold_ms)],
    )  # fmt: skip


def set_carrier(world, carrier: int, **columns) -> None:
    """Columns of a carrier row as the panel saves them (the fixture's carrier() knows the basic ones)."""
    assignments = ", ".join(f"{name} = %s" for name in columns)
    world.q(f"UPDATE carriers SET {assignments} WHERE id = %s", (*columns.values(), carrier))


def sync(vm_exec) -> None:
    """What the panel runs after a save."""
    vm_exec("/opt/centralita/venv/bin/centralita kamailio sync", timeout=60)


def carrier_calls(vm_exec, carrier: int) -> int:
    """Calls Kamailio counts through a carrier right now (its dialog profile)."""
    out = vm_exec(f"kamcmd dlg.profile_get_size carr {carrier}")
    found = re.search(r"(?:size|count)\s*:\s*(\d+)", out) or re.search(r"^\s*(\d+)\s*$", out, re.M)
    assert found, f"unexpected answer of dlg.profile_get_size: {out!r}"
    return int(found.group(1))


def wait_for(predicate, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.2)


def skipped(cdr: dict) -> list[dict]:
    return json.loads(cdr["carriers_skipped"] or "[]")


def sipp_received(world, run) -> list[str]:
    """The messages a SIPp run received, in order, from its message log (-trace_msg)."""
    chunks = re.split(r"^-{10,}.*$", world.messages(run), flags=re.M)
    heads_bodies = (chunk.strip().partition("\n") for chunk in chunks)
    return [body.strip() for head, _, body in heads_bodies if "message received" in head]


def received(world, uas, method: str = "INVITE") -> list[str]:
    """The requests of one method a SIPp peer received."""
    return [m for m in sipp_received(world, uas) if m.startswith(f"{method} ")]


# -- limits ------------------------------------------------------------------------


def test_carrier_at_max_channels_is_passed_over_while_its_call_rings(world, vm_exec):
    world.add_peer("cust")
    full = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    spare = world.carrier(world.add_peer("carrier2"), rates={"57": 0.02})
    set_carrier(world, full, max_channels=1)
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    # carrier1 rings for 2.3 s, answers, and hangs up 5 s later
    world.sipp.start("carrier1", "sbc_carrier_answer.xml", calls=1, timeout=40)
    world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=1, timeout=40)
    first = world.sipp.start("cust", "sbc_customer_wait_bye.xml", world.sbc, calls=1, timeout=40, extra=["-s", NUMBER])
    wait_for(lambda: carrier_calls(vm_exec, full) == 1, "the first call reaching carrier1")

    second = call(world, "cust", port=5070)

    assert second.ok, second.stdout[-2000:]
    assert first.wait(30).ok
    # (the second call ends first: CDRs in the order the calls came in)
    one, two = sorted(world.cdrs(customer, expect=2, timeout=20), key=lambda c: c["invite_at"])
    assert world.tried(one) == [{"carrier_id": full, "code": 200}]
    assert world.tried(two) == [{"carrier_id": spare, "code": 200}]
    assert skipped(two) == [{"carrier_id": full, "reason": "max_channels"}]
    assert skipped(one) == []
    assert carrier_calls(vm_exec, full) == 0


def test_carrier_over_max_cps_is_passed_over_within_the_second(world):
    world.add_peer("cust")
    slow = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    other = world.carrier(world.add_peer("carrier2"), rates={"57": 0.02})
    set_carrier(world, slow, max_cps=1)
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=6, timeout=40)
    world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=6, timeout=40)

    # six calls 50 ms apart: they fall within one or two seconds
    call(world, "cust", calls=6, rate=20, hold_ms=300)

    cdrs = world.cdrs(customer, expect=6, timeout=20)
    assert [c["disposition"] for c in cdrs] == ["answered"] * 6, cdrs
    seconds = {c["invite_at"][:19] for c in cdrs}
    to_slow = [c for c in cdrs if int(c["carrier_id"]) == slow]
    assert 1 <= len(to_slow) <= len(seconds), "at most one INVITE a second reaches carrier1"
    passed_over = [c for c in cdrs if int(c["carrier_id"]) == other]
    assert len(passed_over) == 6 - len(to_slow)
    assert all(skipped(c) == [{"carrier_id": slow, "reason": "max_cps"}] for c in passed_over), passed_over
    assert all(world.tried(c) == [{"carrier_id": other, "code": 200}] for c in passed_over)


def test_every_carrier_at_capacity_refuses_with_503_a_cdr_and_an_event(world):
    world.add_peer("cust")
    no_channels = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    no_cps = world.carrier(world.add_peer("carrier2"), rates={"57": 0.02})
    set_carrier(world, no_channels, max_channels=0)
    set_carrier(world, no_cps, max_cps=0)
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    untouched = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)

    result = call(world, "cust")

    messages = world.messages(result)
    assert "SIP/2.0 503 Carrier Capacity Reached" in messages
    assert "X-Centralita-Reason: carrier_capacity" in messages
    (cdr,) = world.cdrs(customer)
    assert (cdr["reject_reason"], cdr["sip_code"], cdr["disposition"]) == ("carrier_capacity", "503", "rejected")
    assert world.tried(cdr) == [] and cdr["attempts"] == "0"
    assert skipped(cdr) == [
        {"carrier_id": no_channels, "reason": "max_channels"},
        {"carrier_id": no_cps, "reason": "max_cps"},
    ]
    (event,) = world.wait_events(customer=customer, type_="carrier_capacity")
    assert event["severity"] == "warning"
    assert '"carriers"' in event["payload"] and str(no_cps) in event["payload"]
    untouched.stop()
    assert not received(world, untouched), "no INVITE reaches a carrier at its limit"


def test_limits_changed_in_the_database_apply_after_sync_without_a_restart(world, vm_exec):
    world.add_peer("cust")
    first = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    second = world.carrier(world.add_peer("carrier2"), rates={"57": 0.02})
    set_carrier(world, first, max_channels=0)
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=40)
    world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=1, timeout=40)
    pid = vm_exec("systemctl show -p MainPID --value kamailio").strip()

    assert call(world, "cust").ok
    set_carrier(world, first, max_channels=None)
    sync(vm_exec)
    assert call(world, "cust").ok

    before, after = world.cdrs(customer, expect=2)
    assert int(before["carrier_id"]) == second and skipped(before)[0]["carrier_id"] == first
    assert int(after["carrier_id"]) == first and skipped(after) == []
    assert vm_exec("systemctl show -p MainPID --value kamailio").strip() == pid, "no restart"


# -- caller number and From host ------------------------------------------------------


def test_caller_rules_rewrite_the_from_user_toward_the_carrier_and_both_reach_the_cdr(world):
    cust_ip = world.add_peer("cust")
    world.carrier(world.add_peer("carrier1"))
    customer = world.customer(cust_ip)
    rules = [  # the callee rule must leave the caller alone, and the caller rules the callee
        ("callee", "prefix", "0", 1, "57", None, 10, 1),
        ("caller", "prefix", "57", 2, "", None, 10, 0),
        ("caller", "regex", "^([0-9]{8})$", 0, "", "+57\\1", 20, 1),
        ("caller", "prefix", "+", 1, "00", None, 30, 1),  # after a final rule: never applied
    ]
    for applies_to, match_type, pattern, strip, prepend, replacement, priority, final in rules:
        world.q(
            "INSERT INTO normalization_rules (customer_id, applies_to, match_type, pattern, strip_digits, prepend,"
            " replacement, priority, final) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (customer, applies_to, match_type, pattern, strip, prepend, replacement, priority, final),
        )
    world.reload()
    uas = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)

    result = call(world, "cust", "03001234567")

    assert result.ok, result.stdout[-2000:]
    uas.wait(10)
    (invite,) = received(world, uas)
    assert f"<sip:+5712345678@{cust_ip}:5060>" in invite, invite
    assert "INVITE sip:573001234567@" in invite
    (bye,) = received(world, uas, "BYE")
    assert "sip:+5712345678@" in bye, "in-dialog requests carry the From the carrier knows"
    answer = [m for m in sipp_received(world, result) if m.startswith("SIP/2.0 200") and "INVITE" in m]
    assert answer and f"<sip:{CALLER}@{cust_ip}:5060>" in answer[0], "the customer sees its own From again"
    (cdr,) = world.cdrs(customer)
    assert (cdr["caller"], cdr["caller_normalized"]) == (CALLER, "+5712345678")
    assert (cdr["callee_original"], cdr["callee_normalized"]) == ("03001234567", NUMBER)


def test_without_caller_rules_the_caller_goes_out_unchanged(world):
    cust_ip = world.add_peer("cust")
    world.carrier(world.add_peer("carrier1"))
    customer = world.customer(cust_ip)
    world.reload()
    uas = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=30)

    assert call(world, "cust").ok

    uas.wait(10)
    (invite,) = received(world, uas)
    assert f"<sip:{CALLER}@{cust_ip}:5060>" in invite
    (cdr,) = world.cdrs(customer)
    assert (cdr["caller"], cdr["caller_normalized"]) == (CALLER, CALLER)


def test_from_domain_replaces_the_from_host_toward_that_carrier_only(world):
    cust_ip = world.add_peer("cust")
    refusing = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    answering = world.carrier(world.add_peer("carrier2"), rates={"57": 0.02})
    set_carrier(world, refusing, from_domain="trunk.carrier-one.test")
    customer = world.customer(cust_ip)
    world.reload()
    first = world.sipp.start("carrier1", "sbc_carrier_503.xml", calls=1, timeout=30)
    second = world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=1, timeout=30)

    assert call(world, "cust").ok

    first.wait(10)
    second.wait(10)
    (to_first,) = received(world, first)
    (to_second,) = received(world, second)
    assert f"<sip:{CALLER}@trunk.carrier-one.test>" in to_first, to_first
    assert f"<sip:{CALLER}@{cust_ip}:5060>" in to_second, "a failover starts from the customer's own From"
    (cdr,) = world.cdrs(customer)
    assert world.tried(cdr) == [{"carrier_id": refusing, "code": 503}, {"carrier_id": answering, "code": 200}]


def test_a_from_domain_that_is_not_a_host_is_refused_by_the_database(world):
    carrier = world.carrier(world.add_peer("carrier1"))
    with pytest.raises(AssertionError, match="ck_carriers_from_domain"):
        set_carrier(world, carrier, from_domain="evil.test;lr")


# -- digest authentication ------------------------------------------------------------


def digest_fields(header: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="?([^",]*)"?', header))


def test_401_challenge_is_answered_once_with_the_carriers_credentials(world, vm_exec):
    world.add_peer("cust")
    carrier = world.carrier(world.add_peer("carrier1"))
    set_carrier(world, carrier, auth_username="trunk-user", auth_password=PASSWORD)
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    # the carrier verifies the Authorization itself (SIPp verifyauth) and answers 403 to a wrong one
    uas = world.sipp.start(
        "carrier1", "sbc_carrier_auth_401.xml", calls=1, timeout=30,
        extra=["-key", "user", "trunk-user", "-key", "password", PASSWORD],
    )  # fmt: skip

    result = call(world, "cust")

    assert result.ok, result.stdout[-2000:]
    assert uas.wait(10).ok
    (cdr,) = world.cdrs(customer)
    assert cdr["disposition"] == "answered"
    assert world.tried(cdr) == [{"carrier_id": carrier, "code": 200}], "the challenge is not a failed attempt"
    assert PASSWORD not in vm_exec("journalctl -u kamailio --since '-5 min' --no-pager -o cat", check=False)


def test_407_challenge_gets_a_proxy_authorization_with_the_right_digest(world):
    world.add_peer("cust")
    carrier = world.carrier(world.add_peer("carrier1"))
    set_carrier(world, carrier, auth_username="proxy-user", auth_password=PASSWORD, tech_prefix="99#")
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    uas = world.sipp.start("carrier1", "sbc_carrier_auth_407.xml", calls=1, timeout=30)

    assert call(world, "cust").ok

    assert uas.wait(10).ok
    first, again = received(world, uas)
    assert "Proxy-Authorization" not in first
    line = re.search(r"Proxy-Authorization:\s*Digest (.*)", again).group(1)
    fields = digest_fields(line)
    assert (fields["username"], fields["realm"]) == ("proxy-user", "proxy.carrier.test")
    assert fields["uri"] == re.search(r"INVITE (\S+) SIP/2.0", again).group(1)
    ha1 = hashlib.md5(f"proxy-user:proxy.carrier.test:{PASSWORD}".encode()).hexdigest()
    ha2 = hashlib.md5(f"INVITE:{fields['uri']}".encode()).hexdigest()
    assert fields["response"] == hashlib.md5(f"{ha1}:{fields['nonce']}:{ha2}".encode()).hexdigest()
    (cdr,) = world.cdrs(customer)
    assert world.tried(cdr) == [{"carrier_id": carrier, "code": 200}]


def test_credentials_refused_again_fail_over_to_the_next_carrier(world):
    world.add_peer("cust")
    strict = world.carrier(world.add_peer("carrier1"), rates={"57": 0.01})
    open_ = world.carrier(world.add_peer("carrier2"), rates={"57": 0.02})
    set_carrier(world, strict, auth_username="proxy-user", auth_password="wrong")
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()
    challenger = world.sipp.start("carrier1", "sbc_carrier_auth_refused.xml", calls=1, timeout=30)
    world.sipp.start("carrier2", "sbc_carrier_quick.xml", calls=1, timeout=30)

    assert call(world, "cust").ok

    assert challenger.wait(10).ok, "the carrier got the INVITE twice, the second with credentials"
    (cdr,) = world.cdrs(customer)
    assert cdr["disposition"] == "answered"
    assert world.tried(cdr) == [{"carrier_id": strict, "code": 407}, {"carrier_id": open_, "code": 200}]


def test_a_challenge_left_unanswered_reaches_the_customer_as_503_never_as_407(world):
    world.add_peer("cust")
    carrier = world.carrier(world.add_peer("carrier1"))
    customer = world.customer(world.lab.peer_address("cust"))
    world.reload()  # a carrier without credentials: its challenge cannot be answered
    world.sipp.start("carrier1", "sbc_carrier_auth_refused.xml", calls=1, timeout=30)

    result = call(world, "cust")

    messages = world.messages(result)
    assert "SIP/2.0 503 Carrier Authentication Failed" in messages
    assert "X-Centralita-Reason: carrier_auth_failed" in messages
    assert "SIP/2.0 407" not in messages
    (cdr,) = world.cdrs(customer)
    assert (cdr["sip_code"], cdr["disposition"]) == ("503", "failed")
    assert world.tried(cdr) == [{"carrier_id": carrier, "code": 407}]
