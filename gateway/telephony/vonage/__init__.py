"""Vonage Voice API WebSockets: answer URL `GET /vonage/answer` returns an NCCO that connects the
call to our media WebSocket `/vonage/media` (codec.py; docs/protocols.md "Vonage Voice API WebSockets").

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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import jwt

from .. import L16, PhoneActionError, PhoneControl, Started
from ..network import NetworkSpec, Webhook, media_url, rest_request, stream_ticket, unauthenticated
from ..wire import as_str as _str
from .codec import RATE, VonageCodec

log = logging.getLogger("gateway")
SIGNATURE_TOLERANCE_S = 300


@dataclass(frozen=True)
class VonageConfig:
    application_id: str = ""  # with private_key: REST hang-up (JWT RS256)
    private_key: str = ""  # the application's private.key: a file path (or the PEM itself)
    signature_secret: str = ""  # signed webhooks (JWT HS256) and the media URL's ticket
    api_base: str = "https://api.nexmo.com"


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
    if body and not hmac.compare_digest(_str(claims.get("payload_hash")).encode(), hashlib.sha256(body).hexdigest().encode()):
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


class Vonage(NetworkSpec):
    name, label = "vonage", "Vonage"
    settings = VonageConfig
    env = {"VONAGE_APPLICATION_ID": "application_id", "VONAGE_PRIVATE_KEY": "private_key",
           "VONAGE_SIGNATURE_SECRET": "signature_secret", "VONAGE_API_BASE": "api_base"}
    secret_fields = ("signature_secret",)
    webhook_path = "/vonage/answer"
    webhook_method = "GET"
    media_path = "/vonage/media"
    document_type = "application/json"
    formats = ((L16, 16000), (L16, 8000))
    formats_wanted = "audio/l16;rate=16000"

    def startup_warnings(self, config) -> list[str]:
        return [] if config.vonage.signature_secret else unauthenticated("/vonage/answer and /vonage/media are",
                                                                         "vonage.signature_secret")

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

    def codec(self, query) -> VonageCodec:
        return VonageCodec(query)

    def fake_caller(self) -> type:
        from .fake import VonageCaller
        return VonageCaller


SPEC = Vonage()
