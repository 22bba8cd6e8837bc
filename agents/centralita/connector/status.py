"""``centralita status``: is this PBX ready to deliver CDRs? One line per check.

Checks what seed 003's status script checked (Asterisk running and its version,
AMI listening and accepting the login, cdr_manager loaded and not suspended, CDR
logging enabled) plus the CDR API and the spool's disk. A failure prints what to
do about it, and the exit code is non-zero.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from centralita.asterisk.ami import AmiConnection, AmiError
from centralita.connector.http import ApiClient, TransportError
from centralita.connector.settings import ConnectorSettings
from centralita.connector.spool import free_bytes

COMMAND_TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    warning: bool = False


CONTROL_SOCKET = Path("/var/run/asterisk/asterisk.ctl")


def control_socket_ready(path: Path = CONTROL_SOCKET) -> bool:
    """Whether this host's Asterisk has its console socket up.

    Not a process scan: on a host that also runs containers or lab VMs, their
    Asterisk processes show in /proc too, while only the local one owns this socket.
    """
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def parse_version(text: str) -> str | None:
    """``core show version`` -> "Asterisk 22.10.1" (None when the answer is something else)."""
    match = re.search(r"^(Asterisk \S+)", text.strip(), re.MULTILINE)
    return match.group(1) if match else None


def parse_cdr_status(text: str) -> tuple[bool | None, bool, bool]:
    """From ``cdr show status``: (logging enabled, cdr_manager registered, cdr_manager suspended)."""
    logging_match = re.search(r"^\s*Logging:\s*(\w+)", text, re.MULTILINE)
    enabled = None if logging_match is None else logging_match.group(1).lower() == "enabled"
    lines = [line for line in text.splitlines() if "cdr_manager" in line.lower() or line.strip() == "Manager"]
    registered = any("cdr_manager" in line.lower() or line.strip() == "Manager" for line in lines)
    suspended = any("suspended" in line.lower() for line in lines)
    return enabled, registered, suspended


async def _asterisk_rx(binary: str, command: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        binary, "-rx", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        return 124, f"'{binary} -rx {command}' did not answer within {COMMAND_TIMEOUT}s"
    return process.returncode or 0, output.decode("utf-8", "replace")


async def run_checks(settings: ConnectorSettings, control_socket: Path = CONTROL_SOCKET) -> list[Check]:
    checks: list[Check] = []
    binary = shutil.which(settings.asterisk_binary)
    if binary is None:
        checks.append(
            Check("Asterisk binary", False, settings.asterisk_binary, "install asterisk (apt-get install asterisk)")
        )
    else:
        checks.append(Check("Asterisk binary", True, binary))
    socket_ready = await asyncio.to_thread(control_socket_ready, control_socket)
    version: str | None = None
    if binary is not None and socket_ready:
        code, output = await _asterisk_rx(binary, "core show version")
        version = parse_version(output) if code == 0 else None
        running_detail = version or (output.strip().splitlines() or ["no answer"])[0][:200]
    else:
        running_detail = f"no control socket at {control_socket}"
    checks.append(
        Check(
            "Asterisk running",
            version is not None,
            running_detail,
            "systemctl start asterisk (journalctl -u asterisk says why it stopped); "
            "run this as root, the console socket is root's",
        )
    )
    if version is not None:
        assert binary is not None
        code, output = await _asterisk_rx(binary, "cdr show status")
        enabled, registered, suspended = parse_cdr_status(output)
        checks.append(
            Check(
                "CDR logging enabled",
                code == 0 and bool(enabled),
                "",
                "set enable=yes in [general] of cdr.conf, then: asterisk -rx 'module reload cdr'",
            )
        )
        checks.append(
            Check(
                "cdr_manager loaded",
                registered,
                "",
                "set enabled=yes in cdr_manager.conf, then: asterisk -rx 'module load cdr_manager.so'",
            )
        )
        checks.append(
            Check(
                "cdr_manager not suspended",
                registered and not suspended,
                "",
                "asterisk -rx 'module unload cdr_manager.so' && asterisk -rx 'module load cdr_manager.so'",
            )
        )
    checks += await _ami_checks(settings)
    checks.append(await _api_check(settings))
    checks.append(_disk_check(settings))
    backfill = settings.cdr_backfill_path
    checks.append(
        Check(
            "CDR back-fill CSV",
            not settings.cdr_backfill_enabled or backfill.exists(),
            str(backfill),
            "enable cdr_custom with the connector's mapping (cdr_custom.conf) so missed CDRs are recovered",
            warning=True,
        )
    )
    return checks


async def _ami_checks(settings: ConnectorSettings) -> list[Check]:
    where = f"{settings.ami_host}:{settings.ami_port}"
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(settings.ami_host, settings.ami_port), COMMAND_TIMEOUT
        )
        writer.close()
    except (OSError, TimeoutError) as exc:
        return [
            Check(
                "AMI listening",
                False,
                f"{where}: {exc or 'timed out'}",
                "set enabled=yes and port/bindaddr in [general] of manager.conf, then: asterisk -rx 'manager reload'",
            )
        ]
    checks = [Check("AMI listening", True, where)]
    try:
        connection = await AmiConnection.open(
            settings.ami_host,
            settings.ami_port,
            settings.ami_username,
            settings.ami_password,
            events=(),
            timeout=COMMAND_TIMEOUT,
        )
        try:
            rtt = await connection.ping(COMMAND_TIMEOUT)
        finally:
            await connection.close(logoff=True)
        checks.append(
            Check("AMI login", True, f"{settings.ami_username} (Ping {rtt * 1000:.0f} ms, AMI {connection.version})")
        )
    except AmiError as exc:
        checks.append(
            Check(
                "AMI login",
                False,
                str(exc),
                f"check [{settings.ami_username}] in manager.conf (secret, permit, read=cdr) "
                "against AMI_USERNAME/AMI_PASSWORD",
            )
        )
    return checks


async def _api_check(settings: ConnectorSettings) -> Check:
    if not settings.cdr_api_enabled:
        return Check("CDR API", True, "disabled (CDR_API_ENABLED=false)")
    client = ApiClient(settings.api_base_url, settings.api_key, timeout=COMMAND_TIMEOUT, workers=1)
    try:
        reply = await client.get("/health")
    except TransportError as exc:
        return Check(
            "CDR API reachable",
            False,
            f"{settings.api_base_url}: {exc}",
            "check the network/DNS/proxy to the API, REGION or CDR_API_BASE_URL",
        )
    finally:
        client.close()
    ok = reply.status < 500 and reply.status not in (401, 403)
    fix = "check API_KEY" if reply.status in (401, 403) else "the API is failing: retry later (CDRs wait in the spool)"
    return Check("CDR API reachable", ok, f"{settings.api_base_url} answered HTTP {reply.status}", fix)


def _disk_check(settings: ConnectorSettings) -> Check:
    directory = settings.cdr_spool_dir
    probe = directory if directory.exists() else directory.parent
    try:
        free = free_bytes(probe)
    except OSError as exc:
        return Check("Spool disk space", False, f"{directory}: {exc}", f"create {directory} for the connector's user")
    minimum = settings.cdr_spool_min_free_mb * 1024 * 1024
    return Check(
        "Spool disk space",
        free >= minimum,
        f"{free // (1024 * 1024)} MB free in {probe}",
        f"free space on {probe} (CDR_SPOOL_MIN_FREE_MB={settings.cdr_spool_min_free_mb})",
    )


def render(checks: list[Check], colour: bool | None = None) -> str:
    if colour is None:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    green, red, yellow, reset = ("\033[32m", "\033[31m", "\033[33m", "\033[0m") if colour else ("", "", "", "")
    lines = []
    for check in checks:
        if check.ok:
            mark = f"{green}✓{reset}"
        else:
            mark = f"{yellow}!{reset}" if check.warning else f"{red}✗{reset}"
        detail = f" ({check.detail})" if check.detail else ""
        lines.append(f"  {mark} {check.name}{detail}")
        if not check.ok and check.fix:
            lines.append(f"      → {check.fix}")
    return "\n".join(lines)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(not c.ok and not c.warning for c in checks) else 0
