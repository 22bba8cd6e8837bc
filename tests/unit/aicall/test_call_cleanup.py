"""A finished call leaves nothing for the garbage collector: its objects go when the last reference does."""

from __future__ import annotations

import asyncio
import gc
import weakref

from aicall_harness import RtpPeer, run
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import SessionConfig
from centralita.aicall.realtime import RealtimeSession
from centralita.aicall.record import CallRecord
from centralita.aicall.rtp import Pacer, RtpMedia
from centralita.aicall.session import CallPolicy, CallSession
from centralita.aicall.tools.base import ToolBox
from centralita.fakes.realtime import FakeRealtime, Script


class _Control:
    async def transfer(self, target: str) -> None:
        return None

    async def hangup(self) -> None:
        return None

    async def play_apology(self) -> None:
        return None


def test_a_finished_call_is_freed_without_a_garbage_collection() -> None:
    async def scenario() -> tuple[weakref.ref, weakref.ref, weakref.ref, str]:
        async with FakeRealtime(Script(greeting_ms=3000)) as fake:
            pacer = Pacer()
            media = RtpMedia("ulaw", pacer, name="cleanup")
            await media.start()
            peer = RtpPeer()
            media.set_remote(*await peer.start(media.local))
            model = RealtimeSession(url=fake.url, model="m", api_key="k", config=SessionConfig("x", "marin", "ulaw"))
            session = CallSession(
                record=CallRecord("cleanup", "3001234567", "3241000752"),
                media=media,
                model=model,
                tools=ToolBox([]),
                control=_Control(),
                policy=CallPolicy(),
                metrics=AicallMetrics(),
            )
            task = asyncio.get_running_loop().create_task(session.run())
            await asyncio.sleep(1.0)  # connected, the greeting playing, caller audio flowing
            assert peer.loud_ms() > 0
            session.caller_hung_up()
            record = await asyncio.wait_for(task, 10)
            await peer.close()
            await pacer.close()
            refs = weakref.ref(session), weakref.ref(media), weakref.ref(model)
            del session, media, model, task
            return (*refs, record.end_reason)

    gc.collect()
    gc.disable()  # only reference counting may free the call from here on
    try:
        session, media, model, reason = run(scenario())
        assert reason == "caller_hangup"
        assert session() is None and media() is None and model() is None, "the finished call is still referenced"
    finally:
        gc.enable()
