"""``python -m centralita.lab``: the lab commands alone, without the rest of the CLI."""

import argparse
import sys

from centralita.lab import cli
from centralita.lab.host import LabError
from centralita.logs import setup_logging


def main() -> int:
    parser = argparse.ArgumentParser(prog="centralita-lab")
    parser.add_argument("--log-level", default="INFO")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lab", *sys.argv[1:]])
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except LabError as exc:
        print(f"centralita lab: {exc}", file=sys.stderr)
        return 1


sys.exit(main())
