"""`playbooks/check.yml`: an inventory is checked on the controller before a deploy.

A bad value stops the play with a message naming the variable, and no host is
contacted: every host points at an address nothing answers on. The bad values
are one host each of one inventory, so one run checks them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
NOWHERE = "192.0.2.99"  # TEST-NET-1: nothing answers there
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"kamailio_shm_memory": 8}, "kamailio_shm_memory"),
    ({"kamailio_rpc_address": "0.0.0.0"}, "kamailio_rpc_address"),
    ({"nginx_tls_mode": "sometimes"}, "nginx_tls_mode"),
    ({"asterisk_codecs": ["g729"]}, "asterisk_codecs"),
    ({"agents_log_level": "chatty"}, "agents_log_level"),
    ({"mariadb_innodb_flush_log_at_trx_commit": 7}, "mariadb_innodb_flush_log_at_trx_commit"),
    ({"common_journald_storage": "tape"}, "common_journald_storage"),
    ({"fail2ban_maxretry": "often"}, "fail2ban_maxretry"),
    ({"aicall_provider": "gemini"}, "aicall_provider"),
]


def check(inventory: Path) -> dict[str, list[str]]:
    """Run the check; per host, the results of the tasks that failed (json callback).

    A check on a secret runs with no_log, so its result is censored: its message is only in
    the error line of the default output (see :func:`check_output`).
    """
    env = {**os.environ, "CENTRALITA_LAB_ADDRESS": NOWHERE, "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"}
    done = subprocess.run(
        [str(PLAYBOOK), "-i", str(inventory), str(ROOT / "playbooks" / "check.yml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads(done.stdout)
    stats = report["stats"]
    assert all(s["unreachable"] == 0 for s in stats.values()), "a host was contacted"
    failed: dict[str, list[str]] = {host: [] for host in stats}
    for play in report["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                if result.get("failed"):
                    failed[host].append(json.dumps(result))
    assert (done.returncode == 0) == (not any(failed.values())), done.stderr[-2000:]
    return failed


def check_output(inventory: Path) -> str:
    """Run the check as an operator does; what it prints."""
    env = {**os.environ, "CENTRALITA_LAB_ADDRESS": NOWHERE, "ANSIBLE_NOCOLOR": "1"}
    command = [str(PLAYBOOK), "-i", str(inventory), str(ROOT / "playbooks" / "check.yml")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0
    return done.stdout + done.stderr


def test_the_lab_inventory_passes() -> None:
    assert check(ROOT / "inventory" / "lab") == {"centralita1": []}


def test_the_example_inventory_refuses_its_unfilled_secrets() -> None:
    output = check_output(ROOT / "inventory" / "example")
    assert "centralita_db_passwords.kamailio (kamailio_db_password) must be at least 12" in output
    assert "CHANGE-ME" not in output, "the secret's value is not printed"


@pytest.fixture(scope="module")
def bad_inventory(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The lab's settings, one all-in-one host per bad value."""
    inventory = tmp_path_factory.mktemp("inventory")
    (inventory / "group_vars").symlink_to(ROOT / "inventory" / "lab" / "group_vars")
    hosts = {f"bad{index}": {"ansible_host": NOWHERE, **extra} for index, (extra, _) in enumerate(BAD_VALUES)}
    groups = {group: {"hosts": dict.fromkeys(hosts)} for group in ("db", "sbc", "pbx", "panel")}
    (inventory / "hosts.yml").write_text(json.dumps({"all": {"hosts": hosts, "children": groups}}))
    return check(inventory)


@pytest.mark.parametrize(("index", "named"), [(index, named) for index, (_, named) in enumerate(BAD_VALUES)])
def test_a_bad_value_stops_the_check_naming_the_variable(bad_inventory, index: int, named: str) -> None:
    messages = bad_inventory[f"bad{index}"]
    assert messages, f"{BAD_VALUES[index][0]} was accepted"
    assert named in messages[0], messages[0]
