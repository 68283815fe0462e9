"""A protocol-faithful fake of Zhipu GLM-Realtime for tests on 127.0.0.1.

What it imitates (docs/protocols.md, Zhipu's AsyncAPI spec):
- the upgrade needs `Authorization: Bearer <token>`: an HS256 JWT with header `sign_type: SIGN`
  and claims api_key/exp/timestamp signed with the key's secret, or the raw `id.secret` key;
  `exp` is read in `jwt_exp_unit` (ms like Zhipu's SDKs, or s): in the past is expired, and more
  than `max_token_ttl_seconds` ahead is refused too (a strict issuer check, so a token in the other
  unit is refused either way); anything wrong is an HTTP 401 before the WebSocket exists with
  Zhipu's error body, or (`auth_refusal = "event"`) an `error` event with the authentication code
  (1001-1004) and a close, the other documented form;
- a heartbeat first, `session.created`, then a heartbeat every `heartbeat_interval`;
- `session.update` is validated like the service does (required formats, turn_detection, nested
  beta_fields.chat_mode) and answered with `session.updated`; `greeting_config` makes it speak first;
- in "wav" format every append must be a complete 16 kHz mono PCM16 WAV file (else `invalid_audio`);
- server VAD over the appended audio: speech_started / speech_stopped / committed / transcript,
  then a response: response.created, transcript deltas, raw 24 kHz PCM16 audio deltas (bigger than
  real time and sent faster than real time), audio/transcript done, response.done with usage;
- `response.cancel` settles after ~100 ms (deltas keep coming meanwhile), then response.cancelled
  and response.done(cancelled); a cancel with nothing active is the `response_cancel_not_active` error;
- failure switches: drop the socket mid-sentence, a fatal error code, going silent (no heartbeats).
"""

from __future__ import annotations

import asyncio
import audioop  # stdlib below 3.13, audioop-lts from 3.13
import base64
import binascii
import io
import itertools
import json
import math
import struct
import time
import wave
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

import jwt
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from gateway.clock import monotonic

OUTPUT_RATE = 24000


def make_tone(hz: float, seconds: float, rate: int, amplitude: int = 8000, phase0: int = 0) -> bytes:
    """PCM16 sine; `phase0` (a sample index) continues a tone across chunks without a jump."""
    n = int(seconds * rate)
    w = 2 * math.pi * hz / rate
    return struct.pack(f"<{n}h", *(int(amplitude * math.sin(w * (phase0 + i))) for i in range(n)))


