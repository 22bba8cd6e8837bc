"""``python -m centralita.worker``: what systemd runs for the worker."""

from __future__ import annotations

import sys

from centralita.runner import run_agent
from centralita.worker.service import log, run
from centralita.worker.settings import WorkerSettings


def main() -> int:
    """Exit 0 after a clean stop, 2 when the settings are wrong (systemd then shows the message)."""
    return run_agent("worker", WorkerSettings, run, log)


if __name__ == "__main__":
    sys.exit(main())
