"""``centralita status``: parsing real ``asterisk -rx`` answers, the checks and the exit code.

The Asterisk answers below were captured from the lab VM's Asterisk 22.10 (Debian sid):
as the asterisk role configures it, with cdr_manager suspended (``enabled = no`` in
cdr_manager.conf, then ``module reload cdr_manager.so``), and with ``enable = no`` in
cdr.conf (``module reload cdr``): Asterisk then lists no backends at all.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from centralita.connector.status import (
    Check,
    control_socket_ready,
    exit_code,
    parse_cdr_status,
    parse_version,
    render,
)
from centralita.fakes.ami_server import FakeAmiServer
from centralita.fakes.cdr_api import FakeCdrApi

CORE_SHOW_VERSION = (
    "Asterisk 22.10.1+dfsg+~cs6.17.60671434-1 built by nobody @ buildd.debian.org on a unknown running Linux on"
    " 2026-07-20 21:35:32 UTC\n"
)

# Exact answers, whitespace included (note the blank lines and the space after "(suspended)").
CDR_STATUS_OK = (
    "\n"
    "Call Detail Record (CDR) settings\n"
    "----------------------------------\n"
    "  Logging:                    Enabled\n"
    "  Mode:                       Simple\n"
    "  Log calls by default:       Yes\n"
    "  Log unanswered calls:       Yes\n"
    "  Log congestion:             Yes\n"
    "\n"
    "  Ignore bridging changes:    No\n"
    "\n"
    "  Ignore dial state changes:  No\n"
    "\n"
    "  Cancel disposition enabled: No\n"
    "\n"
    "* Registered Backends\n"
    "  -------------------\n"
    "    CDR File custom bac\n"
    "    Adaptive ODBC\n"
    "    cdr_manager\n"
    "\n"
)

CDR_STATUS_SUSPENDED = (
    "\n"
    "Call Detail Record (CDR) settings\n"
    "----------------------------------\n"
    "  Logging:                    Enabled\n"
    "  Mode:                       Simple\n"
    "  Log calls by default:       Yes\n"
    "  Log unanswered calls:       Yes\n"
    "  Log congestion:             Yes\n"
    "\n"
    "  Ignore bridging changes:    No\n"
    "\n"
    "  Ignore dial state changes:  No\n"
    "\n"
    "  Cancel disposition enabled: No\n"
    "\n"
    "* Registered Backends\n"
    "  -------------------\n"
    "    CDR File custom bac\n"
    "    Adaptive ODBC\n"
    "    cdr_manager (suspended) \n"
    "\n"
)

CDR_STATUS_DISABLED = (
    "\n"
    "Call Detail Record (CDR) settings\n"
    "----------------------------------\n"
    "  Logging:                    Disabled\n"
    "  Mode:                       Simple\n"
)


def test_version_line_of_core_show_version_is_recognised():
    assert parse_version(CORE_SHOW_VERSION) == "Asterisk 22.10.1+dfsg+~cs6.17.60671434-1"
    assert parse_version("Unable to connect to remote asterisk (does /var/run/asterisk/asterisk.ctl exist?)") is None


def test_cdr_status_of_a_healthy_pbx_shows_logging_and_an_active_cdr_manager():
    assert parse_cdr_status(CDR_STATUS_OK) == (True, True, False)


def test_suspended_cdr_manager_is_noticed():
    assert parse_cdr_status(CDR_STATUS_SUSPENDED) == (True, True, True)


def test_disabled_cdr_logging_without_cdr_manager_is_noticed():
    assert parse_cdr_status(CDR_STATUS_DISABLED) == (False, False, False)


def test_control_socket_must_be_a_socket_not_just_a_file(tmp_path):
    plain = tmp_path / "asterisk.ctl"
    plain.write_text("")
    assert not control_socket_ready(plain)
    assert not control_socket_ready(tmp_path / "missing.ctl")
    sock_path = tmp_path / "real.ctl"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(sock_path))
        assert control_socket_ready(sock_path)
    finally:
        server.close()


def test_exit_code_is_non_zero_only_for_a_failure_that_is_not_a_warning():
    fine = [Check("AMI login", True), Check("CDR back-fill CSV", False, warning=True, fix="enable cdr_custom")]
    broken = [*fine, Check("cdr_manager not suspended", False, fix="asterisk -rx 'module load cdr_manager.so'")]
    assert exit_code(fine) == 0
    assert exit_code(broken) == 1
    text = render(broken, colour=False)
    assert "  ✗ cdr_manager not suspended\n      → asterisk -rx 'module load cdr_manager.so'" in text
    assert "  ! CDR back-fill CSV" in text
    assert "\033[" in render(broken, colour=True)


def _env(tmp_path: Path, ami_port: int, api_url: str) -> Path:
    path = tmp_path / "connector.env"
    path.write_text(
        "\n".join(
            [
                "API_KEY=sk_test",
                "AMI_HOST=127.0.0.1",
                f"AMI_PORT={ami_port}",
                "AMI_USERNAME=connector",
                "AMI_PASSWORD=secret",
                f"CDR_API_BASE_URL={api_url}",
                f"CDR_SPOOL_DIR={tmp_path / 'spool'}",
                f"CDR_BACKFILL_PATH={tmp_path / 'cdr-custom' / 'Master.csv'}",
                f"ASTERISK_BINARY={tmp_path / 'no-asterisk-here'}",
                "CDR_SPOOL_MIN_FREE_MB=1",
            ]
        )
        + "\n"
    )
    return path


async def _status(env_file: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "centralita.cli", "status", "--env-file", str(env_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


def test_status_on_a_host_without_asterisk_exits_1_and_says_what_to_do(tmp_path):
    async def scenario():
        ami = FakeAmiServer()
        await ami.start()
        api = FakeCdrApi()
        api.start()
        try:
            services_up = await _status(_env(tmp_path, ami.port, api.base_url))
            await ami.stop()
            api.stop()
            services_down = await _status(_env(tmp_path, ami.port, api.base_url))
            return services_up, services_down
        finally:
            await ami.stop()
            api.stop()

    (code, text), (down_code, down_text) = asyncio.run(scenario())
    assert code == 1
    assert "✗ Asterisk binary" in text and "apt-get install asterisk" in text
    assert "✗ Asterisk running (no control socket at /var/run/asterisk/asterisk.ctl)" in text
    assert "✓ AMI listening" in text and "✓ AMI login" in text
    assert "✓ CDR API reachable" in text and "✓ Spool disk space" in text
    assert "! CDR back-fill CSV" in text
    assert down_code == 1
    assert "✗ AMI listening" in down_text and "asterisk -rx 'manager reload'" in down_text
    assert "✗ CDR API reachable" in down_text and "REGION or CDR_API_BASE_URL" in down_text
