"""``python -m centralita.worker``: what systemd runs for the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from centralita.config import ConfigError, describe, load_settings
from centralita.logs import setup_logging
from centralita.worker.service import log, run
from centralita.worker.settings import WorkerSettings


async def _serve(settings: WorkerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run(settings, stop)


def main() -> int:
    """Exit 0 after a clean stop, 2 when the settings are wrong (systemd then shows the message)."""
    try:
        settings = load_settings(WorkerSettings, env_file=os.environ.get("CENTRALITA_ENV_FILE"))
    except ConfigError as exc:
        print(f"centralita-worker: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    log.info("starting with %s", describe(settings))
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
