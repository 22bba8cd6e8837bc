"""The MikroTik tools against the RouterOS REST stand-in, and the tool runner's error paths."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from aicall_harness import run
from centralita.aicall.tools.base import Tool, ToolBox, check_arguments, tool_executor
from centralita.aicall.tools.mikrotik import HttpApiBackend, Router, RouterOsBackend, mikrotik_tools
from centralita.fakes.mikrotik import FakeMikrotik


def _box(url: str, credential: str = FakeMikrotik.password, timeout: float = 5) -> ToolBox:
    backend = RouterOsBackend([Router("core", url, "api", credential)])
    return ToolBox(mikrotik_tools(backend, timeout, timeout))


def _call(box: ToolBox, tool: str, **args) -> tuple[str, dict]:
    outcome = run(box.run(tool, json.dumps(args)))
    return outcome.outcome, json.loads(outcome.output)


def test_find_customer_by_phone_ip_or_pppoe_user() -> None:
    with FakeMikrotik() as router:
        box = _box(router.url)
        assert _call(box, "find_customer", phone="+57 300 123 4567")[1]["customers"][0]["pppoe_user"] == "ana.gomez"
        assert _call(box, "find_customer", ip="100.64.0.12")[1]["customers"][0]["service_enabled"] is False
        assert _call(box, "find_customer", pppoe_user="carla.ruiz")[1]["customers"][0]["profile"] == "50M"
        assert _call(box, "find_customer", phone="3119999999")[1] == {"found": False}
        assert ("GET", "/rest/ppp/secret?name=carla.ruiz") in router.requests


def test_customer_status_reports_service_session_queue_and_link() -> None:
    with FakeMikrotik() as router:
        outcome, status = _call(_box(router.url), "customer_status", pppoe_user="ana.gomez")
    assert outcome == "ok"
    assert status["service_enabled"] and status["online"]
    assert status["session"] == {"address": "100.64.0.11", "uptime": "3d4h12m9s", "caller_id": "AA:BB:CC:00:00:11"}
    assert status["queue"]["max_limit"] == "20000000/20000000"
    assert status["link"]["running"] is True


def test_a_cut_customer_is_reported_offline_and_disabled() -> None:
    with FakeMikrotik() as router:
        _, status = _call(_box(router.url), "customer_status", pppoe_user="luis.perez")
    assert status["service_enabled"] is False and status["online"] is False and "queue" not in status


def test_ping_from_the_router_to_the_customer_equipment() -> None:
    with FakeMikrotik(echo_interval=0.01) as router:
        box = _box(router.url)
        _, online = _call(box, "ping_customer", pppoe_user="ana.gomez", count=3)
        _, offline = _call(box, "ping_customer", ip="100.64.0.99", count=2)
    assert online == {
        "address": "100.64.0.11",
        "router": "core",
        "sent": 3,
        "received": 3,
        "packet_loss_percent": 0,
        "avg_rtt": "4ms120us",
        "reachable": True,
    }
    assert offline["reachable"] is False and offline["packet_loss_percent"] == 100


def test_interface_status_names_the_link_state() -> None:
    with FakeMikrotik() as router:
        _, link = _call(_box(router.url), "interface_status", name="sfp-north")
    assert link["running"] is False and link["last_link_down"] == "2026-11-22 06:10:00"


def test_wrong_credentials_and_an_unreachable_router_become_explainable_errors() -> None:
    with FakeMikrotik() as router:
        assert _call(_box(router.url, credential="nope"), "find_customer", pppoe_user="x") == (
            "error",
            {"error": "router core refused the API credentials"},
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    outcome, result = _call(_box(closed), "customer_status", pppoe_user="ana.gomez")
    assert outcome == "error" and "not reachable" in result["error"]


def test_a_slow_router_times_out_and_the_model_is_told() -> None:
    with FakeMikrotik(delays={"ppp/secret": 2}) as router:
        outcome, result = _call(_box(router.url, timeout=0.3), "find_customer", pppoe_user="ana.gomez")
    assert outcome == "timeout" and "longer than 0.3 s" in result["error"]


def test_the_operator_http_api_mode_answers_the_same_questions() -> None:
    with FakeMikrotik() as router:
        box = ToolBox(mikrotik_tools(HttpApiBackend(router.url), 5, 5))
        _, status = _call(box, "customer_status", pppoe_user="ana.gomez")
        _, found = _call(box, "find_customer", phone="3209876543")
    assert status["online"] is True and found["customers"][0]["pppoe_user"] == "carla.ruiz"


def test_arguments_are_checked_against_the_tool_schema() -> None:
    schema = mikrotik_tools(HttpApiBackend("http://127.0.0.1:9"), 1, 1)[1].parameters
    assert check_arguments(schema, {}) == "missing required argument 'pppoe_user'"
    assert check_arguments(schema, {"pppoe_user": 5}) == "argument 'pppoe_user' must be a string"
    assert check_arguments(schema, {"pppoe_user": "a", "x": 1}) == "unknown argument 'x'"
    assert check_arguments(schema, {"pppoe_user": "a"}) is None


def test_bad_json_unknown_tools_and_crashing_handlers_never_raise() -> None:
    async def crash(args: dict) -> dict:
        raise KeyError("boom")

    async def slow(args: dict) -> dict:
        await asyncio.sleep(5)
        return {}

    box = ToolBox([Tool("crash", "", {"type": "object"}, crash), Tool("slow", "", {"type": "object"}, slow, 0.1)])
    assert run(box.run("crash", "{}")).result == {"error": "internal error: KeyError"}
    assert run(box.run("nope", "{}")).outcome == "error"
    assert run(box.run("crash", "{not json")).result == {"error": "arguments are not valid JSON"}
    assert run(box.run("slow", "{}")).outcome == "timeout"


def test_tool_requests_run_on_threads_of_their_own_not_on_those_ari_and_the_database_use() -> None:
    """asyncio's default pool (ARI requests, record writes) is full; a lookup still gets its answer."""
    with FakeMikrotik() as router:
        box = _box(router.url, timeout=2)

        async def scenario() -> str:
            loop = asyncio.get_running_loop()
            loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
            busy, release = threading.Event(), threading.Event()

            def held() -> None:
                busy.set()
                release.wait(10)

            holder = loop.create_task(asyncio.to_thread(held))
            while not busy.is_set():  # the default pool's only thread is taken
                await asyncio.sleep(0.01)
            try:
                return (await box.run("find_customer", json.dumps({"pppoe_user": "carla.ruiz"}))).outcome
            finally:
                release.set()
                await holder

        assert run(scenario()) == "ok"


