"""OpenAI Realtime (GA protocol), and OpenAI-compatible endpoints such as Azure OpenAI.

Wire facts this module relies on (docs/protocols.md, OpenAI's realtime reference):
- One WebSocket per call to `…/v1/realtime?model=…`; the key goes in `Authorization: Bearer`
  (OpenAI) or `api-key` (Azure) — configuration, not code. No `OpenAI-Beta` header: that would
  select the retired beta protocol.
- GA `session.update` nests audio settings: `session.audio.input.{format, turn_detection,
  transcription}` and `session.audio.output.{format, voice}`, with `session.type: "realtime"`.
- `audio/pcmu` is G.711 mu-law at 8 kHz, exactly Twilio's payload: caller audio is appended as
  it arrives and the model's audio goes to the phone untouched (no decode, no resampling, no
  filter delay). `audio/pcm` is 24 kHz PCM16 and goes through our resamplers.
- Turn detection runs on the server with `interrupt_response: false`: the gateway decides about
  barge-in (it knows what is audible at the phone) and sends `response.cancel` only while a
  response is active; cancelling an idle response is the `response_cancel_not_active` error.
- `conversation.item.truncate {item_id, content_index: 0, audio_end_ms}` makes the model's
  memory match what the caller heard; OpenAI rejects an `audio_end_ms` beyond the generated
  audio ("Audio content of X ms is already shorter than Y ms"). `conversation.item.delete`
  removes a reply nobody heard.
- Sessions end after a maximum duration (error `session_expired`); the call then continues in a
  fresh session seeded with the conversation so far (`conversation.item.create` per turn).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from ..persona import Persona
from ..logs import CallLogger
from .base import (Capabilities, ContextTurn, OutputTranscript, ProviderEvent, ProviderSpec,
                   ResponseDone, ResponseStarted, SessionReady, ToolCall, greeting_instruction,
                   persona_tools)
from .wsbase import JsonWsProvider

# Errors after which the session cannot go on. Everything else is logged and survived.
FATAL_CODES = {"invalid_api_key", "insufficient_quota", "model_not_found", "session_expired"}
# ...and of those, the ones a fresh session fixes (the conversation is replayed into it).
RENEWABLE_CODES = {"session_expired"}
# A cancel racing the response's own end: expected now and then, not a fault.
BENIGN_CODES = {"response_cancel_not_active"}
_FORMATS = {"pcmu": ({"type": "audio/pcmu"}, "mulaw", 8000), "pcm": ({"type": "audio/pcm", "rate": 24000}, "pcm16", 24000)}
_QUIET_EVENTS = {
    "session.created", "conversation.created", "conversation.item.created", "conversation.item.added",
    "conversation.item.done", "conversation.item.retrieved", "conversation.item.truncated",
    "conversation.item.deleted", "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.segment", "input_audio_buffer.committed",
    "input_audio_buffer.cleared", "input_audio_buffer.timeout_triggered", "rate_limits.updated",
    "response.output_item.done", "response.content_part.added", "response.content_part.done",
    "response.output_audio.done", "response.audio.done", "response.function_call_arguments.delta",
    "output_audio_buffer.started", "output_audio_buffer.stopped", "output_audio_buffer.cleared",
}


@dataclass(frozen=True)
class OpenAIProviderConfig:
    """`providers.openai` in config.yaml."""
    # Any OpenAI-compatible realtime endpoint. The persona's `model` replaces the URL's `model=`
    # query parameter (Azure's older `deployment=` URLs are left as they are).
    url: str = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    api_key: str = ""
    api_keys: list[str] = field(default_factory=list)  # a pool: each call takes a key with room
    max_sessions: int = 0  # concurrent sessions per key (the deployment's quota); 0 = no cap
    # How the key is presented: `Authorization: Bearer <key>` (OpenAI) or `api-key: <key>` (Azure).
    auth: Literal["bearer", "api-key"] = "bearer"
    connect_timeout_seconds: float = 10.0
    # OpenAI ends a session after a maximum duration (30-60 min). A call still running after this
    # many seconds moves to a fresh session, with the conversation so far, at its next quiet moment.
    session_renew_seconds: float = 1680.0
    # Caller audio per `input_audio_buffer.append` (a multiple of 20 ms): fewer messages, at most
    # this minus 20 ms later at the model's VAD.
    append_ms: int = 60
    # Caller speech transcription for the call log; empty turns it off.
    transcription_model: str = "gpt-4o-mini-transcribe"


def session_url(url: str, model: str) -> str:
    """The endpoint with the persona's model in `model=` (unless an Azure `deployment=` names it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "deployment" for k, _ in query) or not model:
        return url
    query = [(k, v) for k, v in query if k != "model"] + [("model", model)]
    return urlunsplit(parts._replace(query=urlencode(query)))


