"""Which CDRs are worth delivering (seed 003's minimal filtering).

With LinkedID and Sequence every leg of a call can be reassembled, so almost
everything is kept: by default only hangup-handler records (``dst = h``) are
dropped. A filtered CDR is still written to the spool, marked with the reason,
so nothing disappears without a trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from centralita.connector.cdr import CdrRecord

# Dispositions that mean something happened even with no duration.
MEANINGFUL_ZERO = frozenset({"BUSY", "FAILED", "CONGESTION"})


@dataclass(frozen=True)
class CdrFilter:
    enabled: bool = True
    queue_attempts: bool = False
    zero_duration: bool = False
    internal_only: bool = False
    min_duration: int = 0
    exclude_dst: frozenset[str] = field(default_factory=lambda: frozenset({"h"}))
    internal_pattern: str = r"^\d{2,6}$"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_internal", re.compile(self.internal_pattern))

    def reason(self, cdr: CdrRecord) -> str | None:
        """Why ``cdr`` is filtered out (a short metric label), or None to keep it."""
        if not self.enabled:
            return None
        disposition = cdr.disposition.strip().upper()
        unanswered_empty = disposition != "ANSWERED" and cdr.duration == 0
        if cdr.dst in self.exclude_dst:
            # 's' is where IVRs and queues start: only the empty, unanswered ones are noise.
            if cdr.dst != "s" or unanswered_empty:
                return "excluded_destination"
        if self.queue_attempts and cdr.dst == "s" and disposition == "NO ANSWER" and cdr.duration == 0:
            return "queue_attempt"
        if self.zero_duration and cdr.duration == 0 and disposition not in MEANINGFUL_ZERO:
            return "zero_duration"
        if self.min_duration > 0 and cdr.duration < self.min_duration:
            return "min_duration"
        if self.internal_only and not (self._is_internal(cdr.src) and self._is_internal(cdr.dst)):
            return "not_internal"
        return None

    def _is_internal(self, number: str) -> bool:
        return bool(self._internal.match(number))  # type: ignore[attr-defined]
