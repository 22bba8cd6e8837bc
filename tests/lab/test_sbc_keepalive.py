"""Calls the SBC's own timers end. Dead calls: the in-dialog OPTIONS keepalives end a call whose far end
is gone (no BYE will ever come) and leave a call whose sides answer alone. Real Kamailio with the
role's defaults: a keepalive every 30 s, a side that answers nothing within the 15 s INVITE timeout
fails it, and the call ends 10 s after the first failure. And the longest call."""

from __future__ import annotations

import re
import time

import pytest

NUMBER = "573001234567"
KEEPALIVE_S = 30  # kamailio_dialog_keepalive_interval
NO_ANSWER_S = 15  # kamailio_invite_timeout_ms: a keepalive with no answer fails after this
GRACE_S = 10  # a failed keepalive leaves the dialog this long (Kamailio's dialog module)
TIMER_S = 5  # the dialog module looks at its keepalives this often (ka_timer)


@pytest.fixture
def world(sbc_world):
    return sbc_world


def kamailio_holds(vm_exec) -> tuple[int, int]:
    """Dialogs of any state and transactions Kamailio holds now."""
    dialogs = int(re.search(r"all: (\d+)", vm_exec("kamcmd dlg.stats_active")).group(1))
    transactions = int(re.search(r"current: (\d+)", vm_exec("kamcmd tm.stats")).group(1))
    return dialogs, transactions


def released(vm_exec, timeout: float) -> tuple[int, int]:
    """What Kamailio still holds once it holds nothing, or when ``timeout`` s have passed."""
    deadline = time.monotonic() + timeout
    held = kamailio_holds(vm_exec)
    while held != (0, 0) and time.monotonic() < deadline:
        time.sleep(1)
        held = kamailio_holds(vm_exec)
    return held


def test_a_call_whose_carrier_is_gone_is_ended_by_the_keepalives_and_billed_to_then(world, vm_exec):
    customer = world.one_route()
    gone = world.sipp.start("carrier1", "sbc_carrier_vanish.xml", calls=1, timeout=30)

    # the customer answers the keepalives (-aa) and waits for the BYE that ends the call
    result = world.sipp(
        "cust", "sbc_customer_wait_bye.xml", world.sbc, calls=1, timeout=110, extra=["-s", NUMBER, "-aa"]
    )

    assert gone.wait(10).ok, "the carrier answered, then was gone"
    assert result.ok, result.stdout[-2000:]
    customer_log = world.messages(result)
    assert "OPTIONS sip:" in customer_log, "the customer's side got keepalives too"
    assert "BYE sip:" in customer_log, "the SBC hung up the customer's side"
    carrier_log = world.messages(gone)
    assert "OPTIONS sip:" not in carrier_log, "the carrier was gone before the first keepalive"
    (cdr,) = world.cdrs(customer, timeout=30)  # written a moment after the BYEs; the database may be busy
    assert cdr["disposition"] == "answered"
    assert cdr["hangup_side"] == "sbc"
    # billed from the answer to the moment the SBC ended it: the first keepalive (30-35 s), its 15 s
    # without an answer, then 10 s more (whole-second timers)
    low = (KEEPALIVE_S + NO_ANSWER_S + GRACE_S) * 1000
    high = (KEEPALIVE_S + TIMER_S + NO_ANSWER_S + GRACE_S + 3) * 1000
    assert low - 1000 <= int(cdr["billable_ms"]) <= high, cdr
    # the call's channel is free and nothing of it is left: the BYE to the gone carrier is given up after
    # the INVITE timeout (so no retransmission of it reaches a later test's peer on the same address)
    assert released(vm_exec, NO_ANSWER_S + 20) == (0, 0), "Kamailio let go of the dialog and its transactions"


def test_a_call_whose_sides_answer_the_keepalives_runs_until_its_own_bye(world):
    customer = world.one_route()
    hold_ms = (KEEPALIVE_S + TIMER_S + NO_ANSWER_S) * 1000  # past a keepalive and the time it could fail in
    uas = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=90, extra=["-aa"])

    result = world.sipp(
        "cust", "sbc_customer.xml", world.sbc, calls=1, timeout=90, extra=["-s", NUMBER, "-d", str(hold_ms), "-aa"]
    )

    assert result.ok, result.stdout[-2000:]
    assert uas.wait(10).ok
    assert "OPTIONS sip:" in world.messages(result), "the customer got a keepalive"
    assert "OPTIONS sip:" in world.messages(uas), "the carrier got a keepalive"
    (cdr,) = world.cdrs(customer)
    assert cdr["hangup_side"] == "caller"
    assert hold_ms - 500 <= int(cdr["billable_ms"]) <= hold_ms + 1500, cdr


def test_a_call_that_reaches_the_longest_call_is_ended_by_the_sbc_and_billed_to_then(world, converge_sbc, vm_exec):
    """kamailio_max_call_seconds (its least, 60 s): both sides, answering every keepalive, get the SBC's BYE
    a minute after the answer, and the CDR bills that minute. The CDR is written by the dialog's timeout
    route, before the BYEs: the dialog:end event that comes after them is skipped by Kamailio when the
    customer's reply to the first BYE ends the dialog first, which a busy host makes likely."""
    longest_s = 60
    converge_sbc(kamailio_max_call_seconds=longest_s)
    customer = world.one_route()
    uas = world.sipp.start("carrier1", "sbc_carrier_quick.xml", calls=1, timeout=120, extra=["-aa"])

    result = world.sipp(
        "cust", "sbc_customer_wait_bye.xml", world.sbc, calls=1, timeout=120, extra=["-s", NUMBER, "-aa"]
    )

    assert result.ok, result.stdout[-2000:]
    carrier = uas.wait(10)
    assert carrier.ok, "the carrier got the SBC's BYE"
    assert "BYE sip:" in world.messages(result), "the SBC hung up the customer's side"
    (cdr,) = world.cdrs(customer, timeout=30)
    assert (cdr["disposition"], cdr["hangup_side"]) == ("answered", "sbc"), cdr
    # The dialog's timer counts whole seconds (Kamailio's get_ticks()) from the answer and is looked at once a
    # second: a dialog answered late in a second times out up to a second early (59.494 s in one CI run).
    assert (longest_s - 1) * 1000 <= int(cdr["billable_ms"]) <= (longest_s + 2) * 1000, cdr
    assert released(vm_exec, NO_ANSWER_S + 20) == (0, 0), "Kamailio let go of the dialog and its transactions"
