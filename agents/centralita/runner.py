"""How an agent process starts and stops: the same for every ``python -m centralita.<agent>``.

Settings are loaded once (env from systemd's EnvironmentFile=, or the file named by
CENTRALITA_ENV_FILE); a bad value exits 2 with the variable's name on stderr, which
the units treat as "do not restart" (RestartPreventExitStatus=2). SIGTERM and SIGINT
set the stop event the agent's coroutine watches, so it ends its work cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from centralita.config import ConfigError, describe, load_settings
from centralita.logs import setup_logging

S = TypeVar("S")


def run_agent(
    name: str,
    settings_cls: type[S],
    serve: Callable[[S, asyncio.Event], Awaitable[Any]],
    log: logging.Logger,
) -> int:
    """Load ``settings_cls``, then run ``serve(settings, stop)`` until a stop signal; the exit code."""
    try:
        settings = load_settings(settings_cls, env_file=os.environ.get("CENTRALITA_ENV_FILE"))
    except ConfigError as exc:
        print(f"centralita-{name}: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)  # type: ignore[attr-defined]
    log.info("starting with %s", describe(settings))

    async def until_signal() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    asyncio.run(until_signal())
    return 0
