"""`playbooks/check.yml`: an inventory is checked on the controller before a deploy.

A bad value stops the play with a message naming the variable, and no host is
contacted: the lab inventory is pointed at an address nothing answers on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
NOWHERE = "192.0.2.99"  # TEST-NET-1: nothing answers there


def check(inventory: str, extra: dict | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(PLAYBOOK), "-i", str(ROOT / "inventory" / inventory), str(ROOT / "playbooks" / "check.yml")]
    if extra:
        command += ["-e", json.dumps(extra)]
    env = {**os.environ, "CENTRALITA_LAB_ADDRESS": NOWHERE, "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_lab_inventory_passes_without_contacting_the_host() -> None:
    done = check("lab")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "unreachable=0" in done.stdout and "failed=0" in done.stdout
    for role in ("common", "fail2ban", "mariadb", "asterisk", "agents", "kamailio", "nginx"):
        assert f"TASK [{role} : Validating arguments against arg spec 'check'" in done.stdout


def test_the_example_inventory_refuses_its_unfilled_secrets() -> None:
    done = check("example")
    assert done.returncode != 0
    assert "centralita_db_passwords" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"kamailio_shm_memory": 8}, "kamailio_shm_memory"),
        ({"kamailio_rpc_address": "0.0.0.0"}, "kamailio_rpc_address"),
        ({"nginx_tls_mode": "sometimes"}, "nginx_tls_mode"),
        ({"asterisk_codecs": ["g729"]}, "asterisk_codecs"),
        ({"agents_log_level": "chatty"}, "agents_log_level"),
        ({"mariadb_innodb_flush_log_at_trx_commit": 7}, "mariadb_innodb_flush_log_at_trx_commit"),
        ({"common_journald_storage": "tape"}, "common_journald_storage"),
        ({"fail2ban_maxretry": "often"}, "fail2ban_maxretry"),
    ],
)
def test_a_bad_value_stops_the_check_naming_the_variable(extra: dict, named: str) -> None:
    done = check("lab", extra)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert named in output
    assert "unreachable=0" in done.stdout
