"""The typed settings loader every agent uses (centralita.config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from centralita.config import ConfigError, describe, load_settings, port, read_env_file, setting, url
from centralita.db import DbSettings

SECRET = "s3cr3t-value"  # a test value that must never appear in messages


def _even(value: object) -> str | None:
    return None if isinstance(value, int) and value % 2 == 0 else "an even number"


def _ports(values: list[int]) -> str | None:
    return next((problem for problem in map(port, values) if problem), None)


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str = setting("SAMPLE_NAME")
    count: int = setting("SAMPLE_COUNT", default=3, minimum=1, maximum=10)
    ratio: float = setting("SAMPLE_RATIO", default=0.5)
    enabled: bool = setting("SAMPLE_ENABLED", default=False)
    path: Path = setting("SAMPLE_PATH", default=Path("/var/lib/centralita"))  # noqa: RUF009 - setting() builds the field
    hosts: list[str] = setting("SAMPLE_HOSTS", default=[])  # noqa: RUF009 - setting() builds the field
    ports: list[int] = setting("SAMPLE_PORTS", default=[5060], check=_ports)  # noqa: RUF009 - setting() builds the field
    mode: str = setting("SAMPLE_MODE", default="batch", choices=("batch", "direct"))
    token: str = setting("SAMPLE_TOKEN", default="", secret=True)
    even: int = setting("SAMPLE_EVEN", default=2, check=_even)
    endpoint: str = setting("SAMPLE_URL", default="http://127.0.0.1:8088", check=url)
    optional: int | None = setting("SAMPLE_OPTIONAL", default=None)


def _load(**environ: str) -> Sample:
    return load_settings(Sample, environ={"SAMPLE_NAME": "pbx1", **environ})


def test_defaults_apply_when_variables_are_absent() -> None:
    settings = _load()
    assert settings == Sample(name="pbx1")
    assert settings.hosts == []
    assert settings.optional is None


def test_values_are_converted_to_the_declared_types() -> None:
    settings = _load(
        SAMPLE_COUNT=" 7 ",
        SAMPLE_RATIO="0.25",
        SAMPLE_ENABLED="yes",
        SAMPLE_PATH="/srv/spool",
        SAMPLE_OPTIONAL="12",
    )
    assert (settings.count, settings.ratio, settings.enabled) == (7, 0.25, True)
    assert settings.path == Path("/srv/spool")
    assert settings.optional == 12


def test_comma_separated_lists_are_split_trimmed_and_typed() -> None:
    settings = _load(SAMPLE_HOSTS=" a.example , b.example,,", SAMPLE_PORTS="5060, 5080")
    assert settings.hosts == ["a.example", "b.example"]
    assert settings.ports == [5060, 5080]


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("No", False)])
def test_booleans_accept_the_usual_spellings(text: str, expected: bool) -> None:
    assert _load(SAMPLE_ENABLED=text).enabled is expected


def test_empty_value_means_the_default() -> None:
    assert _load(SAMPLE_COUNT="", SAMPLE_MODE="").count == 3


def test_missing_required_setting_is_named_with_its_help() -> None:
    with pytest.raises(ConfigError, match="SAMPLE_NAME: required setting is missing"):
        load_settings(Sample, environ={})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SAMPLE_COUNT", "three", "SAMPLE_COUNT: expected an integer, got 'three'"),
        ("SAMPLE_COUNT", "0", "SAMPLE_COUNT: expected a value >= 1, got '0'"),
        ("SAMPLE_COUNT", "11", "SAMPLE_COUNT: expected a value <= 10, got '11'"),
        ("SAMPLE_RATIO", "half", "SAMPLE_RATIO: expected a number, got 'half'"),
        ("SAMPLE_ENABLED", "maybe", "SAMPLE_ENABLED: expected true or false, got 'maybe'"),
        ("SAMPLE_PORTS", "5060,x", "SAMPLE_PORTS: expected a comma-separated list of an integer, got '5060,x'"),
        ("SAMPLE_PORTS", "5060,70000", "SAMPLE_PORTS: expected a TCP/UDP port 1-65535, got '5060,70000'"),
        ("SAMPLE_MODE", "fast", "SAMPLE_MODE: expected one of batch, direct, got 'fast'"),
        ("SAMPLE_EVEN", "3", "SAMPLE_EVEN: expected an even number, got '3'"),
        ("SAMPLE_URL", "127.0.0.1:8088", "SAMPLE_URL: expected a URL (http[s]:// or ws[s]://), got '127.0.0.1:8088'"),
    ],
)
def test_bad_value_message_names_the_variable_and_what_was_expected(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        _load(**{variable: value})
    assert message in str(error.value)


def test_every_bad_variable_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(Sample, environ={"SAMPLE_COUNT": "x", "SAMPLE_MODE": "y"})
    lines = str(error.value).splitlines()
    assert lines[0] == "invalid settings:"
    assert {line.split(":")[0].strip() for line in lines[1:]} == {"SAMPLE_NAME", "SAMPLE_COUNT", "SAMPLE_MODE"}


def test_secret_values_stay_out_of_errors_and_descriptions() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithSecretNumber:
        pin: int = setting("SAMPLE_PIN", secret=True)

    with pytest.raises(ConfigError) as error:
        load_settings(WithSecretNumber, environ={"SAMPLE_PIN": SECRET})
    assert "SAMPLE_PIN: expected an integer, got (hidden)" in str(error.value)
    assert SECRET not in str(error.value)

    shown = describe(_load(SAMPLE_TOKEN=SECRET))
    assert shown["SAMPLE_TOKEN"] == "***"
    assert shown["SAMPLE_NAME"] == "pbx1"
    assert SECRET not in repr(shown)


def test_env_file_is_parsed_like_systemd_and_wins_over_the_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "agent.env"
    env_file.write_text(
        "# managed by ansible\n"
        "; another comment\n"
        "\n"
        "SAMPLE_NAME=from-file\n"
        "export SAMPLE_COUNT=4\n"
        'SAMPLE_MODE = "direct"\n'
        "SAMPLE_HOSTS='a,b'\n"
        "SAMPLE_TOKEN=with=equals\n"
    )
    settings = load_settings(Sample, env_file=env_file, environ={"SAMPLE_NAME": "from-env", "SAMPLE_RATIO": "2"})
    assert settings.name == "from-file"
    assert (settings.count, settings.mode, settings.hosts) == (4, "direct", ["a", "b"])
    assert settings.token == "with=equals"
    assert settings.ratio == 2.0


def test_malformed_env_file_line_is_reported_with_its_number(tmp_path: Path) -> None:
    env_file = tmp_path / "agent.env"
    env_file.write_text("SAMPLE_NAME=x\nthis is not a setting\n")
    with pytest.raises(ConfigError, match=r"agent.env:2: expected KEY=VALUE"):
        read_env_file(env_file)


def test_unreadable_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read env file"):
        load_settings(Sample, env_file=tmp_path / "missing.env", environ={})


def test_agent_settings_inherit_the_db_settings_and_add_required_fields() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class AgentSettings(DbSettings):
        queue: str = setting("AGENT_QUEUE")

    settings = load_settings(
        AgentSettings,
        environ={"DB_USER": "agent", "DB_PASSWORD": SECRET, "DB_PORT": "3307", "AGENT_QUEUE": "calls"},
    )
    assert (settings.db_user, settings.db_port, settings.db_host, settings.queue) == (
        "agent",
        3307,
        "127.0.0.1",
        "calls",
    )
    assert describe(settings)["DB_PASSWORD"] == "***"
    with pytest.raises(ConfigError) as error:
        load_settings(AgentSettings, environ={"DB_PORT": "99999", "DB_PASSWORD": SECRET})
    message = str(error.value)
    assert "DB_USER: required setting is missing" in message
    assert "AGENT_QUEUE: required setting is missing" in message
    assert "DB_PORT: expected a TCP/UDP port 1-65535, got '99999'" in message
    assert SECRET not in message
