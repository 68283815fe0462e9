"""Vonage Voice API WebSockets: answer URL `GET /vonage/answer` returns an NCCO that connects the
call to our media WebSocket `/vonage/media` (docs/protocols.md "Vonage Voice API WebSockets").

The answer URL gets `to`, `from`, `uuid` in its query; we answer
`[{"action":"connect","endpoint":[{"type":"websocket","uri":"wss://…/vonage/media?…",
"content-type":"audio/l16;rate=16000","headers":{…}}]}]`, then the fallback `talk` (spoken only
when we close the socket ourselves). On the socket Vonage sends a text `websocket:connected`
first, then binary frames of 20 ms 16-bit LE PCM at 16 kHz (640 bytes), and text
`websocket:dtmf`; we send binary frames of exactly 640 bytes, `{"action":"clear"}` at a barge-in
and `{"action":"notify","payload":{"mark":…}}` after each chunk — Vonage answers
`websocket:notify` with that payload once the audio before it has played: our mark.

Answer webhooks may be signed (JWT HS256 with the account's signature secret in
`Authorization: Bearer`), checked when `vonage.signature_secret` is set; the media URL then
carries a short-lived ticket for the bot. Hang-up: `PUT /v1/calls/{uuid}` `{"action":"hangup"}`
with a JWT (RS256, `vonage.application_id` + `vonage.private_key`), else closing the socket.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import jwt
from aiohttp import WSMsgType

from . import Dtmf, MarkPlayed, PhoneActionError, PhoneControl, PhoneEvent, Started, Audio
from .network import Network, Webhook, media_url, rest_request, stream_ticket
from .twilio import FrameError, TwilioMediaStream, _str

log = logging.getLogger("gateway")
L16 = "audio/l16"
RATE = 16000
SIGNATURE_TOLERANCE_S = 300


class VonageMediaStream(TwilioMediaStream):
    network = "vonage"
    sid_field = "\0"  # Vonage's frames do not name the stream

    def __init__(self, ws, log, max_protocol_errors: int = 50, query=None):
        super().__init__(ws, log, max_protocol_errors)
        self.query = dict(query or {})
        self.frame_bytes = RATE * 2 // 50

    def _decode(self, msg: dict) -> PhoneEvent | None:
        event = msg["event"]
        if event == "websocket:connected":
            kind, _, rate = _str(msg.get("content-type")).partition(";rate=")
            rate = int(rate) if rate.isdigit() else 0
            if kind == "audio/l16" and rate:
                self.frame_bytes = rate * 2 // 50
            params = {k: v for k, v in self.query.items() if k in ("bot", "ticket", "from", "to")}
            call = self.query.get("uuid") or _str(msg.get("uuid"))
            return Started(stream_sid=call or str(uuid.uuid4()), call_sid=call, account_sid="",
                           custom_parameters=params, encoding=L16 if kind == "audio/l16" else kind, sample_rate=rate)
        if event == "websocket:dtmf":
            digit = _str(msg.get("digit"))
            if not digit:
                raise FrameError("websocket:dtmf without a digit")
            return Dtmf(digit=digit[:8])
        if event == "websocket:notify":
            payload = msg.get("payload")
            name = _str(payload.get("mark")) if isinstance(payload, dict) else ""
            if not name:
                raise FrameError("websocket:notify without our mark")
            return MarkPlayed(name=name)
        if event in ("websocket:cleared", "websocket:media:update"):
            return None
        raise FrameError(f"unknown event {event[:40]!r}")

    def _handle_binary(self, data: bytes) -> PhoneEvent | None:
        if self.stream_sid is None:
            self._bad("audio before websocket:connected", size=len(data))
        elif not data or len(data) % 2:
            self._bad("audio of an odd or zero length", size=len(data))
        else:
            self.media_frames_in += 1
            return Audio(payload=data)
        return None

    async def play(self, audio: bytes) -> bool:
        """Binary frames of exactly 20 ms (the Playout's chunks are whole frames)."""
        if self.ws.closed or self.stream_sid is None:
            return False
        n = self.frame_bytes
        async with self._send_lock:
            try:
                for i in range(0, len(audio), n):
                    await self.ws.send_frame(audio[i:i + n], WSMsgType.BINARY)
                return True
            except (ConnectionError, RuntimeError):
                return False

    async def mark(self, name: str) -> bool:
        return await self._send({"action": "notify", "payload": {"mark": name}})

    async def clear(self) -> bool:
        return await self._send({"action": "clear"})


_KEYS: dict[str, bytes] = {}


def _private_key(setting: str) -> bytes:
    """`vonage.private_key`: the PEM itself or the path of the application's private.key file."""
    if setting.lstrip().startswith("-----BEGIN"):
        return setting.encode()
    if setting not in _KEYS:
        _KEYS[setting] = Path(setting).expanduser().read_bytes()
    return _KEYS[setting]


def application_jwt(application_id: str, private_key: bytes, now: float | None = None) -> str:
    now = int(time.time() if now is None else now)
    return jwt.encode({"application_id": application_id, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())},
                      private_key, algorithm="RS256")


