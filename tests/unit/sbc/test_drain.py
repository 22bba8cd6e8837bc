"""The draining stop's steps (centralita.sbc.drain) against a scripted Kamailio and a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from centralita.sbc.drain import RpcError, drain


class Kamailio:
    """Answers the JSON-RPC methods the drain uses; ``timeline`` gives the dialogs from a moment on."""

    def __init__(self, timeline: list[tuple[float, list[dict[str, Any]]]], queue: list[int] | None = None) -> None:
        self.now = 1000.0
        self.timeline = timeline
        self.queue = list(queue or [0])
        self.calls: list[tuple[str, tuple[Any, ...], float]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def dialogs(self) -> list[dict[str, Any]]:
        current = [dialogs for at, dialogs in self.timeline if at <= self.now]
        return current[-1] if current else []

    def __call__(self, method: str, *params: Any) -> Any:
        self.calls.append((method, params, self.now))
        if method == "dlg.list":
            return self.dialogs()
        if method == "dlg.stats_active":
            states = [d["state"] for d in self.dialogs()]
            return {"starting": states.count(1), "connecting": states.count(2), "ongoing": states.count(4)}
        if method == "htable.get" and params == ("sys", "ans"):
            answers = [d["start_ts"] for d in self.dialogs() if d["state"] == 4]
            if not answers:
                raise RpcError("htable.get: Key name doesn't exist in htable.")
            return {"item": {"name": "ans", "value": max(answers), "flags": 0}}
        if method == "htable.get" and params == ("sys", "wrun"):
            return {"item": {"name": "wrun", "value": int(self.now * 10) % 1000000}}  # a run each 100 ms
        if method == "mqueue.get_size":
            return {"name": params[0], "size": self.queue.pop(0) if len(self.queue) > 1 else self.queue[0]}
        return "ok"

    def sets(self) -> list[tuple[Any, ...]]:
        return [(params, at) for method, params, at in self.calls if method == "htable.seti"]


def run(kamailio: Kamailio, seconds: float = 30, period: float = 1) -> list[str]:
    lines: list[str] = []
    drain(kamailio, seconds=seconds, period=period, clock=kamailio.clock, sleep=kamailio.sleep, log=lines.append)
    return lines


def ringing(call_id: str) -> dict[str, Any]:
    return {"call-id": call_id, "state": 2, "start_ts": 0, "caller": {"cseq": "1"}}


def answered(call_id: str, at: float) -> dict[str, Any]:
    return {"call-id": call_id, "state": 4, "start_ts": int(at), "caller": {"cseq": "1"}}


def test_nothing_up_stops_at_once_refusing_new_calls_first_and_answering_none_last():
    kamailio = Kamailio([(0, [])])
    run(kamailio)
    assert [params for params, _ in kamailio.sets()] == [("sys", "drain", 1), ("sys", "drain", 2)]
    assert kamailio.now - 1000 < 1


def test_a_call_answered_just_before_is_waited_for_until_the_dialog_timer_has_written_it():
    kamailio = Kamailio([(0, [answered("a", 999.6)])])
    run(kamailio, period=1)
    (_, last_set) = kamailio.sets()[-1]
    # answered in second 999, written by the timer within a period: not before 999 + 1 + 1
    assert last_set >= 1001


def test_ringing_calls_are_waited_for_and_then_their_answer_too():
    kamailio = Kamailio([(0, [ringing("r")]), (1004.0, [answered("r", 1004.0)])])
    lines = run(kamailio)
    (_, last_set) = kamailio.sets()[-1]
    assert last_set >= 1006
    assert not [c for c in kamailio.calls if c[0] == "tm.cancel"]
    assert "; 1 ringing" in lines[0]


def test_calls_still_ringing_at_the_deadline_are_cancelled():
    kamailio = Kamailio([(0, [ringing("r1"), ringing("r2"), answered("a", 990)])])
    lines = run(kamailio, seconds=3)
    cancels = [params for method, params, _ in kamailio.calls if method == "tm.cancel"]
    assert cancels == [("r1", "1"), ("r2", "1")]
    order = [params for method, params, _ in kamailio.calls if method in ("tm.cancel", "htable.seti")]
    assert order.index(("sys", "drain", 3)) < order.index(("r1", "1")), "the CDRs know the SBC cancelled"
    assert any("2 calls still ringing after 3 s" in line for line in lines)
    assert kamailio.sets()[-1][0] == ("sys", "drain", 2), "the stop goes on"


def test_the_writer_queue_is_emptied_and_two_more_writer_runs_done_before_the_stop():
    kamailio = Kamailio([(0, [])], queue=[40, 3, 0])
    run(kamailio)
    sizes = [at for method, _, at in kamailio.calls if method == "mqueue.get_size"]
    assert len(sizes) == 3 and sizes[0] >= kamailio.sets()[-1][1]
    assert kamailio.now - sizes[-1] >= 0.2, "two writer runs (100 ms each) after the queue was empty"


def test_a_kamailio_that_does_not_answer_is_reported_to_the_caller():
    def down(method: str, *params: Any) -> Any:
        raise RpcError(f"{method}: connection refused")

    with pytest.raises(RpcError):
        drain(down, seconds=1, period=1, sleep=lambda s: None, log=lambda line: None)
