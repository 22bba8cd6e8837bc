"""Stopping tasks with a bound, so a shutdown always finishes.

``task.cancel()`` followed by ``await task`` under ``suppress(CancelledError)``
has two faults: a task that swallowed its cancellation (Python 3.11's
``asyncio.wait_for`` does so when the cancel lands as the awaited thing
completes) is waited on for ever, and the suppress also eats a cancellation
aimed at the caller. ``asyncio.wait`` with a timeout has neither.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Cancel ``tasks`` and wait at most ``timeout`` seconds for them to finish.

    A task still running after that is cancelled once more (it may have swallowed
    the first cancel) and then left behind with an error naming it.
    """
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    if pending:
        _done, pending = await asyncio.wait(pending, timeout=timeout)
    if pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            log.error("task %s did not stop within %.0fs of being cancelled", task.get_name(), timeout + 1)
