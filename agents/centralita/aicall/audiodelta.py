"""Reply audio events of the Realtime protocol read without a JSON parse.

A reply reaches the agent as ``response.output_audio.delta`` messages, ten a second per
talking call: six short fields and a kilobyte of base64 audio, always laid out the same
way by the service (``{"type":...,"event_id":...,"response_id":...,"item_id":...,
"output_index":0,"content_index":0,"delta":"..."}``). Parsing each as JSON builds a
dictionary and a copy of the audio as text that is then scanned again to decode it.

:func:`read_audio_delta` reads exactly that layout and nothing else: the keys in that
order (``event_id`` may be missing), ``","``/``":"`` with at most one space after each,
ids of printable ASCII without quotes or backslashes (so no escapes), integers as JSON
writes them, and a ``delta`` that is valid base64 (its alphabet only) closing the text.
Such a text is valid JSON and a parser would read the same fields from it. Anything else
(another key order, other fields, escapes, other whitespace, truncated or malformed text,
every other event) returns None and the caller parses the message as JSON as before, so
an event is never read differently and a malformed one fails as it did.
"""

from __future__ import annotations

import binascii
import re
from typing import NamedTuple

_ID = rb'"([!#-\[\]-~]*)"'  # printable ASCII but '"' and '\': a JSON string without escapes
_INTEGER = rb"(0|[1-9][0-9]{0,8})"
_HEAD = re.compile(
    rb'\{"type": ?"response\.output_audio\.delta", ?'
    rb'(?:"event_id": ?"[!#-\[\]-~]*", ?)?'
    rb'"response_id": ?' + _ID + rb", ?"
    rb'"item_id": ?' + _ID + rb", ?"
    rb'"output_index": ?' + _INTEGER + rb", ?"
    rb'"content_index": ?' + _INTEGER + rb", ?"
    rb'"delta": ?"'
)
_TAIL = b'"}'


class AudioDelta(NamedTuple):
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    audio: bytes


def read_audio_delta(data: bytes) -> AudioDelta | None:
    """The fields of a ``response.output_audio.delta`` message, or None to parse it as JSON."""
    head = _HEAD.match(data)
    if head is None:
        return None
    start, end = head.end(), len(data) - len(_TAIL)
    # the delta's closing quote must be the first after its opening one, and close the text
    if not data.endswith(_TAIL) or data.find(b'"', start) != end:
        return None
    try:
        audio = binascii.a2b_base64(data[start:end], strict_mode=True)  # the alphabet only: nothing JSON refuses
    except binascii.Error:
        return None
    return AudioDelta(head[1].decode("ascii"), head[2].decode("ascii"), int(head[3]), int(head[4]), audio)
