"""Zhipu GLM-Realtime: one WebSocket session per call (renewals and reconnects open the next).

Wire facts this module relies on (see docs/protocols.md and Zhipu's AsyncAPI spec):
- Auth is the upgrade's `Authorization: Bearer <token>`: a fresh HS256 JWT per connection built
  from the `id.secret` key (header `sign_type: SIGN`, claims api_key/exp/timestamp), or the raw
  key itself (`auth: key`). Zhipu's SDKs put `exp` in ms, its older examples in s; a refused token
  is HTTP 401 on the upgrade (or an `error` event with an authentication code, 1000-1004).
- `session.update` must carry `turn_detection` every time (omitting it can fall back to client
  VAD) and `beta_fields.chat_mode` *inside* `session`.
- Input is appended as base64; in "wav" format every append is a complete WAV file. We batch
  ~100 ms per append (the service wants at most 50 appends a second).
- Output deltas are raw PCM16 24 kHz, can be ~1.5 s long and arrive faster than real time; the
  call paces them. There is no truncate: barge-in is `response.cancel` plus dropping late deltas.
- The server heartbeats about every 30 s; much longer silence means the upstream is dead.
"""

from __future__ import annotations

import base64
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import aiohttp
import jwt

from ..audio import wav_bytes
from ..persona import Persona
from ..logs import CallLogger
from .base import (Capabilities, ContextTurn, OutputTranscript, ProviderConnectError, ProviderError,
                   ProviderEvent, ProviderSpec, ResponseDone, ResponseStarted, SessionReady, ToolCall, context_note,
                   persona_tools)
from .wsbase import JsonWsProvider

APPEND_MS = 100
# GLM's server VAD ends a turn after ~0.8 s of trailing silence (docs/protocols.md); it has no setting.
VAD_SILENCE_MS = 800
# Errors after which the session cannot continue. Everything else is logged and survived.
FATAL_CODES = {"1113", "1000", "1001", "1002", "1003", "1004", "1112", "downstream_reconnect_exceeded",
               "authentication_error", "session_expired"}
# Zhipu's authentication error codes (docs.bigmodel.cn error codes: 1000 authentication failed,
# 1001 no Authentication header, 1002 invalid token, 1003 token expired, 1004 token not verified).
AUTH_CODES = {"1000", "1001", "1002", "1003", "1004", "authentication_error"}
# The `exp` unit that worked, per (url, key id), for the rest of the process's connections.
LEARNED_EXP_UNITS: dict[tuple[str, str], str] = {}
_INPUT_RATES = {"wav": 16000, "pcm16": 16000, "pcm24": 24000}


@dataclass(frozen=True)
class GlmProviderConfig:
    """`providers.glm` in config.yaml."""
    url: str = "wss://open.bigmodel.cn/api/paas/v4/realtime"
    api_key: str = ""
    api_keys: list[str] = field(default_factory=list)  # a pool: each call takes a key with room
    max_sessions: int = 0  # concurrent sessions per key (the account's tier: 5, 10, 15, 20); 0 = no cap
    auth: Literal["jwt", "key"] = "jwt"  # jwt: signed token per connection; key: raw id.secret
    jwt_ttl_seconds: int = 3600
    # The JWT's `exp` claim: ms as Zhipu's Python SDKs build it, or s as older examples do. If GLM
    # refuses the token at connect, the other unit is tried once and kept for the process.
    jwt_exp_unit: Literal["ms", "s"] = "ms"
    connect_timeout_seconds: float = 10.0
    heartbeat_timeout_seconds: float = 75.0  # GLM sends a heartbeat every ~30 s
    greeting: Literal["greeting_config", "response_create"] = "greeting_config"


