"""What ``centralita kamailio sync`` and a rate import ask Kamailio to do."""

from __future__ import annotations

import asyncio

import pytest
from centralita.sbc.control import flush_route_cache, sync
from centralita.sbc.rpc import RpcError


class FakeRpc:
    """Records calls; refuses the first ``busy`` calls of a method as Kamailio does during a reload."""

    def __init__(self, busy: dict[str, int] | None = None, broken: str | None = None) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.busy = dict(busy or {})
        self.broken = broken

    async def call(self, method: str, *params):
        self.calls.append((method, params))
        if method == self.broken:
            raise RpcError(f"{method}: 500 Internal error")
        if self.busy.get(method, 0) > 0:
            self.busy[method] -= 1
            raise RpcError(f"{method}: 500 Ongoing reload")
        return "ok"


def test_sync_reloads_the_lists_and_empties_every_cache():
    rpc = FakeRpc()
    done = asyncio.run(sync(rpc))
    assert rpc.calls == [
        ("dispatcher.reload", ()),
        ("permissions.addressReload", ()),
        ("htable.flush", ("src",)),
        ("htable.flush", ("route",)),
        ("htable.flush", ("cli",)),
        ("htable.flush", ("cauth",)),
        ("htable.flush", ("mleft",)),
    ]
    assert len(done) == 7


def test_a_reload_already_running_is_waited_for(monkeypatch):
    monkeypatch.setattr("centralita.sbc.control.RELOAD_RETRY_S", 0)
    rpc = FakeRpc(busy={"permissions.addressReload": 2})
    asyncio.run(sync(rpc))
    assert [m for m, _ in rpc.calls].count("permissions.addressReload") == 3


def test_other_errors_stop_the_sync():
    rpc = FakeRpc(broken="htable.flush")
    with pytest.raises(RpcError):
        asyncio.run(sync(rpc))
    assert rpc.calls[-1] == ("htable.flush", ("src",))


def test_a_rate_change_flushes_only_the_route_cache():
    rpc = FakeRpc()
    asyncio.run(flush_route_cache(rpc))
    assert rpc.calls == [("htable.flush", ("route",))]
