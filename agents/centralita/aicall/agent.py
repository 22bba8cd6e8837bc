"""The AI call agent: one process, many calls, driven by ARI events.

For each channel that enters ``Stasis(<app>)`` the agent answers, creates a mixing
bridge and an externalMedia channel (RTP or chan_websocket), bridges the two and
runs a :class:`CallSession` until the call ends; then it removes what it created in
Asterisk and writes the call record. After every (re)connection to ARI it checks
that the calls it holds still exist, so an Asterisk restart ends them cleanly.

A call is tracked from its StasisStart on, not only once its session runs: a caller
who hangs up while the call is being set up, or an agent stopping meanwhile, ends
the call at the next step of the set-up, before any model socket is opened. The
record is written beside Asterisk's clean-up, not after it, so a slow or hung
Asterisk at shutdown cannot cost the record.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from centralita.aicall.media import CallerRtp, MediaPath, MediaWatch, caller_was_quiet
from centralita.aicall.metrics import AicallMetrics
from centralita.aicall.provider import SessionConfig, open_model_session
from centralita.aicall.record import CallRecord
from centralita.aicall.rtp import Pacer, RtpMedia, RtpPort
from centralita.aicall.session import CallPolicy, CallSession, call_tools
from centralita.aicall.settings import AicallSettings
from centralita.aicall.store import CallStore
from centralita.aicall.tools.base import ToolBox, tool_executor
from centralita.aicall.tools.mikrotik import HttpApiBackend, Router, RouterOsBackend, mikrotik_tools
from centralita.aicall.wsmedia import WebsocketMedia
from centralita.asterisk.ari import AriClient, AriError, AriNotFound

log = logging.getLogger("centralita.aicall.agent")

MEDIA_SUFFIX = "-media"
BRIDGE_SUFFIX = "-bridge"
APOLOGY_MAX_S = 6.0
HANGUP_EVENTS = ("StasisEnd", "ChannelDestroyed", "ChannelHangupRequest")
# At shutdown: how long the calls get to end on their own (hang-up, Asterisk's clean-up), how long
# a call cut short after that gets before it is cut again, and how long the records get to reach
# the database before they go to the spool at once.
STOP_CALLS_S = 10.0
STOP_CUT_S = 1.0
STOP_CUT_ROUNDS = 5
STOP_RECORDS_S = 5.0


class _SetupEnded(Exception):
    """The call ended while it was being set up: the caller left, or the agent is stopping."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def build_tools(settings: AicallSettings, executor: Executor | None = None) -> ToolBox:
    tools = call_tools(settings.transfer_target)
    if settings.enable_mikrotik_tools:
        # the cap for a request made outside a tool; inside one, a request may last what its own tool has left
        longest = max(settings.tool_timeout_seconds, settings.ping_timeout_seconds)
        if settings.mikrotik_api_url:
            backend: Any = HttpApiBackend(
                settings.mikrotik_api_url, settings.mikrotik_api_token, longest, executor=executor
            )
        else:
            routers = []
            for entry in settings.mikrotik_routers:
                name, _, address = entry.partition("=")
                routers.append(
                    Router(name, address, settings.mikrotik_user, settings.mikrotik_password, settings.tls_verify)
                )
            backend = RouterOsBackend(routers, longest, executor=executor)
        tools += mikrotik_tools(backend, settings.tool_timeout_seconds, settings.ping_timeout_seconds)
    return ToolBox(tools)


def session_config(settings: AicallSettings, tools: ToolBox) -> SessionConfig:
    return SessionConfig(
        instructions=settings.load_instructions(),
        voice=settings.voice,
        law=settings.codec,
        tools=tools.specs,
        vad_type=settings.vad_type,
        vad_threshold=settings.vad_threshold,
        vad_prefix_padding_ms=settings.vad_prefix_padding_ms,
        vad_silence_duration_ms=settings.vad_silence_ms,
        vad_idle_timeout_ms=settings.vad_idle_timeout_ms or None,
        vad_eagerness=settings.vad_eagerness,
        transcription_model=settings.transcription_model or None,
        max_output_tokens=settings.max_output_tokens or None,
    )


