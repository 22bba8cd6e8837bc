"""``centralita kamailio sync|status``, ``centralita rates import`` and ``centralita bench sbc``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys

import pymysql

from centralita.config import ConfigError, load_settings
from centralita.db import connection, describe_target
from centralita.sbc.control import flush_route_cache, read_status, render_status, sync
from centralita.sbc.rates import RateDeckError, import_rates, read_deck, resolve_owner
from centralita.sbc.rpc import KamailioRpc, RpcError
from centralita.sbc.settings import DEFAULT_ENV_FILE, SbcSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    def env_file(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--env-file",
            default=DEFAULT_ENV_FILE if os.path.exists(DEFAULT_ENV_FILE) else None,
            help=f"env file with DB_* and KAMAILIO_RPC_URL (default {DEFAULT_ENV_FILE} when present)",
        )

    kam = subparsers.add_parser("kamailio", help="the SBC: apply database changes, show live state")
    kam_sub = kam.add_subparsers(dest="kamailio_command", required=True, metavar="ACTION")
    p = kam_sub.add_parser("sync", help="reload what Kamailio caches (carriers, customer IPs, blacklist)")
    env_file(p)
    p.set_defaults(func=cmd_sync)
    p = kam_sub.add_parser("status", help="dispatcher, dialog and limit state")
    env_file(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    rates = subparsers.add_parser("rates", help="rate decks")
    rates_sub = rates.add_subparsers(dest="rates_command", required=True, metavar="ACTION")
    p = rates_sub.add_parser("import", help="import a CSV rate deck (prefix,rate[,destination,...])")
    env_file(p)
    owner = p.add_mutually_exclusive_group(required=True)
    owner.add_argument("--carrier", help="carrier name or id (buy rates)")
    owner.add_argument("--customer", help="customer name or id (sell rates)")
    p.add_argument("--replace", action="store_true", help="remove the owner's existing rates first")
    p.add_argument("--effective-from", help="UTC start of the deck's rows that name none (default: now)")
    p.add_argument("--billing", default="60/60", help="default billing initial/increment seconds (e.g. 1/1, 30/6)")
    p.add_argument("csv", help="the CSV file")
    p.set_defaults(func=cmd_rates_import)

    bench = subparsers.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    p = bench_sub.add_parser("sbc", help="SIPp through the full SBC logic in a lab VM vs a minimal stateless proxy")
    p.add_argument("--lab-name", default="bench", help="lab name (default bench)")
    p.add_argument("--lab-index", type=int, default=7, help="lab index (default 7 -> 10.213.7.0/24)")
    p.add_argument("--rates", default="100,200,400,600,800,1000,1200,1500", help="call rates (cps) to try")
    p.add_argument("--hold-s", type=int, default=60, help="seconds each rate must be sustained (default 60)")
    p.add_argument("--uacs", type=int, default=2, help="SIPp UAC processes sharing the load")
    p.add_argument("--pdd-calls", type=int, default=2000, help="calls measured for the added PDD")
    p.add_argument("--full-rates", help="rates for the full SBC only (default --rates; '' skips it)")
    p.add_argument("--minimal-rates", help="rates for the minimal configuration only (default --rates; '' skips it)")
    p.add_argument(
        "--direct-rates",
        default="",
        help="rates for SIPp customers calling the SIPp carrier straight, no Kamailio (the host's ceiling;"
        " default: not run)",
    )
    p.set_defaults(func=cmd_bench)


def _settings(args: argparse.Namespace) -> SbcSettings:
    return load_settings(SbcSettings, env_file=args.env_file)


def _rpc(settings: SbcSettings) -> KamailioRpc:
    return KamailioRpc(settings.kamailio_rpc_url, timeout=settings.kamailio_rpc_timeout)


def cmd_sync(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        done = asyncio.run(sync(_rpc(settings)))
    except RpcError as exc:
        print(f"centralita kamailio sync: {exc}", file=sys.stderr)
        return 1
    for what in done:
        print(f"reloaded {what}")
    return 0


def _customer_limits(settings: SbcSettings) -> dict[int, dict]:
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, name, max_cps, max_channels, monthly_minutes_limit, minutes_used FROM customers"
            " WHERE active = 1 ORDER BY id"
        )
        return {int(row["id"]): row for row in cur.fetchall()}


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        customers = _customer_limits(settings)
    except pymysql.MySQLError as exc:
        print(f"centralita kamailio status: database {describe_target(settings)}: {exc}", file=sys.stderr)
        return 1
    try:
        status = asyncio.run(read_status(_rpc(settings), customers))
    except RpcError as exc:
        print(f"centralita kamailio status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status.__dict__, default=str, indent=1))
    else:
        print(render_status(status))
    return 0


def _billing(text: str) -> tuple[int, int]:
    try:
        initial, increment = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--billing {text!r}: expected INITIAL/INCREMENT seconds such as 60/60 or 1/1") from None
    if initial < 0 or increment < 1:
        raise ConfigError(f"--billing {text!r}: initial >= 0 and increment >= 1 seconds")
    return initial, increment


def cmd_rates_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    initial, increment = _billing(args.billing)
    starts = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    if args.effective_from:
        try:
            starts = dt.datetime.fromisoformat(args.effective_from)
        except ValueError:
            raise ConfigError(f"--effective-from {args.effective_from!r}: expected YYYY-MM-DD[ HH:MM[:SS]]") from None
    kind, name = ("carrier", args.carrier) if args.carrier else ("customer", args.customer)
    try:
        rows = read_deck(args.csv, effective_from=starts, default_initial=initial, default_increment=increment)
        with connection(settings, autocommit=False) as conn:
            owner = resolve_owner(conn, kind, name)
            result = import_rates(conn, kind, owner, rows, replace=args.replace)
    except (RateDeckError, OSError) as exc:
        print(f"centralita rates import: {args.csv}: {exc}", file=sys.stderr)
        return 1
    except pymysql.MySQLError as exc:
        print(f"centralita rates import: database {describe_target(settings)}: {exc}", file=sys.stderr)
        return 1
    replaced = f", {result.replaced} old rates removed" if args.replace else ""
    print(f"imported {result.rows} rates for {kind} {name} in {result.seconds:.1f} s{replaced}")
    # carrier orders cached in Kamailio were computed from the old rates; when
    # Kamailio cannot be told, its cache still expires on its own within a minute
    try:
        asyncio.run(flush_route_cache(_rpc(settings)))
    except RpcError as exc:
        print(
            f"centralita rates import: warning: Kamailio's route cache was not flushed ({exc}); the new rates "
            "apply once it expires, or at once after `centralita kamailio sync`",
            file=sys.stderr,
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from centralita.sbc.bench import BenchOptions, parse_rates, run_bench

    def parse(text: str | None) -> list[int] | None:
        return None if text is None else parse_rates(text)

    try:
        rates = parse(args.rates) or []
        direct_rates = parse(args.direct_rates) or []
        full_rates, minimal_rates = parse(args.full_rates), parse(args.minimal_rates)
    except ValueError as exc:
        print(f"centralita bench sbc: {exc}", file=sys.stderr)
        return 2
    options = BenchOptions(
        lab_name=args.lab_name,
        lab_index=args.lab_index,
        rates=rates,
        hold_s=args.hold_s,
        uacs=args.uacs,
        pdd_calls=args.pdd_calls,
        full_rates=full_rates,
        minimal_rates=minimal_rates,
        direct_rates=direct_rates,
    )
    return run_bench(options)
