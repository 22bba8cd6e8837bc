"""G.711 (µ-law and A-law) in pure Python.

``audioop`` left the standard library in Python 3.13 and the VMs run 3.14, so the
agent carries the two companding laws itself. The agent never transcodes the call's
audio (Asterisk and the model both speak G.711); these helpers serve the stand-in's
voice detection, the tone generator and the tests, where a few table lookups per
sample are cheap enough.
"""

from __future__ import annotations

import math
from array import array
from functools import cache

FRAME_MS = 20
SAMPLE_RATE = 8000
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160 one-byte samples per 20 ms

_BIAS = 0x84
_CLIP = 32635


def _ulaw_to_linear(byte: int) -> int:
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    sample = ((mantissa << 3) + _BIAS) << exponent
    sample -= _BIAS
    return -sample if sign else sample


def _linear_to_ulaw(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    if sample < 0:
        sample = -sample
    sample = min(sample, _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _alaw_to_linear(byte: int) -> int:
    byte ^= 0x55
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    if exponent == 0:
        sample = (mantissa << 4) + 8
    else:
        sample = ((mantissa << 4) + 0x108) << (exponent - 1)
    return sample if sign else -sample


def _linear_to_alaw(sample: int) -> int:
    sign = 0x80 if sample >= 0 else 0
    if sample < 0:
        sample = -sample - 1
    sample = min(sample, 32767)
    if sample < 256:
        exponent, mantissa = 0, sample >> 4
    else:
        exponent = sample.bit_length() - 8
        mantissa = (sample >> (exponent + 3)) & 0x0F
    return (sign | (exponent << 4) | mantissa) ^ 0x55


@cache
def _decode_table(law: str) -> tuple[int, ...]:
    convert = _ulaw_to_linear if law == "ulaw" else _alaw_to_linear
    return tuple(convert(b) for b in range(256))


@cache
def _encode_table(law: str) -> bytes:
    convert = _linear_to_ulaw if law == "ulaw" else _linear_to_alaw
    return bytes(convert(s - 32768) for s in range(65536))


def warm_up() -> None:
    """Build the lookup tables now rather than during the first call's audio."""
    for law in ("ulaw", "alaw"):
        _decode_table(law)
        _encode_table(law)


def check_law(law: str) -> str:
    if law not in ("ulaw", "alaw"):
        raise ValueError(f"unknown G.711 law {law!r}: expected ulaw or alaw")
    return law


def decode(data: bytes, law: str) -> array:
    """G.711 bytes to signed 16-bit samples."""
    table = _decode_table(check_law(law))
    return array("h", (table[b] for b in data))


def encode(samples: array | list[int], law: str) -> bytes:
    table = _encode_table(check_law(law))
    return bytes(table[max(-32768, min(32767, s)) + 32768] for s in samples)


def silence(law: str, frames: int = 1) -> bytes:
    """Digital silence: the code of linear 0 (0xFF in µ-law, 0xD5 in A-law)."""
    return bytes([0xFF if check_law(law) == "ulaw" else 0xD5]) * (FRAME_BYTES * frames)


def rms(data: bytes, law: str) -> float:
    """Root-mean-square level of G.711 audio, in linear 16-bit units."""
    if not data:
        return 0.0
    table = _decode_table(check_law(law))
    return math.sqrt(sum(table[b] * table[b] for b in data) / len(data))


@cache
def tone(ms: int, law: str, frequency: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine tone: stands in for speech wherever only its energy and length matter (cached: it is pure)."""
    count = SAMPLE_RATE * ms // 1000
    step = 2 * math.pi * frequency / SAMPLE_RATE
    return encode([int(amplitude * math.sin(step * n)) for n in range(count)], law)


def duration_ms(data: bytes | int) -> int:
    """Milliseconds of 8 kHz G.711 audio in ``data`` (or in that many bytes)."""
    size = data if isinstance(data, int) else len(data)
    return size * 1000 // SAMPLE_RATE
