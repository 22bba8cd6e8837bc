"""Customer and network lookups on MikroTik routers for the assistant.

Two backends answer the same questions: RouterOS v7's REST API on each router
(``/rest/...`` over HTTPS with basic auth), or the operator's own HTTP API in front
of the routers (``MIKROTIK_API_URL``, the mode the system was specified with), which
receives ``POST <url>/api/<operation>`` with the arguments as JSON and answers JSON.
Requests are blocking ``requests`` calls run on the tools' own worker threads, so a
slow router never stalls the call's audio nor the agent's other requests; each one
waits at most what its tool has left of its timeout.
"""

from __future__ import annotations

import abc
import asyncio
import re
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import requests

from centralita.aicall.tools.base import Tool, ToolError, run_blocking, time_left, tool_executor

CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Router:
    name: str
    url: str  # https://10.0.0.1 (the /rest prefix is added)
    user: str
    password: str
    verify: bool | str = True  # False for a self-signed router certificate, or a CA bundle path


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text or "")


def _phone_matches(phone: str, comment: str) -> bool:
    """Match on the last 7+ digits so +57 300..., 300... and 0300... find the same customer."""
    wanted = _digits(phone)
    if len(wanted) < 7:
        return False
    tail = wanted[-min(len(wanted), 10) :]
    return any(d.endswith(tail) or tail.endswith(d) for d in re.findall(r"\d{7,}", _digits_sep(comment)))


def _digits_sep(text: str) -> str:
    """Join digit groups split by spaces or dashes inside a number ("300 123-4567")."""
    return re.sub(r"(?<=\d)[\s\-.]+(?=\d)", "", text or "")


