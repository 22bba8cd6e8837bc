"""Reads that must not wait behind a burst of other callbacks: the callers' audio.

asyncio runs every callback that is ready before it polls its sockets again. A burst of
model messages (many calls' reply audio at once, or one socket's backlog after a network
stall) therefore keeps every caller's frames in the RTP port's queue until the last
message is handled, and they reach the model that much later. The RTP port registers a
check here, and the model connections run :func:`run` after each message they hand over:
the port is read again at once when its last read is older than its own limit. With
nothing registered, :func:`run` costs a loop over an empty list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("centralita.aicall.urgent")

_checks: list[Callable[[], None]] = []


def register(check: Callable[[], None]) -> None:
    """Run ``check`` between the messages of every model connection of this process."""
    if check not in _checks:
        _checks.append(check)


def unregister(check: Callable[[], None]) -> None:
    if check in _checks:
        _checks.remove(check)


def run() -> None:
    """Called between two pieces of other work on the event loop (never from another thread)."""
    for check in _checks:
        try:
            check()
        except Exception:  # a failing check must not break the model connection that called it
            log.exception("urgent read failed")
