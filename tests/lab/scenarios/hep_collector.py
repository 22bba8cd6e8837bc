"""A Homer collector's receiving end for the lab: HEPv3 over UDP, decoded, one JSON line per packet.

Run inside a lab peer's network namespace:

    hep_collector.py BIND_IP PORT SECONDS

Listens for SECONDS, then prints every packet it got as a JSON object: the chunks HEPv3 defines
(address family, IP protocol, source and destination address and port, time, protocol type,
capture agent id, payload) by name, and ``error`` for a datagram that is not HEPv3 or whose chunks
do not add up. Packets are printed as they arrive too (``flush``), so a caller can read them early.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
import time

# chunk type ids of the generic vendor (0), as HEPv3 numbers them
U8 = {0x0001: "ip_family", 0x0002: "ip_protocol", 0x000B: "protocol_type"}
U16 = {0x0007: "src_port", 0x0008: "dst_port"}
U32 = {0x0009: "time_sec", 0x000A: "time_usec", 0x000C: "capture_id"}
ADDRESSES = {0x0003: "src_ip", 0x0004: "dst_ip", 0x0005: "src_ip", 0x0006: "dst_ip"}
PAYLOAD = 0x000F


def decode(data: bytes) -> dict[str, object]:
    if len(data) < 6 or data[:4] != b"HEP3":
        return {"error": "not HEPv3"}
    (total,) = struct.unpack_from("!H", data, 4)
    if total != len(data):
        return {"error": f"length {total} in the header, {len(data)} received"}
    packet: dict[str, object] = {}
    at = 6
    while at < total:
        if at + 6 > total:
            return {"error": f"chunk header cut at byte {at}"}
        vendor, kind, length = struct.unpack_from("!HHH", data, at)
        if length < 6 or at + length > total:
            return {"error": f"chunk {kind:#06x} of length {length} at byte {at}"}
        value = data[at + 6 : at + length]
        at += length
        if vendor != 0:
            continue
        if kind in U8:
            packet[U8[kind]] = value[0]
        elif kind in U16:
            (packet[U16[kind]],) = struct.unpack("!H", value)
        elif kind in U32:
            (packet[U32[kind]],) = struct.unpack("!I", value)
        elif kind in ADDRESSES:
            packet[ADDRESSES[kind]] = str(ipaddress.ip_address(value))
        elif kind == PAYLOAD:
            packet["payload"] = value.decode("utf-8", "replace")
    return packet


def main() -> None:
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print(json.dumps({"listening": f"{host}:{port}"}), flush=True)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65535)
        except TimeoutError:
            break
        print(json.dumps(decode(data)), flush=True)


if __name__ == "__main__":
    main()