class Backend(abc.ABC):
    @abc.abstractmethod
    async def find_customer(self, phone: str | None, ip: str | None, pppoe_user: str | None) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def customer_status(self, pppoe_user: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def ping(self, pppoe_user: str | None, ip: str | None, count: int) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def interface_status(self, name: str, router: str | None) -> dict[str, Any]: ...


def _timeouts(cap: float) -> tuple[float, float]:
    """(connect, read) timeouts of one request: within what the running tool has left, at most ``cap``."""
    read = time_left(cap)
    return min(CONNECT_TIMEOUT_S, read), read


class RouterOsBackend(Backend):
    def __init__(
        self, routers: list[Router], request_timeout: float = 8.0, *, executor: Executor | None = None
    ) -> None:
        if not routers:
            raise ValueError("at least one router is needed")
        self.routers = {r.name: r for r in routers}
        self.request_timeout = request_timeout  # the cap; inside a tool, what the tool has left
        self.executor = executor or tool_executor()
        self._session = requests.Session()

    def _call(
        self,
        router: Router,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: Any = None,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_S, 8.0),
    ):
        url = router.url.rstrip("/") + "/rest/" + path.strip("/")
        try:
            reply = self._session.request(
                method,
                url,
                params=params,
                json=body,
                auth=(router.user, router.password),
                verify=router.verify,
                timeout=timeout,
            )
        except requests.RequestException as exc:
            raise ToolError(f"router {router.name} is not reachable: {type(exc).__name__}") from exc
        if reply.status_code == 401:
            raise ToolError(f"router {router.name} refused the API credentials")
        if reply.status_code >= 400:
            try:
                detail = reply.json().get("detail") or reply.json().get("message")
            except ValueError:
                detail = reply.text[:100]
            raise ToolError(f"router {router.name} answered {reply.status_code}: {detail}")
        try:
            return reply.json()
        except ValueError as exc:
            raise ToolError(f"router {router.name} sent a reply that is not JSON") from exc

    async def _get(self, router: Router, path: str, **params: str) -> list[dict[str, Any]]:
        result = await self._blocking(router, "GET", path, params or None, None)
        return result if isinstance(result, list) else [result]

    async def _blocking(self, router: Router, method: str, path: str, params: Any, body: Any) -> Any:
        timeout = _timeouts(self.request_timeout)  # read here: the tool's deadline lives in this task's context
        return await run_blocking(self.executor, self._call, router, method, path, params, body, timeout)

    async def _each_router(self, path: str, **params: str) -> list[tuple[Router, dict[str, Any]]]:
        """Ask every router at once; a router that is down only hides its own customers."""
        routers = list(self.routers.values())
        replies = await asyncio.gather(*(self._get(r, path, **params) for r in routers), return_exceptions=True)
        found, errors = [], []
        for router, reply in zip(routers, replies, strict=True):
            if isinstance(reply, BaseException):
                if not isinstance(reply, ToolError):
                    raise reply
                errors.append(str(reply))
                continue
            found += [(router, row) for row in reply]
        if not found and errors and len(errors) == len(routers):
            raise ToolError("; ".join(errors))
        return found

    @staticmethod
    def _customer(router: Router, secret: dict[str, Any]) -> dict[str, Any]:
        return {
            "router": router.name,
            "pppoe_user": secret.get("name"),
            "profile": secret.get("profile"),
            "ip": secret.get("remote-address"),
            "service_enabled": secret.get("disabled", "false") != "true",
            "comment": secret.get("comment", ""),
        }

    async def find_customer(self, phone: str | None, ip: str | None, pppoe_user: str | None) -> dict[str, Any]:
        if pppoe_user:
            rows = await self._each_router("ppp/secret", name=pppoe_user)
        elif ip:
            rows = await self._each_router("ppp/secret", **{"remote-address": ip})
            if not rows:
                active = await self._each_router("ppp/active", address=ip)
                names = {row.get("name") for _, row in active}
                rows = [(r, s) for r, s in await self._each_router("ppp/secret") if s.get("name") in names]
        elif phone:
            rows = [
                (r, s) for r, s in await self._each_router("ppp/secret") if _phone_matches(phone, s.get("comment", ""))
            ]
        else:
            raise ToolError("give a phone number, an IP address or a PPPoE user")
        if not rows:
            return {"found": False}
        return {"found": True, "customers": [self._customer(r, s) for r, s in rows[:5]]}

    async def _locate(self, pppoe_user: str) -> tuple[Router, dict[str, Any]]:
        rows = await self._each_router("ppp/secret", name=pppoe_user)
        if not rows:
            raise ToolError(f"no PPPoE customer named {pppoe_user}")
        return rows[0]

    async def customer_status(self, pppoe_user: str) -> dict[str, Any]:
        router, secret = await self._locate(pppoe_user)
        active, queues_by_name, interfaces = await asyncio.gather(
            self._get(router, "ppp/active", name=pppoe_user),
            self._get(router, "queue/simple", name=pppoe_user),
            self._get(router, "interface", name=f"<pppoe-{pppoe_user}>"),
        )
        status: dict[str, Any] = self._customer(router, secret)
        session = active[0] if active else None
        status["online"] = session is not None
        if session:
            status["session"] = {
                "address": session.get("address"),
                "uptime": session.get("uptime"),
                "caller_id": session.get("caller-id"),
            }
        queues = queues_by_name
        if not queues and session and session.get("address"):
            queues = await self._get(router, "queue/simple", target=f"{session['address']}/32")
        if queues:
            queue = queues[0]
            status["queue"] = {
                "max_limit": queue.get("max-limit"),
                "rate": queue.get("rate"),
                "bytes": queue.get("bytes"),
                "disabled": queue.get("disabled") == "true",
            }
        if interfaces:
            link = interfaces[0]
            status["link"] = {"running": link.get("running") == "true", "last_link_up": link.get("last-link-up-time")}
        return status

    async def ping(self, pppoe_user: str | None, ip: str | None, count: int) -> dict[str, Any]:
        if pppoe_user:
            router, secret = await self._locate(pppoe_user)
            active = await self._get(router, "ppp/active", name=pppoe_user)
            address = (active[0].get("address") if active else None) or secret.get("remote-address")
            if not address:
                return {"reachable": False, "reason": "the customer has no active session"}
        elif ip:
            router, address = next(iter(self.routers.values())), ip
        else:
            raise ToolError("give a PPPoE user or an IP address")
        replies = await self._blocking(router, "POST", "ping", None, {"address": address, "count": str(count)})
        replies = replies if isinstance(replies, list) else [replies]
        last = replies[-1] if replies else {}
        received = int(last.get("received", 0) or 0)
        return {
            "address": address,
            "router": router.name,
            "sent": int(last.get("sent", 0) or 0),
            "received": received,
            "packet_loss_percent": int(last.get("packet-loss", 100) or 0),
            "avg_rtt": last.get("avg-rtt"),
            "reachable": received > 0,
        }

    async def interface_status(self, name: str, router: str | None) -> dict[str, Any]:
        routers = [self.routers[router]] if router in self.routers else list(self.routers.values())
        for candidate in routers:
            rows = await self._get(candidate, "interface", name=name)
            if rows:
                row = rows[0]
                return {
                    "router": candidate.name,
                    "name": row.get("name"),
                    "type": row.get("type"),
                    "running": row.get("running") == "true",
                    "enabled": row.get("disabled") != "true",
                    "last_link_up": row.get("last-link-up-time"),
                    "last_link_down": row.get("last-link-down-time"),
                }
        return {"found": False}


