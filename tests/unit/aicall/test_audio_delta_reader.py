"""Reply audio read without a JSON parse: read as JSON would read it, or left to JSON."""

from __future__ import annotations

import base64
import json
import logging
import random

import pytest
from centralita.aicall.audiodelta import AudioDelta, read_audio_delta
from centralita.aicall.provider import AudioOut, SessionConfig
from centralita.aicall.realtime import RealtimeSession

AUDIO = bytes(range(256)) * 3 + b"\x7f\xff"  # 770 bytes: every value, padded base64
DELTA = base64.b64encode(AUDIO).decode()
# As the service writes it (and the stand-in): compact, "type" then "event_id" first.
SERVICE = (
    '{"type":"response.output_audio.delta","event_id":"event_CX1a","response_id":"resp_CX1b",'
    f'"item_id":"item_CX1c","output_index":0,"content_index":0,"delta":"{DELTA}"}}'
).encode()
EVENT = json.loads(SERVICE)
# The same with Python's default separators (a space after each).
SPACED = json.dumps(EVENT).encode()


def as_json_reads_it(data: bytes) -> AudioDelta:
    event = json.loads(data)
    return AudioDelta(
        event["response_id"],
        event["item_id"],
        event.get("output_index"),
        event.get("content_index"),
        base64.b64decode(event["delta"]),
    )


def read_the_same_as_json_or_not_at_all(data: bytes) -> AudioDelta | None:
    """The scanner's answer, checked: either None or exactly what a JSON parse gives."""
    read = read_audio_delta(data)
    if read is not None:
        assert read == as_json_reads_it(data)
    return read


@pytest.mark.parametrize("data", [SERVICE, SPACED], ids=["service", "spaced"])
def test_audio_deltas_as_the_service_writes_them_are_read_with_every_field(data: bytes) -> None:
    assert read_the_same_as_json_or_not_at_all(data) == AudioDelta("resp_CX1b", "item_CX1c", 0, 0, AUDIO)


def test_the_event_id_may_be_missing_and_the_indexes_any_integer() -> None:
    event = {key: value for key, value in EVENT.items() if key != "event_id"}
    data = json.dumps({**event, "output_index": 12, "content_index": 123456789}, separators=(",", ":")).encode()
    assert read_the_same_as_json_or_not_at_all(data) == AudioDelta("resp_CX1b", "item_CX1c", 12, 123456789, AUDIO)
    empty = json.dumps({**EVENT, "delta": ""}, separators=(",", ":")).encode()
    assert read_the_same_as_json_or_not_at_all(empty).audio == b""


def test_keys_in_another_order_are_left_to_json() -> None:
    keys = list(EVENT)
    shuffler = random.Random(5)
    for _ in range(50):
        shuffler.shuffle(keys)
        data = json.dumps({key: EVENT[key] for key in keys}, separators=(",", ":")).encode()
        if keys[:2] != ["type", "event_id"] or keys[2:] != list(EVENT)[2:]:
            assert read_the_same_as_json_or_not_at_all(data) is None


def _with(old: bytes, new: bytes, source: bytes = SERVICE) -> bytes:
    assert old in source
    return source.replace(old, new, 1)


@pytest.mark.parametrize(
    "data",
    [
        # escapes: JSON reads them, the scanner leaves them to it
        _with(b'"item_CX1c"', b'"item_\\u0043X1c"'),
        _with(b"/", b"\\/"),
        _with(b'"resp_CX1b"', b'"resp_\\u00e9"'),
        _with(b'"resp_CX1b"', '"resp_é"'.encode()),
        # other fields, other value types
        SERVICE[:-1] + b',"obfuscation":"abc"}',
        _with(b'"type":', b'"extra":{"type":"x"},"type":'),
        _with(b'"output_index":0', b'"output_index":0.0'),
        _with(b'"output_index":0', b'"output_index":null'),
        _with(b'"output_index":0', b'"output_index":"0"'),
        _with(b'"output_index":0', b'"output_index":-1'),
        _with(b'"output_index":0', b'"output_index":1e2'),
        _with(b'"event_id":"event_CX1a"', b'"event_id":7'),
        _with(b'"delta":"', b'"delta":"",  "x":"'),
        # layout other than the service's and the libraries'
        json.dumps(EVENT, indent=2).encode(),
        _with(b'"type":', b'"type" :'),
        _with(b'"type":', b'"type":  '),
        SERVICE + b"\n",
        b" " + SERVICE,
        # a key given twice: JSON keeps the last one
        SERVICE[:-1] + b',"item_id":"item_9"}',
        # valid JSON whose delta is not clean base64: decoded leniently, as before
        _with(DELTA.encode(), DELTA[:-2].encode()),
        _with(DELTA[:4].encode(), DELTA[:4].encode() + b"\x7f"),
    ],
)
def test_anything_the_scanner_does_not_know_exactly_is_left_to_json(data: bytes) -> None:
    json.loads(data)  # each of these is valid JSON
    assert read_audio_delta(data) is None