# semantic_vad ends a turn when the model thinks the caller is done, at the latest after about
# this long by eagerness (OpenAI's realtime VAD guide: low 8 s, medium/auto 4 s, high 2 s).
_SEMANTIC_MAX_WAIT_MS = {"low": 8000, "medium": 4000, "auto": 4000, "high": 2000}


def _vad_silence_ms(persona) -> int:
    td = persona.turn_detection
    return _SEMANTIC_MAX_WAIT_MS[td.eagerness] if td.type == "semantic_vad" else td.silence_ms


class OpenAIRealtime(JsonWsProvider):
    label = "OpenAI"
    task_prefix = "openai"
    fatal_codes, renewable_codes, benign_codes = FATAL_CODES, RENEWABLE_CODES, BENIGN_CODES

    def __init__(self, persona: Persona, settings: OpenAIProviderConfig, log: CallLogger,
                 context: Sequence[ContextTurn] = (), http: aiohttp.ClientSession | None = None):
        super().__init__(log, http)
        self.persona = persona
        self.settings = settings
        self.context = tuple(context)
        _, in_fmt, in_rate = _FORMATS[persona.audio.input_format]
        _, out_fmt, out_rate = _FORMATS[persona.audio.output_format]
        self.capabilities = Capabilities(input_format=in_fmt, input_rate=in_rate, output_format=out_fmt,
                                         output_rate=out_rate, truncate=True,
                                         max_session_seconds=settings.session_renew_seconds,
                                         input_block_ms=settings.append_ms, vad_silence_ms=_vad_silence_ms(persona))
        self._tool_names: dict[str, str] = {}  # call_id -> function name (from output_item.added)

    # ------------------------------------------------------------------ session
    def _headers(self) -> dict[str, str]:
        if self.settings.auth == "api-key":
            return {"api-key": self.settings.api_key}
        return {"Authorization": f"Bearer {self.settings.api_key}"}

    def session_config(self) -> dict:
        p = self.persona
        td = p.turn_detection
        detection: dict = {"type": td.type, "create_response": True, "interrupt_response": False}
        if td.type == "semantic_vad":
            detection["eagerness"] = td.eagerness
        else:
            detection.update(silence_duration_ms=td.silence_ms, prefix_padding_ms=td.prefix_padding_ms)
        audio_in: dict = {"format": _FORMATS[p.audio.input_format][0], "turn_detection": detection}
        if self.settings.transcription_model:
            audio_in["transcription"] = {"model": self.settings.transcription_model,
                                         "language": p.language.split("-")[0].lower()}
        tokens = p.max_response_output_tokens
        return {
            "type": "realtime",
            "instructions": p.instructions,
            "output_modalities": ["audio"],
            "audio": {"input": audio_in,
                      "output": {"format": _FORMATS[p.audio.output_format][0], "voice": p.voice or "alloy"}},
            "max_output_tokens": "inf" if tokens == "inf" else int(tokens),
            "tools": persona_tools(p),
            "tool_choice": "auto",
        }

    async def connect(self) -> None:
        timeout = self.settings.connect_timeout_seconds
        await self._open(session_url(self.settings.url, self.persona.model), self._headers(), timeout)
        await self._send({"type": "session.update", "session": self.session_config()})
        await self._wait_ready(timeout, "session.update")
        for turn in self.context:  # a continued call: the model gets the conversation so far
            role, kind = ("user", "input_text") if turn.role == "caller" else ("assistant", "output_text")
            await self._send({"type": "conversation.item.create", "item": {
                "type": "message", "role": role, "content": [{"type": kind, "text": turn.text}]}})
        if self.persona.greeting and not self.context:
            await self._send({"type": "response.create",
                              "response": {"instructions": greeting_instruction(self.persona.greeting)}})

    # ------------------------------------------------------------------ intents
    async def send_audio(self, audio: bytes) -> None:  # OpenAI takes appends of any size
        await self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode("ascii")})

    async def cancel_response(self, response_id: str) -> None:
        await self._send({"type": "response.cancel", "response_id": response_id})

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        await self._send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                          "audio_end_ms": int(audio_end_ms)})

    async def delete_item(self, item_id: str) -> None:
        await self._send({"type": "conversation.item.delete", "item_id": item_id})

    # ------------------------------------------------------------------ reading
    def _translate(self, msg: dict) -> list[ProviderEvent]:
        t = msg.get("type")
        rid = str(msg.get("response_id") or "")
        if t in _QUIET_EVENTS:
            return []
        if t == "session.updated":
            first = not self._ready.is_set()
            self._ready.set()
            return [SessionReady(str((msg.get("session") or {}).get("id", "")))] if first else []
        if t == "error":
            return self._error(msg)
        shared = self._translate_shared(t, msg, rid)
        if shared is not None:
            return shared
        if t == "response.created":
            return [ResponseStarted(str((msg.get("response") or {}).get("id", "")))]
        if t in ("response.output_audio.delta", "response.audio.delta"):  # GA name, then the beta one
            return self._audio_delta(msg, rid)
        if t in ("response.output_audio_transcript.delta", "response.output_text.delta"):
            return [OutputTranscript(rid, str(msg.get("delta", "")))]
        if t == "response.output_audio_transcript.done":
            return [OutputTranscript(rid, str(msg.get("transcript", "")), final=True)]
        if t == "response.output_text.done":
            return [OutputTranscript(rid, str(msg.get("text", "")), final=True)] if msg.get("text") else []
        if t == "response.output_item.added":
            item = msg.get("item") or {}
            if item.get("type") == "function_call":
                self._tool_names[str(item.get("call_id", ""))] = str(item.get("name", ""))
            return []
        if t == "response.function_call_arguments.done":
            call_id = str(msg.get("call_id", ""))
            name = str(msg.get("name") or self._tool_names.pop(call_id, ""))
            return [ToolCall(rid, call_id, name, str(msg.get("arguments", "")))]
        if t == "response.done":
            resp = msg.get("response") or {}
            usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else None
            if resp.get("status") in ("failed", "incomplete"):  # e.g. quota, content filter, token limit
                details = resp.get("status_details") if isinstance(resp.get("status_details"), dict) else {}
                self.log.warning("model_response_failed", response=resp.get("id"), status=resp.get("status"),
                                 reason=details.get("reason"), error=str(details.get("error") or "")[:300] or None)
            return [ResponseDone(str(resp.get("id", "")), str(resp.get("status") or "completed"), usage)]
        self.log.debug("model_unknown_event", type=str(t)[:80])
        return []

    def _error_log_fields(self, err: dict) -> dict:
        return dict(client_event=err.get("event_id"))

SPEC = ProviderSpec(
    name="openai", label="OpenAI", default_model="gpt-realtime",
    input_formats=("pcmu", "pcm"), output_formats=("pcmu", "pcm"), turn_detection=("server_vad", "semantic_vad"),
    factory=OpenAIRealtime,
    voices=frozenset({"alloy", "ash", "ballad", "cedar", "coral", "echo", "marin", "sage", "shimmer", "verse"}),
    max_output_tokens=4096, settings=OpenAIProviderConfig,
    env={"OPENAI_API_KEY": "api_key", "OPENAI_API_KEYS": "api_keys", "OPENAI_REALTIME_URL": "url"},
    secret_fields=("api_key", "api_keys"),
    checks=(("url", lambda s: bool(re.match(r"^wss?://", s.url)), "a ws:// or wss:// URL"),
            ("max_sessions", lambda s: s.max_sessions >= 0, ">= 0 (0: no cap)"),
            ("session_renew_seconds", lambda s: s.session_renew_seconds >= 1, ">= 1"),
            ("append_ms", lambda s: 20 <= s.append_ms <= 200 and s.append_ms % 20 == 0, "a multiple of 20 from 20 to 200")),
)
