"""Settings of ``python -m centralita.aicall`` (AICALL_*, OPENAI_*, MIKROTIK_* and the shared DB_*).

The OpenAI and MikroTik names are the ones the system was specified with, so an
existing env file keeps working.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from centralita.config import ConfigError, port, setting, url
from centralita.db import DbSettings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

DEFAULT_INSTRUCTIONS = (
    "Eres el asistente telefónico de soporte de un proveedor de internet. Hablas español, con frases "
    "cortas y amables, y nunca inventas datos: usa las herramientas para buscar al cliente (por su "
    "número de teléfono si no dice otra cosa), ver el estado de su servicio, su sesión, su consumo y "
    "hacer ping a su equipo. Si el servicio está cortado por falta de pago, dilo con tacto. Si el "
    "cliente pide una persona o no puedes resolver, transfiérelo. Despídete y termina la llamada "
    "cuando el cliente ya no necesite nada."
)


def _http_url(value: object) -> str | None:
    problem = url(value)
    if problem is None and not str(value).startswith(("http://", "https://")):
        problem = "an http(s):// URL, e.g. http://127.0.0.1:8088"
    return problem


def _ws_url(value: object) -> str | None:
    return None if str(value).startswith(("ws://", "wss://")) else "a ws:// or wss:// URL"


def _optional_port(value: object) -> str | None:
    return None if value == 0 else port(value)


def _routers(value: object) -> str | None:
    for entry in value or []:  # type: ignore[union-attr]
        name, sep, address = str(entry).partition("=")
        if not sep or not name or _http_url(address):
            return "a comma-separated list of name=https://router-address"
    return None


TRANSFER_EXTENSION_MAX = 80  # the calls table's transferred_to column
# No media from Asterisk for this long ends a call (AICALL_MEDIA_TIMEOUT_SECONDS).
MEDIA_TIMEOUT_DEFAULT_S = 30.0


def _dialplan_extension(value: object) -> str | None:
    text = str(value).strip()
    if len(text) > TRANSFER_EXTENSION_MAX:
        return f"an extension or queue of at most {TRANSFER_EXTENSION_MAX} characters"
    if any(c.isspace() or c in ",|()" for c in text):
        return "an extension or queue name without spaces, commas, '|' or parentheses (a dialplan target)"
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AicallSettings(DbSettings):
    # Asterisk
    ari_url: str = setting("AICALL_ARI_URL", default="http://127.0.0.1:8088", check=_http_url)
    ari_user: str = setting("AICALL_ARI_USER", help="ARI user from ari.conf")
    ari_password: str = setting("AICALL_ARI_PASSWORD", secret=True)
    ari_app: str = setting("AICALL_ARI_APP", default="centralita-ai")
    media: str = setting("AICALL_MEDIA", default="rtp", choices=("rtp", "websocket"))
    codec: str = setting("AICALL_CODEC", default="ulaw", choices=("ulaw", "alaw"))
    rtp_bind: str = setting("AICALL_RTP_BIND", default="127.0.0.1", help="address the agent's RTP port listens on")
    rtp_advertise: str = setting(
        "AICALL_RTP_ADVERTISE", default="", help="address Asterisk sends RTP to (default: AICALL_RTP_BIND)"
    )
    rtp_port_min: int = setting("AICALL_RTP_PORT_MIN", default=0, check=_optional_port)
    rtp_port_max: int = setting("AICALL_RTP_PORT_MAX", default=0, check=_optional_port)
    max_calls: int = setting("AICALL_MAX_CALLS", default=200, minimum=1, maximum=5000)
    input_frames: int = setting(
        "AICALL_INPUT_FRAMES", default=1, minimum=1, maximum=5, help="20 ms caller frames per message to the model"
    )
    media_timeout_seconds: float = setting(
        "AICALL_MEDIA_TIMEOUT_SECONDS",
        default=MEDIA_TIMEOUT_DEFAULT_S,
        minimum=1,
        maximum=600,
        help="a call with no media from Asterisk for this long is hung up (media_timeout)",
    )
    # the model
    provider: str = setting(
        "AICALL_PROVIDER", default="realtime", choices=("realtime", "live"), help="OpenAI Realtime or GPT-Live sessions"
    )
    openai_api_key: str = setting("OPENAI_API_KEY", secret=True)
    realtime_model: str = setting("OPENAI_REALTIME_MODEL", default="gpt-realtime")
    realtime_url: str = setting("OPENAI_REALTIME_URL", default="wss://api.openai.com/v1/realtime", check=_ws_url)
    live_model: str = setting("OPENAI_LIVE_MODEL", default="gpt-live-1")
    live_url: str = setting("OPENAI_LIVE_URL", default="wss://api.openai.com/v1/live/sessions", check=_ws_url)
    live_backend_model: str = setting(
        "OPENAI_LIVE_BACKEND_MODEL", default="gpt-5.5", help="the Responses model GPT-Live delegates tool calls to"
    )
    voice: str = setting("AICALL_VOICE", default="marin")
    instructions: str = setting("AICALL_INSTRUCTIONS", default=DEFAULT_INSTRUCTIONS)
    instructions_file: Path | None = setting(  # noqa: RUF009 - setting() builds a dataclasses.field
        "AICALL_INSTRUCTIONS_FILE", default=None, help="a text file that replaces AICALL_INSTRUCTIONS"
    )
    transcription_model: str = setting("AICALL_TRANSCRIPTION_MODEL", default="gpt-4o-mini-transcribe")
    vad_type: str = setting("AICALL_VAD_TYPE", default="server_vad", choices=("server_vad", "semantic_vad"))
    vad_threshold: float = setting("AICALL_VAD_THRESHOLD", default=0.5, minimum=0.0, maximum=1.0)
    vad_prefix_padding_ms: int = setting("AICALL_VAD_PREFIX_PADDING_MS", default=300, minimum=0, maximum=2000)
    vad_silence_ms: int = setting("AICALL_VAD_SILENCE_MS", default=500, minimum=100, maximum=5000)
    vad_idle_timeout_ms: int = setting("AICALL_VAD_IDLE_TIMEOUT_MS", default=0, minimum=0, maximum=60000)
    vad_eagerness: str = setting("AICALL_VAD_EAGERNESS", default="auto", choices=("low", "medium", "high", "auto"))
    # 0: no limit ("inf"); the service takes 1 to 4096
    max_output_tokens: int = setting("AICALL_MAX_OUTPUT_TOKENS", default=0, minimum=0, maximum=4096)
    connect_timeout_seconds: float = setting("AICALL_CONNECT_TIMEOUT_SECONDS", default=5.0, minimum=0.5, maximum=30)
    keepalive_seconds: float = setting(
        "AICALL_KEEPALIVE_SECONDS",
        default=3.0,
        minimum=1,
        maximum=30,
        help="model socket: a ping this often, lost when its pong is this late (a silent drop found within twice this)",
    )
    reconnect_window_seconds: float = setting(
        "AICALL_RECONNECT_WINDOW_SECONDS", default=5.0, minimum=0.5, maximum=30, help="time allowed to restore a drop"
    )
    # tools and the call flow
    tool_timeout_seconds: float = setting("AICALL_TOOL_TIMEOUT_SECONDS", default=10.0, minimum=0.5, maximum=120)
    ping_timeout_seconds: float = setting("AICALL_PING_TIMEOUT_SECONDS", default=30.0, minimum=1, maximum=120)
    tool_threads: int = setting(
        "AICALL_TOOL_THREADS",
        default=16,
        minimum=1,
        maximum=256,
        help="threads for the tools' router requests, shared by every call",
    )
    progress_phrase: str = setting("AICALL_PROGRESS_PHRASE", default="Un momento, por favor.")
    progress_delay_seconds: float = setting("AICALL_PROGRESS_DELAY_SECONDS", default=1.5, minimum=0.2, maximum=10)
    progress_repeat_seconds: float = setting("AICALL_PROGRESS_REPEAT_SECONDS", default=8.0, minimum=2, maximum=60)
    transfer_context: str = setting("AICALL_TRANSFER_CONTEXT", default="transfer")
    transfer_extension: str = setting(
        "AICALL_TRANSFER_EXTENSION",
        default="human",
        check=_dialplan_extension,
        help="extension or queue; 'none' disables transfer_to_human",
    )
    apology_sound: str = setting("AICALL_APOLOGY_SOUND", default="sound:cannot-complete-temp-error")
    spool_dir: Path = setting("AICALL_SPOOL_DIR", default=Path("/var/lib/centralita/aicall/spool"))  # noqa: RUF009
    enable_mikrotik_tools: bool = setting("ENABLE_MIKROTIK_TOOLS", default=False)
    mikrotik_api_url: str | None = setting("MIKROTIK_API_URL", default=None, check=_http_url)
    mikrotik_api_token: str | None = setting("MIKROTIK_API_TOKEN", default=None, secret=True)
    mikrotik_routers: list[str] = setting("MIKROTIK_ROUTERS", default=[], check=_routers)  # noqa: RUF009
    mikrotik_user: str = setting("MIKROTIK_USER", default="")
    mikrotik_password: str = setting("MIKROTIK_PASSWORD", default="", secret=True)
    mikrotik_tls_verify: str = setting(
        "MIKROTIK_TLS_VERIFY", default="true", help="true, false (self-signed router certificates) or a CA bundle path"
    )
    # the agent
    log_level: str = setting("AICALL_LOG_LEVEL", default="INFO", choices=LOG_LEVELS)
    metrics_host: str = setting("AICALL_METRICS_HOST", default="127.0.0.1")
    metrics_port: int = setting("AICALL_METRICS_PORT", default=9471, check=_optional_port)

    def __post_init__(self) -> None:
        problems = []
        if self.enable_mikrotik_tools and not (self.mikrotik_api_url or self.mikrotik_routers):
            problems.append("ENABLE_MIKROTIK_TOOLS: expected MIKROTIK_API_URL or MIKROTIK_ROUTERS to be set")
        if self.mikrotik_routers and not self.mikrotik_user:
            problems.append("MIKROTIK_USER: required setting is missing (MIKROTIK_ROUTERS is set)")
        if (self.rtp_port_min == 0) != (self.rtp_port_max == 0) or self.rtp_port_min > self.rtp_port_max:
            problems.append("AICALL_RTP_PORT_MIN/MAX: expected both 0 or a range with MIN <= MAX")
        if problems:
            raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))

    def load_instructions(self) -> str:
        if self.instructions_file is None:
            return self.instructions
        try:
            return self.instructions_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"AICALL_INSTRUCTIONS_FILE: cannot read {self.instructions_file}: {exc.strerror}"
            ) from exc

    @property
    def model_id(self) -> str:
        """The voice model of the chosen provider (recorded with each call)."""
        return self.live_model if self.provider == "live" else self.realtime_model

    @property
    def transfer_target(self) -> str | None:
        """The extension callers are transferred to, or None when transfers are off."""
        target = self.transfer_extension.strip()
        return None if target.lower() in ("", "none") else target

    @property
    def tls_verify(self) -> bool | str:
        low = self.mikrotik_tls_verify.strip().lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0"):
            return False
        return self.mikrotik_tls_verify
