"""Fixtures for the lab tests: real services in a lab VM, SIP peers beside it.

The lab is named by ``CENTRALITA_LAB_NAME`` / ``CENTRALITA_LAB_INDEX`` (defaults:
``molecule`` / ``1``, the VM that ``./run test`` converges with molecule first).
When that lab is not up, the ``lab`` fixture boots it and converges ``site.yml``
into it. When the lab cannot be had, every test that needs it FAILS with the
reason: a lab test never skips.

Fixtures (all documented below; other features' lab tests use them too):

- ``lab`` (session): a :class:`LabHandle` — ``.lab`` (``centralita.lab.core.Lab``),
  ``.vm`` (the VM's machine name), ``.address`` (its IP), ``.exec(cmd)``,
  ``.db_query(sql, params)``, ``.peer_address(name)``.
- ``vm_exec``: ``vm_exec("systemctl is-active kamailio") -> stdout`` (raises on failure,
  ``check=False`` to get stdout anyway).
- ``db_query``: ``db_query("SELECT ... WHERE id = %s", (5,)) -> list[dict]`` run in the VM's
  MariaDB (as root over the unix socket, schema ``centralita``); several statements may be
  given separated by ``;`` but only one of them may return rows.
- ``add_peer``: ``add_peer("carrier1") -> address``; a peer host (its own network
  namespace and address on the lab bridge, 10.213.N.100+). Removed again after the test.
- ``sbc_world``: an :class:`SbcWorld` for SBC tests: customers, carriers, rates, dialing plans and
  blacklist entries written as the panel writes them, applied through Kamailio's RPC, and removed
  (with their CDRs and events) after the test.
- ``vm_port``: ``vm_port(remote_port, remote_host="127.0.0.1") -> local_port``: an SSH tunnel from
  127.0.0.1 on this machine to a port the VM binds to loopback (Kamailio's JSON-RPC, MariaDB),
  closed after the test.
- ``sipp``: ``sipp(peer, scenario_or_sf, target, calls=1, rate=1, timeout=30, extra=[...])
  -> SippResult`` runs SIPp inside the peer with ``-m`` and ``-timeout`` always set;
  ``sipp.start(...)`` runs it in the background (for a carrier waiting for calls) and
  ``.wait()`` / ``.stop()`` on the handle; every background SIPp is stopped (by PID) at the
  end of the test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from centralita.lab.core import Lab
from centralita.lab.host import LabError

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
VM_NAME = "centralita1"
CONVERGE_TIMEOUT_S = 3600
SIPP_GRACE_S = 15


def _lab_name() -> str:
    return os.environ.get("CENTRALITA_LAB_NAME", "molecule")


def _lab_index() -> int:
    return int(os.environ.get("CENTRALITA_LAB_INDEX", "1"))


# -- SQL over SSH ------------------------------------------------------------------


def sql_literal(value: Any) -> str:
    """A MariaDB literal for ``value`` (the client is the ``mariadb`` CLI, so no server-side binding)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return "'" + value.strftime("%Y-%m-%d %H:%M:%S.%f") + "'"
    if isinstance(value, dt.date):
        return "'" + value.isoformat() + "'"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0")
    return "'" + text + "'"


def bind(sql: str, params: Sequence[Any] | None) -> str:
    if not params:
        return sql
    return sql % tuple(sql_literal(p) for p in params)


_UNESCAPE = {"n": "\n", "t": "\t", "\\": "\\", "0": "\0"}


def _unescape(field: str) -> str | None:
    if field == "NULL":
        return None
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field):
            out.append(_UNESCAPE.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_batch(output: str) -> list[dict[str, str | None]]:
    """Rows of ``mariadb --batch`` output (tab-separated, first line the column names)."""
    lines = output.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return []
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"{len(fields)} fields for {len(header)} columns in {line!r}")
        rows.append(dict(zip(header, (_unescape(f) for f in fields), strict=True)))
    return rows


