"""A protocol-faithful fake of OpenAI Realtime (GA) for tests on 127.0.0.1.

What it imitates (docs/protocols.md, OpenAI's realtime reference):
- the upgrade needs the key as `Authorization: Bearer <key>` (or `api-key: <key>`, Azure style);
  anything else is HTTP 401 before the WebSocket exists. An `OpenAI-Beta` header is refused: it
  would select the retired beta protocol, whose events differ;
- `session.created` first; `session.update` is validated like the service does (session.type
  "realtime", GA nesting of audio.input/output, formats audio/pcmu | audio/pcm@24000 | audio/pcma,
  turn detection server_vad | semantic_vad | null, unknown parameters such as the beta-only
  `temperature` are errors) and answered with `session.updated`;
- input audio in the session's format; server VAD over it (`silence_duration_ms`,
  `prefix_padding_ms` honoured): speech_started / speech_stopped / committed / the user item /
  its transcription, then (create_response) a response; `interrupt_response: true` makes the
  server cancel the active response itself at speech_started, like the service;
- responses: response.created, output_item.added, transcript deltas, audio deltas
  (response.output_audio.delta) bigger than real time and sent faster than real time, done
  events, response.done with usage; `echo=True` replies with the caller's own committed audio
  bytes instead of a tone (a passthrough check: same format in and out = the same bytes);
- `response.cancel` settles after ~100 ms (deltas keep coming meanwhile), then response.done with
  status cancelled; a cancel with no active response is the `response_cancel_not_active` error;
- `conversation.item.truncate` beyond the audio generated for that item is rejected with the
  service's "Audio content of X ms is already shorter than Y ms"; truncate/delete of unknown items
  are errors; `conversation.item.create` checks item shapes (user input_text, assistant output_text);
- failure switches: drop the socket mid-sentence, a fatal error on session.update, going silent,
  and a maximum session age after which the session ends with the `session_expired` error.
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

import audioop  # stdlib below 3.13, the audioop-lts package from 3.13

from gateway.clock import monotonic
from tests.fakes.glm_server import FakeModelServer, make_tone, rms, stream_reply

SESSION_KEYS = {"type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
                "max_output_tokens", "tracing", "truncation", "prompt", "include"}
FORMATS = {"audio/pcmu": 8000, "audio/pcma": 8000, "audio/pcm": 24000}


@dataclass
class FakeSession:
    auth_header: str = ""
    path: str = ""
    headers: dict = field(default_factory=dict)
    session_config: dict | None = None
    events: list[dict] = field(default_factory=list)
    errors_sent: list[dict] = field(default_factory=list)
    raw_audio: bytearray = field(default_factory=bytearray)  # exactly what was appended
    audio: bytearray = field(default_factory=bytearray)  # decoded to PCM16 at input_rate
    input_rate: int = 8000
    speech_started_at: list[float] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)
    cancels: list[float] = field(default_factory=list)
    tool_outputs: list[dict] = field(default_factory=list)  # function_call_output items received
    texts: list[str] = field(default_factory=list)  # user text items received (e.g. DTMF)
    truncates: list[dict] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    items: dict[str, dict] = field(default_factory=dict)  # the conversation, by item id
    created_items: list[dict] = field(default_factory=list)  # items the client created
    opened_at: float = field(default_factory=monotonic)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None


class FakeOpenAI(FakeModelServer):
    path = "/v1/realtime?model=gpt-realtime"

    def __init__(self, *, api_key: str = "sk-fake", auth: str = "bearer", reply_tone_hz: float = 600.0,
                 reply_seconds: float = 1.5, greeting_tone_hz: float = 660.0,
                 reply_text: str = "Thanks for calling, how can I help you today?",
                 delta_seconds: float = 0.5, delta_interval: float = 0.05, vad_threshold: int = 500,
                 cancel_settle: float = 0.1):
        super().__init__(api_key=api_key, auth=auth, reply_tone_hz=reply_tone_hz, reply_seconds=reply_seconds,
                         greeting_tone_hz=greeting_tone_hz, reply_text=reply_text, delta_seconds=delta_seconds,
                         delta_interval=delta_interval, vad_threshold=vad_threshold, cancel_settle=cancel_settle)
        self.echo = False
        self.max_session_seconds: float | None = None
        self.extra_keys: set[str] = set()  # more keys it accepts (a deployment with several keys)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def _check_auth(self, connection: ServerConnection, request):
        headers = request.headers
        if headers.get("OpenAI-Beta"):
            self.rejected.append("beta header")
            return connection.respond(400, "the OpenAI-Beta header selects the retired beta protocol\n")
        keys = {self.api_key, *self.extra_keys}
        if self.auth == "api-key":
            ok = headers.get("api-key") in keys
        else:
            ok = headers.get("Authorization") in {f"Bearer {k}" for k in keys}
        if not ok:
            self.rejected.append("bad key")
            return connection.respond(401, '{"error": {"code": "invalid_api_key"}}\n')
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        s = FakeSession(auth_header=ws.request.headers.get("Authorization", ""), path=ws.request.path,
                        headers=dict(ws.request.headers.raw_items()))
        self.sessions.append(s)
        self.connections.append(ws)
        try:
            await _Conn(self, ws, s).run()
        finally:
            s.close_code = ws.close_code
            s.closed.set()


class _Conn:
    """One client connection's state machine."""

    def __init__(self, fake: FakeOpenAI, ws: ServerConnection, s: FakeSession):
        self.fake, self.ws, self.s = fake, ws, s
        self.vad_buf = bytearray()
        self.in_speech = False
        self.silence_ms = 0
        self.speech_ms = 0
        self.speech_item = ""
        self.utterance = bytearray()  # raw appended bytes of the current turn (for echo)
        self.history = bytearray()  # recent raw bytes (prefix padding)
        self.response_task: asyncio.Task | None = None
        self.current: dict | None = None
        self.tasks: list[asyncio.Task] = []
        self.config: dict = {"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": {"type": "server_vad"}},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}}}

    # ------------------------------------------------------------------ plumbing
    async def send(self, event: dict) -> None:
        if self.fake.stall:
            return
        event = {"event_id": self.fake.new_id("event"), **event}
        if event["type"] == "error":
            self.s.errors_sent.append(event)
        try:
            await self.ws.send(json.dumps(event))
        except ConnectionClosed:
            pass

    async def error(self, code: str | None, message: str, etype: str = "invalid_request_error",
                    event_id: str | None = None, param: str | None = None) -> None:
        await self.send({"type": "error", "error": {"type": etype, "code": code, "message": message,
                                                    "param": param, "event_id": event_id}})

    def td(self) -> dict | None:
        return self.config["audio"]["input"].get("turn_detection")

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": {"id": self.fake.new_id("sess"),
                                                                "object": "realtime.session", **self.config}})
        if self.fake.max_session_seconds:
            self.tasks.append(asyncio.create_task(self._expire(self.fake.max_session_seconds)))
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    await self.error("invalid_event", "binary frames are not supported")
                    continue
                try:
                    msg = json.loads(raw)
                    assert isinstance(msg, dict) and isinstance(msg.get("type"), str)
                except (ValueError, AssertionError):
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

    async def _expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.error("session_expired", f"Your session hit the maximum duration of {seconds:g} seconds.")
        await self.ws.close(1000)

    async def _dispatch(self, msg: dict) -> None:
        t, eid = msg["type"], msg.get("event_id")
        if t == "session.update":
            await self._session_update(msg)
        elif t == "input_audio_buffer.append":
            await self._append(msg)
        elif t == "response.create":
            instructions = (msg.get("response") or {}).get("instructions") or ""
            quoted = re.search(r'"([^"]+)"', instructions)
            greeting = quoted is not None and not any(i["role"] == "user" for i in self.s.items.values())
            self._start_response("greeting" if greeting else "reply",
                                 quoted.group(1) if quoted else self.fake.reply_text,
                                 self.fake.greeting_tone_hz if greeting else self.fake.reply_tone_hz)
        elif t == "response.cancel":
            self.s.cancels.append(msg["_t"])
            cur = self.current
            wanted = msg.get("response_id")
            if cur is None or cur["status"] != "in_progress" or (wanted and wanted != cur["id"]):
                await self.error("response_cancel_not_active", "Cancellation failed: no active response found",
                                 event_id=eid)
            else:
                self._cancel(cur)
        elif t == "conversation.item.truncate":
            await self._truncate(msg)
        elif t == "conversation.item.delete":
            item_id = msg.get("item_id")
            if item_id not in self.s.items:
                return await self.error("item_not_found", f"Item with item_id not found: {item_id}",
                                        event_id=eid, param="item_id")
            del self.s.items[item_id]
            self.s.deletes.append(item_id)
            await self.send({"type": "conversation.item.deleted", "item_id": item_id})
        elif t == "conversation.item.create":
            await self._item_create(msg)
        elif t == "input_audio_buffer.commit" or t == "input_audio_buffer.clear":
            pass
        else:
            await self.error("invalid_value", f"Invalid value: '{t}'. Supported values are: ...", event_id=eid,
                             param="type")

    # ------------------------------------------------------------------ session
    async def _session_update(self, msg: dict) -> None:
        eid = msg.get("event_id")
        sess = msg.get("session")
        if not isinstance(sess, dict):
            return await self.error("missing_required_parameter", "Missing required parameter: 'session'.",
                                    event_id=eid, param="session")
        unknown = sorted(set(sess) - SESSION_KEYS)
        if unknown:
            return await self.error("unknown_parameter", f"Unknown parameter: 'session.{unknown[0]}'.",
                                    event_id=eid, param=f"session.{unknown[0]}")
        if sess.get("type") != "realtime":
            return await self.error("invalid_value", "session.type must be 'realtime'", event_id=eid)
        audio = sess.get("audio") or {}
        for side in ("input", "output"):
            fmt = (audio.get(side) or {}).get("format")
            if fmt is None:
                continue
            if fmt.get("type") not in FORMATS or (fmt.get("type") == "audio/pcm" and fmt.get("rate", 24000) != 24000):
                return await self.error("invalid_value", f"Invalid value for session.audio.{side}.format",
                                        event_id=eid, param=f"session.audio.{side}.format")
        td = (audio.get("input") or {}).get("turn_detection", "unset")
        if td not in ("unset", None) and (not isinstance(td, dict) or td.get("type") not in ("server_vad", "semantic_vad")):
            return await self.error("invalid_value", "Invalid turn_detection", event_id=eid)
        if self.fake.fatal_error_on_update:
            await self.error(self.fake.fatal_error_on_update, "You exceeded your current quota.",
                             etype="insufficient_quota", event_id=eid)
            await self.ws.close(1000)
            return
        for side in ("input", "output"):
            if side in audio:
                self.config["audio"][side].update(audio[side])
        for k, v in sess.items():
            if k != "audio":
                self.config[k] = v
        self.s.session_config = json.loads(json.dumps(self.config))
        self.s.input_rate = FORMATS[self.config["audio"]["input"]["format"]["type"]]
        await self.send({"type": "session.updated", "session": self.config})

    async def _item_create(self, msg: dict) -> None:
        item = msg.get("item") or {}
        if item.get("type") == "function_call_output":
            known = {r.get("call_id") for r in self.s.responses}
            if item.get("call_id") not in known or not isinstance(item.get("output"), str):
                return await self.error("invalid_value", "function_call_output needs the call_id of a function "
                                        "call and a string output", event_id=msg.get("event_id"), param="item")
            self.s.tool_outputs.append(item)
            item = {**item, "id": self.fake.new_id("item"), "audio_ms": 0.0}
            self.s.items[item["id"]] = {**item, "role": "tool"}
            await self.send({"type": "conversation.item.added", "item": item})
            await self.send({"type": "conversation.item.done", "item": item})
            return
        role, content = item.get("role"), item.get("content")
        allowed = {"user": {"input_text", "input_audio"}, "system": {"input_text"},
                   "assistant": {"output_text", "output_audio"}}.get(role)
        if item.get("type") != "message" or allowed is None or not isinstance(content, list) or \
                any(not isinstance(c, dict) or c.get("type") not in allowed for c in content):
            return await self.error("invalid_value", "Invalid conversation item", event_id=msg.get("event_id"),
                                    param="item")
        item = {**item, "id": item.get("id") or self.fake.new_id("item"), "audio_ms": 0.0}
        self.s.items[item["id"]] = item
        self.s.created_items.append(item)
        if role == "user":
            self.s.texts += [c.get("text", "") for c in content if c.get("type") == "input_text"]
        await self.send({"type": "conversation.item.added", "item": item})
        await self.send({"type": "conversation.item.done", "item": item})

    async def _truncate(self, msg: dict) -> None:
        eid, item_id, end = msg.get("event_id"), msg.get("item_id"), msg.get("audio_end_ms")
        item = self.s.items.get(item_id)
        record = {"item_id": item_id, "audio_end_ms": end, "accepted": False, "t": msg["_t"]}
        self.s.truncates.append(record)
        if item is None or item["role"] != "assistant":
            return await self.error("item_not_found", f"Item with item_id not found: {item_id}", event_id=eid)
        if not isinstance(end, int) or end < 0:
            return await self.error("invalid_value", "audio_end_ms must be a non-negative integer", event_id=eid)
        if end > item["audio_ms"]:
            return await self.error("invalid_value", f"Audio content of {int(item['audio_ms'])}ms is already "
                                    f"shorter than {end}ms", event_id=eid, param="audio_end_ms")
        record["accepted"] = True
        item["audio_ms"] = float(end)
        await self.send({"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
                         "audio_end_ms": end})

    # ------------------------------------------------------------------ input + VAD
    async def _append(self, msg: dict) -> None:
        try:
            data = base64.b64decode(msg.get("audio", ""), validate=True)
        except (binascii.Error, ValueError):
            return await self.error("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.")
        fmt = self.config["audio"]["input"]["format"]["type"]
        pcm = audioop.ulaw2lin(data, 2) if fmt == "audio/pcmu" else \
            audioop.alaw2lin(data, 2) if fmt == "audio/pcma" else data
        self.s.raw_audio += data
        self.s.audio += pcm
        rate = self.s.input_rate
        bytes_per_ms_raw = len(data) / max(1, len(pcm) // 2) * rate / 1000
        self.vad_buf += pcm
        self.history += data
        td = self.td() or {}
        keep = int(td.get("prefix_padding_ms", 300) * bytes_per_ms_raw)
        if self.in_speech:
            self.utterance += data
        else:
            del self.history[:max(0, len(self.history) - keep)]
        win = rate * 2 // 50  # 20 ms
        while len(self.vad_buf) >= win:
            chunk = bytes(self.vad_buf[:win])
            del self.vad_buf[:win]
            await self._vad(rms(chunk) > self.fake.vad_threshold)

    async def _vad(self, loud: bool) -> None:
        td = self.td()
        if td is None:
            return
        if loud:
            self.silence_ms = 0
            self.speech_ms += 20
            if not self.in_speech:
                self.in_speech = True
                self.utterance = bytearray(self.history)
                self.speech_item = self.fake.new_id("item")
                self.s.speech_started_at.append(monotonic())
                await self.send({"type": "input_audio_buffer.speech_started", "item_id": self.speech_item,
                                 "audio_start_ms": int(len(self.s.audio) / 2 / self.s.input_rate * 1000)})
                cur = self.current
                if td.get("interrupt_response", True) and cur is not None and cur["status"] == "in_progress":
                    self._cancel(cur)
        elif self.in_speech:
            self.silence_ms += 20
            if self.silence_ms >= td.get("silence_duration_ms", 500):
                await self._end_of_turn(td)

    async def _end_of_turn(self, td: dict) -> None:
        self.in_speech = False
        seconds, self.speech_ms = self.speech_ms / 1000, 0
        item = self.speech_item
        spoken = bytes(self.utterance)
        self.history.clear()
        await self.send({"type": "input_audio_buffer.speech_stopped", "item_id": item,
                         "audio_end_ms": int(len(self.s.audio) / 2 / self.s.input_rate * 1000)})
        await self.send({"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": None})
        user = {"id": item, "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}], "audio_ms": 0.0}
        self.s.items[item] = user
        await self.send({"type": "conversation.item.added", "item": user})
        if (self.config["audio"]["input"].get("transcription") or {}).get("model"):
            await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                             "content_index": 0, "transcript": f"caller spoke {seconds:.1f} seconds"})
        if td.get("create_response", True):
            self._start_response("reply", self.fake.reply_text, self.fake.reply_tone_hz,
                                 echo_audio=spoken if self.fake.echo else None)

    # ------------------------------------------------------------------ responses
    def _cancel(self, r: dict) -> None:
        r["cancel_at"] = monotonic()
        r["cancel_event"].set()

    def _start_response(self, kind: str, text: str, hz: float, echo_audio: bytes | None = None) -> None:
        if self.response_task is not None and not self.response_task.done():
            asyncio.ensure_future(self.error("conversation_already_has_active_response",
                                             "Conversation already has an active response in progress"))
            return
        rid = self.fake.new_id("resp")
        self.current = {"id": rid, "kind": kind, "status": "in_progress", "deltas_sent": 0, "late_deltas": 0,
                        "created_at": monotonic(), "done_at": None, "cancel_at": None, "item_id": None,
                        "cancel_event": asyncio.Event(), "may_fail": not (self.fake.fail_first_session_only
                                                                  and self.s is not self.fake.sessions[0]), "text": text,
                        "tool": self.fake.tool_calls.pop(0) if kind == "reply" and self.fake.tool_calls else None}
        self.s.responses.append(self.current)
        self.response_task = asyncio.create_task(self._respond(self.current, text, hz, echo_audio))

    def _output_audio(self, hz: float, echo_audio: bytes | None) -> tuple[bytes, int]:
        """The reply's audio in the session's output format, and its bytes per ms."""
        fmt = self.config["audio"]["output"]["format"]["type"]
        if echo_audio is not None:
            return echo_audio, (8 if fmt != "audio/pcm" else 48)
        pcm = make_tone(hz, self.fake.reply_seconds, 24000 if fmt == "audio/pcm" else 8000, 8000)
        if fmt == "audio/pcmu":
            return audioop.lin2ulaw(pcm, 2), 8
        if fmt == "audio/pcma":
            return audioop.lin2alaw(pcm, 2), 8
        return pcm, 48

    async def _respond(self, r: dict, text: str, hz: float, echo_audio: bytes | None) -> None:
        rid, item_id = r["id"], self.fake.new_id("item")
        r["item_id"] = item_id
        base = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
                "content": [], "audio_ms": 0.0}
        self.s.items[item_id] = item
        await self.send({"type": "response.created", "response": {"id": rid, "object": "realtime.response",
                                                                   "status": "in_progress", "output": []}})
        await self.send({"type": "response.output_item.added", "response_id": rid, "output_index": 0,
                         "item": {k: v for k, v in item.items() if k != "audio_ms"}})
        await self.send({"type": "conversation.item.added", "item": {k: v for k, v in item.items() if k != "audio_ms"}})
        await self.send({"type": "response.content_part.added", **base, "part": {"type": "audio", "transcript": ""}})
        words = text.split(" ")
        step = max(1, len(words) // 4)
        for i in range(0, len(words), step):
            piece = " ".join(words[i:i + step]) + (" " if i + step < len(words) else "")
            await self.send({"type": "response.output_audio_transcript.delta", **base, "delta": piece})
        audio, per_ms = self._output_audio(hz, echo_audio)
        chunk = max(per_ms, int(self.fake.delta_seconds * 1000) * per_ms)

        async def send_piece(piece: bytes) -> None:
            item["audio_ms"] += len(piece) / per_ms  # generated (and remembered) before it is sent
            await self.send({"type": "response.output_audio.delta", **base, "delta": base64.b64encode(piece).decode()})

        pieces = (audio[at:at + chunk] for at in range(0, len(audio), chunk))
        if not await stream_reply(self.fake, r, pieces, send_piece, self.ws.transport.abort):
            return
        if r["cancel_at"] is not None:
            r["status"], item["status"] = "cancelled", "incomplete"
        else:
            r["status"], item["status"] = "completed", "completed"
            await self.send({"type": "response.output_audio.done", **base})
            await self.send({"type": "response.output_audio_transcript.done", **base, "transcript": text})
            await self.send({"type": "response.content_part.done", **base,
                             "part": {"type": "audio", "transcript": text}})
            if r["tool"] is not None:
                name, args = r["tool"]
                r["call_id"], fc_item = self.fake.new_id("call"), self.fake.new_id("item")
                fc = {"id": fc_item, "type": "function_call", "status": "completed", "name": name,
                      "call_id": r["call_id"], "arguments": json.dumps(args)}
                await self.send({"type": "response.output_item.added", "response_id": rid, "output_index": 1,
                                 "item": {**fc, "status": "in_progress", "arguments": ""}})
                await self.send({"type": "response.function_call_arguments.done", "response_id": rid,
                                 "item_id": fc_item, "output_index": 1, "call_id": r["call_id"], "name": name,
                                 "arguments": fc["arguments"]})
                await self.send({"type": "response.output_item.done", "response_id": rid, "output_index": 1,
                                 "item": fc})
                self.s.items[fc_item] = {**fc, "role": "tool", "audio_ms": 0.0}
        item["content"] = [{"type": "output_audio", "transcript": text}]
        await self.send({"type": "response.output_item.done", "response_id": rid, "output_index": 0,
                         "item": {k: v for k, v in item.items() if k != "audio_ms"}})
        r["done_at"] = monotonic()
        details = {"type": "cancelled", "reason": "client_cancelled"} if r["status"] == "cancelled" else None
        await self.send({"type": "response.done", "response": {
            "id": rid, "object": "realtime.response", "status": r["status"], "status_details": details,
            "output": [{k: v for k, v in item.items() if k != "audio_ms"}],
            "usage": {"total_tokens": 120, "input_tokens": 80, "output_tokens": 40}}})