def make_jwt(api_key: str, ttl_seconds: int = 3600, now: float | None = None, exp_unit: str = "ms") -> str:
    """The token Zhipu's own SDKs build: HS256 over {api_key: id, exp, timestamp(ms)} with the secret.

    `exp` is in milliseconds like the SDKs (zhipuai, zai-sdk) make it, or in seconds (`exp_unit="s"`)
    like the older examples. A new token is made for every connection, so a long-lived process
    never presents an expired one.
    """
    key_id, _, secret = api_key.partition(".")
    if not key_id or not secret:
        raise ProviderConnectError("GLM api_key must look like <id>.<secret> for auth: jwt")
    now = time.time() if now is None else now
    now_ms = int(round(now * 1000))
    exp = now_ms + ttl_seconds * 1000 if exp_unit == "ms" else int(now) + ttl_seconds
    payload = {"api_key": key_id, "exp": exp, "timestamp": now_ms}
    with warnings.catch_warnings():
        # Zhipu's secrets are shorter than RFC 7518 recommends for HS256; that is the provider's
        # key format, and a warning per call would only bury real ones.
        warnings.filterwarnings("ignore", message="The HMAC key is")
        return jwt.encode(payload, secret, algorithm="HS256", headers={"alg": "HS256", "sign_type": "SIGN"})


