"""Every call's RTP on one UDP port: each call hears only its own Asterisk-side address."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from typing import Any

import pytest
from aicall_harness import RtpPeer, run
from centralita.aicall import g711
from centralita.aicall.agent import AicallAgent
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.rtp import DatagramBatch, FrameBatch, Pacer, RtpMedia, RtpPacket, RtpPort, source_key
from centralita.aicall.settings import AicallSettings
from centralita.asterisk.ari import AriError
from centralita.config import load_settings


def test_two_calls_on_one_port_each_hear_only_their_own_caller() -> None:
    async def scenario() -> tuple[list[int], list[int], int, list[int], tuple[Any, ...]]:
        pacer = Pacer()
        port = RtpPort()
        medias, peers, heard = [], [], []
        for index in range(2):
            media = RtpMedia("ulaw", pacer, port=port, name=f"call-{index}")
            received: list[bytes] = []
            media.on_audio(received.append)
            await media.start()
            peer = RtpPeer()
            media.set_remote(*await peer.start(media.local))  # as ARI's UNICASTRTP_LOCAL_ADDRESS/PORT
            medias.append(media)
            peers.append(peer)
            heard.append(received)
        peers[0].say(200)  # only the first caller speaks
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        loud = RtpPacket(0, 1, 0, 0x99, g711.tone(20, "ulaw", 220, 9000)).encode()
        for _ in range(5):
            stranger.sendto(loud, port.local)  # nobody claimed this address
        await asyncio.sleep(0.5)
        medias[0].play(g711.tone(200, "ulaw"), "item_1")  # a reply for the first call only
        await asyncio.sleep(0.4)
        locals_ = (medias[0].local, medias[1].local, port.local)
        for media in medias:
            await media.close()
        claims_left = port.calls
        unknown = port.unknown_packets
        port.close()
        await pacer.close()
        for peer in peers:
            await peer.close()
        stranger.close()
        loud_heard = [sum(1 for chunk in chunks if g711.rms(chunk, "ulaw") > 1000) for chunks in heard]
        loud_sent = [sum(1 for a in peer.arrivals if a.loud) for peer in peers]
        return loud_heard, loud_sent, unknown, [claims_left], locals_

    loud_heard, loud_sent, unknown, claims_left, (first, second, shared) = run(scenario())
    assert first == second == shared, "both calls use the one port"
    assert loud_heard == [10, 0], "the first caller's 200 ms reached only the first call"
    assert unknown == 5, "datagrams from an unclaimed address are counted and dropped"
    assert loud_sent == [10, 0], "each call's reply goes only to its own caller"
    assert claims_left == [0]


def test_a_call_moving_to_a_new_address_stops_hearing_the_old_one() -> None:
    async def scenario() -> tuple[int, int]:
        pacer = Pacer()
        port = RtpPort()
        media = RtpMedia("ulaw", pacer, port=port, name="call")
        received: list[bytes] = []
        media.on_audio(received.append)
        await media.start()
        old, new = RtpPeer(), RtpPeer()
        media.set_remote(*await old.start(media.local))
        media.set_remote(*await new.start(media.local))
        old.say(200)
        await asyncio.sleep(0.4)
        from_old = sum(1 for chunk in received if g711.rms(chunk, "ulaw") > 1000)
        await media.close()
        port.close()
        await pacer.close()
        await old.close()
        await new.close()
        return from_old, port.unknown_packets

    from_old, unknown = run(scenario())
    assert from_old == 0
    assert unknown > 0


def test_the_shared_port_takes_the_first_free_port_of_the_range() -> None:
    async def scenario() -> tuple[int, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            taken = probe.getsockname()[1] & ~1  # an even port, then hold it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            try:
                holder.bind(("127.0.0.1", taken))
            except OSError:
                pytest.skip("the probed port was taken meanwhile")
            port = RtpPort("127.0.0.1", (taken, taken + 2))
            port.open()
            local = port.local
            port.close()
        return taken, local[1]

    taken, bound = run(scenario())
    assert bound == taken + 2


def test_externalmedia_without_its_rtp_address_fails_the_call_setup_and_releases_the_media() -> None:
    class Ari:
        base = "http://127.0.0.1:1"

        async def external_media(self, *_args: Any, **_kwargs: Any) -> dict[str, Any]:
            return {"id": "1795.1-media", "channelvars": {}}

    async def scenario() -> tuple[str, int]:
        env = {"AICALL_ARI_USER": "ai", "AICALL_ARI_PASSWORD": "p", "OPENAI_API_KEY": "k", "DB_USER": "aicall"}
        agent = AicallAgent(load_settings(AicallSettings, environ=env), metrics=AicallMetrics(), store=None)
        agent.ari.close()
        agent.ari = Ari()  # type: ignore[assignment]
        with pytest.raises(AriError) as failure:
            await agent._open_media("1795.1")
        streams = agent.pacer.streams
        await agent.pacer.close()
        agent.rtp_port.close()
        return str(failure.value), streams

    message, streams = run(scenario())
    assert "UNICASTRTP_LOCAL" in message
    assert streams == 0


def test_a_receive_buffer_too_small_for_the_calls_is_reported_at_start(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[int, int]:
        roomy, crowded = RtpPort(max_calls=10), RtpPort(max_calls=1_000_000)
        roomy.open()
        crowded.open()
        held = roomy.held_ms, crowded.held_ms
        roomy.close()
        crowded.close()
        return held

    with caplog.at_level("WARNING", logger="centralita.aicall.rtp"):
        roomy_ms, crowded_ms = run(scenario())
    assert roomy_ms >= 200 > crowded_ms
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "net.core.rmem_max" in warnings[0] and "1000000 calls" in warnings[0]


def test_calls_sharing_a_pass_are_sent_in_one_batch_each_to_its_own_caller_in_order() -> None:
    async def scenario() -> tuple[list[bool], list[list[int]], list[int], list[int], int]:
        pacer = Pacer(phases=1)  # every call in the one pass: one sendmmsg for all of them
        port = RtpPort()
        medias, peers = [], []
        for index in range(5):
            media = RtpMedia("ulaw", pacer, port=port, name=f"call-{index}")
            await media.start()
            peer = RtpPeer()
            media.set_remote(*await peer.start(media.local))
            medias.append(media)
            peers.append(peer)
        medias[2].play(g711.tone(200, "ulaw"), "item_1")  # a reply for the third call only
        await asyncio.sleep(0.5)
        moved = RtpPeer()
        medias[4].set_remote(*await moved.start(medias[4].local))  # the batch is rebuilt for the new address
        before_move = len(peers[4].arrivals)
        await asyncio.sleep(0.3)
        batched = [isinstance(batch, FrameBatch) for batch in pacer._batches]
        for media in medias:
            await media.close()
        port.close()
        await pacer.close()
        for peer in [*peers, moved]:
            await peer.close()
        loud = [sum(1 for a in peer.arrivals if a.loud) for peer in peers]
        sequences = [[a.packet.sequence for a in peer.arrivals] for peer in peers[:4]]
        after_move = len(peers[4].arrivals) - before_move
        return batched, sequences, loud, [after_move], len(moved.arrivals)

    batched, sequences, loud, after_move, moved = run(scenario())
    assert batched == [True]
    assert loud == [0, 0, 10, 0, 0], "the reply reached only its own caller, whole"
    for stream in sequences:
        assert len(stream) >= 30
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(stream)), "no frame lost or repeated"
    assert after_move[0] <= 1, "nothing for the old address once the call moved"
    assert moved >= 10


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom"])
def test_a_burst_waiting_on_the_port_reaches_each_call_whole_and_in_order(batched: bool) -> None:
    """More datagrams than one recvmmsg reads, from three callers and a stranger, read in one wake-up."""

    async def scenario() -> tuple[list[list[bytes]], list[list[bytes]], int, tuple[str, int] | None]:
        pacer = Pacer()
        port = RtpPort()
        if not batched:
            port._batch = None  # the reader for a C library without recvmmsg
        callers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        medias, heard = [], []
        for index, caller in enumerate(callers):
            caller.bind(("127.0.0.1", 0))
            media = RtpMedia("ulaw", pacer, port=port, name=f"call-{index}")
            received: list[bytes] = []
            media.on_audio(received.append)
            await media.start()
            media.set_remote(*caller.getsockname())
            medias.append(media)
            heard.append(received)
        assert port.sock is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(port.sock.fileno())  # the test reads the port itself, once the burst waits
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent: list[list[bytes]] = [[], [], []]
        for sequence in range(60):  # 180 datagrams: three recvmmsg batches of 64
            for index, caller in enumerate(callers):
                payload = bytes([sequence, index]) * 80
                caller.sendto(RtpPacket(0, sequence, 160 * sequence, 7, payload).encode(), port.local)
                sent[index].append(payload)
            if sequence % 20 == 0:
                stranger.sendto(RtpPacket(0, sequence, 0, 9, bytes(160)).encode(), port.local)
        await asyncio.sleep(0.05)  # loopback delivers at once; a margin for a busy host
        port._readable()
        remote = medias[1].remote
        for media in medias:
            await media.close()
        unknown = port.unknown_packets
        port.close()
        await pacer.close()
        for sock in (*callers, stranger):
            sock.close()
        return heard, sent, unknown, remote

    heard, sent, unknown, remote = run(scenario())
    assert heard == sent, "each call got its own caller's payloads, byte for byte, in order"
    assert unknown == 3, "the stranger's datagrams are counted and dropped"
    assert remote is not None and remote[0] == "127.0.0.1"


def test_a_datagram_batch_names_each_sender_as_recvfrom_would() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for index, sender in enumerate(senders):
            sender.bind(("127.0.0.1", 0))
            sender.sendto(bytes([index]) * (10 + index), sock.getsockname())
        batch = DatagramBatch(count=4, size=64)
        time.sleep(0.05)  # loopback delivers at once; a margin for a busy host
        received = batch.receive(sock.fileno())
        assert received == 2
        assert [batch.source(index) for index in range(2)] == [s.getsockname() for s in senders]
        assert [batch.sources[2 * index] for index in range(2)] == [source_key(*s.getsockname()) for s in senders]
        assert [bytes(batch.view[index * 64 : index * 64 + batch.length(index)]) for index in range(2)] == [
            bytes([0]) * 10,
            bytes([1]) * 11,
        ]
        assert batch.receive(sock.fileno()) == -1, "nothing waits: the read does not block"
    finally:
        sock.close()
        for sender in senders:
            sender.close()
