"""Caller audio is read between model messages when the port has waited too long, not after the whole burst."""

from __future__ import annotations

import asyncio
import socket
import time

from aicall_harness import run
from centralita.aicall import urgent
from centralita.aicall.rtp import Pacer, RtpMedia, RtpPacket, RtpPort
from centralita.aicall.wsmodel import ModelConnection
from websockets.frames import Frame, Opcode


def test_the_port_is_read_between_model_messages_only_once_its_last_read_is_old() -> None:
    async def scenario() -> tuple[int, int, int, bool]:
        pacer = Pacer()
        port = RtpPort()
        media = RtpMedia("ulaw", pacer, port=port, name="call-0")
        heard: list[bytes] = []
        media.on_audio(heard.append)
        await media.start()
        caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        caller.bind(("127.0.0.1", 0))
        media.set_remote(*caller.getsockname())
        assert port.sock is not None and port.local is not None
        # the event loop is busy elsewhere: it never reads the port itself during this test
        asyncio.get_running_loop().remove_reader(port.sock.fileno())
        packet = RtpPacket(0, 1, 160, 7, bytes(160)).encode()
        for _ in range(3):
            caller.sendto(packet, port.local)
        await asyncio.sleep(0.02)  # loopback delivers at once; a margin for a busy host
        port._read_at = time.monotonic()  # just read: the check leaves the waiting frames alone
        urgent.run()
        fresh = len(heard)
        port._read_at = time.monotonic() - 2 * RtpPort.URGENT_AFTER_S  # read too long ago: read now
        urgent.run()
        late = len(heard)
        caller.sendto(packet, port.local)
        await asyncio.sleep(0.02)
        port._read_at = 0.0
        port.close()  # a closed port is no longer checked
        urgent.run()
        after_close = len(heard)
        await media.close()
        await pacer.close()
        caller.close()
        return fresh, late, after_close, port.read_if_late in urgent._checks

    fresh, late, after_close, still_registered = run(scenario())
    assert fresh == 0
    assert late == 3
    assert after_close == 3
    assert not still_registered


def test_a_model_connection_runs_the_urgent_reads_after_each_message_it_hands_over(monkeypatch) -> None:
    calls: list[str] = []
    connection = ModelConnection.__new__(ModelConnection)  # only the message path: no socket
    connection.response = object()
    connection._fragments = None
    connection._fragmented_text = False
    connection._on_message = lambda data: calls.append(data.decode())
    monkeypatch.setattr(urgent, "_checks", [lambda: calls.append("urgent")])

    for text in ('{"type":"a"}', '{"type":"b"}'):
        connection.process_event(Frame(Opcode.TEXT, text.encode()))

    assert calls == ['{"type":"a"}', "urgent", '{"type":"b"}', "urgent"]


def test_a_failing_check_is_logged_and_the_others_still_run(monkeypatch, caplog) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(urgent, "_checks", [broken, lambda: ran.append("second")])
    urgent.run()
    assert ran == ["second"]
    assert "urgent read failed" in caplog.text
