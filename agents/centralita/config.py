"""One typed settings loader for every agent.

Each agent declares a frozen dataclass whose fields are made with :func:`setting`.
Values come from the process environment (systemd's ``EnvironmentFile=``) and,
when given, an env file read directly (``--env-file`` for manual runs and tests).
A bad or missing value stops the agent at start with the variable's name and
what was expected, so a typo in the inventory never becomes a runtime surprise.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = object()


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class _Spec:
    env: str
    default: Any
    choices: Sequence[Any] | None
    minimum: float | None
    maximum: float | None
    check: Callable[[Any], str | None] | None
    secret: bool
    help: str


def setting(
    env: str,
    *,
    default: Any = _MISSING,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    secret: bool = False,
    help: str = "",
) -> Any:
    """Declare a dataclass field read from environment variable ``env``.

    ``check`` returns an error text (what was expected) or None.
    ``secret`` keeps the value out of error messages and ``describe()``.
    """
    spec = _Spec(env, default, choices, minimum, maximum, check, secret, help)
    if default is _MISSING:
        return dataclasses.field(metadata={"centralita": spec})
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"centralita": spec})
    return dataclasses.field(default=default, metadata={"centralita": spec})


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse a systemd-style env file: KEY=VALUE lines, comments, optional quotes."""
    values: dict[str, str] = {}
    text = Path(path).read_text(encoding="utf-8")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(kind: Any, text: str) -> tuple[Any, str | None]:
    """Turn text into ``kind``; return (value, None) or (None, what was expected)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if text == "":
            return None, None
        return _convert(options[0], text)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(kind) or (str,)
        items = [part.strip() for part in text.split(",") if part.strip()]
        out = []
        for item in items:
            value, problem = _convert(inner, item)
            if problem:
                return None, f"a comma-separated list of {problem}"
            out.append(value)
        return (tuple(out) if origin is tuple else out), None
    if kind is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True, None
        if low in _FALSE:
            return False, None
        return None, "true or false"
    if kind is int:
        try:
            return int(text.strip()), None
        except ValueError:
            return None, "an integer"
    if kind is float:
        try:
            return float(text.strip()), None
        except ValueError:
            return None, "a number"
    if kind is Path:
        return Path(text.strip()), None
    return text, None


def load_settings(
    cls: type[T],
    *,
    env_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from the environment (and ``env_file``, which wins).

    Raises ConfigError listing every bad variable, one per line.
    """
    source: dict[str, str] = dict(os.environ if environ is None else environ)
    if env_file is not None:
        try:
            source.update(read_env_file(env_file))
        except OSError as exc:
            raise ConfigError(f"cannot read env file {env_file}: {exc.strerror}") from exc
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        spec: _Spec | None = field.metadata.get("centralita")
        if spec is None:
            continue
        raw = source.get(spec.env)
        if raw is None or (raw == "" and spec.default is not _MISSING):
            if spec.default is _MISSING:
                problems.append(f"{spec.env}: required setting is missing{_hint(spec)}")
            continue
        value, expected = _convert(hints[field.name], raw)
        shown = "(hidden)" if spec.secret else repr(raw)
        if expected is None:
            expected = _validate(spec, value)
        if expected is not None:
            problems.append(f"{spec.env}: expected {expected}, got {shown}")
            continue
        kwargs[field.name] = value
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return cls(**kwargs)


def _hint(spec: _Spec) -> str:
    return f" ({spec.help})" if spec.help else ""


def _validate(spec: _Spec, value: Any) -> str | None:
    if spec.choices is not None and value not in spec.choices:
        return "one of " + ", ".join(str(c) for c in spec.choices)
    numbers = value if isinstance(value, (list, tuple)) else [value]
    for number in numbers:
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if spec.minimum is not None and number < spec.minimum:
                return f"a value >= {spec.minimum}"
            if spec.maximum is not None and number > spec.maximum:
                return f"a value <= {spec.maximum}"
    if spec.check is not None:
        return spec.check(value)
    return None


def describe(settings: Any) -> dict[str, Any]:
    """The settings as env-name -> value, secrets masked, for a start-up log line."""
    shown: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        spec: _Spec | None = field.metadata.get("centralita")
        if spec is None:
            continue
        value = getattr(settings, field.name)
        shown[spec.env] = "***" if spec.secret and value else value
    return shown


# Reusable checks -----------------------------------------------------------


def port(value: Any) -> str | None:
    return None if isinstance(value, int) and 1 <= value <= 65535 else "a TCP/UDP port 1-65535"


def url(value: Any) -> str | None:
    text = str(value)
    return None if text.startswith(("http://", "https://", "ws://", "wss://")) else "a URL (http[s]:// or ws[s]://)"
