# SQL here is built from integers and constants of this module, never from input.
# ruff: noqa: S608
"""``centralita bench sbc``: how many calls per second the SBC carries, and what it adds to PDD.

Runs on the controller (as root, like the lab) against a lab VM that was
converged with the whole appliance. SIPp customers and a SIPp carrier run on
peer hosts of the lab; calls go through the full SBC logic (source auth,
limits, normalisation, dialing plan, LCR, dispatcher, dialog, CDR). The same
ladder of rates then runs against a minimal stateless Kamailio started on the
same VM, as the reference. Optionally (``direct_rates``) the same ladder runs
with the SIPp customers calling the SIPp carrier straight, no Kamailio in
between: the most this host carries with the same peers and call shape.

A rate counts as sustained when every call of ``hold_s`` seconds at that rate
succeeded and every one of them has its CDR. Several SIPp UAC processes share
the load (one SIPp saturates near 1,000 calls/s). Load is bounded: every SIPp
gets ``-m`` and ``-timeout``, and the ladder stops at the first rate that fails.
"""

from __future__ import annotations

import dataclasses
import resource
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from centralita.lab.core import Lab
from centralita.lab.host import LabError

VM = "centralita1"
SBC_PORT = 5060
MINIMAL_PORT = 5062
NUMBER = "573001234567"
CDR_WAIT_S = 60
# CPU ticks of the machine as the lab VM sees it (busy, all: a container VM sees
# the host's CPUs, other work on the host included) and of Kamailio's,
# MariaDB's and the SIP trace loader's processes (user + system), from /proc:
# where a step's time went.
CPU_SAMPLE = (
    "awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat;"
    " for name in kamailio mariadbd sbc-traceload; do t=0; for p in $(pgrep -x $name); do"
    " t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; done;"
    " nproc"
)
BENCH_TAG = "centralita-bench"
# Kamailio's spool (the kamailio role's default): a step's traces are in the database once it holds only
# the traces file Kamailio writes
TRACE_SPOOL = "/var/spool/centralita/sbc"
# rows deleted by one statement when the bench cleans up after itself
DELETE_CHUNK = 20000

