"""A protocol-faithful fake of the Gemini Live API (BidiGenerateContent) for tests on 127.0.0.1.

What it imitates (docs/protocols.md; google-genai's LiveClientMessage / LiveServerMessage, whose
camelCase JSON is the wire form; the Live API guides):
- `/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent`, the key in
  `x-goog-api-key` or `?key=`. The upgrade always succeeds; a wrong key is refused after `setup`
  with close 1007 "API key not valid. Please pass a valid API key.", like the service;
- every client message is one JSON object with exactly one of `setup`, `clientContent`,
  `realtimeInput`, `toolResponse`; anything else (or a message before `setup`) closes the socket
  with 1007 "Invalid JSON payload received…", the service's way of reporting errors. Server
  messages go out as binary frames holding JSON, as the service sends them;
- `setup` needs `model: "models/…"` and `generationConfig.responseModalities: ["AUDIO"]`; it is
  answered with `setupComplete` and a first `sessionResumptionUpdate {newHandle, resumable}`;
  `sessionResumption.handle` resumes the conversation a previous session left (an unknown handle
  is 1007); a fatal switch closes with 1008 (quota) instead;
- `realtimeInput.audio` PCM16 at the rate its `mimeType` names; automatic activity detection
  over it (energy VAD): talking over a model turn (while it is generated, or while its audio is
  still playing by the turn's real-time clock) stops it at once and sends
  `serverContent.interrupted` (no late audio: the service cut it); the end of speech sends the
  caller's `inputTranscription`, then a model turn: `outputTranscription` pieces, `modelTurn`
  parts with `inlineData` `audio/pcm;rate=24000` (bigger than real time, sent faster than real
  time), `generationComplete`, `turnComplete`, `usageMetadata`, a new resumption handle;
- `clientContent` with `turnComplete: true` starts a model turn (the first with a quoted phrase
  before any caller speech is the greeting); scripted function calls come as `toolCall` after the
  turn's audio; the model then waits for the `toolResponse` (its ids and names must match) and
  goes on with a new reply unless the response is `scheduling: SILENT`;
- `goAway {timeLeft}` after `go_away_after` seconds, then the close when that time is up;
- failure switches: drop the socket mid-sentence, a fatal close on setup, going silent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.clock import monotonic
from tests.fakes.glm_server import FakeModelServer, make_tone, rms, stream_reply

OUTPUT_RATE = 24000
CLIENT_KEYS = {"setup", "clientContent", "realtimeInput", "toolResponse"}
BAD_KEY = "API key not valid. Please pass a valid API key."


@dataclass
class FakeSession:
    key: str = ""
    path: str = ""
    session_config: dict | None = None  # the setup message's body
    events: list[dict] = field(default_factory=list)  # client messages as received (+ "_t")
    errors_sent: list[dict] = field(default_factory=list)  # closes for a client error
    audio: bytearray = field(default_factory=bytearray)
    input_rate: int = 16000
    speech_started_at: list[float] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)
    cancels: list[float] = field(default_factory=list)  # when the service cut a turn (interrupted)
    tool_outputs: list[dict] = field(default_factory=list)  # {"call_id", "name", "output": JSON text}
    texts: list[str] = field(default_factory=list)  # user text turns received (greeting prompt, DTMF)
    resumed_from: str = ""  # the handle this session resumed
    history: list[tuple[str, str]] = field(default_factory=list)  # (role, text): what the model remembers
    handles: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None


class FakeGemini(FakeModelServer):
    path = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"

    def __init__(self, *, api_key: str = "fake-gemini-key", reply_tone_hz: float = 600.0,
                 reply_seconds: float = 1.5, greeting_tone_hz: float = 660.0,
                 reply_text: str = "Thanks for calling, how can I help you today?", delta_seconds: float = 0.5,
                 delta_interval: float = 0.05, vad_threshold: int = 500, vad_silence_ms: int = 500):
        super().__init__(api_key=api_key, auth="key", reply_tone_hz=reply_tone_hz, reply_seconds=reply_seconds,
                         greeting_tone_hz=greeting_tone_hz, reply_text=reply_text, delta_seconds=delta_seconds,
                         delta_interval=delta_interval, vad_threshold=vad_threshold, cancel_settle=0.0)
        self.vad_silence_ms = vad_silence_ms
        self.extra_keys: set[str] = set()
        self.go_away_after: float | None = None  # seconds after setup
        self.go_away_time_left = 5.0
        self.resumable: dict[str, list[tuple[str, str]]] = {}  # handle -> the history it resumes

    def _check_auth(self, connection: ServerConnection, request):
        return None  # the key is checked when setup arrives (a close, not an HTTP refusal)

    async def _handle(self, ws: ServerConnection) -> None:
        from urllib.parse import parse_qs, urlsplit
        query = parse_qs(urlsplit(ws.request.path).query)
        key = ws.request.headers.get("x-goog-api-key") or (query.get("key") or [""])[0]
        s = FakeSession(key=key, path=ws.request.path)
        self.sessions.append(s)
        self.connections.append(ws)
        try:
            await _Conn(self, ws, s).run()
        finally:
            s.close_code = ws.close_code
            s.closed.set()


class _Conn:
    def __init__(self, fake: FakeGemini, ws: ServerConnection, s: FakeSession):
        self.fake, self.ws, self.s = fake, ws, s
        self.set_up = False
        self.vad_buf = bytearray()
        self.in_speech = False
        self.silence_ms = 0
        self.speech_ms = 0
        self.response_task: asyncio.Task | None = None
        self.current: dict | None = None
        self.pending_tool: dict | None = None  # {"id", "name", "answered": Event, "response"}
        self.tasks: list[asyncio.Task] = []

    async def send(self, msg: dict) -> None:
        if self.fake.stall:
            return
        try:
            await self.ws.send(json.dumps(msg).encode())  # binary frames, as the service sends them
        except ConnectionClosed:
            pass

    async def refuse(self, code: int, reason: str) -> None:
        self.s.errors_sent.append({"error": {"code": code, "message": reason}})
        await self.ws.close(code, reason)

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    return await self.refuse(1007, "Invalid JSON payload received.")
                if not isinstance(msg, dict) or len(msg) != 1 or not set(msg) <= CLIENT_KEYS:
                    name = next(iter(set(msg) - CLIENT_KEYS), "") if isinstance(msg, dict) else ""
                    return await self.refuse(1007, f'Invalid JSON payload received. Unknown name "{name}".')
                (kind, body), = msg.items()
                self.s.events.append({kind: body, "_t": monotonic()})
                if kind != "setup" and not self.set_up:
                    return await self.refuse(1007, "Request contains an invalid argument: setup must come first.")
                await getattr(self, f"_{kind}")(body)
        except ConnectionClosed:
            pass
        finally:
            for t in self.tasks + ([self.response_task] if self.response_task else []):
                t.cancel()

    # ------------------------------------------------------------------ setup and resumption
    async def _setup(self, body: dict) -> None:
        if self.set_up:
            return await self.refuse(1007, "Request contains an invalid argument: setup was already sent.")
        if self.s.key not in {self.fake.api_key, *self.fake.extra_keys}:
            self.fake.rejected.append("bad key")
            return await self.refuse(1007, BAD_KEY)
        gen = body.get("generationConfig") or {}
        if not str(body.get("model", "")).startswith("models/") or gen.get("responseModalities") != ["AUDIO"]:
            return await self.refuse(1007, "Request contains an invalid argument.")
        handle = (body.get("sessionResumption") or {}).get("handle")
        if handle:
            if handle not in self.fake.resumable:
                return await self.refuse(1007, "Request contains an invalid argument: invalid session handle.")
            self.s.resumed_from, self.s.history = handle, list(self.fake.resumable[handle])
        if self.fake.fatal_error_on_update:
            return await self.refuse(1008, f"{self.fake.fatal_error_on_update}: You exceeded your current quota.")
        self.s.session_config = body
        self.set_up = True
        await self.send({"setupComplete": {}})
        await self._new_handle()
        if self.fake.go_away_after is not None:
            self.tasks.append(asyncio.create_task(self._go_away(self.fake.go_away_after)))

    async def _new_handle(self) -> None:
        if "sessionResumption" not in (self.s.session_config or {}):
            return
        handle = f"handle_{next(self.fake._ids)}"
        self.fake.resumable[handle] = list(self.s.history)
        self.s.handles.append(handle)
        await self.send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    async def _go_away(self, after: float) -> None:
        await asyncio.sleep(after)
        await self.send({"goAway": {"timeLeft": f"{self.fake.go_away_time_left:g}s"}})
        await asyncio.sleep(self.fake.go_away_time_left)
        await self.ws.close(1000)

    # ------------------------------------------------------------------ client content
    async def _clientContent(self, body: dict) -> None:
        for turn in body.get("turns") or []:
            for part in turn.get("parts") or []:
                if "text" in part:
                    self.s.texts.append(part["text"])
                    self.s.history.append((turn.get("role", "user"), part["text"]))
        if body.get("turnComplete"):
            text = self.s.texts[-1] if self.s.texts else ""
            quoted = re.search(r'"([^"]+)"', text)
            greeting = quoted is not None and not self.s.speech_started_at and not self.s.responses
            self._start("greeting" if greeting else "reply", quoted.group(1) if quoted else self.fake.reply_text,
                        self.fake.greeting_tone_hz if greeting else self.fake.reply_tone_hz)

    async def _toolResponse(self, body: dict) -> None:
        for fr in body.get("functionResponses") or []:
            pending = self.pending_tool
            if pending is None or fr.get("id") != pending["id"] or fr.get("name") != pending["name"] \
                    or not isinstance(fr.get("response"), dict):
                return await self.refuse(1007, "Request contains an invalid argument: unknown function response.")
            self.s.tool_outputs.append({"call_id": fr["id"], "name": fr["name"],
                                        "output": json.dumps(fr["response"]), "scheduling": fr.get("scheduling")})
            pending["silent"] = fr.get("scheduling") == "SILENT"
            pending["answered"].set()

    # ------------------------------------------------------------------ input + VAD
    async def _realtimeInput(self, body: dict) -> None:
        audio = body.get("audio")
        if audio is None:
            return
        m = re.fullmatch(r"audio/pcm;rate=(\d+)", str(audio.get("mimeType", "")))
        try:
            pcm = base64.b64decode(audio.get("data", ""), validate=True)
        except (binascii.Error, ValueError):
            pcm = None
        if m is None or pcm is None:
            return await self.refuse(1007, "Request contains an invalid argument: audio.")
        self.s.input_rate = int(m.group(1))
        self.s.audio += pcm
        self.vad_buf += pcm
        win = self.s.input_rate * 2 // 50  # 20 ms
        while len(self.vad_buf) >= win:
            chunk = bytes(self.vad_buf[:win])
            del self.vad_buf[:win]
            await self._vad(rms(chunk) > self.fake.vad_threshold)

    async def _vad(self, loud: bool) -> None:
        if loud:
            self.silence_ms = 0
            self.speech_ms += 20
            if not self.in_speech:
                self.in_speech = True
                self.s.speech_started_at.append(monotonic())
                cur, now = self.current, monotonic()
                # The caller talks over the model: while it generates, or while what it generated
                # is still playing by the service's real-time clock of the turn.
                if cur is not None and (cur["status"] == "in_progress" or now < cur["speaking_until"]):
                    if cur["status"] == "in_progress":
                        cur["cancel_at"] = now
                        cur["cancel_event"].set()
                    self.s.cancels.append(now)
                    cur["speaking_until"] = 0.0
                    await self.send({"serverContent": {"interrupted": True}})
        elif self.in_speech:
            self.silence_ms += 20
            if self.silence_ms >= self.fake.vad_silence_ms:
                self.in_speech = False
                text = f"caller spoke {self.speech_ms / 1000:.1f} seconds"
                self.speech_ms = 0
                self.s.history.append(("user", text))
                await self.send({"serverContent": {"inputTranscription": {"text": text}}})
                self._start("reply", self.fake.reply_text, self.fake.reply_tone_hz)

    # ------------------------------------------------------------------ model turns
    def _start(self, kind: str, text: str, hz: float, tool: tuple | None = None) -> None:
        if self.response_task is not None and not self.response_task.done():
            return  # one turn at a time
        first = self.s is self.fake.sessions[0]
        self.current = {"id": f"turn_{next(self.fake._ids)}", "kind": kind, "status": "in_progress",
                        "deltas_sent": 0, "late_deltas": 0, "created_at": monotonic(), "done_at": None,
                        "cancel_at": None, "cancel_event": asyncio.Event(), "speaking_until": 0.0,
                        "may_fail": not (self.fake.fail_first_session_only and not first),
                        "tool": tool if tool is not None else
                        (self.fake.tool_calls.pop(0) if kind == "reply" and self.fake.tool_calls else None)}
        self.s.responses.append(self.current)
        self.response_task = asyncio.create_task(self._turn(self.current, text, hz))

    async def _turn(self, r: dict, text: str, hz: float) -> None:
        words = text.split(" ")
        step = max(1, len(words) // 4)
        for i in range(0, len(words), step):
            piece = " ".join(words[i:i + step]) + (" " if i + step < len(words) else "")
            await self.send({"serverContent": {"outputTranscription": {"text": piece}}})
        total, per = int(self.fake.reply_seconds * OUTPUT_RATE), int(self.fake.delta_seconds * OUTPUT_RATE)
        chunks = (make_tone(hz, min(per, total - at) / OUTPUT_RATE, OUTPUT_RATE, 8000, phase0=at)
                  for at in range(0, total, per))

        async def send_piece(pcm: bytes) -> None:
            r["speaking_until"] = max(r["speaking_until"], monotonic()) + len(pcm) / 2 / OUTPUT_RATE
            await self.send({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
                "mimeType": f"audio/pcm;rate={OUTPUT_RATE}", "data": base64.b64encode(pcm).decode()}}]}}})

        if not await stream_reply(self.fake, r, chunks, send_piece, self.ws.transport.abort):
            return
        if r["cancel_at"] is not None:
            r["status"], r["done_at"] = "cancelled", monotonic()
            self.s.history.append(("model", text + " [interrupted]"))
            return  # `interrupted` already said it all
        self.s.history.append(("model", text))
        r["status"] = "completed"
        tools = {d.get("name") for t in (self.s.session_config or {}).get("tools") or []
                 for d in t.get("functionDeclarations") or []}
        if r["tool"] is not None and r["tool"][0] in tools:
            await self._call_tool(r)
            return
        await self._finish(r)

    async def _finish(self, r: dict) -> None:
        r["done_at"] = monotonic()
        await self.send({"serverContent": {"generationComplete": True}})
        await self.send({"serverContent": {"turnComplete": True}})
        await self.send({"usageMetadata": {"promptTokenCount": 80, "responseTokenCount": 40, "totalTokenCount": 120}})
        await self._new_handle()

    async def _call_tool(self, r: dict) -> None:
        name, args = r["tool"]
        call_id = f"fc_{next(self.fake._ids)}"
        r["call_id"] = call_id
        self.pending_tool = {"id": call_id, "name": name, "answered": asyncio.Event(), "silent": False}
        await self.send({"toolCall": {"functionCalls": [{"id": call_id, "name": name, "args": args}]}})
        try:
            await asyncio.wait_for(self.pending_tool["answered"].wait(), 30)
        except asyncio.TimeoutError:
            return
        silent, self.pending_tool = self.pending_tool["silent"], None
        r["done_at"] = monotonic()
        if silent:
            await self._finish(r)
            return
        self.response_task = None  # the model goes on with what the function returned
        self._start("reply", self.fake.reply_text, self.fake.reply_tone_hz, tool=None)
