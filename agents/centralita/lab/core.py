"""The lab: test VMs and peer hosts on a private bridge, each in its own network namespace.

Layout of lab ``index`` N (0-9): a bridge ``clbrN`` on the host holding 10.213.N.1/24;
VMs at 10.213.N.10+ (systemd-nspawn booting systemd, reachable over SSH exactly like
real hosts) and peer hosts at 10.213.N.100+ (plain namespaces from which SIPp or
baresip act as customers, carriers and callers). Outbound traffic of the subnet is
NATed so the VMs reach the Debian mirror.

Everything made is written to a state file first and removed by ``down()``,
which also runs when ``up()`` fails and sweeps leftovers of an interrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from centralita.lab.host import LabError, host_nameserver, link_exists, netns_exists, require_tools, run
from centralita.lab.rootfs import cache_root, ensure_rootfs

log = logging.getLogger("centralita.lab")

VM_FIRST = 10
PEER_FIRST = 100
BOOT_TIMEOUT = 120.0


@dataclass
class Machine:
    name: str
    kind: str  # "vm" or "peer"
    octet: int
    netns: str
    veth: str
    pid: int = 0
    root: str = ""


@dataclass
class LabState:
    name: str
    index: int
    machines: dict[str, Machine] = field(default_factory=dict)
    nat_rules: list[list[str]] = field(default_factory=list)


def ssh_key_path() -> Path:
    return cache_root() / "ssh" / "id_ed25519"


def known_hosts_path() -> Path:
    return cache_root() / "ssh" / "known_hosts"


class Lab:
    def __init__(self, name: str, index: int) -> None:
        if not name.isalnum() or len(name) > 10:
            raise LabError(f"lab name {name!r}: use up to 10 letters or digits")
        if not 0 <= index <= 9:
            raise LabError(f"lab index {index}: expected 0-9")
        self.name = name
        self.index = index
        self.bridge = f"clbr{index}"
        self.subnet = f"10.213.{index}.0/24"
        self.gateway = f"10.213.{index}.1"
        self.state_file = Path("/run/centralita-lab") / f"{name}.json"
        self.state = self._load() or LabState(name, index)
        if self.state.index != index:
            raise LabError(f"lab {name} is up with index {self.state.index}, not {index}")

    # -- state ---------------------------------------------------------------

    def _load(self) -> LabState | None:
        if not self.state_file.exists():
            return None
        raw = json.loads(self.state_file.read_text(encoding="utf-8"))
        machines = {k: Machine(**v) for k, v in raw.get("machines", {}).items()}
        return LabState(raw["name"], raw["index"], machines, raw.get("nat_rules", []))

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self.state)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(self.state_file)

    # -- addresses -------------------------------------------------------------

    def address(self, machine: str) -> str:
        try:
            return f"10.213.{self.index}.{self.state.machines[machine].octet}"
        except KeyError:
            raise LabError(f"lab {self.name} has no machine {machine!r}") from None

    def machines(self, kind: str | None = None) -> list[Machine]:
        return [m for m in self.state.machines.values() if kind is None or m.kind == kind]

    # -- bring up --------------------------------------------------------------

    def up(self, vms: list[str], peers: list[str] = ()) -> None:  # type: ignore[assignment]
        """Boot ``vms`` and create ``peers``; on any failure remove everything and raise."""
        require_tools("ip", "iptables", "systemd-nspawn", "ssh", "ssh-keygen")
        try:
            self._network()
            for name in vms:
                if name not in self.state.machines:
                    self._boot_vm(name)
            for name in peers:
                self.add_peer(name)
            for name in vms:
                self._wait_ssh(self.state.machines[name])
        except BaseException:
            log.error("lab %s failed to come up; removing what was made", self.name)
            self.down()
            raise

    def _network(self) -> None:
        self._save()
        if not link_exists(self.bridge):
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n", encoding="utf-8")
        tag = f"centralita-lab-{self.name}"
        rules = [
            ["nat", "POSTROUTING", "-s", self.subnet, "!", "-d", self.subnet, "-j", "MASQUERADE"],
            ["filter", "FORWARD", "-i", self.bridge, "-j", "ACCEPT"],
            ["filter", "FORWARD", "-o", self.bridge, "-j", "ACCEPT"],
        ]
        for table, chain, *spec in rules:
            spec = [*spec, "-m", "comment", "--comment", tag]
            present = subprocess.run(["iptables", "-t", table, "-C", chain, *spec], capture_output=True, check=False)
            if present.returncode != 0:
                run(["iptables", "-t", table, "-I", chain, "1", *spec])
            if [table, chain, *spec] not in self.state.nat_rules:
                self.state.nat_rules.append([table, chain, *spec])
        self._save()

    def _next_octet(self, first: int) -> int:
        used = {m.octet for m in self.state.machines.values()}
        octet = first
        while octet in used:
            octet += 1
        return octet

    def _plug(self, machine: Machine) -> None:
        """Create the namespace and a veth pair into the bridge; address the inside as eth0."""
        if not netns_exists(machine.netns):
            run(["ip", "netns", "add", machine.netns])
        peer_tmp = f"{machine.veth}p"
        if not link_exists(machine.veth):
            run(["ip", "link", "add", machine.veth, "type", "veth", "peer", "name", peer_tmp])
            run(["ip", "link", "set", peer_tmp, "netns", machine.netns])
            run(["ip", "-n", machine.netns, "link", "set", peer_tmp, "name", "eth0"])
            run(["ip", "link", "set", machine.veth, "master", self.bridge])
            run(["ip", "link", "set", machine.veth, "up"])
        address = f"10.213.{self.index}.{machine.octet}/24"
        run(["ip", "-n", machine.netns, "addr", "replace", address, "dev", "eth0"])
        run(["ip", "-n", machine.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", machine.netns, "link", "set", "lo", "up"])
        run(["ip", "-n", machine.netns, "route", "replace", "default", "via", self.gateway])

    def add_peer(self, name: str) -> Machine:
        """A plain namespace host on the lab bridge (a SIP customer, carrier or caller)."""
        if name in self.state.machines:
            return self.state.machines[name]
        octet = self._next_octet(PEER_FIRST)
        machine = Machine(name, "peer", octet, f"cl{self.index}-{name}"[:30], f"cl{self.index}v{octet}")
        self.state.machines[name] = machine
        self._save()
        self._plug(machine)
        return machine

    def remove_peer(self, name: str) -> None:
        machine = self.state.machines.pop(name, None)
        if machine is not None:
            self._unplug(machine)
            self._save()

    def _boot_vm(self, name: str) -> None:
        rootfs = ensure_rootfs()
        octet = self._next_octet(VM_FIRST)
        root = cache_root() / "vms" / f"{self.name}-{name}"
        machine = Machine(name, "vm", octet, f"cl{self.index}-{name}"[:30], f"cl{self.index}v{octet}", root=str(root))
        self.state.machines[name] = machine
        self._save()
        self._plug(machine)
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", "--reflink=auto", str(rootfs), str(root)], timeout=600)
        self._personalise(machine, root)
        _share_debs(_deb_cache(), root / "var/cache/apt/archives")
        console = root.with_suffix(".console.log")
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        cmd = [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--boot",
            "--console=passive",
            f"--directory={root}",
            f"--machine={self.name}-{name}",
            f"--hostname={name}",
            f"--network-namespace-path=/run/netns/{machine.netns}",
            "--capability=CAP_NET_ADMIN",
        ]
        with console.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        machine.pid = proc.pid
        self._save()
        log.info("booting VM %s (%s), pid %d", name, self.address(name), proc.pid)

    def _personalise(self, machine: Machine, root: Path) -> None:
        key = ssh_key_path()
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "centralita-lab", "-f", str(key)])
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text(encoding="utf-8"), encoding="utf-8")
        (ssh_dir / "authorized_keys").chmod(0o600)
        run(["ssh-keygen", "-q", "-A", "-f", str(root)])
        hostkey = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text(encoding="utf-8").split()
        self._remember_host_key(self.address(machine.name), f"{hostkey[0]} {hostkey[1]}")
        (root / "etc/hostname").write_text(machine.name + "\n", encoding="utf-8")
        hosts = f"127.0.0.1 localhost\n{self.address(machine.name)} {machine.name}\n::1 localhost ip6-localhost\n"
        (root / "etc/hosts").write_text(hosts, encoding="utf-8")
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text(f"nameserver {host_nameserver()}\n", encoding="utf-8")

    @staticmethod
    def _remember_host_key(address: str, key: str) -> None:
        path = known_hosts_path()
        lines = (
            [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith(address + " ")]
            if path.exists()
            else []
        )
        lines.append(f"{address} {key}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def ssh_args(self, machine: str) -> list[str]:
        return [
            "ssh",
            "-i", str(ssh_key_path()),
            "-o", f"UserKnownHostsFile={known_hosts_path()}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5",
            f"root@{self.address(machine)}",
        ]  # fmt: skip

    def _wait_ssh(self, machine: Machine) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        address = self.address(machine.name)
        while time.monotonic() < deadline:
            if not _alive(machine.pid):
                raise LabError(f"VM {machine.name} exited during boot; see {Path(machine.root)}.console.log")
            with contextlib.suppress(OSError), socket.create_connection((address, 22), timeout=2):
                probe = subprocess.run(
                    [*self.ssh_args(machine.name), "systemctl is-system-running --wait >/dev/null; true"],
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                if probe.returncode == 0:
                    log.info("VM %s is up at %s", machine.name, address)
                    return
            time.sleep(1)
        raise LabError(f"VM {machine.name} did not answer SSH at {address} within {BOOT_TIMEOUT:.0f} s")

    # -- use -------------------------------------------------------------------

    def exec(self, machine: str, command: str, *, timeout: float = 120, check: bool = True) -> str:
        """Run a shell command in a VM over SSH (as Ansible would) and return stdout.

        Output that is not UTF-8 (a journal holds what SIP peers sent, byte for byte) is decoded
        with U+FFFD in place of the bytes it cannot read."""
        done = subprocess.run(
            [*self.ssh_args(machine), command],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise LabError(f"{machine}: {command!r} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def peer_cmd(self, peer: str, argv: list[str]) -> list[str]:
        """The argv that runs ``argv`` inside a peer host's network namespace."""
        return ["ip", "netns", "exec", self.state.machines[peer].netns, *argv]

    # -- tear down -------------------------------------------------------------

    def down(self) -> None:
        """Stop every VM, remove namespaces, links and NAT rules of this lab. Safe to repeat."""
        for machine in list(self.state.machines.values()):
            self._unplug(machine)
        for spec in self.state.nat_rules:
            table, chain, *rest = spec
            while (
                subprocess.run(
                    ["iptables", "-t", table, "-D", chain, *rest], capture_output=True, check=False
                ).returncode
                == 0
            ):
                pass
        self._sweep_tagged_rules()
        if link_exists(self.bridge):
            run(["ip", "link", "del", self.bridge], check=False)
        self.state = LabState(self.name, self.index)
        self.state_file.unlink(missing_ok=True)

    def _unplug(self, machine: Machine) -> None:
        if machine.kind == "vm" and machine.pid and _alive(machine.pid):
            _stop(machine.pid)
        if netns_exists(machine.netns):
            for pid in run(["ip", "netns", "pids", machine.netns], check=False).split():
                # Only what runs inside a namespace this lab made: its peers' tools.
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", machine.netns], check=False)
        if link_exists(machine.veth):
            run(["ip", "link", "del", machine.veth], check=False)
        if machine.kind == "vm" and machine.root:
            _share_debs(Path(machine.root) / "var/cache/apt/archives", _deb_cache())
            shutil.rmtree(machine.root, ignore_errors=True)
            Path(machine.root).with_suffix(".console.log").unlink(missing_ok=True)

    def _sweep_tagged_rules(self) -> None:
        tag = f"centralita-lab-{self.name}"
        for table in ("nat", "filter"):
            for line in run(["iptables", "-t", table, "-S"], check=False).splitlines():
                if f'"{tag}"' in line or f" {tag} " in line or line.endswith(f" {tag}"):
                    parts = line.replace('"', "").split()
                    if parts and parts[0] == "-A":
                        run(["iptables", "-t", table, "-D", *parts[1:]], check=False)


def _deb_cache() -> Path:
    return cache_root() / "cache" / "apt-archives"


def _share_debs(source: Path, target: Path) -> None:
    """Hard-link downloaded packages between the host's cache and a VM.

    Each VM keeps its own apt archive directory (and so its own apt lock);
    packages downloaded by one VM are handed to the next through the cache,
    so a rebuilt lab does not download them again.
    """
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for deb in source.glob("*.deb"):
        dest = target / deb.name
        if dest.exists():
            continue
        try:
            os.link(deb, dest)
        except OSError:
            shutil.copy2(deb, dest)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _stop(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM to systemd-nspawn shuts the VM down cleanly; SIGKILL if it hangs."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
