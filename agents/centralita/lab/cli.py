"""``centralita lab``: boot, inspect and remove lab VMs and peer hosts (needs root)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from centralita.lab.core import Lab, known_hosts_path, ssh_key_path
from centralita.lab.host import LabError


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="test VMs (systemd-nspawn) and peer hosts in network namespaces")
    cmds = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default="demo", help="lab name (letters/digits), default demo")
        p.add_argument("--index", type=int, default=0, help="lab subnet 10.213.INDEX.0/24 (0-9)")

    up = cmds.add_parser("up", help="boot VMs and create peer hosts")
    common(up)
    up.add_argument("--vm", action="append", default=[], help="VM name (repeatable)")
    up.add_argument("--peer", action="append", default=[], help="peer host name (repeatable)")
    up.set_defaults(func=_up)

    down = cmds.add_parser("down", help="stop VMs and remove everything the lab made")
    common(down)
    down.set_defaults(func=_down)

    status = cmds.add_parser("status", help="print the lab's machines as JSON")
    common(status)
    status.set_defaults(func=_status)

    ssh = cmds.add_parser("ssh", help="run a command in a VM (or open a shell)")
    common(ssh)
    ssh.add_argument("machine")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=_ssh)

    peer = cmds.add_parser("peer", help="run a command inside a peer host's namespace")
    common(peer)
    peer.add_argument("machine")
    peer.add_argument("command", nargs=argparse.REMAINDER)
    peer.set_defaults(func=_peer)


def _lab(args: argparse.Namespace) -> Lab:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (namespaces, veth, nspawn)")
    return Lab(args.name, args.index)


def _up(args: argparse.Namespace) -> int:
    try:
        lab = _lab(args)
        lab.up(args.vm, args.peer)
    except LabError as exc:
        print(f"centralita lab: {exc}", file=sys.stderr)
        return 1
    _print_status(lab)
    return 0


def _down(args: argparse.Namespace) -> int:
    _lab(args).down()
    return 0


def _status(args: argparse.Namespace) -> int:
    _print_status(_lab(args))
    return 0


def _print_status(lab: Lab) -> None:
    machines = {
        m.name: {"kind": m.kind, "address": lab.address(m.name), "netns": m.netns, "pid": m.pid} for m in lab.machines()
    }
    info = {
        "name": lab.name,
        "index": lab.index,
        "ssh_key": str(ssh_key_path()),
        "known_hosts": str(known_hosts_path()),
        "machines": machines,
    }
    print(json.dumps(info, indent=2))


def _ssh(args: argparse.Namespace) -> int:
    lab = _lab(args)
    argv = lab.ssh_args(args.machine)
    if not args.command:
        argv.insert(1, "-t")
    os.execvp(argv[0], [*argv, *args.command])
    return 0  # not reached


def _peer(args: argparse.Namespace) -> int:
    lab = _lab(args)
    argv = lab.peer_cmd(args.machine, args.command or ["bash"])
    os.execvp(argv[0], argv)
    return 0  # not reached
