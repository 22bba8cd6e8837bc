"""The SBC tools against the real Kamailio and MariaDB of the lab VM: JSON-RPC,
``centralita kamailio sync|status`` and ``centralita rates import``."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from centralita.sbc.control import read_status, sync
from centralita.sbc.rpc import KamailioRpc, RpcError

RPC_PORT = 5071
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rpc_url(vm_port) -> str:
    return f"http://127.0.0.1:{vm_port(RPC_PORT)}/RPC"


@pytest.fixture
def db_env(lab, vm_port):
    """Env for the CLI: a throwaway MariaDB account with the panel's rights, reached through a tunnel."""
    user = f"t_{secrets.token_hex(4)}"
    password = secrets.token_hex(12)
    lab.db_query(
        f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}';"
        f" CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}';"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON centralita.* TO '{user}'@'localhost';"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON centralita.* TO '{user}'@'127.0.0.1'"
    )
    env = dict(
        os.environ, DB_HOST="127.0.0.1", DB_PORT=str(vm_port(3306)), DB_USER=user, DB_PASSWORD=password,
        DB_NAME="centralita", DB_READ_TIMEOUT="600",
    )  # fmt: skip
    try:
        yield env
    finally:
        lab.db_query(f"DROP USER IF EXISTS '{user}'@'localhost'; DROP USER IF EXISTS '{user}'@'127.0.0.1'")


def centralita(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "centralita.cli", *args], env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def test_rpc_client_reads_kamailio_and_reports_its_errors(rpc_url):
    async def scenario():
        rpc = KamailioRpc(rpc_url, timeout=5)
        assert isinstance(await rpc.call("core.uptime"), dict)
        with pytest.raises(RpcError) as caught:
            await rpc.call("no.such.method")
        assert caught.value.code is not None

    asyncio.run(scenario())


def test_sync_makes_a_new_carrier_routable_and_status_shows_it(sbc_world, rpc_url, db_env):
    car_ip = sbc_world.add_peer("carrier1")
    carrier = sbc_world.carrier(car_ip)

    done = asyncio.run(sync(KamailioRpc(rpc_url)))

    assert done == [
        "carriers (dispatcher)",
        "customer IPs and blacklist (permissions)",
        "customers and limits by source (cache)",
        "normalisation, dialing plans and carrier order by number (cache)",
        "caller numbers after the caller rules (cache)",
        "carrier credentials (cache)",
        "capped customers' minutes left as Kamailio counts them (cache)",
    ]
    status = asyncio.run(read_status(KamailioRpc(rpc_url), {}))
    assert any(row["carrier_id"] == carrier and car_ip in row["uri"] for row in status.carriers)

    env = dict(db_env, KAMAILIO_RPC_URL=rpc_url)
    synced = centralita(env, "kamailio", "sync")
    assert synced.returncode == 0, synced.stderr
    assert "reloaded carriers (dispatcher)" in synced.stdout
    shown = centralita(env, "kamailio", "status")
    assert shown.returncode == 0, shown.stderr
    assert f"carrier {carrier:>5}" in shown.stdout and "Dialogs:" in shown.stdout
    assert "channels 0/unlimited  cps max unlimited" in shown.stdout


def test_status_fails_clearly_when_kamailio_does_not_answer(db_env):
    env = dict(db_env, KAMAILIO_RPC_URL="http://127.0.0.1:1/RPC", KAMAILIO_RPC_TIMEOUT="2")
    shown = centralita(env, "kamailio", "status")
    assert shown.returncode == 1
    assert "cannot reach Kamailio" in shown.stderr


def test_rate_deck_of_300000_rows_imports_in_one_go(sbc_world, db_env, tmp_path):
    car_ip = sbc_world.add_peer("carrier1")
    carrier = sbc_world.carrier(car_ip, rates={})
    deck = tmp_path / "deck.csv"
    with deck.open("w") as out:
        out.write("prefix,rate,destination\n")
        for i in range(300_000):
            out.write(f"{57_000_000 + i},{(i % 500) / 10000:.4f},Test {i % 97}\n")

    started = time.monotonic()
    done = centralita(db_env, "rates", "import", "--carrier", str(carrier), "--billing", "1/1", str(deck))
    elapsed = time.monotonic() - started

    assert done.returncode == 0, done.stderr
    assert "imported 300000 rates" in done.stdout
    (row,) = sbc_world.q(
        "SELECT COUNT(*) AS n, SUM(billing_increment = 1) AS ones FROM carrier_rates WHERE carrier_id = %s", (carrier,)
    )
    assert (row["n"], row["ones"]) == ("300000", "300000")
    assert elapsed < 180, f"300,000 rows took {elapsed:.0f} s"

    again = centralita(db_env, "rates", "import", "--carrier", str(carrier), "--replace", str(deck))
    assert again.returncode == 0, again.stderr
    assert "300000 old rates removed" in again.stdout


def test_bad_rate_deck_writes_nothing(sbc_world, db_env, tmp_path):
    carrier = sbc_world.carrier(sbc_world.add_peer("carrier1"), rates={})
    deck = tmp_path / "bad.csv"
    deck.write_text("prefix,rate\n57,0.01\n58,lots\n")

    done = centralita(db_env, "rates", "import", "--carrier", str(carrier), str(deck))

    assert done.returncode == 1
    assert "line 3: rate 'lots' is not a number" in done.stderr
    assert sbc_world.q("SELECT COUNT(*) AS n FROM carrier_rates WHERE carrier_id = %s", (carrier,))[0]["n"] == "0"
