"""The Debian sid root filesystem every lab VM boots from.

Built once with debootstrap and kept as a cache directory keyed by what went
into it; a missing or half-built cache is rebuilt from nothing, so a fresh
machine (CI) needs no prior state. VMs get a copy, never the cache itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from centralita.lab.host import LabError, debian_mirror, require_tools, run

log = logging.getLogger("centralita.lab")

SUITE = "sid"
# What Ansible needs to manage the VM like any real host: systemd as PID 1,
# sshd, python3 with apt bindings; nothing of the appliance itself.
INCLUDE = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-apt",
    "iproute2",
    "openssh-server",
    "ca-certificates",
)
FORMAT = "1"


def cache_root() -> Path:
    return Path(os.environ.get("CENTRALITA_LAB_HOME", "/var/lib/centralita-lab"))


def _key(mirror: str) -> str:
    text = "|".join([FORMAT, SUITE, "minbase", ",".join(INCLUDE), mirror])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_rootfs() -> Path:
    """Return the cached rootfs directory, building it with debootstrap if absent."""
    mirror = os.environ.get("CENTRALITA_LAB_MIRROR") or debian_mirror()
    target = cache_root() / "cache" / f"rootfs-{SUITE}-{_key(mirror)}"
    if (target / ".complete").exists():
        return target
    require_tools("debootstrap")
    building = target.with_name(target.name + ".building")
    if building.exists():
        shutil.rmtree(building)
    building.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the Debian %s rootfs (debootstrap, about a minute)", SUITE)
    started = time.monotonic()
    try:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(INCLUDE),
                SUITE,
                str(building),
                mirror,
            ],
            timeout=1200,
        )
    except LabError:
        shutil.rmtree(building, ignore_errors=True)
        raise
    _prepare(building)
    (building / ".complete").write_text(f"{mirror}\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    building.rename(target)
    log.info("rootfs ready in %.0f s: %s", time.monotonic() - started, target)
    return target


def _prepare(root: Path) -> None:
    """Make the tree boot as a lab VM: no shared host keys, apt usable on the snapshot mirror."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    apt_conf = root / "etc/apt/apt.conf.d/99centralita-lab"
    # The reachable mirror is a dated snapshot whose Release files are past Valid-Until.
    apt_conf.write_text('Acquire::Check-Valid-Until "false";\n', encoding="utf-8")
    (root / "etc/machine-id").write_text("", encoding="utf-8")
    # systemd-networkd and resolved are not installed; the lab sets the address from outside.
    securetty = root / "etc/securetty"
    if securetty.exists():
        securetty.unlink()
