"""Google Gemini Live API (`BidiGenerateContent` over a WebSocket): one connection per session.

Wire facts this module relies on (docs/protocols.md; google-genai's `types.LiveClientMessage` /
`LiveServerMessage`, whose camelCase JSON is the wire form and which forbid unknown fields; the
Live API session-management guide):
- `wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent`,
  the key in `x-goog-api-key` (or `?key=`). Messages carry no event ids or types: each is an object
  with exactly one of `setup`, `realtimeInput`, `clientContent`, `toolResponse`. The server's
  messages arrive as JSON in binary or text frames.
- `setup` first; `setupComplete` means the session is configured. Errors are not events: the
  service closes the socket with a code and a reason (1007 invalid argument, e.g. an invalid API
  key or setup; 1008 policy, e.g. quota; 1011 internal; 1000/1001 an ordinary end).
- Caller audio is `realtimeInput.audio` PCM16 16 kHz (`audio/pcm;rate=16000`); the model's is
  `serverContent.modelTurn.parts[].inlineData` PCM16 24 kHz. Turns have no ids: a model turn runs
  from its first content to `turnComplete` (or `interrupted`, or a `toolCall`, after which the
  model waits for the `toolResponse`); we number them.
- Turn detection is the service's (automatic activity detection). When the caller talks over a
  reply the service stops generating it and says `interrupted`: that is the model's barge-in,
  reported as SpeechStarted(interrupted=True) so the phone is cleared at once. There is no client
  cancel and no truncate: a reply the gateway stops itself (a keypad shortcut) is only dropped.
- Transcripts: `inputTranscription` / `outputTranscription` text pieces (enabled in setup).
- A connection lasts about 10 minutes (`goAway {timeLeft}` comes before the end); without context
  compression an audio session ends at 15 minutes, so setup asks for a sliding window. The session
  continues on a new connection with the latest `sessionResumptionUpdate.newHandle` (valid for a
  while after the old connection ends): the service keeps the context, the greeting is not repeated.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from ..logs import CallLogger
from ..persona import Persona
from .base import (AudioDelta, Capabilities, ContextTurn, InputTranscript, OutputTranscript, Provider,
                   ProviderConnectError, ProviderError, ProviderEvent, ProviderSpec, ResponseDone, ResponseStarted,
                   SessionEnding, SessionReady, SpeechStarted, SpeechStopped, ToolCall, context_note,
                   greeting_instruction, persona_tools)
from .wsbase import JsonWsProvider

INPUT_RATE, OUTPUT_RATE = 16000, 24000
INPUT_MIME = f"audio/pcm;rate={INPUT_RATE}"
DEFAULT_URL = ("wss://generativelanguage.googleapis.com/ws/"
               "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent")
# Close codes after which a fresh connection would fail the same way (the call ends).
FATAL_CLOSE_CODES = {1007, 1008}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")  # protobuf Duration in JSON: "12.5s"


@dataclass(frozen=True)
class GeminiProviderConfig:
    """`providers.gemini` in config.yaml."""
    url: str = DEFAULT_URL
    api_key: str = ""
    api_keys: list[str] = field(default_factory=list)  # a pool: each call takes a key with room
    max_sessions: int = 0  # concurrent sessions per key (the project's Live API quota); 0 = no cap
    auth: Literal["header", "query"] = "header"  # x-goog-api-key header, or ?key= in the URL
    connect_timeout_seconds: float = 10.0
    # A connection lasts about 10 minutes: move to a fresh one (resuming the session) before that,
    # at a quiet moment. goAway makes it happen earlier when the service asks.
    session_renew_seconds: float = 540.0
    append_ms: int = 40  # caller audio per realtimeInput message in steady stretches (a multiple of 20 ms)
    # Context window compression (a sliding window): without it an audio session ends at 15 min.
    context_compression: bool = True


def session_url(url: str, key: str, auth: str) -> str:
    if auth != "query":
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "key"] + [("key", key)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _seconds(value: object) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(str(value))
    return float(m.group(1)) if m else 0.0


class GeminiLive(JsonWsProvider):
    label = "Gemini"
    task_prefix = "gemini"

    def __init__(self, persona: Persona, settings: GeminiProviderConfig, log: CallLogger,
                 context: Sequence[ContextTurn] = (), http: aiohttp.ClientSession | None = None):
        super().__init__(log, http)
        self.persona = persona
        self.settings = settings
        self.context = tuple(context)
        self.capabilities = Capabilities(input_format="pcm16", input_rate=INPUT_RATE, output_format="pcm16",
                                         output_rate=OUTPUT_RATE, truncate=False,
                                         max_session_seconds=settings.session_renew_seconds or None,
                                         input_block_ms=settings.append_ms,
                                         vad_silence_ms=persona.turn_detection.silence_ms, resumption=True,
                                         cancel=False)
        self.resume_handle = ""  # the newest resumable handle the service gave this session
        self._resuming = False  # this session was opened with a handle (the service has the context)
        self._turns = 0
        self._turn: str | None = None  # the model turn in progress (our response id)
        self._cancelled: set[str] = set()
        self._heard = ""  # caller transcript pieces since the last model turn
        self._usage: dict | None = None
        self._tool_names: dict[str, str] = {}  # function call id -> name (toolResponse wants both)
        self._auth_refused = False

    def carry_over(self, previous: Provider) -> None:
        handle = getattr(previous, "resume_handle", "")
        if handle:
            self.resume_handle = handle
            self._resuming = True

    # ------------------------------------------------------------------ session
    def setup(self) -> dict:
        p = self.persona
        td = p.turn_detection
        generation: dict = {"responseModalities": ["AUDIO"]}
        if p.voice:
            generation["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": p.voice}}}
        if p.temperature is not None:
            generation["temperature"] = p.temperature
        if p.max_response_output_tokens != "inf":
            generation["maxOutputTokens"] = int(p.max_response_output_tokens)
        # Resumed: the service has the conversation; else it is told in the instructions.
        note = "" if self._resuming else context_note(self.context)
        setup: dict = {
            "model": p.model if p.model.startswith("models/") else f"models/{p.model}",
            "generationConfig": generation,
            "systemInstruction": {"parts": [{"text": p.instructions + note}]},
            "realtimeInputConfig": {
                "automaticActivityDetection": {"disabled": False, "prefixPaddingMs": td.prefix_padding_ms,
                                               "silenceDurationMs": td.silence_ms},
                "activityHandling": "START_OF_ACTIVITY_INTERRUPTS"},
            "inputAudioTranscription": {},
            "outputAudioTranscription": {},
            "sessionResumption": {"handle": self.resume_handle} if self.resume_handle else {},
        }
        tools = persona_tools(p)
        if tools:
            setup["tools"] = [{"functionDeclarations": [
                {"name": t["name"], "description": t["description"], "parametersJsonSchema": t["parameters"]}
                for t in tools]}]
        if self.settings.context_compression:
            setup["contextWindowCompression"] = {"slidingWindow": {}}
        return {"setup": setup}

    async def connect(self) -> None:
        """Opens and sets up the session. A resumption the service refuses (the handle expired:
        handles live for a limited time after their connection ends) falls back once to a fresh
        session told the conversation so far."""
        try:
            await self._connect_once()
        except ProviderConnectError as e:
            if not self._resuming or e.auth_refused:
                raise
            self.log.warning("model_resume_refused", error=str(e)[:200])
            self.resume_handle, self._resuming, self._auth_refused = "", False, False
            await self._reopen()
            await self._connect_once()

    async def _connect_once(self) -> None:
        timeout = self.settings.connect_timeout_seconds
        headers = {} if self.settings.auth == "query" else {"x-goog-api-key": self.settings.api_key}
        await self._open(session_url(self.settings.url, self.settings.api_key, self.settings.auth), headers, timeout)
        await self._send(self.setup())
        try:
            await self._wait_ready(timeout, "setup")
        except ProviderConnectError as e:
            if self._auth_refused:
                raise ProviderConnectError(str(e), auth_refused=True) from None
            raise
        if self._resuming:
            self.log.info("model_session_resumed")
        elif self.persona.greeting and not self.context:
            await self._send_turn(greeting_instruction(self.persona.greeting), True)

    def _stamp(self, event: dict) -> dict:
        return event  # Live API messages have no event id (unknown fields are refused)

    # ------------------------------------------------------------------ intents
    async def send_audio(self, audio: bytes) -> None:  # one message: the call's Uplink batches
        await self._send({"realtimeInput": {"audio": {"data": base64.b64encode(audio).decode("ascii"),
                                                      "mimeType": INPUT_MIME}}})

    async def cancel_response(self, response_id: str) -> None:
        """No client cancel in the Live API: what still comes of this turn is dropped."""
        self._cancelled.add(response_id)

    async def _send_turn(self, text: str, respond: bool) -> None:
        await self._send({"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}],
                                            "turnComplete": respond}})

    async def send_text(self, text: str, respond: bool = True) -> None:
        await self._send_turn(text, respond)

    async def send_tool_result(self, call_id: str, output: str, respond: bool = True) -> None:
        try:
            result = json.loads(output)
        except ValueError:
            result = output
        response: dict = {"id": call_id, "name": self._tool_names.pop(call_id, ""),
                          "response": result if isinstance(result, dict) else {"output": result}}
        if not respond:
            response["scheduling"] = "SILENT"
        await self._send({"toolResponse": {"functionResponses": [response]}})

    # ------------------------------------------------------------------ reading
    def _decode(self, raw: str | bytes) -> list[ProviderEvent]:
        if isinstance(raw, bytes):  # the Live API sends its JSON in binary frames
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.log.warning("model_bad_event", reason="binary frame is not UTF-8", size=len(raw))
                return []
        return super()._decode(raw)

    def _closed_error(self, code: int | None, reason: str) -> ProviderError:
        text = f"{self.label} closed the session (code {code}: {reason[:200]})"
        if not self._ready.is_set():  # refused at set-up: connect() reports it
            self._setup_error = f"close {code}: {reason[:200]}"
            self._auth_refused = code in FATAL_CLOSE_CODES and "api key" in reason.lower()
        fatal_now = code in FATAL_CLOSE_CODES
        if fatal_now:
            self.log.warning("model_error", code=f"close_{code}", message=reason[:300], fatal=True)
        return ProviderError(f"close_{code}" if fatal_now else "upstream_closed", text, fatal=True,
                             renewable=not fatal_now)

    def _translate(self, msg: dict) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        if "setupComplete" in msg:
            first = not self._ready.is_set()
            self._ready.set()
            if first:
                out.append(SessionReady())
        if "usageMetadata" in msg:
            u = msg["usageMetadata"] or {}
            self._usage = {"input_tokens": u.get("promptTokenCount"), "output_tokens": u.get("responseTokenCount"),
                           "total_tokens": u.get("totalTokenCount")}
        if "voiceActivity" in msg:  # optional activity signals: the caller's speech for latency figures
            kind = (msg["voiceActivity"] or {}).get("voiceActivityType")
            out += [SpeechStarted()] if kind == "ACTIVITY_START" else [SpeechStopped()] if kind == "ACTIVITY_END" else []
        if "serverContent" in msg:
            out += self._content(msg["serverContent"] or {})
        if "toolCall" in msg:
            out += self._tool_call(msg["toolCall"] or {})
        if "toolCallCancellation" in msg:
            self.log.info("model_tool_call_cancelled", ids=(msg["toolCallCancellation"] or {}).get("ids"))
        if "sessionResumptionUpdate" in msg:
            upd = msg["sessionResumptionUpdate"] or {}
            if upd.get("resumable") and upd.get("newHandle"):
                self.resume_handle = str(upd["newHandle"])
        if "goAway" in msg:
            out.append(SessionEnding(_seconds((msg["goAway"] or {}).get("timeLeft"))))
        if not out and not set(msg) & {"setupComplete", "usageMetadata", "sessionResumptionUpdate",
                                       "toolCallCancellation", "serverContent", "voiceActivity"}:
            self.log.debug("model_unknown_event", keys=",".join(sorted(msg))[:80])
        return out

    def _start_turn(self) -> list[ProviderEvent]:
        if self._turn is not None:
            return []
        self._turns += 1
        self._turn = f"gemini_turn_{self._turns}"
        out: list[ProviderEvent] = []
        if self._heard.strip():
            # The Live API has no end-of-speech event: the caller's turn ended where the model's
            # begins (the call measures the caller-felt latency from its own last voiced frame).
            out += [SpeechStopped(), InputTranscript(self._heard.strip())]
        self._heard = ""
        return out + [ResponseStarted(self._turn)]

    def _end_turn(self, status: str) -> list[ProviderEvent]:
        rid, self._turn = self._turn, None
        if rid is None:
            return []
        usage, self._usage = self._usage, None
        if rid in self._cancelled:
            self._cancelled.discard(rid)
            status = "cancelled"
        return [ResponseDone(rid, status, {k: v for k, v in usage.items() if v is not None} if usage else None)]

    def _content(self, sc: dict) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        text = (sc.get("inputTranscription") or {}).get("text")
        if text:
            self._heard += str(text)
        if sc.get("interrupted"):
            # The caller spoke over the reply: the service has stopped it (the model's barge-in).
            out.append(SpeechStarted(interrupted=True))
            out += self._end_turn("cancelled")
        parts = (sc.get("modelTurn") or {}).get("parts") or []
        said = (sc.get("outputTranscription") or {}).get("text")
        if parts or said:
            out += self._start_turn()
        rid = self._turn or ""
        for part in parts:
            blob = part.get("inlineData")
            if not blob:
                continue
            mime = str(blob.get("mimeType", ""))
            if not mime.startswith("audio/pcm"):
                self.log.warning("model_bad_event", reason=f"audio of type {mime[:40]!r}")
                continue
            try:
                audio = base64.b64decode(blob.get("data", ""), validate=True)
            except (ValueError, TypeError):
                self.log.warning("model_bad_event", reason="audio data is not base64")
                continue
            if rid not in self._cancelled:
                out.append(AudioDelta(rid, rid, audio))
        if said:
            out.append(OutputTranscript(rid, str(said)))
        if sc.get("turnComplete"):
            out += self._end_turn("completed")
        return out

    def _tool_call(self, tc: dict) -> list[ProviderEvent]:
        """The model waits for the results before going on: its turn so far is done (the tool
        runner answers once a reply is done)."""
        out = self._start_turn()
        rid = self._turn or ""
        for fc in tc.get("functionCalls") or []:
            call_id, name = str(fc.get("id", "")), str(fc.get("name", ""))
            self._tool_names[call_id] = name
            out.append(ToolCall(rid, call_id, name, json.dumps(fc.get("args") or {}, ensure_ascii=False)))
        return out + self._end_turn("completed")


SPEC = ProviderSpec(
    name="gemini", label="Gemini", default_model="gemini-3.8-live",
    input_formats=("pcm16",), output_formats=("pcm24",), turn_detection=("server_vad",),
    factory=GeminiLive,
    settings=GeminiProviderConfig,
    env={"GEMINI_API_KEY": "api_key", "GEMINI_API_KEYS": "api_keys", "GEMINI_LIVE_URL": "url"},
    secret_fields=("api_key", "api_keys"),
    checks=(("url", lambda s: bool(re.match(r"^wss?://", s.url)), "a ws:// or wss:// URL"),
            ("max_sessions", lambda s: s.max_sessions >= 0, ">= 0 (0: no cap)"),
            ("session_renew_seconds", lambda s: s.session_renew_seconds == 0 or s.session_renew_seconds >= 1,
             ">= 1 (0: never renew early)"),
            ("append_ms", lambda s: 20 <= s.append_ms <= 200 and s.append_ms % 20 == 0,
             "a multiple of 20 from 20 to 200")),
)
