"""``python -m centralita.aicall [--env-file FILE]``: run the AI call agent."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from centralita.aicall import g711, rtp
from centralita.aicall.agent import AicallAgent
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.settings import AicallSettings
from centralita.aicall.store import CallStore
from centralita.config import ConfigError, describe, load_settings
from centralita.db import db_settings_of
from centralita.logs import setup_logging
from centralita.metrics import serve_metrics

log = logging.getLogger("centralita.aicall")


async def serve(settings: AicallSettings) -> None:
    g711.warm_up()
    # Everything loaded so far lives as long as the process: keep it out of the collector's
    # full passes, whose pause would otherwise stall every call's 20 ms clock at once.
    gc.freeze()
    # The RTP pacer's thread asks for the interpreter lock every 20 ms; a busy event loop hands
    # it over within this interval, which bounds how late a frame can leave.
    sys.setswitchinterval(rtp.SWITCH_INTERVAL_S)
    metrics = AicallMetrics()
    store = CallStore(db_settings_of(settings), settings.spool_dir, metrics)
    agent = AicallAgent(settings, metrics=metrics, store=store)
    server = None
    if settings.metrics_port:
        server = await serve_metrics(metrics.registry, settings.metrics_host, settings.metrics_port)
    loop = asyncio.get_running_loop()
    runner = loop.create_task(agent.run())

    def stop(sig: signal.Signals) -> None:
        # A second signal must not cut the shutdown itself short: the calls' ending and their
        # records are bounded in time already (agent.STOP_*).
        if runner.cancelling():
            log.info("%s: already stopping", sig.name)
            return
        log.info("%s: stopping; ending every call", sig.name)
        runner.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    try:
        await runner
    except asyncio.CancelledError:
        log.info("stopped: every call ended and its record saved or spooled")
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m centralita.aicall", description="Centralita AI call agent")
    parser.add_argument("--env-file", help="read settings from this env file (on top of the environment)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(AicallSettings, env_file=args.env_file)
        settings.load_instructions()
    except ConfigError as exc:
        print(f"centralita.aicall: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    log.info("starting with %s", describe(settings))
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
