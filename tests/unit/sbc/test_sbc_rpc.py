"""The JSON-RPC client's HTTP handling, against a real HTTP server on loopback that
answers as Kamailio's jsonrpcs does (the client is checked against Kamailio itself
in tests/lab/test_sbc_control.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from centralita.sbc.rpc import KamailioRpc, RpcError, parse_http_response


def test_content_length_and_chunked_bodies_are_read():
    assert parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}") == (200, b"{}")
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n3\r\n":1\r\n1\r\n}\r\n0\r\n\r\n'
    assert parse_http_response(chunked) == (200, b'{"a":1}')


def test_truncated_response_is_an_error():
    with pytest.raises(RpcError, match="cut short"):
        parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}")
    with pytest.raises(RpcError, match="incomplete"):
        parse_http_response(b"HTTP/1.1 200 OK\r\n")


def test_url_must_be_http():
    with pytest.raises(ValueError, match="expected http"):
        KamailioRpc("https://127.0.0.1:5071/RPC")


async def _serve(answer_status: int, answer: dict | bytes, seen: list):
    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
        seen.append(json.loads(await reader.readexactly(length)))
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (answer_status, len(body)) + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_result_and_errors_come_back_from_a_jsonrpc_server():
    async def scenario():
        seen: list = []
        server = await _serve(200, {"jsonrpc": "2.0", "result": {"ongoing": 3}, "id": 1}, seen)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await KamailioRpc(f"http://127.0.0.1:{port}/RPC").call("dlg.stats_active")
        assert result == {"ongoing": 3}
        assert seen[0]["method"] == "dlg.stats_active" and seen[0]["jsonrpc"] == "2.0"

        server = await _serve(500, {"jsonrpc": "2.0", "error": {"code": 500, "message": "No Destination Sets"}}, [])
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(RpcError, match="No Destination Sets") as caught:
                await KamailioRpc(f"http://127.0.0.1:{port}/RPC").call("dispatcher.list")
        assert caught.value.code == 500

    asyncio.run(scenario())


def test_a_server_that_never_answers_times_out():
    async def scenario():
        async def hang(reader, writer):
            await asyncio.sleep(5)

        server = await asyncio.start_server(hang, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(RpcError, match=r"did not answer within 0\.3 s"):
                await KamailioRpc(f"http://127.0.0.1:{port}/RPC", timeout=0.3).call("core.uptime")

    asyncio.run(scenario())


def test_nothing_listening_is_a_clear_error():
    with pytest.raises(RpcError, match="cannot reach Kamailio"):
        asyncio.run(KamailioRpc("http://127.0.0.1:1/RPC", timeout=2).call("core.uptime"))