UAC_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<scenario name="bench uac">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:bench@[local_ip]:[local_port]>;tag=[pid]B[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:bench@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:bench@[local_ip]:[local_port]>;tag=[pid]B[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:bench@[local_ip]:[local_port]>;tag=[pid]B[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""

# The carrier answers at once, without a 180: a stateless relay may deliver a
# 180 after the 200 it preceded, which SIPp would count as a failed call.
UAS_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<scenario name="bench uas">
  <recv request="INVITE" rrs="true"/>
  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]U[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:[local_ip]:[local_port]>
Content-Length: 0

]]></send>
  <recv request="ACK" optional="true"/>
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""

MINIMAL_CFG = """#!KAMAILIO
# The reference: a stateless relay with no logic at all.
listen=udp:{vm}:{port}
children={children}
log_stderror=no
debug=1
request_route {{
    forward("{uas}", 5060);
}}
"""


@dataclasses.dataclass
class BenchOptions:
    lab_name: str
    lab_index: int
    rates: list[int]
    hold_s: int = 60
    uacs: int = 2
    pdd_calls: int = 2000
    # the ladders of each configuration (None: ``rates``; empty: skipped)
    full_rates: list[int] | None = None
    minimal_rates: list[int] | None = None
    # SIPp customers straight to the SIPp carrier (the host's own ceiling); empty: skipped
    direct_rates: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CpuUse:
    """CPU use during a step: the machine's CPUs busy (all work on them), then Kamailio, MariaDB and SIPp
    in shares of one CPU."""

    vm_busy: float = 0.0
    vm_cpus: int = 0
    kamailio: float = 0.0
    mariadb: float = 0.0
    loader: float = 0.0
    sipp: float = 0.0
    # CPU time per call (ms), counted until the step's last CDR was in the database: work queued during
    # the load (CDRs, traces) and done after it is the step's too
    kamailio_ms: float = 0.0
    mariadb_ms: float = 0.0
    loader_ms: float = 0.0
    # the host's own view while the load ran: its load average at the end, and the share of its CPU time a
    # hypervisor took (steal): other work on the machine changes what a rate costs
    host_load: float = 0.0
    host_steal: float = 0.0

    def text(self) -> str:
        return (
            f"{self.vm_cpus} CPUs {self.vm_busy:.0%} busy, kamailio {self.kamailio:.0%}, "
            f"mariadb {self.mariadb:.0%}, trace loader {self.loader:.0%}, SIPp (host) {self.sipp:.0%} of one CPU;"
            f" per call: kamailio {self.kamailio_ms:.2f} ms, mariadb {self.mariadb_ms:.2f} ms,"
            f" trace loader {self.loader_ms:.2f} ms; "
            f"host load {self.host_load:.1f}, steal {self.host_steal:.1%}"
        )


def host_cpu_ticks() -> tuple[int, int]:
    """(all ticks, steal ticks) of this machine, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    ticks = [int(v) for v in fields]
    return sum(ticks), ticks[7]


def host_load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@dataclasses.dataclass
class StepResult:
    rate: int
    calls: int
    ok: int
    failed: int
    cdrs: int | None
    cpu: CpuUse = dataclasses.field(default_factory=CpuUse)

    @property
    def sustained(self) -> bool:
        return self.failed == 0 and self.ok == self.calls and (self.cdrs is None or self.cdrs == self.calls)


class Bench:
    def __init__(self, options: BenchOptions) -> None:
        self.o = options
        self.lab = Lab(options.lab_name, options.lab_index)
        if VM not in self.lab.state.machines:
            raise LabError(
                f"lab {options.lab_name} (index {options.lab_index}) has no VM: converge one first, e.g. "
                f"python -m centralita.lab up --name {options.lab_name} --index {options.lab_index} --vm {VM} and "
                "ansible-playbook -i inventory/lab site.yml with CENTRALITA_LAB_ADDRESS set to its address"
            )
        self.vm = self.lab.address(VM)
        self.work = Path(tempfile.mkdtemp(prefix="centralita-bench-"))
        (self.work / "uac.xml").write_text(UAC_XML)
        (self.work / "uas.xml").write_text(UAS_XML)
        self.uacs = [f"bu{i}" for i in range(self.o.uacs)]
        self.customer_id: int | None = None
        self.carrier_id: int | None = None
        self.nft_handle: str | None = None
        self.started: str | None = None

    # -- setup ------------------------------------------------------------------

    def sql(self, statement: str) -> str:
        return self.lab.exec(VM, f"mariadb --batch --skip-column-names centralita -e {shlex.quote(statement)}")

    def delete_in_chunks(self, table: str, where: str) -> None:
        """Deletes the bench's rows a chunk at a time: one DELETE of a whole ladder's rows holds its locks
        for long enough that Kamailio's database writers give up on their statements (db_mysql waits 2 s)
        and write them again later."""
        while True:
            out = self.sql(f"DELETE FROM {table} WHERE {where} LIMIT {DELETE_CHUNK}; SELECT ROW_COUNT()")
            if int(out.split()[-1]) < DELETE_CHUNK:
                return

    def setup(self) -> None:
        self.started = self.sql("SELECT UTC_TIMESTAMP(3)").strip()
        for name in [*self.uacs, "buas"]:
            self.lab.add_peer(name)
            self.lab.exec(VM, f"ip neigh flush to {self.lab.address(name)}", check=False)
        uas = self.lab.address("buas")
        self.sql(f"DELETE FROM carriers WHERE name = '{BENCH_TAG}'; DELETE FROM customers WHERE name = '{BENCH_TAG}'")
        self.carrier_id = int(
            self.sql(
                f"INSERT INTO carriers (name, host, port, state) VALUES ('{BENCH_TAG}', '{uas}', 5060, 'up');"
                " SELECT LAST_INSERT_ID()"
            ).split()[-1]
        )
        self.sql(
            f"INSERT INTO carrier_rates (carrier_id, prefix, rate_per_minute, effective_from)"
            f" VALUES ({self.carrier_id}, '57', 0.01, UTC_TIMESTAMP() - INTERVAL 1 DAY)"
        )
        self.customer_id = int(
            self.sql(
                f"INSERT INTO customers (name, max_cps, max_channels) VALUES ('{BENCH_TAG}', 1000000, 1000000);"
                " SELECT LAST_INSERT_ID()"
            ).split()[-1]
        )
        for name in self.uacs:
            self.sql(
                f"INSERT INTO customer_ips (customer_id, ip_addr) VALUES ({self.customer_id},"
                f" '{self.lab.address(name)}')"
            )
        self.sql(
            f"INSERT INTO customer_rates (customer_id, prefix, rate_per_minute, effective_from)"
            f" VALUES ({self.customer_id}, '57', 0.05, UTC_TIMESTAMP() - INTERVAL 1 DAY)"
        )
        self.lab.exec(
            VM, "kamcmd dispatcher.reload; kamcmd permissions.addressReload; kamcmd htable.flush src;"
            " kamcmd htable.flush route"
        )  # fmt: skip
        self.start_minimal(uas)

    def start_minimal(self, uas: str) -> None:
        cfg = MINIMAL_CFG.format(vm=self.vm, port=MINIMAL_PORT, uas=uas, children=8)
        self.lab.exec(VM, f"cat > /run/centralita-bench.cfg <<'EOF'\n{cfg}EOF")
        self.lab.exec(
            VM,
            "kamailio -f /run/centralita-bench.cfg -P /run/centralita-bench.pid -m 256 -M 16 -u kamailio -g kamailio",
        )
        out = self.lab.exec(
            VM,
            f"nft -a -e add rule inet centralita input udp dport {MINIMAL_PORT} accept comment '\"{BENCH_TAG}\"'",
            check=False,
        )
        for word in out.split():
            if word.isdigit():
                self.nft_handle = word

    def teardown(self) -> None:
        self.lab.exec(VM, "test -f /run/centralita-bench.pid && kill $(cat /run/centralita-bench.pid)", check=False)
        if self.nft_handle:
            self.lab.exec(VM, f"nft delete rule inet centralita input handle {self.nft_handle}", check=False)
        if self.customer_id:
            self.delete_in_chunks("sbc_cdrs", f"customer_id = {self.customer_id}")
        self.sql(f"DELETE FROM customers WHERE name = '{BENCH_TAG}'; DELETE FROM carriers WHERE name = '{BENCH_TAG}'")
        addresses = [self.lab.address(name) for name in [*self.uacs, "buas"] if name in self.lab.state.machines]
        if addresses and self.started:
            # the traces of the bench's calls (about eleven rows a call): left in place, every run would
            # start with a larger sip_traces table than the one before and pay more for each insert
            listed = ", ".join(f"'{a}'" for a in addresses)
            self.delete_in_chunks(
                "sip_traces", f"captured_at >= '{self.started}' AND (src_ip IN ({listed}) OR dst_ip IN ({listed}))"
            )
        # SIPp retransmissions still arriving once the bench customer is gone look like a flood from an
        # unknown source: lift the bans they caused, or the next user of these peer addresses is refused
        for name in [*self.uacs, "buas"]:
            self.lab.remove_peer(name)
        if addresses:
            listed = ", ".join(f"'{a}'" for a in addresses)
            self.sql(
                f"DELETE FROM ip_blacklist WHERE source = 'flood' AND ip_addr IN ({listed});"
                " DELETE FROM events WHERE type = 'security_flood_detected'"
                f" AND JSON_VALUE(payload, '$.ip') IN ({listed})"
            )
            self.lab.exec(VM, "; ".join(f"kamcmd htable.delete ipban {a}" for a in addresses), check=False)
        self.lab.exec(VM, "kamcmd dispatcher.reload; kamcmd permissions.addressReload", check=False)
        shutil.rmtree(self.work, ignore_errors=True)  # SIPp's scenarios, statistics and logs of this run

    # -- load ---------------------------------------------------------------------

    def sipp(self, peer: str, scenario: str, target: str | None, calls: int, rate: float, timeout: int,
             extra: list[str]) -> subprocess.Popen:  # fmt: skip
        workdir = self.work / f"{peer}-{time.monotonic_ns()}"
        workdir.mkdir()
        argv = [
            "sipp", "-sf", str(self.work / scenario), "-i", self.lab.address(peer), "-p", "5060",
            "-m", str(calls), "-r", f"{rate:g}", "-timeout", f"{timeout}s", "-timeout_error", "-nostdin",
            "-trace_stat", "-stf", str(workdir / "stat.csv"), "-fd", "1", "-trace_err", *extra,
        ]  # fmt: skip
        if target:
            argv.append(target)
        proc = subprocess.Popen(
            self.lab.peer_cmd(peer, argv), cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        proc.workdir = workdir  # type: ignore[attr-defined]
        return proc

    @staticmethod
    def stats(proc: subprocess.Popen) -> dict[str, str]:
        path = proc.workdir / "stat.csv"  # type: ignore[attr-defined]
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
        if len(lines) < 2:
            return {}
        return dict(zip(lines[0].rstrip(";").split(";"), lines[-1].rstrip(";").split(";"), strict=False))

    def cpu_sample(self) -> tuple[float, list[int]]:
        """(monotonic time, [vm busy ticks, vm all ticks, kamailio ticks, mariadb ticks, loader ticks, cpus])"""
        out = self.lab.exec(VM, CPU_SAMPLE, check=False).split()
        values = [int(float(v)) for v in out if v.replace(".", "", 1).isdigit()]
        return time.monotonic(), (values + [0] * 7)[:7]

    @staticmethod
    def cpu_use(before: tuple[float, list[int]], after: tuple[float, list[int]], sipp_s: float,
                drained: tuple[float, list[int]], calls: int) -> CpuUse:  # fmt: skip
        """Shares of one CPU while the load ran (``before`` to ``after``); CPU per call up to ``drained``."""
        elapsed = max(after[0] - before[0], 1e-3)
        busy, total, kam, maria, loader = (a - b for a, b in zip(after[1][:5], before[1][:5], strict=True))
        cpus = after[1][5] or 1
        hz = 100  # USER_HZ of Linux /proc
        calls = max(calls, 1)
        return CpuUse(
            vm_busy=busy / total if total else 0.0,
            vm_cpus=cpus,
            kamailio=kam / hz / elapsed,
            mariadb=maria / hz / elapsed,
            loader=loader / hz / elapsed,
            sipp=sipp_s / elapsed,
            kamailio_ms=(drained[1][2] - before[1][2]) / hz * 1000 / calls,
            mariadb_ms=(drained[1][3] - before[1][3]) / hz * 1000 / calls,
            loader_ms=(drained[1][4] - before[1][4]) / hz * 1000 / calls,
        )

    def target(self, port: int | None) -> str:
        """Where the customers send their calls: Kamailio's port on the VM, or (None) the carrier itself."""
        return f"{self.vm}:{port}" if port else f"{self.lab.address('buas')}:5060"

    def step(self, rate: int, port: int | None, count_cdrs: bool) -> StepResult:
        calls = rate * self.o.hold_s
        per_uac = max(1, calls // len(self.uacs))
        calls = per_uac * len(self.uacs)
        timeout = self.o.hold_s + 40
        target = self.target(port)
        # a carrier marked down by an earlier overload would refuse this whole step
        self.lab.exec(VM, "kamcmd dispatcher.reload", check=False)
        since = self.sql("SELECT UTC_TIMESTAMP(3)").strip()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before = self.cpu_sample()
        host_before = host_cpu_ticks()
        # room for stray calls (probes, retransmissions): the carrier must outlive the customers;
        # it is stopped once they are done
        uas = self.sipp("buas", "uas.xml", None, calls * 2 + 100, 1, timeout + 10, [])
        time.sleep(0.5)
        uacs = [
            self.sipp(p, "uac.xml", target, per_uac, rate / len(self.uacs), timeout, ["-s", NUMBER]) for p in self.uacs
        ]
        ok = failed = 0
        for proc in uacs:
            try:
                proc.wait(timeout=timeout + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            st = self.stats(proc)
            ok += int(st.get("SuccessfulCall(C)", 0))
            failed += int(st.get("FailedCall(C)", 0))
        cpu_after = self.cpu_sample()
        host_after = host_cpu_ticks()
        load = host_load()
        uas.terminate()
        try:
            uas.wait(timeout=10)
        except subprocess.TimeoutExpired:
            uas.kill()
            uas.wait(timeout=10)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        sipp_s = (children_after.ru_utime + children_after.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        cdrs = None
        if count_cdrs:
            deadline = time.monotonic() + CDR_WAIT_S
            while True:
                cdrs = int(
                    self.sql(
                        f"SELECT COUNT(*) FROM sbc_cdrs WHERE customer_id = {self.customer_id}"
                        f" AND created_at >= '{since}' AND disposition = 'answered'"
                    ).strip()
                )
                if cdrs >= ok or time.monotonic() > deadline:
                    break
                time.sleep(2)
            # and the step's traces: the spool holds only the file Kamailio writes now
            while time.monotonic() < deadline:
                files = self.lab.exec(VM, f"ls {TRACE_SPOOL} 2>/dev/null | grep -c 'tsv$'", check=False).strip()
                if not files.isdigit() or int(files) <= 1:
                    break
                time.sleep(1)
        cpu = self.cpu_use(cpu_before, cpu_after, sipp_s, self.cpu_sample() if count_cdrs else cpu_after, calls)
        cpu.host_load = load
        all_ticks = host_after[0] - host_before[0]
        cpu.host_steal = (host_after[1] - host_before[1]) / all_ticks if all_ticks else 0.0
        return StepResult(rate, calls, ok, failed, cdrs, cpu)

    def ladder(self, port: int | None, count_cdrs: bool, label: str, rates: list[int]) -> int:
        best = 0
        for rate in rates:
            result = self.step(rate, port, count_cdrs)
            cdr_text = f", {result.cdrs} CDRs" if result.cdrs is not None else ""
            verdict = "sustained" if result.sustained else "NOT sustained"
            print(
                f"  {label} {rate:>5} cps: {result.ok}/{result.calls} ok, {result.failed} failed{cdr_text}: {verdict}"
                f" ({result.cpu.text()})",
                flush=True,
            )
            if not result.sustained:
                break
            best = rate
            time.sleep(5)
        return best

    def pdd(self, target_port: int | None) -> list[float]:
        """Response times INVITE -> 200 OK (ms) of ``pdd_calls`` calls at a gentle rate."""
        target = self.target(target_port)
        calls = self.o.pdd_calls
        uas = self.sipp("buas", "uas.xml", None, calls * 2 + 100, 1, calls // 50 + 60, [])
        time.sleep(0.5)
        proc = self.sipp(self.uacs[0], "uac.xml", target, calls, 50, calls // 50 + 40,
                         ["-s", NUMBER, "-trace_rtt", "-rtt_freq", "1"])  # fmt: skip
        proc.wait(timeout=calls // 50 + 80)
        uas.terminate()
        uas.wait(timeout=10)
        values = []
        # SIPp's -trace_rtt: "Date_ms;response_time_ms;rtd_no", response times in whole ms
        for path in proc.workdir.glob("*_rtt.csv"):  # type: ignore[attr-defined]
            for line in path.read_text().splitlines()[1:]:
                parts = line.split(";")
                if len(parts) >= 2 and parts[1].replace(".", "", 1).isdigit():
                    values.append(float(parts[1]))
        return values


def parse_rates(text: str) -> list[int]:
    """A ladder given as "600,700,800" (calls per second, each above 0); "" is no ladder."""
    rates = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            rate = int(part)
        except ValueError:
            raise ValueError(f"a rate is a whole number of calls per second, not {part.strip()!r}") from None
        if rate <= 0:
            raise ValueError(f"a rate must be above 0 calls per second, not {rate}")
        rates.append(rate)
    return rates


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclasses.dataclass
class BenchSummary:
    """What a run found: the highest sustained rate of each ladder (None: not run; 0: not even its first
    rate), the rates each ladder tried, and the PDD samples."""

    hold_s: int
    full: int | None
    minimal: int | None
    direct: int | None
    pdd_direct: list[float]
    pdd_sbc: list[float]
    tried: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def _sustained(self, ladder: str, best: int) -> str:
        """A ladder's highest sustained rate, saying when it is only a bound."""
        rates = self.tried.get(ladder, [])
        if best == 0 and rates:
            return f"below {min(rates)} cps"
        if rates and best >= max(rates):
            return f"{best} cps (the highest rate tried)"
        return f"{best} cps"

    def added_pdd(self, q: float) -> float:
        """The PDD the SBC adds at quantile ``q`` (ms): via the SBC less SIPp to SIPp."""
        return _pct(self.pdd_sbc, q) - _pct(self.pdd_direct, q)

    def rows(self) -> list[tuple[str, str]]:
        """The summary table's rows (measure, value)."""
        rows = []
        if self.full is not None:
            rows.append((f"highest rate sustained {self.hold_s} s, full SBC (no failed call, no missing CDR)",
                         self._sustained("full", self.full)))  # fmt: skip
        if self.minimal is not None:
            rows.append((f"highest rate sustained {self.hold_s} s, minimal stateless Kamailio",
                         self._sustained("minimal", self.minimal)))  # fmt: skip
        if self.direct is not None:
            rows.append((f"highest rate sustained {self.hold_s} s, SIPp to SIPp with no Kamailio (the host's ceiling)",
                         self._sustained("direct", self.direct)))  # fmt: skip
        if self.full is not None and self.minimal:
            rows.append(("full / minimal", f"{self.full / self.minimal:.2f}"))
        if self.full is not None and self.direct:
            rows.append(("full / direct", f"{self.full / self.direct:.2f}"))
        rows += [
            ("PDD added by the SBC, p50", f"{self.added_pdd(0.5):.2f} ms"),
            ("PDD added by the SBC, p99", f"{self.added_pdd(0.99):.2f} ms"),
            ("calls measured for PDD", f"direct {len(self.pdd_direct)}, via SBC {len(self.pdd_sbc)}"),
        ]
        if self.pdd_direct:
            rows.append(("direct SIPp-to-SIPp INVITE->200, p50", f"{statistics.median(self.pdd_direct):.2f} ms"))
        return rows

    def targets_met(self) -> bool:
        ratio = self.full / self.minimal if self.full is not None and self.minimal else 0.0
        return (self.full or 0) >= 1000 and ratio >= 0.7 and self.added_pdd(0.99) < 5


def run_bench(options: BenchOptions) -> int:
    try:
        bench = Bench(options)
    except LabError as exc:
        print(f"centralita bench sbc: {exc}")
        return 2
    print(f"SBC benchmark on lab {options.lab_name} ({bench.vm}): {options.uacs} SIPp UACs, {options.hold_s} s a rate")
    full = minimal = direct = None
    try:
        bench.setup()
        pdd_direct = bench.pdd(None)
        pdd_sbc = bench.pdd(SBC_PORT)
        full_rates = options.rates if options.full_rates is None else options.full_rates
        minimal_rates = options.rates if options.minimal_rates is None else options.minimal_rates
        if full_rates:
            full = bench.ladder(SBC_PORT, True, "full SBC", full_rates)
        if minimal_rates:
            minimal = bench.ladder(MINIMAL_PORT, False, "minimal", minimal_rates)
        if options.direct_rates:
            direct = bench.ladder(None, False, "direct", options.direct_rates)
    finally:
        bench.teardown()
    tried = {"full": full_rates, "minimal": minimal_rates, "direct": options.direct_rates}
    summary = BenchSummary(options.hold_s, full, minimal, direct, pdd_direct, pdd_sbc, tried)
    print()
    print("| measure | value |")
    print("|---|---|")
    for measure, value in summary.rows():
        print(f"| {measure} | {value} |")
    print(
        "\ntargets (>= 1000 cps, >= 0.7 of minimal, p99 added PDD < 5 ms): "
        f"{'met' if summary.targets_met() else 'not met'}"
    )
    return 0
