"""Alibaba DashScope Qwen-Omni realtime: one WebSocket session per call (renewals open the next).

Wire facts this module relies on (docs/protocols.md; the official `dashscope` SDK 2.0.2,
`dashscope/audio/qwen_omni/omni_realtime.py`; Model Studio's client/server event reference):
- `wss://dashscope.aliyuncs.com/api-ws/v1/realtime?model=<model>` (the SDK appends `?model=` to
  the URL it is given), `Authorization: Bearer <DASHSCOPE_API_KEY>`. A session lasts at most
  120 minutes; the call moves to a fresh one before that.
- OpenAI-Realtime-like JSON events with `event_id`. We send only what the SDK sends:
  `session.update`, `input_audio_buffer.append`, `response.create`, `response.cancel`,
  `conversation.item.create` (and nothing else: no truncate, no item delete).
- `session.update` in the SDK's vocabulary: `modalities`, `voice`, the nested
  `audio.{input,output}.format {type: "pcm", sample_rate}` (16 kHz in, 24 kHz out),
  `input_audio_transcription {model}`, `turn_detection {type, threshold, prefix_padding_ms,
  silence_duration_ms}` (plus the documented `create_response`/`interrupt_response`: the gateway
  decides about barge-in, as with OpenAI), `instructions`, and `tools` where the model takes them.
- Function calling: qwen3.5-omni realtime models take `tools` in the Chat-Completions shape
  (`{"type": "function", "function": {name, description, parameters}}`) and answer with
  `response.function_call_arguments.done`; the result goes back as a `function_call_output` item
  (OpenAI's shape; the SDK's `create_item` sends any item). Older Qwen-Omni realtime models have
  no tools: config refuses a persona with tools on them.
- No truncate: barge-in is `response.cancel` plus dropping late deltas, as for GLM; the gateway
  keeps what the caller really heard.
- Output deltas are raw PCM16 24 kHz (`response.audio.delta`), transcripts
  `response.audio_transcript.delta/done`, caller transcripts
  `conversation.item.input_audio_transcription.completed`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Sequence

import aiohttp

from ..logs import CallLogger
from ..persona import Persona
from .base import (Capabilities, ContextTurn, OutputTranscript, ProviderEvent, ProviderSpec,
                   ResponseDone, ResponseStarted, SessionReady, ToolCall, context_note, greeting_instruction,
                   persona_tools)
from .openai import session_url
from .wsbase import JsonWsProvider

INPUT_RATE, OUTPUT_RATE = 16000, 24000
FATAL_CODES = {"invalid_api_key", "InvalidApiKey", "AccessDenied", "Arrearage", "DataInspectionFailed",
               "session_expired", "SessionExpired"}
RENEWABLE_CODES = {"session_expired", "SessionExpired"}
BENIGN_CODES = {"response_cancel_not_active"}
_QUIET_EVENTS = {
    "session.created", "conversation.created", "conversation.item.created", "input_audio_buffer.committed",
    "input_audio_buffer.cleared", "response.audio.done", "response.text.done",
    "response.output_item.done", "response.content_part.added", "response.content_part.done",
    "response.function_call_arguments.delta", "conversation.item.input_audio_transcription.delta",
    "session.finished",
}


def supports_tools(model: str) -> bool:
    """Function calling over the realtime WebSocket: the qwen3.5-omni realtime models (Model
    Studio's function-calling guide); qwen3-omni-flash-realtime and qwen-omni-turbo-realtime have none."""
    return model.startswith("qwen3.5-omni")


@dataclass(frozen=True)
class QwenProviderConfig:
    """`providers.qwen` in config.yaml."""
    # The persona's model goes in `?model=` (as the SDK builds it). Singapore:
    # wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime
    url: str = "wss://dashscope.aliyuncs.com/api-ws/v1/realtime"
    api_key: str = ""
    api_keys: list[str] = field(default_factory=list)  # a pool: each call takes a key with room
    max_sessions: int = 0  # concurrent sessions per key; 0 = no cap
    connect_timeout_seconds: float = 10.0
    # A WebSocket session lasts at most 120 minutes: move the call to a fresh one before that.
    session_renew_seconds: float = 7080.0
    append_ms: int = 100  # caller audio per input_audio_buffer.append in steady stretches (a multiple of 20 ms)
    transcription_model: str = "qwen3-asr-flash-realtime"  # the caller's words for the call log
    vad_threshold: float = 0.5  # server VAD: -1..1, higher ignores more background noise


class QwenRealtime(JsonWsProvider):
    label = "Qwen"
    task_prefix = "qwen"
    fatal_codes, renewable_codes, benign_codes = FATAL_CODES, RENEWABLE_CODES, BENIGN_CODES

    def __init__(self, persona: Persona, settings: QwenProviderConfig, log: CallLogger,
                 context: Sequence[ContextTurn] = (), http: aiohttp.ClientSession | None = None):
        super().__init__(log, http)
        self.persona = persona
        self.settings = settings
        self.context = tuple(context)
        self.capabilities = Capabilities(input_format="pcm16", input_rate=INPUT_RATE, output_format="pcm16",
                                         output_rate=OUTPUT_RATE, truncate=False,
                                         max_session_seconds=settings.session_renew_seconds or None,
                                         input_block_ms=settings.append_ms, vad_silence_ms=persona.turn_detection.silence_ms,
                                         tools=supports_tools(persona.model))
        self._tool_names: dict[str, str] = {}  # call_id -> function name (from output_item.added)

    # ------------------------------------------------------------------ session
    def session_config(self) -> dict:
        p = self.persona
        td = p.turn_detection
        session: dict = {
            "modalities": ["text", "audio"],
            "voice": p.voice or "Cherry",
            "audio": {"input": {"format": {"type": "pcm", "sample_rate": INPUT_RATE}},
                      "output": {"format": {"type": "pcm", "sample_rate": OUTPUT_RATE}}},
            "input_audio_transcription": {"model": self.settings.transcription_model},
            "turn_detection": {"type": td.type, "threshold": self.settings.vad_threshold,
                               "prefix_padding_ms": td.prefix_padding_ms, "silence_duration_ms": td.silence_ms,
                               "create_response": True, "interrupt_response": False},
            "instructions": p.instructions + context_note(self.context),
        }
        if p.temperature is not None:
            session["temperature"] = p.temperature
        if p.max_response_output_tokens != "inf":
            session["max_tokens"] = int(p.max_response_output_tokens)
        tools = persona_tools(p)
        if tools and self.capabilities.tools:
            session["tools"] = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")}}
                                for t in tools]
        return session

    async def connect(self) -> None:
        timeout = self.settings.connect_timeout_seconds
        await self._open(session_url(self.settings.url, self.persona.model),
                         {"Authorization": f"Bearer {self.settings.api_key}"}, timeout)
        await self._send({"type": "session.update", "session": self.session_config()})
        await self._wait_ready(timeout, "session.update")
        if self.persona.greeting and not self.context:
            await self._send({"type": "response.create",
                              "response": {"instructions": greeting_instruction(self.persona.greeting)}})

    # ------------------------------------------------------------------ intents
    async def send_audio(self, audio: bytes) -> None:  # one append: the call's Uplink batches
        await self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode("ascii")})

    async def cancel_response(self, response_id: str) -> None:
        await self._send({"type": "response.cancel"})  # the SDK's cancel names no response

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
        if t == "response.audio.delta":
            return self._audio_delta(msg, rid)
        if t in ("response.audio_transcript.delta", "response.text.delta"):
            return [OutputTranscript(rid, str(msg.get("delta", "")))]
        if t == "response.audio_transcript.done":
            return [OutputTranscript(rid, str(msg.get("transcript", "")), final=True)]
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
            return [ResponseDone(str(resp.get("id", "")), str(resp.get("status") or "completed"), usage)]
        self.log.debug("model_unknown_event", type=str(t)[:80])
        return []

    def _error_log_fields(self, err: dict) -> dict:
        return dict(param=err.get("param"))

SPEC = ProviderSpec(
    name="qwen", label="Qwen", default_model="qwen3.5-omni-flash-realtime",
    input_formats=("pcm16",), output_formats=("pcm24",), turn_detection=("server_vad", "semantic_vad"),
    factory=QwenRealtime,
    settings=QwenProviderConfig,
    env={"DASHSCOPE_API_KEY": "api_key", "DASHSCOPE_API_KEYS": "api_keys", "QWEN_REALTIME_URL": "url"},
    secret_fields=("api_key", "api_keys"),
    checks=(("url", lambda s: bool(re.match(r"^wss?://", s.url)), "a ws:// or wss:// URL"),
            ("max_sessions", lambda s: s.max_sessions >= 0, ">= 0 (0: no cap)"),
            ("session_renew_seconds", lambda s: s.session_renew_seconds == 0 or s.session_renew_seconds >= 1,
             ">= 1 (0: never renew early)"),
            ("append_ms", lambda s: 20 <= s.append_ms <= 200 and s.append_ms % 20 == 0,
             "a multiple of 20 from 20 to 200"),
            ("vad_threshold", lambda s: -1 <= s.vad_threshold <= 1, "from -1 to 1")),
    supports_tools=supports_tools,
)
