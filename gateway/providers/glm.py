"""Zhipu GLM-Realtime: one websockets session per call.

Wire facts this module relies on (see shared/protocols.md and Zhipu's AsyncAPI spec):
- Auth is the upgrade's `Authorization: Bearer <token>`: a fresh HS256 JWT per connection built
  from the `id.secret` key (header `sign_type: SIGN`, claims api_key/exp/timestamp), or the raw
  key itself (`auth: key`).
- `session.update` must carry `turn_detection` every time (omitting it can fall back to client
  VAD) and `beta_fields.chat_mode` *inside* `session`.
- Input is appended as base64; in "wav" format every append is a complete WAV file. We batch
  ~100 ms per append (the service wants at most 50 appends a second).
- Output deltas are raw PCM16 24 kHz, can be ~1.5 s long and arrive faster than real time; the
  call paces them. There is no truncate: barge-in is `response.cancel` plus dropping late deltas.
- The server heartbeats about every 30 s; much longer silence means the upstream is dead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
import warnings
from typing import AsyncIterator

import jwt
import websockets
from websockets.asyncio.client import ClientConnection, connect

from ..audio import wav_bytes
from ..config import GlmProviderConfig, Persona
from ..logs import CallLog
from .base import (AudioDelta, Capabilities, InputTranscript, OutputTranscript, Provider,
                   ProviderConnectError, ProviderError, ProviderEvent, ResponseDone,
                   ResponseStarted, SessionReady, SpeechStarted, SpeechStopped, ToolCall)

APPEND_MS = 100
# Errors after which the session cannot continue. Everything else is logged and survived.
FATAL_CODES = {"1113", "1001", "1002", "1003", "1004", "1112", "downstream_reconnect_exceeded",
               "authentication_error", "session_expired"}
_INPUT_RATES = {"wav": 16000, "pcm16": 16000, "pcm24": 24000}
_END = object()


def make_jwt(api_key: str, ttl_seconds: int = 3600, now: float | None = None) -> str:
    """The token Zhipu's own SDKs build: HS256 over {api_key: id, exp, timestamp(ms)} with the secret.

    `exp` is in seconds (sources disagree; the service has accepted seconds). A new token is
    made for every connection, so a long-lived process never presents an expired one.
    """
    key_id, _, secret = api_key.partition(".")
    if not key_id or not secret:
        raise ProviderConnectError("GLM api_key must look like <id>.<secret> for auth: jwt")
    now = time.time() if now is None else now
    payload = {"api_key": key_id, "exp": int(now + ttl_seconds), "timestamp": int(now * 1000)}
    with warnings.catch_warnings():
        # Zhipu's secrets are shorter than RFC 7518 recommends for HS256; that is the provider's
        # key format, and a warning per call would only bury real ones.
        warnings.filterwarnings("ignore", message="The HMAC key is")
        return jwt.encode(payload, secret, algorithm="HS256", headers={"alg": "HS256", "sign_type": "SIGN"})


class GlmRealtime(Provider):
    def __init__(self, persona: Persona, settings: GlmProviderConfig, log: CallLog):
        self.persona = persona
        self.settings = settings
        self.log = log
        fmt = persona.audio.input_format
        self.capabilities = Capabilities(input_format="pcm16", input_rate=_INPUT_RATES[fmt],
                                         output_format="pcm16", output_rate=persona.audio.output_rate)
        self._ws: ClientConnection | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._pending = bytearray()
        self._append_bytes = self.capabilities.input_rate * 2 * APPEND_MS // 1000
        self._last_rx = time.monotonic()
        self._closed = False
        self._ready = asyncio.Event()
        self._items: dict[str, str] = {}  # response_id -> assistant item_id

    # ------------------------------------------------------------------ session
    def _auth_header(self) -> str:
        if self.settings.auth == "key":
            return f"Bearer {self.settings.api_key}"
        return f"Bearer {make_jwt(self.settings.api_key, self.settings.jwt_ttl_seconds)}"

    def session_config(self) -> dict:
        p = self.persona
        session: dict = {
            "model": p.model,
            "input_audio_format": p.audio.input_format,
            "output_audio_format": "pcm",
            "turn_detection": {"type": p.turn_detection.type},
            "instructions": p.instructions,
            "voice": p.voice or "tongtong",
            "max_response_output_tokens": p.max_response_output_tokens,
            "tools": [],
            "beta_fields": {"chat_mode": "audio", "tts_source": "e2e", "auto_search": False},
        }
        if p.temperature is not None:
            session["temperature"] = p.temperature
        if p.greeting and self.settings.greeting == "greeting_config":
            session["greeting_config"] = {"enable": True, "content": p.greeting}
        return session

    async def connect(self) -> None:
        timeout = self.settings.connect_timeout_seconds
        try:
            self._ws = await asyncio.wait_for(connect(
                self.settings.url,
                additional_headers={"Authorization": self._auth_header()},
                max_size=16 * 1024 * 1024,  # deltas of ~1.5 s base64 are ~100 KB; leave room
                open_timeout=timeout,
                close_timeout=self.settings.connect_timeout_seconds,
                ping_interval=20, ping_timeout=20,
            ), timeout)
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as e:
            raise ProviderConnectError(f"cannot open GLM session: {_describe_connect_error(e)}") from None
        self._last_rx = time.monotonic()
        self._reader = asyncio.create_task(self._read_loop(), name="glm-reader")
        await self._send({"type": "session.update", "session": self.session_config()})
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise ProviderConnectError(f"GLM did not confirm session.update within {timeout:g} s") from None
        if self._closed:
            raise ProviderConnectError("GLM closed the session during set-up")
        if self.persona.greeting and self.settings.greeting == "response_create":
            await self._send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "object": "realtime.item",
                "content": [{"type": "text", "text": (
                    "(The phone call has just connected. Greet the caller with exactly: "
                    f"{self.persona.greeting})")}]}})
            await self._send({"type": "response.create"})

    async def _send(self, event: dict) -> None:
        if self._ws is None or self._closed:
            return
        event.setdefault("event_id", f"gw_{next(self._ids)}")
        event.setdefault("client_timestamp", int(time.time() * 1000))
        try:
            await self._ws.send(json.dumps(event, ensure_ascii=False))
        except websockets.ConnectionClosed:
            pass  # the reader reports the close; a send racing it is not a second error

    # ------------------------------------------------------------------ intents
    async def send_audio(self, audio: bytes) -> None:
        self._pending += audio
        while len(self._pending) >= self._append_bytes:
            chunk = bytes(self._pending[:self._append_bytes])
            del self._pending[:self._append_bytes]
            payload = wav_bytes(chunk, self.capabilities.input_rate) \
                if self.persona.audio.input_format == "wav" else chunk
            await self._send({"type": "input_audio_buffer.append",
                              "audio": base64.b64encode(payload).decode("ascii")})

    async def cancel_response(self, response_id: str) -> None:
        await self._send({"type": "response.cancel"})

    async def close(self) -> None:
        if self._closed and self._reader is None:
            return
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
            if ws.state is not websockets.protocol.State.CLOSED:
                ws.transport.abort()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        self._queue.put_nowait(_END)

    async def events(self) -> AsyncIterator[ProviderEvent]:
        while True:
            ev = await self._queue.get()
            if ev is _END:
                self._queue.put_nowait(_END)  # later iterations end too
                return
            yield ev

    # ------------------------------------------------------------------ reading
    async def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        watchdog = asyncio.create_task(self._watchdog(), name="glm-watchdog")
        try:
            async for raw in ws:
                self._last_rx = time.monotonic()
                if isinstance(raw, bytes):
                    self.log.warning("model_bad_event", reason="binary frame from GLM", size=len(raw))
                    continue
                try:
                    msg = json.loads(raw)
                    if not isinstance(msg, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self.log.warning("model_bad_event", reason="not JSON", size=len(raw))
                    continue
                for ev in self._translate(msg):
                    self._queue.put_nowait(ev)
                    if isinstance(ev, ProviderError) and ev.fatal:
                        return
            code = ws.close_code
            if not self._closed:
                self._queue.put_nowait(ProviderError("upstream_closed", f"GLM closed the session (code {code})",
                                                     fatal=True))
        except websockets.ConnectionClosed as e:
            if not self._closed:
                self._queue.put_nowait(ProviderError("upstream_closed", f"GLM connection lost ({e})", fatal=True))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug here must end this call, not hang it
            self.log.error("model_reader_crashed", exc_info=True, error=type(e).__name__)
            self._queue.put_nowait(ProviderError("internal", f"{type(e).__name__}: {e}", fatal=True))
        finally:
            watchdog.cancel()
            self._ready.set()  # unblock connect() if the session died during set-up
            if self._reader is asyncio.current_task():
                self._queue.put_nowait(_END)

    async def _watchdog(self) -> None:
        limit = self.settings.heartbeat_timeout_seconds
        while True:
            await asyncio.sleep(min(limit / 4, 5.0))
            silent = time.monotonic() - self._last_rx
            if silent > limit:
                self._queue.put_nowait(ProviderError("heartbeat_timeout",
                                                     f"no event from GLM for {silent:.0f} s", fatal=True))
                if self._ws is not None:
                    self._ws.transport.abort()
                return

    def _translate(self, msg: dict) -> list[ProviderEvent]:
        t = msg.get("type")
        rid = str(msg.get("response_id") or (msg.get("response") or {}).get("id") or "")
        if t == "heartbeat" or t in ("session.created", "conversation.created", "conversation.item.created",
                                     "input_audio_buffer.committed", "input_audio_buffer.cleared",
                                     "response.audio.done", "response.output_item.added",
                                     "response.output_item.done", "response.content_part.added",
                                     "response.content_part.done"):
            if t == "session.created":
                self.log.debug("model_session_created")
            return []
        if t == "session.updated":
            first = not self._ready.is_set()
            self._ready.set()
            return [SessionReady(str((msg.get("session") or {}).get("id", "")))] if first else []
        if t == "error":
            err = msg.get("error") if isinstance(msg.get("error"), dict) else {}
            code = str(err.get("code") or err.get("type") or "unknown")
            fatal = code in FATAL_CODES
            self.log.warning("model_error", code=code, type=err.get("type"), message=str(err.get("message", ""))[:300],
                             fatal=fatal)
            return [ProviderError(code, str(err.get("message", "")), fatal=fatal)]
        if t == "input_audio_buffer.speech_started":
            return [SpeechStarted()]
        if t == "input_audio_buffer.speech_stopped":
            return [SpeechStopped()]
        if t == "conversation.item.input_audio_transcription.completed":
            return [InputTranscript(str(msg.get("transcript", "")), str(msg.get("item_id", "")))]
        if t == "conversation.item.input_audio_transcription.failed":
            self.log.info("model_transcription_failed", error=str(msg.get("error", ""))[:200])
            return []
        if t == "response.created":
            return [ResponseStarted(rid)]
        if t == "response.audio.delta":
            try:
                audio = base64.b64decode(msg.get("delta", ""), validate=True)
            except (ValueError, TypeError):
                self.log.warning("model_bad_event", reason="audio delta is not base64")
                return []
            return [AudioDelta(rid, str(msg.get("item_id", "")), audio)]
        if t in ("response.audio_transcript.delta", "response.text.delta"):
            return [OutputTranscript(rid, str(msg.get("delta", "")))]
        if t == "response.audio_transcript.done":
            return [OutputTranscript(rid, str(msg.get("transcript", "")), final=True)]
        if t == "response.text.done":
            return [OutputTranscript(rid, str(msg.get("text", "")), final=True)] if msg.get("text") else []
        if t == "response.function_call_arguments.done":
            return [ToolCall(rid, str(msg.get("call_id") or msg.get("item_id") or ""), str(msg.get("name", "")),
                             str(msg.get("arguments", "")))]
        if t in ("response.done", "response.cancelled"):
            resp = msg.get("response") or {}
            status = str(resp.get("status") or ("cancelled" if t == "response.cancelled" else "completed"))
            return [ResponseDone(rid, status, resp.get("usage") if isinstance(resp.get("usage"), dict) else None)]
        self.log.debug("model_unknown_event", type=str(t)[:80])
        return []


def _describe_connect_error(e: BaseException) -> str:
    if isinstance(e, websockets.InvalidStatus):
        return f"HTTP {e.response.status_code}"
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}"
