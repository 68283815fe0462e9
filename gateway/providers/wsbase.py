"""What every JSON-over-WebSocket realtime model API shares, written once.

GLM-Realtime and OpenAI Realtime differ in their events, not in their plumbing: one WebSocket
per call opened with an auth header, JSON events both ways, a reader task that turns server
events into our typed events on a queue, a bounded close, and "the session died" always
reported as a fatal `ProviderError` before `events()` ends. Subclasses supply `_translate`
(server event -> our events) and the intents.

The socket itself (aiohttp's client, its options, the bounded close) is wsclient.py's. It goes
through the app's one `ClientSession` (`http`); a provider built without one (tests, scripts)
makes its own session and closes it in `close()`.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import itertools
from typing import AsyncIterator, Collection

import aiohttp
from aiohttp import WSMsgType

from ..clock import monotonic
from ..logs import CallLogger
from ..speedups import dumps, loads
from .base import (AudioDelta, InputTranscript, Provider, ProviderConnectError, ProviderError, ProviderEvent,
                   SpeechStarted, SpeechStopped)
from .wsclient import CLOSE_SECONDS, close_socket, describe_connect_error, open_socket, transport_of

_END = object()
MAX_PENDING_EVENTS = 1000


class JsonWsProvider(Provider):
    label = "model"  # how log lines and errors name the service ("GLM", "OpenAI")
    task_prefix = "model"  # reader task names start with it (tests check no task outlives a call)
    heartbeat_timeout: float | None = None  # seconds without any event that mean a dead upstream

    def __init__(self, log: CallLogger, http: aiohttp.ClientSession | None = None):
        """`http`: the app's client session the socket is opened through (None: one of its own)."""
        self.log = log
        self._http = http
        self._own_http: aiohttp.ClientSession | None = None  # made at the first open when http is None
        self._ids = itertools.count(1)
        self._fresh_connection()

    def _fresh_connection(self) -> None:
        """The state of one socket: none yet, nothing read, not set up."""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._transport: asyncio.Transport | None = None
        # Bounded: if the call falls behind, the reader waits (the model's socket then back-pressures
        # through TCP) instead of buffering without limit.
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=MAX_PENDING_EVENTS)
        self._reader: asyncio.Task | None = None
        self._last_rx = monotonic()
        self._closed = False
        self._ready = asyncio.Event()  # set by the subclass when the session is configured
        self._setup_error: str | None = None  # set with _ready when set-up was refused

    async def _reopen(self) -> None:
        """Drop a socket whose set-up was refused, ready to connect again (the settings stay)."""
        await self.close()
        self._fresh_connection()

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _translate(self, msg: dict) -> list[ProviderEvent]:
        """One server event (a JSON object) -> zero or more of our events."""

    def _translate_shared(self, t: object, msg: dict, rid: str) -> list[ProviderEvent] | None:
        """Server events GLM and OpenAI name and shape alike (GLM follows OpenAI's first realtime
        protocol); None when `t` is not one of them, so the subclass goes on."""
        if t == "input_audio_buffer.speech_started":
            return [SpeechStarted()]
        if t == "input_audio_buffer.speech_stopped":
            return [SpeechStopped()]
        if t == "conversation.item.input_audio_transcription.completed":
            return [InputTranscript(str(msg.get("transcript", "")), str(msg.get("item_id", "")))]
        if t == "conversation.item.input_audio_transcription.failed":
            self.log.info("model_transcription_failed", error=str(msg.get("error", ""))[:200])
            return []
        return None

    # The `error` event as OpenAI's protocol shapes it (Qwen's follows it): which codes end the
    # session, which a fresh session survives, which are a harmless race. Subclasses set them.
    fatal_codes: Collection[str] = ()
    renewable_codes: Collection[str] = ()
    benign_codes: Collection[str] = ()

    def _error_log_fields(self, err: dict) -> dict:
        """What else of an error event goes into its log line."""
        return {}

    def _error(self, msg: dict) -> list[ProviderEvent]:
        err = msg.get("error") if isinstance(msg.get("error"), dict) else {}
        code = str(err.get("code") or err.get("type") or "unknown")
        text = str(err.get("message", ""))
        if not self._ready.is_set():  # session.update refused: connect() reports it
            self._setup_error = f"{code}: {text[:200]}"
            self._ready.set()
            return []
        if code in self.benign_codes:
            self.log.debug("model_error_benign", code=code)
            return [ProviderError(code, text)]
        fatal = code in self.fatal_codes
        self.log.warning("model_error", code=code, type=err.get("type"), message=text[:300], fatal=fatal,
                         **self._error_log_fields(err))
        return [ProviderError(code, text, fatal=fatal, renewable=code in self.renewable_codes)]

    def _audio_delta(self, msg: dict, rid: str) -> list[ProviderEvent]:
        try:
            audio = base64.b64decode(msg.get("delta", ""), validate=True)
        except (ValueError, TypeError):
            self.log.warning("model_bad_event", reason="audio delta is not base64")
            return []
        return [AudioDelta(rid, str(msg.get("item_id", "")), audio)]

    def _stamp(self, event: dict) -> dict:
        event.setdefault("event_id", f"gw_{next(self._ids)}")
        return event

    # ------------------------------------------------------------------ session
    async def _open(self, url: str, headers: dict[str, str], timeout: float) -> None:
        session = self._http
        if session is None:
            if self._own_http is None:
                self._own_http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
            session = self._own_http
        try:
            self._ws = await open_socket(session, url, headers, timeout)
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError, ValueError) as e:
            await self._close_own_http()
            raise ProviderConnectError(f"cannot open {self.label} session: {describe_connect_error(e)}",
                                       auth_refused=isinstance(e, aiohttp.WSServerHandshakeError)
                                       and e.status == 401) from None
        self._transport = transport_of(self._ws)
        self._last_rx = monotonic()
        self._reader = asyncio.create_task(self._read_loop(), name=f"{self.task_prefix}-reader")

    async def _close_own_http(self) -> None:
        own, self._own_http = self._own_http, None
        if own is not None:
            await own.close()

    async def _wait_ready(self, timeout: float, what: str) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise ProviderConnectError(f"{self.label} did not confirm {what} within {timeout:g} s") from None
        if self._setup_error is not None:
            await self.close()
            raise ProviderConnectError(f"{self.label} refused {what}: {self._setup_error}")
        if self._closed:
            raise ProviderConnectError(f"{self.label} closed the session during set-up")

    async def _send(self, event: dict) -> None:
        ws = self._ws
        if ws is None or self._closed:
            return
        try:
            await ws.send_frame(dumps(self._stamp(event)), WSMsgType.TEXT)  # dumps gives UTF-8 bytes
        except (aiohttp.ClientConnectionError, ConnectionError):
            pass  # the reader reports the close; a send racing it is not a second error

    # Both services take the same two client events for tool results and text: an item in the
    # conversation, then (optionally) a request to respond. Only the item's shape differs.
    def _text_item(self, text: str) -> dict:
        return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}

    def _tool_output_item(self, call_id: str, output: str) -> dict:
        return {"type": "function_call_output", "call_id": call_id, "output": output}

    async def _add_item(self, item: dict, respond: bool) -> None:
        await self._send({"type": "conversation.item.create", "item": item})
        if respond:
            await self._send({"type": "response.create"})

    async def send_tool_result(self, call_id: str, output: str, respond: bool = True) -> None:
        await self._add_item(self._tool_output_item(call_id, output), respond)

    async def send_text(self, text: str, respond: bool = True) -> None:
        await self._add_item(self._text_item(text), respond)

    async def close(self) -> None:
        if self._closed and self._reader is None and self._own_http is None:
            return
        self._closed = True
        ws, self._ws = self._ws, None
        transport, self._transport = self._transport, None
        try:
            if ws is not None:
                await close_socket(ws, transport, CLOSE_SECONDS)
        finally:  # also when the caller's own time limit cancels the close
            if self._reader is not None:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._reader
                self._reader = None
            await self._close_own_http()
            self._put_last(_END)

    async def events(self) -> AsyncIterator[ProviderEvent]:
        while True:
            ev = await self._queue.get()
            if ev is _END:
                self._put_last(_END)  # later iterations end too
                return
            yield ev

    def _put_last(self, item) -> None:
        """For the session's last words (a fatal error, the end marker): never blocks; if the
        queue is full the oldest pending event gives way, the session is over anyway."""
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    # ------------------------------------------------------------------ reading
    def _decode(self, raw: str | bytes) -> list[ProviderEvent]:
        """One frame from the model -> our events. Never raises: a frame that is not JSON, or JSON
        whose shape does not fit the protocol, is dropped with a `model_bad_event` line."""
        if isinstance(raw, bytes):
            self.log.warning("model_bad_event", reason=f"binary frame from {self.label}", size=len(raw))
            return []
        try:
            msg = loads(raw)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except ValueError:
            self.log.warning("model_bad_event", reason="not JSON", size=len(raw))
            return []
        try:
            return self._translate(msg)
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # well-formed JSON, ill-shaped event
            self.log.warning("model_bad_event", reason=f"{type(e).__name__}: {e}"[:200], type=str(msg.get("type"))[:80])
            return []

    async def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        watchdog = asyncio.create_task(self._watchdog(), name=f"{self.task_prefix}-watchdog") \
            if self.heartbeat_timeout else None
        try:
            while True:
                msg = await ws.receive()  # pings are answered inside; text and binary frames come out
                if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
                    break
                self._last_rx = monotonic()
                for ev in self._decode(msg.data):
                    await self._queue.put(ev)
                    if isinstance(ev, ProviderError) and ev.fatal:
                        return
            if not self._closed:
                self._put_last(self._ended(msg))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug here must end this call, not hang it
            self.log.error("model_reader_crashed", exc_info=True, error=type(e).__name__)
            self._put_last(ProviderError("internal", f"{type(e).__name__}: {e}", fatal=True))
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._ready.set()  # unblock connect() if the session died during set-up
            if self._reader is asyncio.current_task():
                self._put_last(_END)

    def _ended(self, msg: aiohttp.WSMessage) -> ProviderError:
        """How the socket ended, as the session's last error: the service's close frame (its code
        and reason), a frame we could not take (too big, not UTF-8, a protocol error; we closed with
        its code), or the connection lost without a close frame (a fresh session continues)."""
        if msg.type is WSMsgType.CLOSE:
            return self._closed_error(msg.data or 1005, msg.extra or "")  # 1005: the frame had no code
        if msg.type is WSMsgType.ERROR:
            why = f"{type(msg.data).__name__}: {msg.data}"[:200]
            self.log.warning("model_socket_error", error=why)
        else:
            why = "no close frame"
        return ProviderError("upstream_closed", f"{self.label} connection lost ({why})", fatal=True, renewable=True)

    def _closed_error(self, code: int | None, reason: str) -> ProviderError:
        """The service closed the socket with a close frame: by default a renewable end (a fresh
        session continues the call); a service that reports errors as close codes overrides it."""
        return ProviderError("upstream_closed", f"{self.label} closed the session (code {code})", fatal=True,
                             renewable=True)

    async def _watchdog(self) -> None:
        limit = self.heartbeat_timeout
        assert limit
        while True:
            await asyncio.sleep(min(limit / 4, 5.0))
            silent = monotonic() - self._last_rx
            if silent > limit:
                self._put_last(ProviderError("heartbeat_timeout",
                                                     f"no event from {self.label} for {silent:.0f} s", fatal=True,
                                                     renewable=True))
                if self._transport is not None:
                    self._transport.abort()  # the reader sees the connection lost and ends
                return