@dataclasses.dataclass
class LabHandle:
    lab: Lab
    vm: str

    @property
    def address(self) -> str:
        return self.lab.address(self.vm)

    def exec(self, command: str, *, timeout: float = 120, check: bool = True) -> str:
        return self.lab.exec(self.vm, command, timeout=timeout, check=check)

    def db_query(self, sql: str, params: Sequence[Any] | None = None, *, timeout: float = 60) -> list[dict]:
        """Run SQL in the VM's ``centralita`` schema; values come back as strings (or None)."""
        done = subprocess.run(
            [*self.lab.ssh_args(self.vm), "mariadb --batch --default-character-set=utf8mb4 centralita"],
            input="SET time_zone = '+00:00';\n" + bind(sql, params).rstrip().rstrip(";") + ";\n",
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"SQL failed in {self.vm}: {done.stderr.strip()}\n{sql}")
        try:
            return parse_batch(done.stdout)
        except ValueError as exc:
            raise AssertionError(f"cannot read the answer to {sql!r}: {exc}\n{done.stdout[:2000]}") from exc

    def peer_address(self, name: str) -> str:
        return self.lab.address(name)


def _lab_is_up(lab: Lab, vm: str) -> bool:
    if vm not in lab.state.machines:
        return False
    try:
        lab.exec(vm, "true", timeout=20)
    except (LabError, subprocess.TimeoutExpired):
        return False
    return True


def _converge(lab: Lab, vm: str, playbook: str = "site.yml", extra_vars: dict[str, Any] | None = None) -> None:
    """``playbook`` into the lab VM, as the README's commands do; ``extra_vars`` (-e) over the inventory's."""
    env = dict(os.environ, CENTRALITA_LAB_ADDRESS=lab.address(vm), ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    venv_bin = REPO / ".venv" / "bin"
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"
    extra = ["-e", json.dumps(extra_vars)] if extra_vars else []
    done = subprocess.run(
        [str(venv_bin / "ansible-playbook"), "-i", "inventory/lab", playbook, *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CONVERGE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-40:])
        pytest.fail(f"converging {playbook} into lab {lab.name} failed:\n{tail}\n{done.stderr[-2000:]}", pytrace=False)


@pytest.fixture
def converge_sbc(lab: LabHandle) -> Iterator:
    """``converge_sbc(**role_vars)``: the SBC playbook with these kamailio role settings; the lab's own
    settings are converged back afterwards."""
    changed: list[bool] = []

    def _run(**role_vars: Any) -> None:
        changed.append(True)
        _converge(lab.lab, lab.vm, "playbooks/sbc.yml", role_vars)

    yield _run
    if changed:
        _converge(lab.lab, lab.vm, "playbooks/sbc.yml")


@pytest.fixture(scope="session")
def lab() -> LabHandle:
    """The converged lab VM (booted and converged with site.yml first when it is not up)."""
    name, index = _lab_name(), _lab_index()
    try:
        the_lab = Lab(name, index)
        if not _lab_is_up(the_lab, VM_NAME):
            the_lab.up([VM_NAME])
            _converge(the_lab, VM_NAME)
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"lab {name} (index {index}) could not be brought up: {exc}", pytrace=False)
    return LabHandle(the_lab, VM_NAME)


@pytest.fixture
def vm_exec(lab: LabHandle):
    """``vm_exec(command, timeout=120, check=True) -> stdout`` in the lab VM over SSH."""
    return lab.exec


@pytest.fixture
def db_query(lab: LabHandle):
    """``db_query(sql, params=None) -> list[dict]`` in the VM's MariaDB (see LabHandle.db_query)."""
    return lab.db_query


