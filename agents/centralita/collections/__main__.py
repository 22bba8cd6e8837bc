"""``python -m centralita.collections``: what systemd runs for the collections dialer."""

from __future__ import annotations

import asyncio
import sys

from centralita.collections.agent import CollectionsAgent, log
from centralita.collections.settings import CollectionsSettings
from centralita.runner import run_agent


async def _serve(settings: CollectionsSettings, stop: asyncio.Event) -> None:
    await CollectionsAgent(settings).run(stop)


def main() -> int:
    """Exit 0 after a clean stop, 2 when the settings are wrong (systemd then shows the message)."""
    return run_agent("collections", CollectionsSettings, _serve, log)


if __name__ == "__main__":
    sys.exit(main())
