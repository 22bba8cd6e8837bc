"""Send one INVITE made of the given bytes from this host's port 5070 and print the final answer.

Run inside a lab peer's network namespace (SIPp cannot put arbitrary bytes into a header):

    raw_invite.py SRC_IP SBC_IP:PORT NUMBER_HEX FROM_USER_HEX USER_AGENT_HEX CALL_ID_HEX

Prints the status code of the final answer (after ACKing it), or ``timeout``.
"""

from __future__ import annotations

import socket
import sys
import time


def main() -> None:
    src, target = sys.argv[1], sys.argv[2]
    host, port = target.rsplit(":", 1)
    number, from_user, user_agent, call_id = (bytes.fromhex(arg) for arg in sys.argv[3:7])
    branch = b"z9hG4bK-raw-%d" % time.time_ns()
    me = f"{src}:5070".encode()
    body = b"v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n" % (
        src.encode(),
        src.encode(),
    )
    via = b"Via: SIP/2.0/UDP " + me + b";branch=" + branch
    from_ = b"From: <sip:" + from_user + b"@" + src.encode() + b">;tag=raw1"
    to = b"To: <sip:" + number + b"@" + host.encode() + b">"
    invite = b"\r\n".join(
        [
            b"INVITE sip:" + number + b"@" + target.encode() + b" SIP/2.0",
            via,
            from_,
            to,
            b"Call-ID: " + call_id,
            b"CSeq: 1 INVITE",
            b"Contact: <sip:raw@" + me + b">",
            b"Max-Forwards: 70",
            b"User-Agent: " + user_agent,
            b"Content-Type: application/sdp",
            b"Content-Length: %d" % len(body),
            b"",
            body,
        ]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((src, 5070))
    sock.settimeout(5)
    sock.sendto(invite, (host, int(port)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            break
        status = data.split(b" ", 2)[1]
        if status.startswith(b"1"):
            continue
        reply_to = next(line for line in data.split(b"\r\n") if line.lower().startswith((b"to:", b"t:")))
        ack = b"\r\n".join(
            [
                b"ACK sip:" + number + b"@" + target.encode() + b" SIP/2.0",
                via,
                from_,
                b"To:" + reply_to.split(b":", 1)[1],
                b"Call-ID: " + call_id,
                b"CSeq: 1 ACK",
                b"Max-Forwards: 70",
                b"Content-Length: 0",
                b"",
                b"",
            ]
        )
        if not status.startswith(b"2"):  # a refusal is ACKed in its transaction (a 2xx would need a dialog)
            sock.sendto(ack, (host, int(port)))
        print(status.decode())
        return
    print("timeout")


if __name__ == "__main__":
    main()