@pytest.fixture
def add_peer(lab: LabHandle) -> Iterator:
    """``add_peer(name) -> address``: a peer host for this test, removed afterwards."""
    made: list[str] = []

    def _add(name: str) -> str:
        existed = name in lab.lab.state.machines
        lab.lab.add_peer(name)
        if not existed:
            made.append(name)
            # A peer made again gets a new MAC under an address the VM may still have cached
            # (REACHABLE for a while): forget it, or the VM keeps sending to the old MAC.
            # The kamailio jail bans a source after a few SECURITY lines on every port, and later
            # tests' peers get the same addresses: a peer's lines count only in a test that asks
            # for it (fail2ban_counts), and it leaves unbanned.
            address = lab.lab.address(name)
            lab.exec(
                f"ip neigh flush to {address}; fail2ban-client set kamailio addignoreip {address} >/dev/null 2>&1",
                check=False,
            )
        return lab.lab.address(name)

    yield _add
    for name in reversed(made):
        address = lab.lab.address(name)
        lab.exec(
            f"fail2ban-client set kamailio delignoreip {address} >/dev/null 2>&1;"
            f" fail2ban-client unban {address} >/dev/null 2>&1",
            check=False,
        )
        lab.lab.remove_peer(name)


@pytest.fixture
def fail2ban_counts(lab: LabHandle):
    """``fail2ban_counts(address)``: the kamailio jail counts this peer's SECURITY lines (peers are left out
    of it by default; it is back out when the peer is removed)."""

    def _count(address: str) -> None:
        lab.exec(f"fail2ban-client set kamailio delignoreip {address}")

    return _count


