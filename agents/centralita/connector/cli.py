"""Subcommands: ``centralita status`` and ``centralita connector bench|dead-letters|requeue``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from centralita.config import load_settings
from centralita.connector.settings import ConnectorSettings
from centralita.connector.spool import Spool

DEFAULT_ENV = "/etc/centralita/connector.env"


def register(subparsers: argparse._SubParsersAction) -> None:
    status = subparsers.add_parser("status", help="check Asterisk, AMI, cdr_manager, the CDR API and the spool")
    status.add_argument("--env-file", default=DEFAULT_ENV)
    status.set_defaults(func=_status)

    connector = subparsers.add_parser("connector", help="the CDR and recording connector")
    sub = connector.add_subparsers(dest="connector_command", required=True, metavar="ACTION")
    bench = sub.add_parser("bench", help="CDRs per second and end-to-end lag through the stand-ins")
    bench.add_argument("--count", type=int, nargs="+", default=[20000], help="CDRs per run; several: one run each")
    bench.add_argument("--batch-size", type=int, default=500)
    bench.add_argument(
        "--rate", type=float, default=0.0, help="emit at this many CDRs per second (default 0: each run is one burst)"
    )
    bench.set_defaults(func=_bench)
    letters = sub.add_parser("dead-letters", help="list CDRs the API refused")
    letters.add_argument("--env-file", default=DEFAULT_ENV)
    letters.add_argument("--sink", default="api", choices=("api", "mariadb"))
    letters.set_defaults(func=_dead_letters)
    requeue = sub.add_parser("requeue", help="send dead-lettered CDRs again (restart the connector after)")
    requeue.add_argument("--env-file", default=DEFAULT_ENV)
    requeue.add_argument("--sink", default="api", choices=("api", "mariadb"))
    requeue.set_defaults(func=_requeue)


def _settings(args: argparse.Namespace) -> ConnectorSettings:
    return load_settings(ConnectorSettings, env_file=args.env_file)


def _status(args: argparse.Namespace) -> int:
    from centralita.connector.status import exit_code, render, run_checks

    checks = asyncio.run(run_checks(_settings(args)))
    print(render(checks))
    return exit_code(checks)


def _bench(args: argparse.Namespace) -> int:
    from centralita.connector.bench import TABLE_HEADER, BenchError, run_bench, table_row

    print(TABLE_HEADER, flush=True)
    failed = False
    for count in args.count:
        try:
            result = run_bench(count, args.batch_size, args.rate)
        except BenchError as exc:
            print(f"centralita connector bench: {exc}", file=sys.stderr)
            return 1
        print(table_row(result, args.batch_size), flush=True)
        failed |= result.lost != 0 or result.duplicates != 0
    return 1 if failed else 0


def _dead_letters(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def listing() -> list:
        spool = Spool(settings.cdr_spool_dir)
        await spool.open()
        try:
            return await spool.dead_letters(args.sink, limit=1000)
        finally:
            await spool.close()

    for _id, record, error in asyncio.run(listing()):
        print(f"{record.key}\t{record.start}\t{record.src} -> {record.dst}\t{error}")
    return 0


def _requeue(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def requeue() -> int:
        spool = Spool(settings.cdr_spool_dir)
        await spool.open()
        try:
            return await spool.requeue_dead(args.sink)
        finally:
            await spool.close()

    print(f"{asyncio.run(requeue())} CDR(s) queued again for {args.sink}")
    return 0
