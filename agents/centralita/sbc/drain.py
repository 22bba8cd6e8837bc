"""Kamailio's stop without a lost call: what systemd runs before it stops Kamailio (``ExecStop``).

Kamailio keeps its calls (dialogs) in memory and writes the ones that changed to the database
once a period (the dialog module's ``db_update_period``); after a restart it restores from there
the calls that are up, with what their CDRs need. Without this step a stop loses:

- a call answered within the last period: it is not restored, so its end writes no CDR, and it
  counts against no channel limit;
- a call still ringing: its transaction dies with the stop, and the carrier's answer after the
  restart would bring up a call Kamailio knows nothing of;
- the CDRs and events still queued for the database writer.

So, one step after the other (over Kamailio's JSON-RPC on loopback):

1. ``sys=>drain`` is set to 1: new calls get 503 (``draining``, with their CDR) and customers take
   their next route at once;
2. the calls ringing are waited for until each is answered or has failed (and written its CDR), at
   most ``--seconds``; those still ringing then get a CANCEL towards their carrier (``sys=>drain``
   3: the customer gets 487, and the CDR names the SBC as the side that ended the call);
3. until the last answer (``sys=>ans``, set by the script) is more than one dialog period old
   (the dialog timer has written every answered call since);
4. ``sys=>drain`` is set to 2: new calls and in-dialog requests over UDP are not answered at all
   (nothing more is queued; the UA's retransmission reaches the restarted Kamailio), and the
   database writer's queue empties, then the writer completes two more runs (``sys=>wrun``), so
   the batch it had in hand is written too.

Every step has its deadline, and a Kamailio that does not answer is simply stopped: this never
holds a stop for long. Only the standard library, so SBC hosts need no agents' venv.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

RINGING_STATES = (1, 2)  # the dialog module's unconfirmed and early dialogs
POLL_S = 0.2


class RpcError(RuntimeError):
    """Kamailio did not answer, or answered with an error."""


def rpc_caller(url: str, timeout: float) -> Callable[..., Any]:
    """A function calling one JSON-RPC method of Kamailio and returning its result."""
    if not url.startswith("http://"):
        raise ValueError(f"Kamailio's JSON-RPC URL {url!r}: expected http://HOST:PORT/PATH")

    def call(method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http only, above)
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read())
            except ValueError:
                raise RpcError(f"{method}: HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise RpcError(f"{method}: {exc}") from exc
        if "error" in answer:
            raise RpcError(f"{method}: {answer['error'].get('message', answer['error'])}")
        return answer.get("result")

    return call


def dialogs(call: Callable[..., Any]) -> list[dict[str, Any]]:
    """Kamailio's calls (``dlg.list``, each with its state)."""
    found = call("dlg.list")
    return found if isinstance(found, list) else []


def ringing(call: Callable[..., Any]) -> int:
    """Calls not answered yet (``dlg.stats_active``: counters, cheap however many calls are up)."""
    stats = call("dlg.stats_active")
    return int(stats.get("starting", 0)) + int(stats.get("connecting", 0)) if isinstance(stats, dict) else 0


def htable_int(call: Callable[..., Any], table: str, key: str) -> int:
    """An integer of an htable; 0 when the key is not there."""
    try:
        found = call("htable.get", table, key)
    except RpcError as exc:
        if "doesn't exist" in str(exc) or "not found" in str(exc).lower():
            return 0
        raise
    item = found.get("item", found) if isinstance(found, dict) else {}
    try:
        return int(item.get("value", 0))
    except (TypeError, ValueError):
        return 0


def queued(call: Callable[..., Any], queue: str) -> int:
    """Rows waiting in the database writer's queue."""
    result = call("mqueue.get_size", queue)
    return int(result.get("size", 0)) if isinstance(result, dict) else 0


def cancel(call: Callable[..., Any], dialog: dict[str, Any], log: Callable[[str], None]) -> None:
    """CANCEL a call still ringing: its carrier stops, the customer gets 487, the CDR is written."""
    call_id = dialog.get("call-id") or dialog.get("callid") or ""
    cseq = str((dialog.get("caller") or {}).get("cseq") or "1").split()[0]
    try:
        call("tm.cancel", call_id, cseq)
    except RpcError as exc:
        log(f"call {call_id} could not be cancelled ({exc}); it ends with the stop")


def drain(
    call: Callable[..., Any],
    *,
    seconds: float,
    period: float,
    queue: str = "dbw",
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = print,
) -> None:
    """The four steps of the module's description; raises RpcError when Kamailio does not answer."""
    start = clock()
    call("htable.seti", "sys", "drain", 1)
    waiting = ringing(call)
    log(f"stopping: new calls refused (503 draining); {waiting} ringing")
    while waiting and clock() - start < seconds:
        sleep(POLL_S)
        waiting = ringing(call)
    if waiting:
        still = [d for d in dialogs(call) if d.get("state") in RINGING_STATES]
        log(f"stopping: {len(still)} calls still ringing after {seconds:g} s: cancelled")
        call("htable.seti", "sys", "drain", 3)  # their CDRs name the SBC as the side that ended them
        for dialog in still:
            cancel(call, dialog, log)
        deadline = clock() + 5
        while ringing(call) and clock() < deadline:
            sleep(POLL_S)
    # the last answer is in whole seconds: one answered at its last instant waits a second more
    while (wait := htable_int(call, "sys", "ans") + 1 + period - clock()) > 0:
        sleep(min(wait, 1.0))
    call("htable.seti", "sys", "drain", 2)
    deadline = clock() + 5
    while queued(call, queue) and clock() < deadline:
        sleep(POLL_S / 2)
    # the batch the writer had in hand: two more of its runs
    runs = htable_int(call, "sys", "wrun")
    deadline = clock() + 5
    while (htable_int(call, "sys", "wrun") - runs) % 1000000 < 2 and clock() < deadline:
        sleep(POLL_S / 2)
    log(f"stopping: drained in {clock() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rpc", default="http://127.0.0.1:5071/RPC", help="Kamailio's JSON-RPC URL")
    parser.add_argument("--seconds", type=float, default=30.0, help="longest wait for ringing calls")
    parser.add_argument("--period", type=float, default=1.0, help="the dialog module's db_update_period")
    args = parser.parse_args(argv)
    call = rpc_caller(args.rpc, timeout=5.0)
    try:
        drain(call, seconds=args.seconds, period=args.period, log=lambda line: print(line, flush=True))
    except RpcError as exc:
        # a Kamailio that does not answer cannot be drained: it is stopped as it is
        print(f"stopping without draining: Kamailio did not answer ({exc})", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
