"""What is kept of one AI call: the row set written to the database at hang-up."""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any

from centralita.aicall.tools.base import ToolOutcome


@dataclass
class TranscriptLine:
    role: str  # caller | assistant
    text: str
    at: float
    item_id: str = ""
    progress: bool = False  # an out-of-band "one moment" phrase


def heard_text(text: str, played_ms: int, audio_ms: int) -> str:
    """What the caller heard of a reply cut short: its words up to the share of its audio played.

    Speech and transcript are generated together, so the played share of the audio is the
    share of the text that was spoken; only words that end inside that share are kept.
    """
    if audio_ms <= 0 or played_ms >= audio_ms:
        return text
    cut = len(text) * max(0, played_ms) / audio_ms
    end = 0
    for word in re.finditer(r"\S+", text):
        if word.end() > cut:
            break
        end = word.end()
    return text[:end]


@dataclass
class TurnRecord:
    speech_stopped_at: float
    first_audio_at: float | None = None
    latency_ms: int | None = None
    interrupted: bool = False
    played_ms: int | None = None


@dataclass
class UsageRecord:
    response_id: str
    at: float
    usage: dict[str, Any]

    def tokens(self, key: str) -> int:
        return int(self.usage.get(key) or 0)

    def detail(self, side: str, key: str) -> int:
        return int((self.usage.get(f"{side}_token_details") or {}).get(key) or 0)


@dataclass
class CallRecord:
    call_id: str  # Asterisk's channel unique id of the caller
    caller: str
    did: str
    channel_name: str = ""
    media_kind: str = ""
    model: str = ""
    started_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    transferred_to: str | None = None
    recording_path: str | None = None
    reconnects: int = 0
    transcript: list[TranscriptLine] = field(default_factory=list)
    tools: list[ToolOutcome] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)

    def total(self, key: str) -> int:
        return sum(u.tokens(key) for u in self.usage)

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON copy for the on-disk spool used while the database is away."""
        data = dataclasses.asdict(self)
        data["tools"] = [dataclasses.asdict(t) for t in self.tools]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        data = dict(data)
        data["transcript"] = [TranscriptLine(**x) for x in data.get("transcript", [])]
        data["tools"] = [ToolOutcome(**x) for x in data.get("tools", [])]
        data["turns"] = [TurnRecord(**x) for x in data.get("turns", [])]
        data["usage"] = [UsageRecord(**x) for x in data.get("usage", [])]
        return cls(**data)
