"""A protocol-faithful fake of DashScope Qwen-Omni realtime for tests on 127.0.0.1.

What it imitates (docs/protocols.md; the dashscope SDK 2.0.2 `omni_realtime.py`, which our
conformance test runs against this fake; Model Studio's client/server event reference):
- `/api-ws/v1/realtime?model=<model>` with `Authorization: Bearer <key>`; a wrong key is HTTP 401
  before the WebSocket exists; no `model=` is HTTP 400;
- `session.created` first (the session's defaults), `session.update` validated: its keys are the
  SDK's (`modalities`, `voice`, `input_audio_format`/`output_audio_format` or the nested
  `audio.{input,output}.format {type, sample_rate}`, `input_audio_transcription`, `turn_detection`,
  `translation`, `sample_rate`, `video`) plus the documented session parameters (`instructions`,
  `temperature`, `top_p`, `top_k`, `max_tokens`, `tools`, …); anything else is an `invalid_value`
  error. Answered with `session.updated`;
- client events: only those the SDK sends (`session.update`, `input_audio_buffer.append` /
  `commit` / `clear`, `input_image_buffer.append`, `response.create`, `response.cancel`,
  `conversation.item.create`, `session.finish`); others are errors;
- PCM16 in at the session's input rate; server VAD: speech_started / speech_stopped / committed /
  the user item / its transcription, then (create_response) a response: response.created,
  transcript deltas, raw PCM16 audio deltas at the output rate (bigger than real time, sent faster
  than real time), audio/transcript done, response.done with usage; `interrupt_response: true`
  (the service's default) makes the server cancel a running response itself at speech_started;
- `response.create {response: {instructions}}`: the first one with a quoted phrase before any
  caller speech is the greeting; scripted function calls come as output_item.added +
  response.function_call_arguments.done (tools only when the session declared them);
- `response.cancel` settles after ~100 ms (deltas keep coming meanwhile), then response.done
  with status cancelled; a cancel with nothing active is an error (`response_cancel_not_active`);
- `session.finish` -> `session.finished` (the client then closes the socket);
- failure switches: drop the socket mid-sentence, a fatal error on session.update, going silent.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection

from websockets.exceptions import ConnectionClosed

from gateway.clock import monotonic
from tests.fakes.glm_server import FakeModelServer, FakeSession as _GlmSession, _Conn as _GlmConn, make_tone, rms, \
    stream_reply

# What the SDK's OmniRealtimeConversation sends (its public methods), and nothing else.
CLIENT_EVENTS = {"session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.clear", "input_image_buffer.append", "response.create", "response.cancel",
                 "conversation.item.create", "session.finish"}
# session.update keys: the SDK's own (update_session) and the documented session parameters it
# passes through as keyword arguments.
SDK_SESSION_KEYS = {"modalities", "voice", "input_audio_format", "output_audio_format", "audio",
                    "input_audio_transcription", "turn_detection", "translation", "sample_rate", "video"}
DOC_SESSION_KEYS = {"instructions", "temperature", "top_p", "top_k", "max_tokens", "repetition_penalty",
                    "presence_penalty", "seed", "enable_search", "search_options", "tools", "smooth_output"}
TURN_DETECTION_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                       "interrupt_response"}


@dataclass
class FakeSession(_GlmSession):
    path: str = ""
    model: str = ""
    tool_items: list[dict] = field(default_factory=list)  # function_call_output items, as sent
    finished: bool = False


class FakeQwen(FakeModelServer):
    path = "/api-ws/v1/realtime"

    def __init__(self, *, api_key: str = "sk-fake-dashscope", reply_tone_hz: float = 600.0,
                 reply_seconds: float = 1.5, greeting_tone_hz: float = 660.0,
                 reply_text: str = "Thanks for calling, how can I help you today?", delta_seconds: float = 0.5,
                 delta_interval: float = 0.05, vad_threshold: int = 500, vad_silence_ms: int = 500,
                 cancel_settle: float = 0.1):
        super().__init__(api_key=api_key, auth="bearer", reply_tone_hz=reply_tone_hz, reply_seconds=reply_seconds,
                         greeting_tone_hz=greeting_tone_hz, reply_text=reply_text, delta_seconds=delta_seconds,
                         delta_interval=delta_interval, vad_threshold=vad_threshold, cancel_settle=cancel_settle)
        self.vad_silence_ms = vad_silence_ms
        self.extra_keys: set[str] = set()  # more keys it accepts (a pool of keys)

    def _check_auth(self, connection: ServerConnection, request):
        if request.headers.get("Authorization") not in {f"Bearer {k}" for k in {self.api_key, *self.extra_keys}}:
            self.rejected.append("bad key")
            return connection.respond(401, json.dumps({"code": "InvalidApiKey", "message": "Invalid API-key provided."}) + "\n")
        if not parse_qs(urlsplit(request.path).query).get("model"):
            self.rejected.append("no model")
            return connection.respond(400, '{"code": "InvalidParameter", "message": "Model not specified"}\n')
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        s = FakeSession(auth_header=ws.request.headers.get("Authorization", ""), path=ws.request.path,
                        model=parse_qs(urlsplit(ws.request.path).query)["model"][0])
        self.sessions.append(s)
        self.connections.append(ws)
        try:
            await _Conn(self, ws, s).run()
        finally:
            s.close_code = ws.close_code
            s.closed.set()


class _Conn(_GlmConn):
    """One client connection: GLM's state machine (the same OpenAI-like VAD and responses) with
    Qwen's session, events and checks."""

    def __init__(self, fake: FakeQwen, ws: ServerConnection, s: FakeSession):
        super().__init__(fake, ws, s)  # type: ignore[arg-type]
        self.config: dict = {
            "id": f"sess_{next(fake._ids)}", "object": "realtime.session", "model": s.model,
            "modalities": ["text", "audio"], "voice": "Cherry", "input_audio_format": "pcm", "output_audio_format": "pcm",
            "input_audio_transcription": {"model": "qwen3-asr-flash-realtime"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                               "silence_duration_ms": 800, "create_response": True, "interrupt_response": True},
            "tools": [], "temperature": 0.8}
        self.output_rate = 24000

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.config})
        await self._read()

    async def _read(self) -> None:
        """GLM's read loop without its heartbeats."""
        self.tasks = []
        try:
            async for raw in self.ws:
                try:
                    msg = json.loads(raw)
                    assert isinstance(msg, dict) and isinstance(msg.get("type"), str)
                except (ValueError, AssertionError, TypeError):
                    await self.error("invalid_json", "The server could not parse the event as JSON.")
                    continue
                msg["_t"] = monotonic()
                self.s.events.append(msg)
                await self._dispatch(msg)
        except ConnectionClosed:
            pass
        finally:
            for t in self.tasks + ([self.response_task] if self.response_task else []):
                t.cancel()

    async def _dispatch(self, msg: dict) -> None:
        t = msg["type"]
        if t not in CLIENT_EVENTS:
            return await self.error("invalid_value", f"Invalid event type: {t}")
        if t == "session.update":
            await self._session_update(msg)
        elif t == "input_audio_buffer.append":
            await self._append(msg)
        elif t == "response.create":
            instructions = (msg.get("response") or {}).get("instructions") or ""
            quoted = re.search(r'"([^"]+)"', instructions)
            greeting = quoted is not None and not self.s.speech_started_at
            self._start_response("greeting" if greeting else "reply", quoted.group(1) if quoted else self.fake.reply_text,
                                 self.fake.greeting_tone_hz if greeting else self.fake.reply_tone_hz)
        elif t == "response.cancel":
            self.s.cancels.append(msg["_t"])
            if self.current is None or self.current["status"] != "in_progress":
                await self.error("response_cancel_not_active", "Cancellation failed: no active response found")
            else:
                self._cancel(self.current)
        elif t == "conversation.item.create":
            await self._item_create(msg)
        elif t == "input_audio_buffer.clear":
            self.vad_buf.clear()
            await self.send({"type": "input_audio_buffer.cleared"})
        elif t == "session.finish":
            self.s.finished = True  # the client closes the socket (the SDK's close())
            await self.send({"type": "session.finished"})
        # input_audio_buffer.commit (manual turns) and input_image_buffer.append: accepted

    def _cancel(self, r: dict) -> None:
        r["cancel_at"] = monotonic()
        r["cancel_event"].set()

    async def _session_update(self, msg: dict) -> None:
        sess = msg.get("session")
        if not isinstance(sess, dict):
            return await self.error("invalid_value", "session is required", param="session")
        unknown = sorted(set(sess) - SDK_SESSION_KEYS - DOC_SESSION_KEYS)
        if unknown:
            return await self.error("invalid_value", f"Unknown parameter: session.{unknown[0]}",
                                    param=f"session.{unknown[0]}")
        td = sess.get("turn_detection", "unset")
        if isinstance(td, dict) and (set(td) - TURN_DETECTION_KEYS
                                     or td.get("type") not in ("server_vad", "semantic_vad")):
            return await self.error("invalid_value", "Invalid turn_detection", param="session.turn_detection")
        if sess.get("modalities") not in (None, ["text"], ["text", "audio"], ["audio", "text"]):
            return await self.error("invalid_value", f"Invalid modalities: {sess.get('modalities')}",
                                    param="session.modalities")
        for side in ("input", "output"):
            fmt = ((sess.get("audio") or {}).get(side) or {}).get("format")
            if fmt is not None and (fmt.get("type") != "pcm" or fmt.get("sample_rate") not in (8000, 16000, 24000, 48000)):
                return await self.error("invalid_value", f"Invalid audio.{side}.format", param=f"session.audio.{side}")
        for tool in sess.get("tools") or []:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
                return await self.error("invalid_value", "Invalid tools", param="session.tools")
        if self.fake.fatal_error_on_update:
            await self.error(self.fake.fatal_error_on_update, "Access denied: your account is in arrears.",
                             "invalid_request_error")
            await self.ws.close(1000)
            return
        for k, v in sess.items():
            if isinstance(v, dict) and isinstance(self.config.get(k), dict):
                self.config[k] = {**self.config[k], **v}
            else:
                self.config[k] = v
        audio = self.config.get("audio") or {}
        self.s.input_rate = ((audio.get("input") or {}).get("format") or {}).get("sample_rate", 16000)
        self.output_rate = ((audio.get("output") or {}).get("format") or {}).get("sample_rate", 24000)
        self.s.session_config = json.loads(json.dumps(self.config))
        await self.send({"type": "session.updated", "session": self.config})

    async def error(self, code: str, message: str, etype: str = "invalid_request_error",  # type: ignore[override]
                    param: str | None = None) -> None:
        await self.send({"type": "error", "error": {"type": etype, "code": code, "message": message, "param": param}})

    async def _item_create(self, msg: dict) -> None:
        item = msg.get("item") or {}
        if item.get("type") == "function_call_output":
            known = {r.get("call_id") for r in self.s.responses}
            if item.get("call_id") not in known or not isinstance(item.get("output"), str):
                return await self.error("invalid_value", "function_call_output needs the call_id of a function call "
                                        "and a string output", param="item")
            self.s.tool_outputs.append(item)
            self.s.tool_items.append(item)
        elif item.get("type") == "message" and item.get("role") in ("user", "system"):
            content = item.get("content")
            if not isinstance(content, list) or any(not isinstance(c, dict) or c.get("type") != "input_text"
                                                    for c in content):
                return await self.error("invalid_value", "Invalid conversation item", param="item")
            self.s.texts += [c.get("text", "") for c in content]
        else:
            return await self.error("invalid_value", "Invalid conversation item", param="item")
        await self.send({"type": "conversation.item.created", "item": {**item, "id": f"item_{next(self.fake._ids)}"}})

    # ------------------------------------------------------------------ input + VAD
    async def _append(self, msg: dict) -> None:
        try:
            pcm = base64.b64decode(msg.get("audio", ""), validate=True)
        except (binascii.Error, ValueError):
            return await self.error("invalid_value", "audio is not base64")
        self.s.audio += pcm
        self.vad_buf += pcm
        win = self.s.input_rate * 2 // 50  # 20 ms
        while len(self.vad_buf) >= win:
            chunk = bytes(self.vad_buf[:win])
            del self.vad_buf[:win]
            loud = rms(chunk) > self.fake.vad_threshold
            if loud and not self.in_speech and self.config["turn_detection"].get("interrupt_response", True) \
                    and self.current is not None and self.current["status"] == "in_progress":
                self._cancel(self.current)  # the service's own barge-in
            await self._vad(loud)

    def _start_response(self, kind: str, text: str, hz: float) -> None:
        td = self.config.get("turn_detection") or {}
        if kind == "reply" and not td.get("create_response", True) and self.current is not None:
            return
        super()._start_response(kind, text, hz)

    # ------------------------------------------------------------------ responses
    async def _respond(self, r: dict, text: str, hz: float) -> None:  # type: ignore[override]
        rid, item = r["id"], f"item_{next(self.fake._ids)}"
        base = {"response_id": rid, "item_id": item, "output_index": 0, "content_index": 0}
        await self.send({"type": "response.created", "response": {"id": rid, "object": "realtime.response",
                                                                   "status": "in_progress", "output": []}})
        await self.send({"type": "response.output_item.added", "response_id": rid, "output_index": 0,
                         "item": {"id": item, "type": "message", "role": "assistant", "status": "in_progress"}})
        words = text.split(" ")
        step = max(1, len(words) // 4)
        for i in range(0, len(words), step):
            piece = " ".join(words[i:i + step]) + (" " if i + step < len(words) else "")
            await self.send({"type": "response.audio_transcript.delta", **base, "delta": piece})
        rate = self.output_rate
        total, per = int(self.fake.reply_seconds * rate), int(self.fake.delta_seconds * rate)
        chunks = (make_tone(hz, min(per, total - at) / rate, rate, 8000, phase0=at) for at in range(0, total, per))

        async def send_piece(pcm: bytes) -> None:
            await self.send({"type": "response.audio.delta", **base, "delta": base64.b64encode(pcm).decode()})

        if not await stream_reply(self.fake, r, chunks, send_piece, self.ws.transport.abort):
            return
        output = [{"id": item, "type": "message", "role": "assistant"}]
        if r["cancel_at"] is not None:
            r["status"] = "cancelled"
        else:
            r["status"] = "completed"
            await self.send({"type": "response.audio.done", **base})
            await self.send({"type": "response.audio_transcript.done", **base, "transcript": text})
            tools = {(t.get("function") or {}).get("name") for t in self.config.get("tools") or []}
            if r["tool"] is not None and r["tool"][0] in tools:
                name, args = r["tool"]
                r["call_id"], fc_item = f"call_{next(self.fake._ids)}", f"item_{next(self.fake._ids)}"
                fc = {"id": fc_item, "type": "function_call", "status": "completed", "name": name,
                      "call_id": r["call_id"], "arguments": json.dumps(args)}
                await self.send({"type": "response.output_item.added", "response_id": rid, "output_index": 1,
                                 "item": {**fc, "status": "in_progress", "arguments": ""}})
                await self.send({"type": "response.function_call_arguments.done", "response_id": rid,
                                 "item_id": fc_item, "output_index": 1, "call_id": r["call_id"], "name": name,
                                 "arguments": fc["arguments"]})
                await self.send({"type": "response.output_item.done", "response_id": rid, "output_index": 1, "item": fc})
                output.append(fc)
        r["done_at"] = monotonic()
        await self.send({"type": "response.done", "response": {
            "id": rid, "object": "realtime.response", "status": r["status"], "output": output,
            "usage": {"total_tokens": 120, "input_tokens": 80, "output_tokens": 40}}})

