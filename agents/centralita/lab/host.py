"""Small wrappers around the host commands the lab drives (ip, iptables, sysctl).

Every command that fails raises LabError with the command and its stderr, so a
broken lab says exactly what the host refused.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("centralita.lab")


class LabError(RuntimeError):
    """The lab could not be built, started or reached."""


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 120, quiet: bool = False) -> str:
    """Run a host command, return stdout; raise LabError naming it on failure."""
    log.debug("run: %s", " ".join(cmd))
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"{cmd[0]} is not installed on this host") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd)} did not finish within {timeout:.0f} s") from exc
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    if not check and done.returncode != 0 and not quiet:
        log.debug("ignored failure of %s: %s", " ".join(cmd), done.stderr.strip())
    return done.stdout


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise LabError("the lab needs these host commands: " + ", ".join(missing) + " (run ./run setup)")


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def debian_mirror() -> str:
    """The Debian archive this host's apt uses: never a hard-coded host name."""
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for block in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields = {}
            for line in block.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith("#"):
                    fields[key.strip().lower()] = value.strip()
            if "debian" in fields.get("signed-by", "") + fields.get("uris", ""):
                candidates.extend(fields.get("uris", "").split())
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                url = next((p for p in parts[1:] if "://" in p), "")
                if url:
                    candidates.append(url)
    for url in candidates:
        if url.rstrip("/").endswith("/debian"):
            return url.rstrip("/")
    raise LabError(
        "cannot find the Debian archive in this host's apt sources; set CENTRALITA_LAB_MIRROR to the mirror URL"
    )


def host_nameserver() -> str:
    for line in Path("/etc/resolv.conf").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            return parts[1]
    raise LabError("the host's /etc/resolv.conf names no nameserver")
