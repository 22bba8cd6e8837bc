from __future__ import annotations

import random

from centralita.asterisk.ami import AmiParser, encode_action, parse_message
from centralita.fakes.ami_server import cdr_event_bytes, sample_cdr


def test_message_split_at_every_byte_is_decoded_whole_once():
    payload = cdr_event_bytes(sample_cdr(1)) + cdr_event_bytes(sample_cdr(2))
    parser = AmiParser()
    messages = []
    for byte in payload:
        messages += parser.feed(bytes([byte]))
    assert [m["UniqueID"] for m in messages] == ["1763800000.1", "1763800000.2"]
    assert parser.pending_bytes == 0


def test_non_ascii_caller_name_split_inside_a_utf8_character_survives():
    payload = cdr_event_bytes(sample_cdr(7, clid='"Señora Müller 日本" <100>'))
    cut = payload.index("日".encode()) + 1  # inside the 3-byte character
    parser = AmiParser()
    assert parser.feed(payload[:cut]) == []
    (message,) = parser.feed(payload[cut:])
    assert message["CallerID"] == '"Señora Müller 日本" <100>'


def test_latin1_caller_name_from_old_gateway_is_readable():
    raw = b'Event: Cdr\r\nCallerID: "Jos\xe9" <1>\r\nUniqueID: 1.1'
    assert parse_message(raw)["CallerID"] == '"José" <1>'


def test_random_fragmentation_keeps_every_message():
    rows = [sample_cdr(n) for n in range(300)]
    payload = b"".join(cdr_event_bytes(r) for r in rows)
    parser = AmiParser()
    out = []
    position = 0
    rng = random.Random(5)
    while position < len(payload):
        step = rng.randint(1, 300)
        out += parser.feed(payload[position : position + step])
        position += step
    assert [m["Sequence"] for m in out] == [str(n) for n in range(300)]


def test_repeated_headers_are_all_kept_and_lookup_ignores_case():
    message = parse_message(b"Response: Success\r\nActionID: a1\r\nOutput: one\r\nOutput: two")
    assert message.all("output") == ["one", "two"]
    assert message.action_id == "a1"
    assert message.get("actionid") == "a1"


def test_value_colons_and_empty_values_are_preserved():
    message = parse_message(b"Event: Cdr\r\nLastData: PJSIP/100,30,tT:x\r\nUserField:\r\nAnswerTime: ")
    assert message["LastData"] == "PJSIP/100,30,tT:x"
    assert message["UserField"] == ""
    assert message["AnswerTime"] == ""


def test_action_header_with_line_break_is_refused():
    try:
        encode_action("Login", {"Username": "x\r\nAction: Command"})
    except ValueError as exc:
        assert "line break" in str(exc)
    else:
        raise AssertionError("header injection was not refused")