def signed_webhook_ok(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    """Vonage signed webhooks: `Authorization: Bearer <JWT HS256 with the signature secret>`, recent,
    and for a request with a body its `payload_hash` (SHA-256 hex of the body)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        claims = jwt.decode(token.strip(), secret, algorithms=["HS256"], options={"verify_exp": True})
    except jwt.PyJWTError:
        return False
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)) or abs((time.time() if now is None else now) - iat) > SIGNATURE_TOLERANCE_S:
        return False
    if body and not hmac.compare_digest(_str(claims.get("payload_hash")), hashlib.sha256(body).hexdigest()):
        return False
    return True


class VonageControl(PhoneControl):
    network = "Vonage"

    def __init__(self, http, application_id: str, private_key: str, api_base: str, call_uuid: str):
        self.http, self.application_id, self.call_uuid = http, application_id, call_uuid
        self.base = api_base.rstrip("/")
        self.key = b""
        self.missing = "" if application_id and private_key and call_uuid and http is not None else \
            "vonage.application_id / vonage.private_key (VONAGE_APPLICATION_ID, VONAGE_PRIVATE_KEY) not configured: " \
            "closing the stream"
        if not self.missing:
            try:
                self.key = _private_key(private_key)
            except OSError as e:
                self.missing = f"vonage.private_key: cannot read {private_key}: {e.strerror or e}: closing the stream"

    async def hang_up(self) -> None:
        if self.missing:
            raise PhoneActionError("hang-up needs vonage.application_id and vonage.private_key")
        try:
            token = application_jwt(self.application_id, self.key)
        except (ValueError, TypeError, jwt.PyJWTError) as e:
            raise PhoneActionError(f"vonage.private_key is not an RSA private key in PEM ({type(e).__name__})") from None
        status, body = await rest_request(
            self.http, "PUT", f"{self.base}/v1/calls/{quote(self.call_uuid)}", what="vonage hangup",
            json={"action": "hangup"}, headers={"Authorization": f"Bearer {token}"})
        if status >= 300 and status != 404:  # 404: the call is already over
            title = body.get("title") or body.get("detail") if isinstance(body, dict) else ""
            raise PhoneActionError(f"Vonage hangup HTTP {status}: {_str(title)[:200]}", status)


class Vonage(Network):
    name = "vonage"
    webhook_path = "/vonage/answer"
    webhook_method = "GET"
    media_path = "/vonage/media"
    document_type = "application/json"
    formats = ((L16, 16000), (L16, 8000))
    formats_wanted = "audio/l16;rate=16000"
    stream_class = VonageMediaStream

    def startup_warnings(self, config) -> list[str]:
        if not config.vonage.signature_secret:
            return ["event=signatures_unchecked note=\"no vonage.signature_secret: /vonage/answer and /vonage/media "
                    "are unauthenticated\""]
        return []

    async def read_webhook(self, config, request) -> Webhook | str:
        body = await request.read()
        if config.vonage.signature_secret and not signed_webhook_ok(
                config.vonage.signature_secret, request.headers.get("Authorization", ""), body):
            log.warning("event=webhook_signature_invalid network=vonage remote=%s had_signature=%s",
                        request.remote, bool(request.headers.get("Authorization")))
            return "invalid or missing signed-webhook JWT (Authorization: Bearer)"
        q = request.query
        return Webhook(q.get("uuid", ""), q.get("from", ""), q.get("to", ""))  # checked by ids.py

    def answer(self, config, request, persona, hook, params) -> str:
        query = {"bot": params["bot"], "from": params.get("from", ""), "to": params.get("to", ""), "uuid": hook.call_id}
        if config.vonage.signature_secret:
            query["ticket"] = stream_ticket(config.vonage.signature_secret, self.name, params["bot"])
        ncco = [{"action": "connect", "endpoint": [{
            "type": "websocket", "uri": media_url(config, request, self.media_path, query),
            "content-type": f"audio/l16;rate={RATE}", "headers": {"bot": params["bot"]}}]}]
        if persona.fallback_message:  # spoken only when we close the socket ourselves
            ncco.append(self._talk(persona.fallback_message, persona.language))
        return json.dumps(ncco)

    @staticmethod
    def _talk(text: str, language: str = "") -> dict:
        return {"action": "talk", "text": text, **({"language": language} if language else {})}

    def refusal(self, text: str, language: str = "") -> str:
        return json.dumps([self._talk(text, language)])  # the NCCO ends: the call ends

    def hangup_document(self) -> str:
        return "[]"

    def secret(self, config) -> str:
        return config.vonage.signature_secret

    def control(self, config, http, started: Started) -> PhoneControl:
        v = config.vonage
        return VonageControl(http, v.application_id, v.private_key, v.api_base, started.call_sid)
