"""The panel as systemd runs it: gunicorn with ``centralita.panel.wsgi:app`` and an env file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from centralita.db import DbSettings
from centralita.db.migrate import discover

GUNICORN = Path(sys.executable).with_name("gunicorn")
TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(env_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PANEL_", "CENTRALITA_"))}
    env["CENTRALITA_ENV_FILE"] = str(env_file)
    return env


def _start(env_file: Path, port: int | Path, workers: int = 2) -> subprocess.Popen:
    bind = f"unix:{port}" if isinstance(port, Path) else f"127.0.0.1:{port}"
    return subprocess.Popen(
        [str(GUNICORN), "--bind", bind, "--workers", str(workers), "centralita.panel.wsgi:app"],
        env=_env(env_file),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    return stderr


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_gunicorn_serves_health_and_login_and_seeds_the_admin_from_the_env_file(
    migrated_db: DbSettings, tmp_path: Path, db_conn
) -> None:
    env_file = tmp_path / "panel.env"
    env_file.write_text(
        f"DB_SOCKET={migrated_db.db_socket}\nDB_USER={migrated_db.db_user}\nDB_PASSWORD=\n"
        f"DB_NAME={migrated_db.db_name}\nPANEL_SECRET_KEY={'x' * 40}\n"
        "PANEL_ADMIN_USER=wsgi-admin\nPANEL_ADMIN_PASSWORD=wsgi admin password\nPANEL_TIMEZONE=America/Bogota\n"
    )
    port = _free_port()
    process = _start(env_file, port)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        status, body = 0, b""
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/api/v1/health")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200, (status, body, process.poll())
        health = json.loads(body)
        assert health["database"] == {"reachable": True, "schema_version": discover()[-1].version}
        status, body = _get(f"http://127.0.0.1:{port}/login")
        assert status == 200 and b'name="csrf_token"' in body
        with db_conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) AS n FROM users WHERE username = 'wsgi-admin' AND role = 'admin'")
            assert cur.fetchone()["n"] == 1
    finally:
        stderr = _stop(process)
        with db_conn.cursor() as cur:
            cur.execute("DELETE FROM users WHERE username = 'wsgi-admin'")
    assert "Traceback" not in stderr, stderr


def test_gunicorn_with_a_bad_setting_stops_with_the_variable_named(tmp_path: Path) -> None:
    env_file = tmp_path / "panel.env"
    env_file.write_text("DB_USER=panel\nPANEL_SECRET_KEY=short\n")
    # One worker: when two fail to load at once, gunicorn 23's arbiter may raise its "App failed to
    # load" from the signal handler while already stopping and exit 1 instead of 4 (both stop it).
    process = _start(env_file, tmp_path / "panel.sock", workers=1)
    try:
        process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop(process)
        pytest.fail("gunicorn kept running with an invalid PANEL_SECRET_KEY")
    stderr = _stop(process)
    assert process.returncode == 4, stderr  # gunicorn: the application failed to load
    assert "centralita-panel: invalid settings:" in stderr
    assert "PANEL_SECRET_KEY: expected a random string of at least 32 characters, got (hidden)" in stderr
    assert "'short'" not in stderr
