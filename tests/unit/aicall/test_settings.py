"""The agent's settings: defaults, the seed's variable names, and clear errors."""

from __future__ import annotations

import threading

import pytest
from centralita.aicall.agent import AicallAgent, build_tools, session_config
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import open_model_session
from centralita.aicall.settings import AicallSettings
from centralita.config import ConfigError, describe, load_settings

BASE = {"AICALL_ARI_USER": "ai", "AICALL_ARI_PASSWORD": "p", "OPENAI_API_KEY": "sk-x", "DB_USER": "aicall"}


def test_defaults_give_rtp_ulaw_and_the_ga_realtime_endpoint() -> None:
    settings = load_settings(AicallSettings, environ=BASE)
    assert settings.media == "rtp" and settings.codec == "ulaw"
    assert settings.realtime_url == "wss://api.openai.com/v1/realtime"
    assert describe(settings)["OPENAI_API_KEY"] == "***"
    assert (settings.transfer_context, settings.transfer_extension) == ("transfer", "human")  # the asterisk role's
    tools = build_tools(load_settings(AicallSettings, environ={**BASE, "AICALL_TRANSFER_EXTENSION": "none"}))
    assert [t.name for t in tools.specs] == ["end_call"]
    assert session_config(settings, tools).law == "ulaw"
    model = open_model_session(settings, session_config(settings, tools))
    assert (model.ping_interval, model.ping_timeout) == (3.0, 3.0), "a silent drop is found within 6 s"


def test_the_seed_mikrotik_api_mode_enables_the_network_tools() -> None:
    env = {**BASE, "ENABLE_MIKROTIK_TOOLS": "true", "MIKROTIK_API_URL": "http://10.0.0.9:5050"}
    tools = build_tools(load_settings(AicallSettings, environ={**env, "AICALL_TRANSFER_EXTENSION": "600"}))
    names = [t.name for t in tools.specs]
    assert names == ["end_call", "transfer_to_human", "find_customer", "customer_status", "ping_customer",
                     "interface_status"]  # fmt: skip


def test_routers_are_listed_by_name_with_shared_credentials() -> None:
    env = {**BASE, "ENABLE_MIKROTIK_TOOLS": "yes", "MIKROTIK_ROUTERS": "core=https://10.1.0.1,north=https://10.2.0.1"}
    env |= {"MIKROTIK_USER": "api", "MIKROTIK_PASSWORD": "s", "MIKROTIK_TLS_VERIFY": "false"}
    env |= {"AICALL_TRANSFER_EXTENSION": "None"}
    settings = load_settings(AicallSettings, environ=env)
    assert settings.tls_verify is False and len(build_tools(settings).specs) == 5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"AICALL_CODEC": "g729"}, "AICALL_CODEC: expected one of ulaw, alaw"),
        ({"AICALL_MEDIA": "audiosocket"}, "AICALL_MEDIA: expected one of rtp, websocket"),
        ({"OPENAI_REALTIME_URL": "https://api.openai.com"}, "OPENAI_REALTIME_URL: expected a ws:// or wss:// URL"),
        ({"AICALL_VAD_THRESHOLD": "2"}, "AICALL_VAD_THRESHOLD: expected a value <= 1.0"),
        ({"ENABLE_MIKROTIK_TOOLS": "true"}, "ENABLE_MIKROTIK_TOOLS: expected MIKROTIK_API_URL or MIKROTIK_ROUTERS"),
        ({"MIKROTIK_ROUTERS": "10.0.0.1"}, "MIKROTIK_ROUTERS: expected a comma-separated list of name=https://"),
        ({"AICALL_RTP_PORT_MIN": "40000"}, "AICALL_RTP_PORT_MIN/MAX"),
        ({"AICALL_MAX_OUTPUT_TOKENS": "5000"}, "AICALL_MAX_OUTPUT_TOKENS: expected a value <= 4096"),
        ({"AICALL_KEEPALIVE_SECONDS": "0.2"}, "AICALL_KEEPALIVE_SECONDS: expected a value >= 1"),
        ({"AICALL_TRANSFER_EXTENSION": "6" * 81}, "AICALL_TRANSFER_EXTENSION: expected an extension or queue of at"),
        ({"AICALL_TRANSFER_EXTENSION": "600,1"}, "AICALL_TRANSFER_EXTENSION: expected an extension or queue name"),
        ({"AICALL_MEDIA_TIMEOUT_SECONDS": "0"}, "AICALL_MEDIA_TIMEOUT_SECONDS: expected a value >= 1"),
        ({"AICALL_MEDIA_TIMEOUT_SECONDS": "-5"}, "AICALL_MEDIA_TIMEOUT_SECONDS: expected a value >= 1"),
        ({"AICALL_MEDIA_TIMEOUT_SECONDS": "3601"}, "AICALL_MEDIA_TIMEOUT_SECONDS: expected a value <= 600"),
        ({"AICALL_MEDIA_TIMEOUT_SECONDS": "soon"}, "AICALL_MEDIA_TIMEOUT_SECONDS: expected"),
        ({"AICALL_TOOL_THREADS": "0"}, "AICALL_TOOL_THREADS: expected a value >= 1"),
        ({"AICALL_TOOL_THREADS": "1000"}, "AICALL_TOOL_THREADS: expected a value <= 256"),
        ({"AICALL_TOOL_THREADS": "2.5"}, "AICALL_TOOL_THREADS: expected"),
    ],
)
def test_bad_values_name_the_variable_and_what_was_expected(extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace(".", r"\.")):
        load_settings(AicallSettings, environ={**BASE, **extra})


def test_the_api_key_is_required_and_never_shown() -> None:
    env = {k: v for k, v in BASE.items() if k != "OPENAI_API_KEY"}
    with pytest.raises(ConfigError, match="OPENAI_API_KEY: required setting is missing"):
        load_settings(AicallSettings, environ=env)


def test_the_media_timeout_and_the_tool_threads_have_defaults_and_can_be_set() -> None:
    defaults = load_settings(AicallSettings, environ=BASE)
    assert defaults.media_timeout_seconds == 30 and defaults.tool_threads == 16
    env = {**BASE, "AICALL_MEDIA_TIMEOUT_SECONDS": "7.5", "AICALL_TOOL_THREADS": "4"}
    agent = AicallAgent(load_settings(AicallSettings, environ=env), metrics=AicallMetrics(), store=None)
    try:
        assert agent.settings.media_timeout_seconds == 7.5
        together = threading.Barrier(4, timeout=10)  # four requests at once get a thread each
        assert all(f.result(10) is not None for f in [agent.tool_executor.submit(together.wait) for _ in range(4)])
        names = {agent.tool_executor.submit(lambda: threading.current_thread().name).result(10) for _ in range(12)}
        assert len(names) <= 4, "the tools' requests never run on more threads than that"
    finally:
        agent.tool_executor.shutdown()