def test_each_request_waits_at_most_what_its_own_tool_has_left() -> None:
    """The backend's cap is the longest tool's (ping, 20 s); a 2 s lookup's requests get 2 s at most."""
    reads: list[tuple[str, float]] = []

    def recording(session_request):
        def request(method, url, **options):
            reads.append((url.rsplit("/", 1)[-1].split("?")[0], options["timeout"][1]))
            return session_request(method, url, **options)

        return request

    with FakeMikrotik(echo_interval=0.01) as router:
        backend = RouterOsBackend([Router("core", router.url, "api", FakeMikrotik.password)], request_timeout=20)
        backend._session.request = recording(backend._session.request)
        box = ToolBox(mikrotik_tools(backend, 2, 20))
        assert _call(box, "find_customer", pppoe_user="ana.gomez")[0] == "ok"
        assert reads and all(0 < read <= 2 for _, read in reads)
        reads.clear()
        assert _call(box, "ping_customer", ip="100.64.0.11", count=1)[0] == "ok"
        [(path, read)] = reads
        assert path == "ping" and 2 < read <= 20

        api = HttpApiBackend(router.url, request_timeout=20)
        api._session.request = recording(api._session.request)
        assert _call(ToolBox(mikrotik_tools(api, 2, 20)), "customer_status", pppoe_user="ana.gomez")[0] == "ok"
        assert reads[-1][1] <= 2


_STOPPING_WITH_A_ROUTER_HUNG = """
import atexit, json, threading
from centralita.aicall.tools.base import tool_executor

def report():  # runs once the interpreter no longer waits for any thread
    hung = [t.name for t in threading.enumerate() if t.name.startswith("aicall-tool") and t.is_alive()]
    print(json.dumps(hung), flush=True)

atexit.register(report)
pool = tool_executor(2)
started = threading.Event()
pool.submit(lambda: (started.set(), threading.Event().wait()))  # a router that never answers
started.wait(10)
pool.shutdown(wait=False, cancel_futures=True)  # what the agent does at stop
"""


def test_a_tool_request_hung_on_a_router_does_not_keep_a_stopping_agent_alive() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _STOPPING_WITH_A_ROUTER_HUNG], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["aicall-tool_0"], "the process exited with the request hung"


def test_the_tool_pool_runs_at_most_its_threads_and_a_request_given_up_while_queued_never_runs() -> None:
    pool = tool_executor(2)
    release, ran = threading.Event(), []
    busy = [pool.submit(release.wait, 10) for _ in range(2)]
    queued = pool.submit(ran.append, "queued")
    try:
        assert queued.cancel(), "with both threads busy, the third request waits in the queue"
        last = pool.submit(ran.append, "last")
        release.set()
        last.result(10)
        assert all(future.result(10) for future in busy)
        assert ran == ["last"]
    finally:
        release.set()
        pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(ran.append, "late")
