"""The stand-ins' control paths, which lab tests use to steer the services on the VM."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest
from centralita.aicall.tools.base import ToolError
from centralita.aicall.tools.mikrotik import HttpApiBackend
from centralita.fakes.live import FakeLive
from centralita.fakes.mikrotik import FakeMikrotik
from centralita.fakes.realtime import FakeRealtime, Script, running_in_thread
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

KEY = "sk-test-control"


def get(url: str, key: str | None = KEY) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def base(fake: FakeRealtime | FakeLive) -> str:
    return f"http://{fake.host}:{fake.port}/_stand-in"


def test_a_script_set_over_the_control_path_drives_the_next_sessions() -> None:
    with running_in_thread(FakeRealtime(api_key=KEY)) as fake:
        script = {"greeting": "Buenas.", "greeting_ms": 400, "turns": [{"transcript": "hola", "reply": "sí"}]}
        status, answer = get(f"{base(fake)}/script?set={quote(json.dumps(script))}")
        assert status == 200 and answer["script"]["greeting"] == "Buenas."
        assert fake.script.turns[0].reply == "sí"

        with connect(fake.url + "?model=m", additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            assert json.loads(ws.recv(5))["type"] == "session.created"
            ws.send(json.dumps({"type": "response.create"}))
            events = []
            while not events or events[-1]["type"] != "response.done":
                events.append(json.loads(ws.recv(5)))
        done = events[-1]["response"]
        assert done["output"][0]["content"][0]["transcript"] == "Buenas."

        status, state = get(f"{base(fake)}/state")
        (summary,) = state["connections"]
        assert summary["received"] == {"response.create": 1} and summary["errors"] == []
        assert summary["sent"]["response.done"] == 1


@pytest.mark.parametrize("stand_in", [FakeRealtime, FakeLive])
def test_a_bad_script_or_key_is_refused_with_the_reason(stand_in: type) -> None:
    with running_in_thread(stand_in(api_key=KEY, validate=False)) as fake:
        status, answer = get(f"{base(fake)}/script?set={quote(json.dumps({'greting': 'x'}))}")
        assert status == 400 and "greting" in answer["error"]["message"]
        status, answer = get(f"{base(fake)}/script?set={quote('[1, 2]')}")
        assert status == 400 and answer["error"]["code"] == "invalid_script"
        assert get(f"{base(fake)}/state", key="wrong")[0] == 401
        assert get(f"{base(fake)}/nothing")[0] == 404
        assert fake.script == Script()


def test_the_gpt_live_stand_in_takes_its_script_over_the_same_control_path() -> None:
    with running_in_thread(FakeLive(api_key=KEY, validate=False)) as fake:
        script = {"greeting": "Buenas.", "turns": [{"transcript": "hola", "tool": "end_call"}]}
        status, answer = get(f"{base(fake)}/script?set={quote(json.dumps(script))}")
        assert status == 200 and answer["script"]["turns"][0]["tool"] == "end_call"
        assert fake.script.greeting == "Buenas."
        status, state = get(f"{base(fake)}/state")
        assert status == 200 and state["connections"] == [] and state["script"]["greeting"] == "Buenas."
        assert get(f"{base(fake)}/reset")[1] == {"connections": 0}


def test_a_refusing_script_makes_new_sessions_fail_as_an_outage_does() -> None:
    with running_in_thread(FakeRealtime(api_key=KEY)) as fake:
        get(f"{base(fake)}/script?set={quote(json.dumps({'refuse': True}))}")
        with pytest.raises(InvalidStatus) as refused:
            connect(fake.url + "?model=m", additional_headers={"Authorization": f"Bearer {KEY}"})
        assert refused.value.response.status_code == 503
        get(f"{base(fake)}/script?set={quote(json.dumps({}))}")
        with connect(fake.url + "?model=m", additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            assert json.loads(ws.recv(5))["type"] == "session.created"


def test_router_delays_and_failures_set_over_the_control_path_reach_the_operator_api() -> None:
    with FakeMikrotik() as router:
        status, answer = post(
            f"{router.url}/_stand-in/behaviour",
            {"delays": {"api/customer_status": 0.3}, "failures": {"api/find_customer": 503}},
        )
        assert status == 200 and answer["failures"] == {"api/find_customer": 503}
        backend = HttpApiBackend(router.url)
        with pytest.raises(ToolError, match="503"):
            asyncio.run(backend.find_customer("3001234567", None, None))
        status = asyncio.run(backend.customer_status("ana.gomez"))
        assert status["online"] is True and status["session"]["address"] == "100.64.0.11"
        assert router.delays == {"api/customer_status": 0.3}

        _, state = get(f"{router.url}/_stand-in/state", key=None)
        assert ["POST", "/api/find_customer"] in state["requests"]
        assert post(f"{router.url}/_stand-in/behaviour", {"failures": {"api/ping": 200}})[0] == 400
        assert post(f"{router.url}/_stand-in/behaviour", {"delays": {"api/ping": "slow"}})[0] == 400
        assert post(f"{router.url}/_stand-in/behaviour", {})[1] == {"delays": {}, "failures": {}}
