"""``centralita aicall ...``: run the agent, the benchmark, and the stand-ins for the offline demo."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("aicall", help="AI inbound calls: agent, benchmark, stand-ins")
    sub = parser.add_subparsers(dest="aicall_command", required=True, metavar="ACTION")

    run = sub.add_parser("run", help="run the agent (what the systemd unit starts)")
    run.add_argument("--env-file", help="read settings from this env file")
    run.set_defaults(func=_run)

    bench = sub.add_parser("bench", help="N synthetic calls through one agent process; prints a Markdown table")
    bench.add_argument("--calls", default="25,50,100,200", help="comma-separated load points")
    bench.add_argument("--seconds", type=float, default=10.0, help="measured time per point (at most 120)")
    bench.add_argument("--law", default="ulaw", choices=("ulaw", "alaw"))
    bench.add_argument("--no-pin", action="store_true", help="do not pin the agent and its helpers to cores")
    bench.add_argument("--realtime", action="store_true", help="run under SCHED_RR, as the systemd unit can")
    bench.add_argument("--input-frames", type=int, default=1, choices=range(1, 6), help="as AICALL_INPUT_FRAMES")
    bench.add_argument("--tls", action="store_true", help="the model sockets over TLS (wss://), as to the service")
    bench.set_defaults(func=_bench)

    fake = sub.add_parser("fake-realtime", help="serve the OpenAI Realtime stand-in")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8765)
    fake.add_argument("--api-key", help="the bearer key to accept (default: any)")
    fake.add_argument("--api-key-file", help="read the key to accept from this file")
    fake.add_argument("--script", help="a JSON script (greeting, turns, ...)")
    fake.add_argument("--ping-interval", type=float, default=5.0)
    fake.set_defaults(func=_fake_realtime)

    router = sub.add_parser("fake-mikrotik", help="serve the MikroTik RouterOS REST stand-in")
    router.add_argument("--host", default="127.0.0.1")
    router.add_argument("--port", type=int, default=8766)
    router.add_argument("--user", default="api")
    router.add_argument("--password-file", help="a file holding the API password")
    router.set_defaults(func=_fake_mikrotik)


def _run(args: argparse.Namespace) -> int:
    from centralita.aicall.__main__ import main

    return main(["--env-file", args.env_file] if args.env_file else [])


def _bench(args: argparse.Namespace) -> int:
    from centralita.aicall import bench

    argv = ["--calls", args.calls, "--seconds", str(args.seconds), "--law", args.law]
    argv += ["--input-frames", str(args.input_frames)]
    argv += ["--no-pin"] if args.no_pin else []
    argv += ["--tls"] if args.tls else []
    return bench.main(argv + (["--realtime"] if args.realtime else []))


def _fake_realtime(args: argparse.Namespace) -> int:
    from centralita.fakes import realtime

    key = args.api_key
    if args.api_key_file:
        with open(args.api_key_file, encoding="utf-8") as handle:
            key = handle.read().strip()
    argv = ["--host", args.host, "--port", str(args.port), "--ping-interval", str(args.ping_interval)]
    argv += ["--api-key", key] if key else []
    return realtime.main(argv + (["--script", args.script] if args.script else []))


def _fake_mikrotik(args: argparse.Namespace) -> int:
    from centralita.fakes import mikrotik

    argv = ["--host", args.host, "--port", str(args.port), "--user", args.user]
    return mikrotik.main(argv + (["--password-file", args.password_file] if args.password_file else []))
