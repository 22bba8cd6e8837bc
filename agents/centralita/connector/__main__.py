"""``python -m centralita.connector [--env-file FILE]``: the CDR and recording connector service."""

from __future__ import annotations

import argparse
import asyncio
import sys

from centralita.config import ConfigError, load_settings
from centralita.connector.service import run_connector
from centralita.connector.settings import ConnectorSettings
from centralita.connector.spool import SpoolError
from centralita.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m centralita.connector", description=__doc__)
    parser.add_argument("--env-file", help="read settings from this file too (it wins over the environment)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(ConnectorSettings, env_file=args.env_file)
    except ConfigError as exc:
        print(f"centralita-connector: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        asyncio.run(run_connector(settings))
    except SpoolError as exc:
        print(f"centralita-connector: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