class HttpApiBackend(Backend):
    """The operator's HTTP API (``MIKROTIK_API_URL``): ``POST /api/<operation>`` JSON in, JSON out."""

    def __init__(
        self, url: str, token: str | None = None, request_timeout: float = 8.0, *, executor: Executor | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.request_timeout = request_timeout  # the cap; inside a tool, what the tool has left
        self.executor = executor or tool_executor()
        self._session = requests.Session()

    def _post(
        self, operation: str, body: dict[str, Any], timeout: tuple[float, float] = (CONNECT_TIMEOUT_S, 8.0)
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            reply = self._session.post(f"{self.url}/api/{operation}", json=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            raise ToolError(f"the network API is not reachable: {type(exc).__name__}") from exc
        if reply.status_code >= 400:
            raise ToolError(f"the network API answered {reply.status_code}")
        try:
            data = reply.json()
        except ValueError as exc:
            raise ToolError("the network API sent a reply that is not JSON") from exc
        if not isinstance(data, dict):
            raise ToolError("the network API sent an unexpected reply")
        return data

    async def _call(self, operation: str, **body: Any) -> dict[str, Any]:
        arguments = {k: v for k, v in body.items() if v is not None}
        return await run_blocking(self.executor, self._post, operation, arguments, _timeouts(self.request_timeout))

    async def find_customer(self, phone: str | None, ip: str | None, pppoe_user: str | None) -> dict[str, Any]:
        return await self._call("find_customer", phone=phone, ip=ip, pppoe_user=pppoe_user)

    async def customer_status(self, pppoe_user: str) -> dict[str, Any]:
        return await self._call("customer_status", pppoe_user=pppoe_user)

    async def ping(self, pppoe_user: str | None, ip: str | None, count: int) -> dict[str, Any]:
        return await self._call("ping", pppoe_user=pppoe_user, ip=ip, count=count)

    async def interface_status(self, name: str, router: str | None) -> dict[str, Any]:
        return await self._call("interface_status", name=name, router=router)


def mikrotik_tools(backend: Backend, timeout: float, ping_timeout: float) -> list[Tool]:
    """The four network tools, described for the model in the operator's terms."""

    async def find_customer(args: dict[str, Any]) -> dict[str, Any]:
        return await backend.find_customer(args.get("phone"), args.get("ip"), args.get("pppoe_user"))

    async def customer_status(args: dict[str, Any]) -> dict[str, Any]:
        return await backend.customer_status(args["pppoe_user"])

    async def ping_customer(args: dict[str, Any]) -> dict[str, Any]:
        count = max(1, min(int(args.get("count", 4)), 10))
        return await backend.ping(args.get("pppoe_user"), args.get("ip"), count)

    async def interface_status(args: dict[str, Any]) -> dict[str, Any]:
        return await backend.interface_status(args["name"], args.get("router"))

    text = {"type": "string"}
    return [
        Tool(
            "find_customer",
            "Find an internet customer by phone number, IP address or PPPoE user name. "
            "Use the caller's number when the caller does not say who they are.",
            {
                "type": "object",
                "properties": {"phone": text, "ip": text, "pppoe_user": text},
                "additionalProperties": False,
            },
            find_customer,
            timeout,
        ),
        Tool(
            "customer_status",
            "Service state of a customer: enabled or cut, online session and uptime, bandwidth plan and "
            "current use, and whether the customer's link is up.",
            {
                "type": "object",
                "properties": {"pppoe_user": text},
                "required": ["pppoe_user"],
                "additionalProperties": False,
            },
            customer_status,
            timeout,
        ),
        Tool(
            "ping_customer",
            "Ping the customer's equipment from the router to check that it answers.",
            {
                "type": "object",
                "properties": {"pppoe_user": text, "ip": text, "count": {"type": "integer"}},
                "additionalProperties": False,
            },
            ping_customer,
            ping_timeout,
        ),
        Tool(
            "interface_status",
            "State of a router interface or link by name (running, enabled, last link up/down).",
            {
                "type": "object",
                "properties": {"name": text, "router": text},
                "required": ["name"],
                "additionalProperties": False,
            },
            interface_status,
            timeout,
        ),
    ]