@pytest.fixture
def vm_port(lab: LabHandle) -> Iterator:
    """``vm_port(remote_port) -> local_port``: reach a loopback-only service of the VM from here."""
    tunnels: list[subprocess.Popen] = []

    def _open(remote_port: int, remote_host: str = "127.0.0.1") -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local_port = probe.getsockname()[1]
        ssh = lab.lab.ssh_args(lab.vm)
        proc = subprocess.Popen(
            [*ssh[:-1], "-N", "-o", "ExitOnForwardFailure=yes", "-L",
             f"127.0.0.1:{local_port}:{remote_host}:{remote_port}", ssh[-1]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        tunnels.append(proc)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"SSH tunnel to {remote_host}:{remote_port} failed: {proc.stderr.read()!r}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local_port), timeout=1):
                return local_port
            time.sleep(0.2)
        raise AssertionError(f"SSH tunnel to {remote_host}:{remote_port} did not open within 15 s")

    yield _open
    for proc in tunnels:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- SIPp ----------------------------------------------------------------------------


@dataclasses.dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    argv: list[str]
    stats: dict[str, str] = dataclasses.field(default_factory=dict)
    workdir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class SippProcess:
    """A SIPp running in the background inside a peer (a carrier waiting for calls)."""

    def __init__(self, argv: list[str], proc: subprocess.Popen, workdir: Path) -> None:
        self.argv = argv
        self.proc = proc
        self.workdir = workdir

    def wait(self, timeout: float) -> SippResult:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            out, err = self.proc.communicate(timeout=SIPP_GRACE_S)
        return SippResult(self.proc.returncode, out, err, self.argv, _read_stats(self.workdir), self.workdir)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def _read_stats(workdir: Path) -> dict[str, str]:
    """The last line of SIPp's -trace_stat CSV, keyed by column name."""
    for path in sorted(workdir.glob("*_.csv")):
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if len(lines) >= 2:
            return dict(zip(lines[0].rstrip(";").split(";"), lines[-1].rstrip(";").split(";"), strict=False))
    return {}


class Sipp:
    """Runs SIPp inside peers; every run is bounded by -m (calls) and -timeout (seconds)."""

    def __init__(self, lab: LabHandle, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        self.running: list[SippProcess] = []
        self._n = 0

    def argv(
        self,
        peer: str,
        scenario: str,
        target: str | None,
        *,
        calls: int = 1,
        rate: float = 1,
        timeout: int = 30,
        port: int = 5060,
        extra: Sequence[str] = (),
    ) -> tuple[list[str], Path]:
        if calls < 1 or timeout < 1:
            raise ValueError("SIPp needs a bounded number of calls (-m >= 1) and a timeout (>= 1 s)")
        self._n += 1
        workdir = self.tmp / f"sipp{self._n}-{peer}"
        workdir.mkdir(parents=True, exist_ok=True)
        path = Path(scenario) if Path(scenario).is_absolute() else SCENARIOS / scenario
        args = ["sipp"]
        if path.suffix == ".xml" and path.exists():
            args += ["-sf", str(path)]
        elif scenario in {"uac", "uas"}:
            args += ["-sn", scenario]
        else:
            raise FileNotFoundError(f"no SIPp scenario {scenario} in {SCENARIOS}")
        args += ["-i", self.lab.peer_address(peer), "-p", str(port), "-m", str(calls), "-r", str(rate)]
        # SIPp's Call-ID is "<call number>-<its PID>@<address>": process IDs come round again within
        # minutes on a busy host, and a Kamailio that still knows an earlier run's call (a dialog restored
        # at a restart) would take a new run's call for it. A token of the run's own keeps them apart.
        args += ["-cid_str", f"%u-%p-{uuid.uuid4().hex[:12]}@%s"]
        args += ["-timeout", f"{timeout}s", "-timeout_error", "-nostdin", "-trace_stat", "-trace_msg"]
        args += ["-stf", str(workdir / f"stat_{peer}_.csv"), "-fd", "1"]
        args += ["-message_file", str(workdir / f"{peer}_messages.log")]
        args += list(extra)
        if target:
            args.append(target)
        return self.lab.lab.peer_cmd(peer, args), workdir

    def __call__(self, peer: str, scenario: str, target: str | None, **kwargs: Any) -> SippResult:
        timeout = kwargs.get("timeout", 30)
        argv, workdir = self.argv(peer, scenario, target, **kwargs)
        proc = subprocess.Popen(
            argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        handle = SippProcess(argv, proc, workdir)
        self.running.append(handle)
        return handle.wait(timeout + SIPP_GRACE_S)

    def start(self, peer: str, scenario: str, target: str | None = None, **kwargs: Any) -> SippProcess:
        argv, workdir = self.argv(peer, scenario, target, **kwargs)
        proc = subprocess.Popen(
            argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        handle = SippProcess(argv, proc, workdir)
        self.running.append(handle)
        time.sleep(0.3)
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"SIPp exited at once ({proc.returncode}): {shlex.join(argv)}\n{out}\n{err}")
        return handle

    def stop_all(self) -> None:
        for handle in self.running:
            handle.stop()


@pytest.fixture
def sipp(lab: LabHandle, tmp_path: Path) -> Iterator[Sipp]:
    """Run SIPp in peers (see :class:`Sipp`); background runs are stopped after the test."""
    runner = Sipp(lab, tmp_path)
    yield runner
    runner.stop_all()


# -- SBC test data ---------------------------------------------------------------------

SIP_PORT = 5060


class SbcWorld:
    """Customers, carriers and rates made through SQL (as the panel makes them) for one test;
    ``cleanup()`` removes all of it."""

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

    def one_route(self, **customer: Any) -> int:
        """The usual set-up: a customer on the peer ``cust`` (``customer``: its settings) and one carrier
        on ``carrier1``, loaded into Kamailio; the customer's id."""
        self.add_peer("cust")
        carrier_ip = self.add_peer("carrier1")
        customer_id = self.customer(self.lab.peer_address("cust"), **customer)
        self.carrier(carrier_ip)
        self.reload()
        return customer_id

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
            self.q(
                "DELETE FROM events WHERE type = 'security_flood_detected' AND JSON_VALUE(payload, '$.ip') = %s", (ip,)
            )
            self.lab.exec(f"kamcmd htable.delete ipban {ip}", check=False)
        self.reload()


@pytest.fixture
def sbc_world(lab: LabHandle, add_peer, sipp: Sipp) -> Iterator[SbcWorld]:
    """An :class:`SbcWorld` whose rows, CDRs, events and bans are removed after the test."""
    world = SbcWorld(lab, add_peer, sipp)
    try:
        yield world
    finally:
        sipp.stop_all()
        world.cleanup()
