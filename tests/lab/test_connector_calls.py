"""The CDR and recording connector against the real Asterisk of the lab VM.

A SIPp "provider" on the trunk's address calls the PBX; Asterisk raises real Cdr
events over AMI and writes its cdr_custom CSV, MixMonitor records the answered
call, and the connector (the deployed centralita-connector unit) must deliver the
CDR to the CDR API stand-in on the VM and to the panel's asterisk_cdrs table,
and upload the recording linked to the call's UniqueID.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import time
from datetime import datetime

import pytest
from centralita.connector.backfill import parse_csv_line
from centralita.connector.cdr import resolve_timezone

DID = "3241000752"  # inventory/lab: asterisk_trunk.dids
UNKNOWN = "3240000001"
PBX_PORT = 5080  # inventory/lab: asterisk_sip_port
API_RECORDS = "http://127.0.0.1:8767/_stand-in/records"
CSV = "/var/log/asterisk/cdr-custom/Master.csv"
ENV = "/etc/centralita/connector.env"
CENTRALITA = "/opt/centralita/venv/bin/centralita"
UNIQUEID = re.compile(r"^\d{10}\.\d+$")


@pytest.fixture
def pbx(lab, vm_exec, add_peer):
    """The provider peer (the trunk is identified by its address) and the services under test."""
    states = vm_exec(
        "systemctl is-active asterisk centralita-connector centralita-fake-cdr-api mariadb", check=False
    ).split()
    if states != ["active"] * 4:
        pytest.fail(
            f"asterisk, connector, CDR API stand-in, mariadb are {states}: converge the lab first", pytrace=False
        )
    address = add_peer("provider")
    trunk = lab.address.rsplit(".", 1)[0] + ".100"
    if address != trunk:
        pytest.fail(f"the provider peer got {address}, but the trunk is identified by {trunk}", pytrace=False)
    return lab


def caller_number() -> str:
    return "57" + "".join(random.choice("0123456789") for _ in range(8))


def call(sipp, lab, number: str, caller: str):
    return sipp(
        "provider",
        "connector_provider_call.xml",
        f"{lab.address}:{PBX_PORT}",
        calls=1,
        timeout=30,
        extra=["-s", number, "-key", "caller", caller],
    )


def api_state(vm_exec) -> dict:
    script = (
        "import urllib.request, sys; "
        f"sys.stdout.write(urllib.request.urlopen({API_RECORDS!r}, timeout=10).read().decode())"
    )
    return json.loads(vm_exec(f"python3 -c {shlex.quote(script)}"))


def wait_for(what: str, probe, timeout: float = 45):
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def cdrs_from(vm_exec, caller: str) -> list[dict]:
    return [r for r in api_state(vm_exec)["records"] if r["src"] == caller]


def test_answered_call_reaches_the_api_and_the_panel_and_its_recording_is_uploaded(pbx, vm_exec, db_query, sipp):
    caller = caller_number()
    result = call(sipp, pbx, DID, caller)
    assert result.ok, result.stdout[-2000:] + result.stderr[-2000:]

    records = wait_for(
        "the CDR at the API stand-in", lambda: [r for r in cdrs_from(vm_exec, caller) if r["dst"] == DID]
    )
    try:
        (cdr,) = records
        uniqueid = cdr["uniqueid"]
        assert UNIQUEID.match(uniqueid) and UNIQUEID.match(cdr["linkedid"])
        assert cdr["disposition"] == "ANSWERED" and cdr["dcontext"] in ("ai", "from-provider")
        assert '"Connector Lab"' in cdr["clid"] and caller in cdr["clid"]
        assert isinstance(cdr["sequence"], int) and cdr["sequence"] >= 0  # the Sequence mapping is in place
        assert cdr["idempotency_key"] == f"{uniqueid}:{cdr['sequence']}"
        start = datetime.fromisoformat(cdr["start"])
        assert start.utcoffset() is not None and abs(time.time() - start.timestamp()) < 300
        assert 2 <= cdr["billsec"] <= 10

        rows = wait_for(
            "the CDR in asterisk_cdrs",
            lambda: db_query("SELECT * FROM asterisk_cdrs WHERE uniqueid = %s", (uniqueid,)),
        )
        assert len(rows) == 1 and rows[0]["src"] == caller and rows[0]["disposition"] == "ANSWERED"
        assert abs(datetime.fromisoformat(rows[0]["start_time"] + "+00:00").timestamp() - start.timestamp()) < 1

        uploads = wait_for(
            "the MixMonitor recording at the API stand-in",
            lambda: [u for u in api_state(vm_exec)["recordings"] if u["recording_id"] == uniqueid],
            timeout=60,
        )
        (upload,) = uploads
        assert upload["filename"] == f"{uniqueid}.wav" and upload["size"] > 1024
        assert upload["linkedid"] == cdr["linkedid"]
        assert float(upload["duration"]) == pytest.approx(cdr["billsec"], abs=2.5)
        time.sleep(4)  # longer than RECORDING_STABILIZATION_TIME: a finished recording is not sent again
        assert len([u for u in api_state(vm_exec)["recordings"] if u["recording_id"] == uniqueid]) == 1
        listed = wait_for(
            "the recording in asterisk_recordings",
            lambda: db_query(
                "SELECT * FROM asterisk_recordings WHERE uniqueid = %s AND status = 'uploaded'", (uniqueid,)
            ),
        )
        assert int(listed[0]["size_bytes"]) == upload["size"]

        # The same call as Asterisk's cdr_custom wrote it: the back-fill reads it to the same CDR.
        lines = [line for line in vm_exec(f"tail -n 200 {CSV}").splitlines() if f'"{uniqueid}"' in line]
        from_csv = {parse_csv_line(line, resolve_timezone("UTC")).key for line in lines}
        assert cdr["idempotency_key"] in from_csv
    finally:
        for record in records:
            db_query("DELETE FROM asterisk_cdrs WHERE uniqueid = %s", (record["uniqueid"],))
            db_query("DELETE FROM asterisk_recordings WHERE uniqueid = %s", (record["uniqueid"],))


def test_call_to_an_unallocated_number_still_yields_exactly_one_cdr(pbx, vm_exec, db_query, sipp):
    caller = caller_number()
    result = call(sipp, pbx, UNKNOWN, caller)
    assert result.ok, result.stdout[-2000:] + result.stderr[-2000:]

    records = wait_for("the CDR at the API stand-in", lambda: cdrs_from(vm_exec, caller))
    try:
        time.sleep(3)  # a duplicate (AMI plus back-fill) would arrive by now
        records = cdrs_from(vm_exec, caller)
        assert len(records) == 1, records
        (cdr,) = records
        assert cdr["dst"] == UNKNOWN and cdr["disposition"] != "ANSWERED" and cdr["billsec"] == 0
        rows = wait_for(
            "the CDR in asterisk_cdrs",
            lambda: db_query("SELECT * FROM asterisk_cdrs WHERE uniqueid = %s", (cdr["uniqueid"],)),
        )
        assert len(rows) == 1
    finally:
        for record in records:
            db_query("DELETE FROM asterisk_cdrs WHERE uniqueid = %s", (record["uniqueid"],))


def test_status_passes_on_the_converged_pbx_and_names_the_broken_part(pbx, vm_exec):
    good = vm_exec(f"NO_COLOR=1 {CENTRALITA} status --env-file {ENV}; echo exit=$?", check=False)
    assert good.rstrip().endswith("exit=0"), good
    assert re.search(r"✓ Asterisk running \(Asterisk \d+\.", good)
    assert "✓ cdr_manager not suspended" in good and "✓ AMI login" in good

    wrong = "/root/connector-wrong-ami.env"
    vm_exec(f"sed 's/^AMI_PASSWORD=.*/AMI_PASSWORD=not-the-secret/' {ENV} > {wrong} && chmod 600 {wrong}")
    try:
        bad = vm_exec(f"NO_COLOR=1 {CENTRALITA} status --env-file {wrong}; echo exit=$?", check=False)
    finally:
        vm_exec(f"rm -f {wrong}", check=False)
    assert bad.rstrip().endswith("exit=1"), bad
    assert "✗ AMI login" in bad and "manager.conf" in bad
    assert "✓ Asterisk running" in bad
