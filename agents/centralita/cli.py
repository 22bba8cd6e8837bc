"""The ``centralita`` command.

Each feature keeps its subcommands beside its code in a ``cli`` module with a
``register(subparsers)`` function; this file only lists those modules.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from centralita.config import ConfigError
from centralita.logs import setup_logging

COMMAND_MODULES = [
    "centralita.sbc.cli",
    "centralita.db.cli",
    "centralita.lab.cli",
    "centralita.aicall.cli",
    "centralita.connector.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="centralita", description="Centralita appliance tools")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"centralita: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("centralita").warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