@pytest.mark.parametrize(
    "data",
    [
        json.dumps({"type": "response.output_audio_transcript.delta", "item_id": "i", "delta": "hola"}).encode(),
        json.dumps({"type": "response.output_audio.done", "response_id": "r", "item_id": "i"}).encode(),
        json.dumps(
            {"type": "x", "item_id": "response.output_audio.delta", "response_id": "r", "delta": "AAAA"}
        ).encode(),
        json.dumps({"type": "response.output_audio.delta", "item_id": "i", "response_id": "r"}).encode(),
        json.dumps({"type": "response.output_audio.delta", "item_id": "i", "delta": "AAAA"}).encode(),
    ],
)
def test_other_events_and_incomplete_deltas_are_not_read(data: bytes) -> None:
    assert read_audio_delta(data) is None


@pytest.mark.parametrize(
    "data",
    [
        _with(b'"output_index":0', b'"output_index":01'),
        _with(b",", b" "),
        _with(b'"item_id":', b'"item_id" '),
        _with(b'"item_CX1c"', b'"item\x01"'),
        _with(b'"item_CX1c"', b'"item\xff"'),
        _with(DELTA[:4].encode(), DELTA[:4].encode() + b"\x01"),
        _with(DELTA[:4].encode(), DELTA[:4].encode() + b'"'),
        SERVICE[:-1] + b"}}",
        SERVICE + b"{}",
        SERVICE[:-1] + b',"}',
        SERVICE[:-2] + b"}",
        SERVICE.replace(b"{", b"[", 1),
    ],
)
def test_malformed_text_is_not_read(data: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(data)
    assert read_audio_delta(data) is None


def test_a_message_cut_anywhere_is_not_read() -> None:
    for end in range(len(SERVICE)):
        assert read_audio_delta(SERVICE[:end]) is None, end


def test_a_changed_byte_anywhere_never_gives_a_reading_json_would_not() -> None:
    changer = random.Random(11)
    alphabet = b'{}[]":,\\ 0123456789abcdefAZ+/=\x00\xff-.'
    for source in (SERVICE, SPACED):
        for _ in range(3000):
            data = bytearray(source)
            for _ in range(changer.randint(1, 3)):
                data[changer.randrange(len(data))] = changer.choice(alphabet)
            data = bytes(data)
            try:
                read_the_same_as_json_or_not_at_all(data)
            except (ValueError, KeyError, TypeError):
                pytest.fail(f"read a message JSON refuses or reads otherwise: {data[:120]!r}")


def _session_reads(data: bytes) -> list[object]:
    session = RealtimeSession(url="ws://127.0.0.1:9", model="m", api_key="k", config=SessionConfig("x", "v", "ulaw"))

    class Inbox:
        idle = False

        def __init__(self) -> None:
            self.events: list[object] = []

        def put(self, item: object) -> None:
            self.events.append(item)

    inbox = Inbox()
    session._message(inbox, data)  # type: ignore[arg-type]
    return inbox.events


def test_the_session_gets_the_same_audio_event_either_way() -> None:
    escaped = _with(b'"item_CX1c"', b'"item_\\u0043X1c"')
    reordered = json.dumps({"delta": DELTA, **EVENT}).encode()
    assert read_audio_delta(escaped) is None and read_audio_delta(reordered) is None
    expected = [AudioOut("item_CX1c", "resp_CX1b", AUDIO)]
    assert _session_reads(SERVICE) == _session_reads(escaped) == _session_reads(reordered) == expected


def test_malformed_text_is_still_reported_as_not_json(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="centralita.aicall.realtime"):
        assert _session_reads(SERVICE[:-40]) == []
    assert "a frame that is not JSON" in caplog.text


def test_a_delta_without_its_fields_is_skipped_with_a_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="centralita.aicall.realtime"):
        events = _session_reads(json.dumps({"type": "response.output_audio.delta", "delta": "AAAA"}).encode())
    assert events == [], "one odd event does not end the call"
    assert "skipped a malformed response.output_audio.delta event (KeyError('item_id'))" in caplog.text
