"""Tools the model may call: a JSON-schema function, a timeout and an async handler.

A tool runs as its own task beside the call's audio loop; its result (or its error,
or the fact that it timed out) always goes back to the model as a JSON string so the
assistant can say something true to the caller instead of falling silent.

A tool's timeout stops the wait, not a request already sent from a worker thread:
backends therefore give each request only what its tool has left
(:func:`time_left`), and run their blocking requests on threads of their own
(:func:`tool_executor`), so a router that does not answer never holds the threads
that ARI requests and record writes use.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

from centralita.aicall.provider import ToolSpec

log = logging.getLogger("centralita.aicall.tools")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
T = TypeVar("T")

# Requests of all calls' tools at once (AICALL_TOOL_THREADS, whose default this is); more wait for a
# thread within their tool's timeout.
TOOL_THREADS = 16
MIN_REQUEST_S = 0.1

# When the running tool must be done (time.monotonic()), set by ToolBox.run for the tool's own task.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("tool_deadline", default=None)


def time_left(cap: float) -> float:
    """Seconds a request may wait: what the running tool has left of its timeout, at most ``cap``."""
    deadline = _deadline.get()
    if deadline is None:
        return cap
    return max(MIN_REQUEST_S, min(cap, deadline - time.monotonic()))


class DaemonThreadPool(Executor):
    """A bounded pool of daemon threads, started as work comes, that the process does not wait for.

    ``ThreadPoolExecutor``'s threads are joined when the interpreter exits, even after
    ``shutdown(wait=False)``: a request still waiting on a router at SIGTERM (a ping may wait
    ``AICALL_PING_TIMEOUT_SECONDS``) would keep the stopping agent past its unit's stop timeout,
    although its call has ended and nobody waits for the answer.
    """

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one thread")
        self.workers = workers
        self.name = name
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # threads waiting for work
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.put((future, functools.partial(fn, *args, **kwargs)))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.workers:
                thread = threading.Thread(target=self._run, name=f"{self.name}_{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return future

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                self._work.put(None)  # the next thread stops too
                return
            future, function = item
            if future.set_running_or_notify_cancel():
                try:
                    result = function()
                except BaseException as exc:  # the future carries it to whoever waits
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, function  # no reference kept to a finished request while idle
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        self._work.put(None)
        if wait:
            for thread in list(self._threads):
                thread.join()


def tool_executor(workers: int = TOOL_THREADS) -> Executor:
    """A bounded pool for the tools' blocking requests, apart from asyncio's default pool."""
    return DaemonThreadPool(workers, "aicall-tool")


async def run_blocking(executor: Executor, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on one of ``executor``'s threads; if its tool gives up first, a queued one never runs."""
    return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(function, *args))


class ToolError(Exception):
    """A tool failed in a way the assistant can explain (not found, router down...)."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler
    timeout: float = 10.0

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)


@dataclass(frozen=True)
class ToolOutcome:
    name: str
    arguments: dict[str, Any] | str
    result: dict[str, Any]
    outcome: str  # ok | error | timeout | cancelled (the call ended or the model left before it finished)
    started: float  # wall clock
    duration: float

    @property
    def output(self) -> str:
        return json.dumps(self.result, ensure_ascii=False, separators=(",", ":"))


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def check_arguments(schema: dict[str, Any], arguments: Any) -> str | None:
    """The subset of JSON Schema our tools use: an object, required keys, property types, enums."""
    if not isinstance(arguments, dict):
        return "arguments must be a JSON object"
    properties = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in arguments:
            return f"missing required argument {key!r}"
    for key, value in arguments.items():
        prop = properties.get(key)
        if prop is None:
            if schema.get("additionalProperties") is False:
                return f"unknown argument {key!r}"
            continue
        kinds = _JSON_TYPES.get(prop.get("type", ""), (object,))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"argument {key!r} must be a {prop.get('type')}"
        if "enum" in prop and value not in prop["enum"]:
            return f"argument {key!r} must be one of {prop['enum']}"
    return None


class ToolBox:
    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools or []:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name} defined twice")
        self._tools[tool.name] = tool

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    @property
    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self._tools.values())

    async def run(self, name: str, arguments: str) -> ToolOutcome:
        """Run one call to completion; never raises (except cancellation)."""
        started_wall, started = time.time(), time.monotonic()

        def done(result: dict[str, Any], outcome: str, args: dict[str, Any] | str) -> ToolOutcome:
            return ToolOutcome(name, args, result, outcome, started_wall, time.monotonic() - started)

        tool = self._tools.get(name)
        if tool is None:
            return done({"error": f"unknown tool {name}"}, "error", arguments)
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            return done({"error": "arguments are not valid JSON"}, "error", arguments)
        problem = check_arguments(tool.parameters, args)
        if problem:
            return done({"error": problem}, "error", args)
        deadline = _deadline.set(time.monotonic() + tool.timeout)
        try:
            result = await asyncio.wait_for(tool.handler(args), tool.timeout)
        except TimeoutError:
            log.warning("tool %s timed out after %.1f s", name, tool.timeout)
            return done({"error": f"the lookup took longer than {tool.timeout:g} s and was stopped"}, "timeout", args)
        except ToolError as exc:
            return done({"error": str(exc)}, "error", args)
        except Exception as exc:  # a bug or an unexpected backend answer must not end the call
            log.exception("tool %s failed", name)
            return done({"error": f"internal error: {type(exc).__name__}"}, "error", args)
        finally:
            _deadline.reset(deadline)
        return done(result, "ok", args)
