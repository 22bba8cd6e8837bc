"""What the call logic needs from a speech-to-speech model, and nothing more.

The call session speaks only to :class:`ModelSession` and receives only the event
types below. Two providers implement it: OpenAI Realtime (``realtime.py``) and
OpenAI GPT-Live sessions (``live.py``); :func:`open_model_session` builds the one
``AICALL_PROVIDER`` selects.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from centralita.aicall.settings import AicallSettings


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class SessionConfig:
    instructions: str
    voice: str
    law: str
    tools: tuple[ToolSpec, ...] = ()
    vad_type: str = "server_vad"
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    vad_idle_timeout_ms: int | None = None
    vad_eagerness: str = "auto"
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    noise_reduction: str | None = "near_field"
    max_output_tokens: int | None = None


@dataclass(frozen=True)
class HistoryLine:
    """One finished utterance, used to restore a conversation on a new socket."""

    role: Literal["caller", "assistant"]
    text: str


# Events from the model ------------------------------------------------------


@dataclass(frozen=True)
class AudioOut:
    item_id: str
    response_id: str
    audio: bytes


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int
    speech_end_at: float | None = None  # monotonic time the caller's last speech left the agent, when known


@dataclass(frozen=True)
class Transcript:
    role: Literal["caller", "assistant"]
    text: str
    item_id: str
    response_id: str | None = None


@dataclass(frozen=True)
class ResponseStarted:
    response_id: str
    progress: bool


@dataclass(frozen=True)
class FunctionCall:
    call_id: str
    name: str
    arguments: str
    response_id: str


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    status: str
    reason: str | None
    usage: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    function_calls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelError:
    code: str
    message: str
    fatal: bool = False  # the service will not serve this session (its settings were refused)


@dataclass(frozen=True)
class Disconnected:
    reason: str


ModelEvent = (
    AudioOut
    | SpeechStarted
    | SpeechStopped
    | Transcript
    | ResponseStarted
    | FunctionCall
    | ResponseDone
    | ModelError
    | Disconnected
)


class ModelUnavailable(ConnectionError):
    """The model could not be reached or configured within the allowed time."""


AudioHandler = Callable[[AudioOut], None]


class ModelSession(abc.ABC):
    """One conversation with the model for one call."""

    _audio_handler: AudioHandler | None = None

    def on_audio_out(self, handler: AudioHandler | None) -> None:
        """Where reply audio may go at once, without a trip through :meth:`events`.

        A provider may call ``handler`` from its socket's read callback, but only while the
        reader of :meth:`events` has taken every earlier event and waits for the next one,
        so the call sees the events in the same order either way. Providers that do not
        use it deliver every event through :meth:`events`.
        """
        self._audio_handler = handler

    @abc.abstractmethod
    async def connect(self, history: list[HistoryLine] | None = None) -> None:
        """Open the socket, configure the session and replay ``history`` after a drop."""

    @abc.abstractmethod
    def send_audio(self, audio: bytes) -> None:
        """Queue the caller's G.711 audio; never blocks the caller of it."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[ModelEvent]:
        """Events until the socket closes; the last one is :class:`Disconnected`."""

    @abc.abstractmethod
    async def respond(self, instructions: str | None = None) -> None:
        """Ask for a reply in the conversation (greeting, after a tool, after a reconnect)."""

    @abc.abstractmethod
    async def say_progress(self, instructions: str) -> None:
        """Speak a short out-of-band phrase that stays out of the conversation."""

    @abc.abstractmethod
    async def tool_result(self, call_id: str, output: str) -> None:
        """Hand a tool's result to the model (only after its response is done)."""

    @abc.abstractmethod
    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """Tell the model how much of a reply the caller heard."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop the reply being generated."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the socket and its tasks; safe to call twice."""


def open_model_session(settings: AicallSettings, config: SessionConfig, *, name: str = "") -> ModelSession:
    """The model session of one call, for the provider the settings select (not yet connected)."""
    if settings.provider == "live":
        from centralita.aicall.live import LiveSession

        return LiveSession(
            url=settings.live_url,
            model=settings.live_model,
            backend_model=settings.live_backend_model,
            api_key=settings.openai_api_key,
            config=config,
            connect_timeout=settings.connect_timeout_seconds,
            ping_interval=settings.keepalive_seconds,
            ping_timeout=settings.keepalive_seconds,
            name=name,
        )
    from centralita.aicall.realtime import RealtimeSession

    return RealtimeSession(
        url=settings.realtime_url,
        model=settings.realtime_model,
        api_key=settings.openai_api_key,
        config=config,
        connect_timeout=settings.connect_timeout_seconds,
        ping_interval=settings.keepalive_seconds,
        ping_timeout=settings.keepalive_seconds,
        name=name,
    )