class AriCallControl:
    """Call control for one caller channel through ARI."""

    def __init__(self, agent: AicallAgent, channel_id: str) -> None:
        self.agent = agent
        self.channel_id = channel_id

    async def transfer(self, target: str) -> None:
        await self.agent.ari.continue_in_dialplan(self.channel_id, self.agent.settings.transfer_context, target)

    async def hangup(self) -> None:
        await self.agent.ari.hangup(self.channel_id)

    async def play_apology(self) -> None:
        playback_id = f"apology-{uuid.uuid4().hex[:12]}"
        finished = self.agent.expect_playback(playback_id)
        try:
            await self.agent.ari.play(self.channel_id, self.agent.settings.apology_sound, playback_id)
            await asyncio.wait_for(finished, APOLOGY_MAX_S)
        except TimeoutError:
            log.info("call %s: apology prompt still playing after %.0f s; going on", self.channel_id, APOLOGY_MAX_S)
        except AriError as exc:
            log.warning("call %s: apology prompt not played: %s", self.channel_id, exc)
        finally:
            self.agent.forget_playback(playback_id)


class AicallAgent:
    def __init__(self, settings: AicallSettings, *, metrics: AicallMetrics, store: CallStore | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.ari = AriClient(settings.ari_url, settings.ari_user, settings.ari_password, settings.ari_app)
        # Tool requests wait on routers that may not answer for their whole timeout: they get threads
        # of their own, so ARI requests and record writes never queue behind them in asyncio's pool.
        self.tool_executor = tool_executor(settings.tool_threads)
        self.tools = build_tools(settings, self.tool_executor)
        self.config = session_config(settings, self.tools)
        self.pacer = Pacer()
        ports = (settings.rtp_port_min, settings.rtp_port_max) if settings.rtp_port_min else None
        self.rtp_port = RtpPort(settings.rtp_bind, ports, max_calls=settings.max_calls)  # bound at the first call
        self.sessions: dict[str, CallSession] = {}
        self._calls: dict[str, asyncio.Task[None]] = {}
        # calls being set up: channel id -> the end asked for meanwhile ("" while none)
        self._setting_up: dict[str, str] = {}
        self._records: set[asyncio.Task[bool]] = set()
        self.stop_calls_s = STOP_CALLS_S
        self.stop_cut_s = STOP_CUT_S
        self.stop_records_s = STOP_RECORDS_S
        self._playbacks: dict[str, asyncio.Future[None]] = {}
        self.policy = CallPolicy(
            progress_phrase=settings.progress_phrase,
            progress_delay=settings.progress_delay_seconds,
            progress_repeat=settings.progress_repeat_seconds,
            reconnect_window=settings.reconnect_window_seconds,
            connect_timeout=settings.connect_timeout_seconds,
            transfer_target=settings.transfer_target,
            input_frames=settings.input_frames,
        )

    # events -----------------------------------------------------------------------------

    async def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        channel = event.get("channel")
        if not isinstance(channel, dict):
            channel = {}
        channel_id = channel.get("id")
        if not isinstance(channel_id, str):
            channel_id = ""
        if kind == "StasisStart":
            if not channel_id:
                log.warning("ARI StasisStart without a channel id ignored: %.200r", event)
                return
            if channel_id.endswith(MEDIA_SUFFIX):
                return  # our own externalMedia channel joining the app
            self._start_call(channel)
        elif kind in HANGUP_EVENTS:
            self._caller_left(channel_id)
        elif kind == "PlaybackFinished":
            playback = event.get("playback")
            waiter = self._playbacks.get(playback.get("id", "")) if isinstance(playback, dict) else None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _caller_left(self, channel_id: str) -> None:
        session = self.sessions.get(channel_id)
        if session is not None:
            session.caller_hung_up()
        elif self._setting_up.get(channel_id) == "":
            # the set-up ends the call at its next step (no session, no model socket opened)
            log.info("call %s: the caller hung up during the call's set-up", channel_id)
            self._setting_up[channel_id] = "caller_hangup"

    async def on_connect(self) -> None:
        """After a (re)connection: end the calls Asterisk no longer has (it restarted)."""
        for channel_id, session in list(self.sessions.items()):
            try:
                alive = await self.ari.get_channel(channel_id)
            except AriError as exc:
                log.warning("cannot check call %s after reconnecting: %s", channel_id, exc)
                continue
            if alive is None:
                log.warning("call %s: gone from Asterisk after the ARI reconnection", channel_id)
                session.end("asterisk_lost")

    def expect_playback(self, playback_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._playbacks[playback_id] = future
        return future

    def forget_playback(self, playback_id: str) -> None:
        self._playbacks.pop(playback_id, None)

    def _start_call(self, channel: dict[str, Any]) -> None:
        channel_id = channel["id"]
        if channel_id in self._calls:
            return
        record = CallRecord(
            channel_id,
            (channel.get("caller") or {}).get("number", ""),
            (channel.get("dialplan") or {}).get("exten", ""),
            channel_name=channel.get("name", ""),
            media_kind=self.settings.media,
            model=self.settings.model_id,
        )
        if self.calls_in_progress >= self.settings.max_calls:
            call = self._reject(record)
        else:
            self._setting_up[channel_id] = ""  # from here a hangup event for it is remembered
            call = self._call(record)
        task = asyncio.get_running_loop().create_task(call, name=f"call-{channel_id}")
        self._calls[channel_id] = task
        task.add_done_callback(lambda _: self._finished(channel_id))

    def _finished(self, channel_id: str) -> None:
        self._calls.pop(channel_id, None)
        self._setting_up.pop(channel_id, None)  # also when the task was cancelled before it started

    @property
    def calls_in_progress(self) -> int:
        """Calls being set up and calls running: what counts against AICALL_MAX_CALLS."""
        return len(self._setting_up) + len(self.sessions)

    def _go_on(self, channel_id: str) -> None:
        """Between set-up steps: stop here if the caller left or the agent is stopping."""
        reason = self._setting_up.get(channel_id)
        if reason:
            raise _SetupEnded(reason)

    # one call -----------------------------------------------------------------------------

    async def _open_media(self, channel_id: str) -> MediaPath:
        media_id = channel_id + MEDIA_SUFFIX
        codec = self.settings.codec
        if self.settings.media == "rtp":
            media = RtpMedia(codec, self.pacer, port=self.rtp_port, name=channel_id)
            await media.start()
            host = self.settings.rtp_advertise or self.settings.rtp_bind
            try:
                reply = await self.ari.external_media(media_id, f"{host}:{media.local[1]}", codec)
                variables = reply.get("channelvars") or {}
                address, port = variables.get("UNICASTRTP_LOCAL_ADDRESS"), variables.get("UNICASTRTP_LOCAL_PORT")
                if not (address and port):
                    # every call shares one port: the address Asterisk sends from is what tells calls apart
                    raise AriError(f"externalMedia for {media_id} did not say its RTP address (UNICASTRTP_LOCAL_*)")
                media.set_remote(address, int(port))
            except BaseException:
                await media.close()
                raise
            return media
        reply = await self.ari.external_media(
            media_id, "INCOMING", codec, encapsulation="none", transport="websocket", connection_type="server"
        )
        connection = (reply.get("channelvars") or {}).get("MEDIA_WEBSOCKET_CONNECTION_ID") or media_id
        parts = urlsplit(self.ari.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = urlunsplit((scheme, parts.netloc, "/media/" + quote(connection, safe=""), "", ""))
        media = WebsocketMedia(
            codec, url, user=self.settings.ari_user, password=self.settings.ari_password, name=channel_id
        )
        await media.start()
        return media

    async def _call(self, record: CallRecord) -> None:
        channel_id = record.call_id
        bridge_id = channel_id + BRIDGE_SUFFIX
        session: CallSession | None = None
        media: MediaPath | None = None
        try:
            await self.ari.answer(channel_id)
            record.answered_at = time.time()
            self._go_on(channel_id)
            await self.ari.create_bridge(bridge_id)
            self._go_on(channel_id)
            media = await self._open_media(channel_id)
            self._go_on(channel_id)
            await self.ari.add_to_bridge(bridge_id, channel_id, channel_id + MEDIA_SUFFIX)
            self._go_on(channel_id)
            record.recording_path = await self.ari.get_variable(channel_id, "MIXMONITOR_FILENAME")
            self._go_on(channel_id)
            model = open_model_session(self.settings, self.config, name=channel_id)
            session = CallSession(
                record=record,
                media=media,
                model=model,
                tools=self.tools,
                control=AriCallControl(self, channel_id),
                policy=self.policy,
                metrics=self.metrics,
            )
            del self._setting_up[channel_id]  # no await in between: a hangup event now finds the session
            self.sessions[channel_id] = session
            await session.run()
        except _SetupEnded as ended:
            record.end_reason = ended.reason
        except AriNotFound as exc:
            # Asterisk no longer has the caller's channel (or what was made for it): the caller left
            log.info("call %s: gone from Asterisk during set-up (%s)", channel_id, exc)
            record.end_reason = record.end_reason or "caller_hangup"
        except (AriError, OSError) as exc:
            log.error("call %s: setup failed: %s", channel_id, exc)
            record.end_reason = record.end_reason or self._setting_up.get(channel_id) or "error"
        except asyncio.CancelledError:
            # cut short at shutdown: the stop asked for, or what the caller did before it
            record.end_reason = record.end_reason or self._setting_up.get(channel_id) or "agent_stopped"
            raise
        except Exception:  # a bug or an unexpected failure (a media handshake refused...) ends this call only
            log.exception("call %s: setup failed", channel_id)
            record.end_reason = record.end_reason or self._setting_up.get(channel_id) or "error"
        finally:
            self._setting_up.pop(channel_id, None)
            self.sessions.pop(channel_id, None)
            record.end_reason = record.end_reason or "error"
            if record.ended_at is None:  # the session did not get to close the call
                record.ended_at = time.time()
                self.metrics.calls.inc(reason=record.end_reason)
            saving = self._save(record)  # started before any wait on Asterisk, which may be slow or hung
            try:
                if session is None and media is not None:
                    await media.close()
                await self._cleanup(channel_id, bridge_id, record)
            finally:
                if saving is not None:
                    await asyncio.shield(saving)  # a cancelled call leaves its record's write running

    def _save(self, record: CallRecord) -> asyncio.Task[bool] | None:
        """Write the record in a task of the agent's own, which a call cut short does not cancel."""
        if self.store is None:
            return None
        task = asyncio.get_running_loop().create_task(self._write(record), name=f"record-{record.call_id}")
        self._records.add(task)
        task.add_done_callback(self._records.discard)
        return task

    async def _write(self, record: CallRecord) -> bool:
        assert self.store is not None
        try:
            return await self.store.save(record)
        except Exception:  # the store spools or logs what it cannot write; anything else is a bug, said once here
            log.exception("call %s: the record could not be saved", record.call_id)
            return False

    async def _cleanup(self, channel_id: str, bridge_id: str, record: CallRecord) -> None:
        """Remove what the call created in Asterisk; hang the caller up unless transferred."""
        steps: list[Callable[[], Awaitable[Any]]] = [
            lambda: self.ari.hangup(channel_id + MEDIA_SUFFIX),
            lambda: self.ari.destroy_bridge(bridge_id),
        ]
        if not record.transferred_to:
            steps.append(lambda: self.ari.hangup(channel_id))
        for step in steps:  # each request made when its turn comes: a clean-up cut short leaves none unsent
            try:
                await step()
            except AriError as exc:
                log.warning("call %s: cleanup step failed: %s", channel_id, exc)

    async def _reject(self, record: CallRecord) -> None:
        log.warning("call %s rejected: %d calls in progress", record.call_id, self.calls_in_progress)
        record.end_reason = "rejected_busy"
        try:
            if self.settings.transfer_target:
                await self.ari.continue_in_dialplan(
                    record.call_id, self.settings.transfer_context, self.settings.transfer_target
                )
                record.transferred_to = self.settings.transfer_target
            else:
                await self.ari.hangup(record.call_id, reason="congestion")
        except AriError as exc:
            log.warning("call %s: could not reject cleanly: %s", record.call_id, exc)
        finally:
            record.ended_at = time.time()
            self.metrics.calls.inc(reason=record.end_reason)
            saving = self._save(record)
            if saving is not None:
                await asyncio.shield(saving)

    # the process --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve calls until cancelled; then end every call and release everything."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self.ari.run_events(self.on_event, self.on_connect)),
            loop.create_task(self._watch_media(), name="media-watch"),
        ]
        if self.store is not None:
            tasks.append(loop.create_task(self.store.replay_forever()))
        try:
            await asyncio.gather(*tasks)
        finally:
            try:
                for task in tasks:
                    task.cancel()
                await self._stop_calls()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                self.ari.close()
                self.tool_executor.shutdown(wait=False, cancel_futures=True)
                try:
                    await self.pacer.close()
                finally:
                    self.rtp_port.close()

    async def _watch_media(self) -> None:
        """End every call Asterisk sent no media for in ``AICALL_MEDIA_TIMEOUT_SECONDS`` (``media_timeout``).

        A bridge stuck in Asterisk, or the network between Asterisk and the agent broken, leaves
        ARI quiet: without this the caller would sit in silence until the call's longest duration.
        Only running calls are watched, from the moment they are bridged: a call being set up has
        no media to wait for yet. The session's end hangs the caller up through ARI and releases
        the call as any other end does.

        Asterisk's two-party bridge relays audio frames as they come: a caller who sends no RTP
        (on hold, silence suppression) or only comfort noise leaves the agent without media too,
        and that call is fine. So a silence is only held against the call when Asterisk received
        audio from the caller during it (ARI's RTP statistics of the caller's channel, asked at
        half the timeout and at its end: packets larger than comfort noise), or cannot say.
        """
        watch = MediaWatch(self.settings.media_timeout_seconds)
        received: dict[MediaPath, CallerRtp | None] = {}  # the caller's RTP in Asterisk at half the timeout
        while True:
            await asyncio.sleep(watch.interval)
            try:
                await self._check_media(watch, received)
            except Exception:  # a bug here must not stop the agent (run() ends with its tasks): said, then on
                log.exception("media watch: the check failed; the next one runs as usual")

    async def _check_media(self, watch: MediaWatch, received: dict[MediaPath, CallerRtp | None]) -> None:
        """One pass of :meth:`_watch_media` over every running call."""
        calls = {session.media: session for session in self.sessions.values() if not session.ended}
        halfway, silent = watch.check(calls, time.monotonic())
        for media in [media for media in received if media not in calls]:
            del received[media]
        if not (halfway or silent):
            return
        asked = halfway + silent
        readings = await asyncio.gather(*(self._caller_rtp(calls[media].name) for media in asked))
        for media, reading in zip(asked, readings, strict=True):
            session = calls[media]
            if media in halfway:
                received[media] = reading
                continue
            before = received.pop(media, None)
            if session.ended:
                continue
            if caller_was_quiet(before, reading):
                log.info(
                    "call %s: no media from Asterisk for %.0f s, and no audio from the caller either (its RTP in "
                    "Asterisk went from %s to %s: on hold, silence suppression, comfort noise): the call goes on",
                    session.name, watch.timeout, before, reading,
                )  # fmt: skip
                watch.restart(media)
                continue
            log.warning(
                "call %s: no media from Asterisk for %.0f s (%d frames received in all), while the caller's RTP "
                "in Asterisk went from %s to %s (None: ARI could not say); hanging up",
                session.name, watch.timeout, media.frames_in, before, reading,
            )  # fmt: skip
            session.end("media_timeout")

    async def _caller_rtp(self, channel_id: str) -> CallerRtp | None:
        """What Asterisk has received from the caller so far, or None when ARI cannot say."""
        path = f"/channels/{quote(channel_id, safe='')}/rtp_statistics"
        try:
            stats = await self.ari.request("GET", path)
        except AriError as exc:  # not found too: a channel without RTP (not PJSIP), or gone
            log.warning("call %s: Asterisk's RTP statistics of the caller are not available: %s", channel_id, exc)
            return None
        return CallerRtp.from_statistics(stats)

    async def _stop_calls(self) -> None:
        """End every call, those still being set up too, and see every record saved or spooled.

        Never raises: a slow or hung Asterisk only shortens the calls' clean-up. A call still
        ending after ``stop_calls_s`` is cancelled (again, if it takes that long too); its record's
        write runs in a task of its own, and a write still waiting for the database after
        ``stop_records_s`` is cancelled, which puts the record in the spool at once.
        """
        for session in list(self.sessions.values()):
            session.end("agent_stopped")
        for channel_id, reason in self._setting_up.items():
            self._setting_up[channel_id] = reason or "agent_stopped"
        pending = set(self._calls.values())
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.stop_calls_s)
        for _ in range(STOP_CUT_ROUNDS):
            if not pending:
                break
            log.warning("stopping: %d calls still ending (Asterisk slow?); cutting them short", len(pending))
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=self.stop_cut_s)
        if pending:
            log.error("stopping: %d calls did not end: %s", len(pending), ", ".join(t.get_name() for t in pending))
        records = set(self._records)
        if records:
            _, late = await asyncio.wait(records, timeout=self.stop_records_s)
            if late:
                log.warning("stopping: %d call records still waiting for the database; spooling them", len(late))
            for task in late:
                task.cancel()
            await asyncio.gather(*records, return_exceptions=True)
