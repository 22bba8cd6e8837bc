"""A carrier that answers one INVITE with the given code and Call-ID bytes, from this host's port 5060.

Run inside a lab peer's network namespace (SIPp cannot put arbitrary bytes into a header):

    raw_carrier.py LISTEN_IP CODE CALL_ID_HEX [SECONDS]

Prints ``ready`` once it listens, then waits up to SECONDS (default 30) for an INVITE, answers it
with CODE (a final answer that is not 2xx) carrying CALL_ID_HEX as its Call-ID, waits for the ACK
and prints ``acked`` (or ``no ack`` / ``no invite``). OPTIONS probes are answered with 200.
"""

from __future__ import annotations

import socket
import sys
import time

REASONS = {486: b"Busy Here", 404: b"Not Found", 603: b"Decline"}


def _headers(message: bytes, *names: bytes) -> list[bytes]:
    """The message's header lines whose name (full or compact form) is one of ``names``."""
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [line for line in head if line.split(b":", 1)[0].strip().lower() in names]


def _answer(request: bytes, code: int, call_id: bytes | None) -> bytes:
    vias = _headers(request, b"via", b"v")
    (from_,) = _headers(request, b"from", b"f")
    (to,) = _headers(request, b"to", b"t")
    (cseq,) = _headers(request, b"cseq")
    if call_id is None:
        (call_id_line,) = _headers(request, b"call-id", b"i")
    else:
        call_id_line = b"Call-ID: " + call_id
    if b";tag=" not in to:
        to += b";tag=rawcarrier"
    reason = REASONS.get(code, b"OK" if code == 200 else b"Refused")
    lines = [b"SIP/2.0 %d %s" % (code, reason), *vias, from_, to, call_id_line, cseq, b"Content-Length: 0", b"", b""]
    return b"\r\n".join(lines)


def main() -> None:
    listen, code, call_id = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, 5060))
    sock.settimeout(1)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    answered = None
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(65535)
        except TimeoutError:
            continue
        method = data.split(b" ", 1)[0]
        if method == b"OPTIONS":
            sock.sendto(_answer(data, 200, None), peer)
        elif method == b"INVITE":
            answered = _answer(data, code, call_id)
            sock.sendto(answered, peer)  # a retransmitted INVITE gets the same answer
        elif method == b"ACK" and answered is not None:
            print("acked", flush=True)
            return
    print("no ack" if answered is not None else "no invite", flush=True)


if __name__ == "__main__":
    main()