def rms(pcm: bytes) -> float:
    """Root mean square of PCM16 (audioop: the soak runs hundreds of these fakes' VADs at once)."""
    return float(audioop.rms(pcm[:len(pcm) // 2 * 2], 2)) if len(pcm) >= 2 else 0.0


class FakeModelServer:
    """What both fake model services share: the knobs tests turn, the sessions they inspect, and
    the server's lifecycle. Subclasses speak their service's protocol (`_handle`, `_check_auth`)."""

    path = "/"  # the URL path the service is reached at (plus query)

    def __init__(self, *, api_key: str, auth: str, reply_tone_hz: float, reply_seconds: float,
                 greeting_tone_hz: float, reply_text: str, delta_seconds: float, delta_interval: float,
                 vad_threshold: int, cancel_settle: float):
        self.api_key = api_key
        self.auth = auth
        self.reply_tone_hz = reply_tone_hz
        self.reply_seconds = reply_seconds
        self.greeting_tone_hz = greeting_tone_hz
        self.reply_text = reply_text
        self.delta_seconds = delta_seconds
        self.delta_interval = delta_interval
        self.vad_threshold = vad_threshold
        self.cancel_settle = cancel_settle
        self.fail_after_deltas: int | None = None
        self.fail_first_session_only = False  # the drop happens once; reconnections then work
        # Scripted function calls: each reply to the caller's speech takes the next one and calls
        # it (after its audio, in the same response), like a model deciding to use a tool.
        self.tool_calls: list[tuple[str, dict]] = []
        self.fatal_error_on_update: str | None = None
        self.stall = False
        self.sessions: list = []
        self.rejected: list[str] = []
        self.url = ""
        self.connections: list[ServerConnection] = []
        self._server = None
        self._ids = itertools.count(1)

    async def start(self, port: int = 0) -> None:
        self._server = await serve(self._handle, "127.0.0.1", port, process_request=self._check_auth,
                                   max_size=4 * 1024 * 1024)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}{self.path}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def broadcast(self, raw: str | bytes) -> None:
        """Send a raw frame (malformed on purpose, in tests) to every open connection."""
        for ws in self.connections:
            try:
                await ws.send(raw)
            except ConnectionClosed:
                pass


async def stream_reply(fake, r: dict, pieces: Iterable[bytes], send_piece: Callable[[bytes], Awaitable[None]],
                       abort: Callable[[], None]) -> bool:
    """Streams a reply's audio the way realtime services do: a delta every `delta_interval`
    (faster than real time); after a cancel, deltas keep coming for `cancel_settle` seconds,
    then stop. `fail_after_deltas` drops the connection mid-sentence (returns False).
    `r` is the response record; its counters are updated."""
    for piece in pieces:
        if r["cancel_at"] is not None and monotonic() - r["cancel_at"] >= fake.cancel_settle:
            break
        await send_piece(piece)
        r["deltas_sent"] += 1
        if r["cancel_at"] is not None:
            r["late_deltas"] += 1
        if fake.fail_after_deltas is not None and r.get("may_fail", True) \
                and r["deltas_sent"] >= fake.fail_after_deltas:
            abort()  # no close frame
            return False
        if r["cancel_at"] is None:
            try:  # a cancel wakes us: the service keeps streaming for a moment after it
                await asyncio.wait_for(r["cancel_event"].wait(), fake.delta_interval)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(fake.cancel_settle / 3)
    if r["cancel_at"] is not None:
        wait = fake.cancel_settle - (monotonic() - r["cancel_at"])
        if wait > 0:
            await asyncio.sleep(wait)
    return True


@dataclass
class FakeSession:
    auth_header: str = ""
    jwt_header: dict | None = None
    jwt_claims: dict | None = None
    session_config: dict | None = None
    events: list[dict] = field(default_factory=list)
    errors_sent: list[dict] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    input_rate: int = 16000
    speech_started_at: list[float] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)
    cancels: list[float] = field(default_factory=list)
    tool_outputs: list[dict] = field(default_factory=list)  # function_call_output items received
    texts: list[str] = field(default_factory=list)  # user text items received (e.g. DTMF)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None


class FakeGLM(FakeModelServer):
    path = "/api/paas/v4/realtime"

    def __init__(self, *, api_key: str = "fakeid.fakesecret", auth: str = "jwt",
                 heartbeat_interval: float = 30.0, reply_tone_hz: float = 600.0, reply_seconds: float = 1.5,
                 greeting_tone_hz: float = 660.0,
                 reply_text: str = "Thanks for calling, how can I help you today?",
                 delta_seconds: float = 0.5, delta_interval: float = 0.05, vad_threshold: int = 500,
                 vad_silence_ms: int = 500, cancel_settle: float = 0.1, jwt_exp_unit: str = "ms",
                 max_token_ttl_seconds: float = 86400.0):
        super().__init__(api_key=api_key, auth=auth, reply_tone_hz=reply_tone_hz, reply_seconds=reply_seconds,
                         greeting_tone_hz=greeting_tone_hz, reply_text=reply_text, delta_seconds=delta_seconds,
                         delta_interval=delta_interval, vad_threshold=vad_threshold, cancel_settle=cancel_settle)
        self.heartbeat_interval = heartbeat_interval
        self.vad_silence_ms = vad_silence_ms
        self.jwt_exp_unit = jwt_exp_unit
        self.max_token_ttl_seconds = max_token_ttl_seconds
        self.auth_refusal = "http"  # or "event"
        self._refused: dict[ServerConnection, str] = {}

    # ------------------------------------------------------------------ auth
    def _auth_problem(self, header: str) -> str | None:
        if not header.startswith("Bearer "):
            return "no bearer token"
        token = header[len("Bearer "):]
        if self.auth == "any":
            return None
        if self.auth == "key":
            return None if token == self.api_key else "wrong api key"
        key_id, _, secret = self.api_key.partition(".")
        try:
            head = jwt.get_unverified_header(token)
            claims = jwt.decode(token, secret, algorithms=["HS256"], options={"verify_exp": False})
        except jwt.PyJWTError as e:
            return f"bad jwt: {type(e).__name__}"
        if head.get("alg") != "HS256" or head.get("sign_type") != "SIGN":
            return "jwt header must be HS256 with sign_type SIGN"
        if claims.get("api_key") != key_id:
            return "jwt api_key claim does not match"
        ts, exp = claims.get("timestamp"), claims.get("exp")
        if not isinstance(ts, int) or abs(ts / 1000 - time.time()) > 300:
            return "jwt timestamp must be now, in ms"
        if not isinstance(exp, int):
            return "jwt exp must be an integer"
        expires_at = exp / 1000 if self.jwt_exp_unit == "ms" else exp
        if expires_at < time.time():
            return "jwt expired"
        if expires_at - time.time() > self.max_token_ttl_seconds:
            return "jwt exp is beyond the longest token lifetime"
        return None

    @staticmethod
    def _auth_code(problem: str) -> str:
        """Zhipu's authentication error code for a refusal (docs.bigmodel.cn error codes)."""
        if problem == "no bearer token":
            return "1001"  # no Authentication header
        if "expired" in problem or "lifetime" in problem or "timestamp" in problem:
            return "1003"  # token expired
        if problem.startswith("bad jwt: InvalidSignature") or "does not match" in problem:
            return "1004"  # token did not verify
        return "1002"  # token not valid

    def _check_auth(self, connection: ServerConnection, request):
        header = request.headers.get("Authorization", "")
        problem = self._auth_problem(header)
        if problem:
            self.rejected.append(problem)
            if self.auth_refusal == "event":  # the upgrade succeeds; the refusal is the first event
                self._refused[connection] = problem
                return None
            body = json.dumps({"error": {"code": self._auth_code(problem), "message": problem}})
            return connection.respond(401, body + "\n")
        return None

    # ------------------------------------------------------------------ connection
    async def _handle(self, ws: ServerConnection) -> None:
        problem = self._refused.pop(ws, None)
        if problem is not None:
            await ws.send(json.dumps({"event_id": f"evt_{next(self._ids)}", "type": "error", "error": {
                "type": "authentication_error", "code": self._auth_code(problem), "message": problem}}))
            await ws.close(1008, "authentication failed")
            return
        header = ws.request.headers.get("Authorization", "")
        s = FakeSession(auth_header=header)
        token = header[len("Bearer "):]
        if token.count(".") == 2:
            s.jwt_header = jwt.get_unverified_header(token)
            s.jwt_claims = jwt.decode(token, options={"verify_signature": False})
        self.sessions.append(s)
        self.connections.append(ws)
        conn = _Conn(self, ws, s)
        try:
            await conn.run()
        finally:
            s.close_code = ws.close_code
            s.closed.set()


class _Conn:
    """One client connection's state machine."""

    def __init__(self, fake: FakeGLM, ws: ServerConnection, s: FakeSession):
        self.fake, self.ws, self.s = fake, ws, s
        self.vad_buf = bytearray()
        self.in_speech = False
        self.silence_ms = 0
        self.speech_ms = 0
        self.response_task: asyncio.Task | None = None
        self.current: dict | None = None
        self.tasks: list[asyncio.Task] = []

    async def send(self, event: dict) -> None:
        if self.fake.stall:
            return
        event = {"event_id": f"evt_{next(self.fake._ids)}", **event}
        if event["type"] == "error":
            self.s.errors_sent.append(event)
        await self.ws.send(json.dumps(event))

    async def error(self, code: str, message: str, etype: str = "invalid_request_error") -> None:
        await self.send({"type": "error", "error": {"type": etype, "code": code, "message": message}})

    async def run(self) -> None:
        await self.send({"type": "heartbeat"})
        await self.send({"type": "session.created", "session": {"id": f"sess_{next(self.fake._ids)}"}})
        self.tasks.append(asyncio.create_task(self._heartbeats()))
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    await self.error("invalid_event", "binary frames are not supported")
                    continue
                try:
                    msg = json.loads(raw)
                    assert isinstance(msg, dict) and isinstance(msg.get("type"), str)
                except (ValueError, AssertionError):
                    await self.error("invalid_event", "not a JSON event")
                    continue
                msg["_t"] = monotonic()
                self.s.events.append(msg)
                await self._dispatch(msg)
        except ConnectionClosed:
            pass
        finally:
            for t in self.tasks + ([self.response_task] if self.response_task else []):
                t.cancel()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.fake.heartbeat_interval)
            await self.send({"type": "heartbeat"})

    async def _dispatch(self, msg: dict) -> None:
        t = msg["type"]
        if t == "session.update":
            await self._session_update(msg)
        elif t == "input_audio_buffer.append":
            await self._append(msg)
        elif t == "response.create":
            self._start_response("reply", self.fake.reply_text, self.fake.reply_tone_hz)
        elif t == "response.cancel":
            self.s.cancels.append(msg["_t"])
            if self.current is None or self.current["status"] != "in_progress":
                await self.error("response_cancel_not_active", "no active response to cancel")
            else:
                self.current["cancel_at"] = monotonic()
                self.current["cancel_event"].set()
        elif t == "conversation.item.create":
            item = msg.get("item") or {}
            if item.get("type") == "function_call_output":
                self.s.tool_outputs.append(item)
            elif item.get("role") == "user":
                self.s.texts += [c.get("text", "") for c in item.get("content") or [] if isinstance(c, dict)]
            await self.send({"type": "conversation.item.created", "item": {**item, "id": f"item_{next(self.fake._ids)}"}})
        elif t == "input_audio_buffer.commit":
            pass
        else:
            await self.error("invalid_event", f"unknown event type {t}")

    async def _session_update(self, msg: dict) -> None:
        if "beta_fields" in msg:
            return await self.error("invalid_event", "beta_fields must be inside session")
        sess = msg.get("session")
        if not isinstance(sess, dict):
            return await self.error("invalid_event", "session is required")
        problems = []
        if sess.get("input_audio_format") not in ("wav", "pcm16", "pcm24"):
            problems.append("input_audio_format")
        if sess.get("output_audio_format") != "pcm":
            problems.append("output_audio_format")
        if (sess.get("turn_detection") or {}).get("type") not in ("server_vad", "client_vad"):
            problems.append("turn_detection")
        beta = sess.get("beta_fields")
        if beta is not None and (not isinstance(beta, dict) or beta.get("chat_mode") not in ("audio", "video_passive")):
            problems.append("beta_fields.chat_mode")
        if problems:
            return await self.error("invalid_event", f"invalid session fields: {', '.join(problems)}")
        if self.fake.fatal_error_on_update:
            await self.error(self.fake.fatal_error_on_update, "account in arrears", "server_error")
            await self.ws.close(1000)
            return
        self.s.session_config = sess
        self.s.input_rate = 24000 if sess["input_audio_format"] == "pcm24" else 16000
        await self.send({"type": "session.updated", "session": sess})
        greeting = sess.get("greeting_config") or {}
        if greeting.get("enable") and greeting.get("content"):
            self._start_response("greeting", greeting["content"], self.fake.greeting_tone_hz)

    # ------------------------------------------------------------------ input + VAD
    async def _append(self, msg: dict) -> None:
        try:
            data = base64.b64decode(msg.get("audio", ""), validate=True)
        except (binascii.Error, ValueError):
            return await self.error("invalid_audio", "audio is not base64")
        if (self.s.session_config or {}).get("input_audio_format", "wav") == "wav":
            try:
                with wave.open(io.BytesIO(data), "rb") as w:
                    ok = (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
                    pcm = w.readframes(w.getnframes())
            except (wave.Error, EOFError):
                ok, pcm = False, b""
            if not ok:
                return await self.error("invalid_audio", "audio must be a 16 kHz mono PCM16 WAV file")
        else:
            pcm = data
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
                await self.send({"type": "input_audio_buffer.speech_started"})
        elif self.in_speech:
            self.silence_ms += 20
            if self.silence_ms >= self.fake.vad_silence_ms:
                self.in_speech = False
                seconds = self.speech_ms / 1000
                self.speech_ms = 0
                item = f"item_{next(self.fake._ids)}"
                await self.send({"type": "input_audio_buffer.speech_stopped"})
                await self.send({"type": "input_audio_buffer.committed", "item_id": item})
                await self.send({"type": "conversation.item.created",
                                 "item": {"id": item, "type": "message", "role": "user", "object": "realtime.item"}})
                await self.send({"type": "conversation.item.input_audio_transcription.completed",
                                 "item_id": item, "content_index": 0,
                                 "transcript": f"caller spoke {seconds:.1f} seconds"})
                if (self.s.session_config or {}).get("turn_detection", {}).get("type") == "server_vad":
                    self._start_response("reply", self.fake.reply_text, self.fake.reply_tone_hz)

    # ------------------------------------------------------------------ responses
    def _start_response(self, kind: str, text: str, hz: float) -> None:
        if self.response_task is not None and not self.response_task.done():
            return  # one response at a time, like the service
        rid = f"resp_{next(self.fake._ids)}"
        self.current = {"id": rid, "kind": kind, "status": "in_progress", "deltas_sent": 0, "late_deltas": 0,
                        "created_at": monotonic(), "done_at": None, "cancel_at": None,
                        "cancel_event": asyncio.Event(), "may_fail": not (self.fake.fail_first_session_only
                                                                  and self.s is not self.fake.sessions[0]),
                        "tool": self.fake.tool_calls.pop(0) if kind == "reply" and self.fake.tool_calls else None}
        self.s.responses.append(self.current)
        self.response_task = asyncio.create_task(self._respond(self.current, text, hz))

    async def _respond(self, r: dict, text: str, hz: float) -> None:
        rid, item = r["id"], f"item_{next(self.fake._ids)}"
        base = {"response_id": rid, "item_id": item, "output_index": 0, "content_index": 0}
        await self.send({"type": "response.created", "response": {"id": rid, "object": "realtime.response",
                                                                   "status": "in_progress"}})
        await self.send({"type": "conversation.item.created", "item": {"id": item, "type": "message",
                                                                       "role": "assistant", "object": "realtime.item"}})
        words = text.split(" ")
        step = max(1, len(words) // 4)
        for i in range(0, len(words), step):
            piece = " ".join(words[i:i + step]) + (" " if i + step < len(words) else "")
            await self.send({"type": "response.audio_transcript.delta", **base, "delta": piece})
        total = int(self.fake.reply_seconds * OUTPUT_RATE)
        per = int(self.fake.delta_seconds * OUTPUT_RATE)
        tone_chunks = (make_tone(hz, min(per, total - at) / OUTPUT_RATE, OUTPUT_RATE, 8000, phase0=at)
                       for at in range(0, total, per))

        async def send_piece(pcm: bytes) -> None:
            await self.send({"type": "response.audio.delta", **base, "delta": base64.b64encode(pcm).decode()})

        if not await stream_reply(self.fake, r, tone_chunks, send_piece, self.ws.transport.abort):
            return
        if r["cancel_at"] is not None:
            r["status"] = "cancelled"
            await self.send({"type": "response.cancelled", "response": {"id": rid, "object": "realtime.response",
                                                                        "status": "cancelled"}})
        else:
            r["status"] = "completed"
            await self.send({"type": "response.audio.done", **base})
            await self.send({"type": "response.audio_transcript.done", **base, "transcript": text})
            if r["tool"] is not None:
                name, args = r["tool"]
                r["call_id"] = f"call_{next(self.fake._ids)}"
                await self.send({"type": "response.function_call_arguments.done", "response_id": rid,
                                 "item_id": f"item_{next(self.fake._ids)}", "output_index": 1,
                                 "call_id": r["call_id"], "name": name, "arguments": json.dumps(args)})
        r["done_at"] = monotonic()
        await self.send({"type": "response.done", "response": {
            "id": rid, "object": "realtime.response", "status": r["status"],
            "usage": {"total_tokens": 120, "input_tokens": 80, "output_tokens": 40}}})