class GlmRealtime(JsonWsProvider):
    label = "GLM"
    task_prefix = "glm"

    def __init__(self, persona: Persona, settings: GlmProviderConfig, log: CallLogger,
                 context: Sequence[ContextTurn] = (), http: aiohttp.ClientSession | None = None):
        super().__init__(log, http)
        self.persona = persona
        self.settings = settings
        self.context = tuple(context)
        self.heartbeat_timeout = settings.heartbeat_timeout_seconds
        fmt = persona.audio.input_format
        self.capabilities = Capabilities(input_format="pcm16", input_rate=_INPUT_RATES[fmt],
                                         output_format="pcm16", output_rate=persona.audio.output_rate,
                                         input_block_ms=APPEND_MS, vad_silence_ms=VAD_SILENCE_MS)
        self._exp_unit = settings.jwt_exp_unit
        self._auth_refused = False  # set when an `error` event refuses the token during set-up

    # ------------------------------------------------------------------ session
    def _auth_header(self) -> str:
        if self.settings.auth == "key":
            return f"Bearer {self.settings.api_key}"
        return f"Bearer {make_jwt(self.settings.api_key, self.settings.jwt_ttl_seconds, exp_unit=self._exp_unit)}"

    def session_config(self) -> dict:
        p = self.persona
        session: dict = {
            "model": p.model,
            "input_audio_format": p.audio.input_format,
            "output_audio_format": "pcm",
            "turn_detection": {"type": p.turn_detection.type},
            "instructions": p.instructions + context_note(self.context),
            "voice": p.voice or "tongtong",
            "max_response_output_tokens": p.max_response_output_tokens,
            "tools": persona_tools(p),
            "beta_fields": {"chat_mode": "audio", "tts_source": "e2e", "auto_search": False},
        }
        if p.temperature is not None:
            session["temperature"] = p.temperature
        if p.greeting and not self.context and self.settings.greeting == "greeting_config":
            session["greeting_config"] = {"enable": True, "content": p.greeting}
        return session

    async def connect(self) -> None:
        """Opens and configures the session. With `auth: jwt`, a token refused before any unit has
        worked for this key is tried once more with `exp` in the other unit; the unit that works
        is kept for the rest of the process."""
        learned_as = (self.settings.url, self.settings.api_key.partition(".")[0])
        known = LEARNED_EXP_UNITS.get(learned_as)
        self._exp_unit = known or self.settings.jwt_exp_unit
        try:
            await self._connect_once()
        except ProviderConnectError as e:
            if not e.auth_refused or known or self.settings.auth != "jwt":
                raise
            tried, self._exp_unit = self._exp_unit, "s" if self._exp_unit == "ms" else "ms"
            self.log.warning("model_auth_refused", exp_unit=tried, retry_exp_unit=self._exp_unit, error=str(e)[:200])
            await self._reopen()  # the refused socket closed; a fresh queue and set-up state
            self._auth_refused = False
            try:
                await self._connect_once()
            except ProviderConnectError as again:
                if again.auth_refused:
                    raise ProviderConnectError(f"{again} (refused with exp in ms and in s: check providers.glm.api_key)",
                                               auth_refused=True) from None
                raise
            self.log.warning("glm_jwt_exp_unit", exp_unit=self._exp_unit, configured=self.settings.jwt_exp_unit,
                             note=f"GLM accepts exp in {self._exp_unit}; set providers.glm.jwt_exp_unit: {self._exp_unit}")
        if self.settings.auth == "jwt":
            LEARNED_EXP_UNITS[learned_as] = self._exp_unit

    async def _connect_once(self) -> None:
        timeout = self.settings.connect_timeout_seconds
        await self._open(self.settings.url, {"Authorization": self._auth_header()}, timeout)
        await self._send({"type": "session.update", "session": self.session_config()})
        try:
            await self._wait_ready(timeout, "session.update")
        except ProviderConnectError:
            if self._auth_refused:
                raise ProviderConnectError(f"GLM refused the token: {self._setup_error}", auth_refused=True) from None
            raise
        if self.persona.greeting and not self.context and self.settings.greeting == "response_create":
            await self._add_item(self._text_item(
                f"(The phone call has just connected. Greet the caller with exactly: {self.persona.greeting})"), True)

    def _stamp(self, event: dict) -> dict:
        event.setdefault("client_timestamp", int(time.time() * 1000))  # GLM takes it on every event
        return super()._stamp(event)

    # ------------------------------------------------------------------ intents
    async def send_audio(self, audio: bytes) -> None:
        payload = wav_bytes(audio, self.capabilities.input_rate) if self.persona.audio.input_format == "wav" else audio
        await self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(payload).decode("ascii")})

    async def cancel_response(self, response_id: str) -> None:
        await self._send({"type": "response.cancel"})

    def _tool_output_item(self, call_id: str, output: str) -> dict:
        item = {"type": "function_call_output", "output": output}
        if call_id:  # echo it when the call had one
            item["call_id"] = call_id
        return item

    def _text_item(self, text: str) -> dict:
        return {"type": "message", "role": "user", "object": "realtime.item",
                "content": [{"type": "text", "text": text}]}

    # ------------------------------------------------------------------ reading
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
            if not self._ready.is_set() and (code in AUTH_CODES or err.get("type") == "authentication_error"):
                self._auth_refused = True  # connect() reports it as a refused token
                self._setup_error = f"{code}: {str(err.get('message', ''))[:200]}"
            self.log.warning("model_error", code=code, type=err.get("type"), message=str(err.get("message", ""))[:300],
                             fatal=fatal)
            return [ProviderError(code, str(err.get("message", "")), fatal=fatal)]
        shared = self._translate_shared(t, msg, rid)
        if shared is not None:
            return shared
        if t == "response.created":
            return [ResponseStarted(rid)]
        if t == "response.audio.delta":
            return self._audio_delta(msg, rid)
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


SPEC = ProviderSpec(
    name="glm", label="GLM", default_model="glm-realtime-flash",
    input_formats=("wav", "pcm16", "pcm24"), output_formats=("pcm",), turn_detection=("server_vad", "client_vad"),
    factory=GlmRealtime,
    voices=frozenset({"tongtong", "female-tianmei", "male-qn-daxuesheng", "male-qn-jingying", "lovely_girl",
                      "female-shaonv"}),
    max_output_tokens=1024, settings=GlmProviderConfig,
    env={"ZHIPU_API_KEY": "api_key", "ZHIPU_API_KEYS": "api_keys", "GLM_REALTIME_URL": "url"},
    secret_fields=("api_key", "api_keys"),
    checks=(("url", lambda s: bool(re.match(r"^wss?://", s.url)), "a ws:// or wss:// URL"),
            ("api_key", lambda s: not s.api_key or s.auth == "key" or s.api_key.count(".") == 1,
             "an id.secret key for auth: jwt"),
            ("api_keys", lambda s: s.auth == "key" or all(k.count(".") == 1 for k in s.api_keys),
             "id.secret keys for auth: jwt"),
            ("max_sessions", lambda s: s.max_sessions >= 0, ">= 0 (0: no cap)")),
)
