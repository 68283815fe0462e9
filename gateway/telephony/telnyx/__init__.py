"""Telnyx: TeXML webhook `POST /telnyx/voice` answers `<Connect><Stream bidirectionalMode="rtp">`,
media WebSocket `/telnyx/media` (codec.py; docs/protocols.md "Telnyx Media Streaming").

Webhooks are signed with Ed25519 over `timestamp|body` (headers `telnyx-signature-ed25519`,
`telnyx-timestamp`, the timestamp read with int() as Telnyx's SDK does); checked when
`telnyx.public_key` is set. The stream cannot be signed: with `telnyx.api_key` set, the media URL
carries a short-lived ticket for the bot the webhook chose. Hang-up and transfer: Call Control
REST `actions/hangup` / `actions/transfer`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from .. import PhoneActionError, PhoneControl, Started
from ..network import NetworkSpec, Webhook, media_url, rest_request, stream_ticket, unauthenticated
from ..wire import XML_HEAD, as_str, lang_attr, xml_attr, xml_text
from .codec import TelnyxCodec

log = logging.getLogger("gateway")
SIGNATURE_TOLERANCE_S = 300  # a webhook signed longer ago (or ahead) than this is a replay
ALREADY_OVER = "90018"  # Telnyx: "Call has already ended"
_str = as_str


@dataclass(frozen=True)
class TelnyxConfig:
    api_key: str = ""  # REST (hang-up, transfer) and the media URL's ticket
    public_key: str = ""  # the account's Ed25519 public key (base64): webhooks must be signed with it
    api_base: str = "https://api.telnyx.com"


class TelnyxControl(PhoneControl):
    network = "telnyx"

    def __init__(self, http, api_key: str, api_base: str, call_control_id: str):
        self.http, self.api_key, self.call_id = http, api_key, call_control_id
        self.base = api_base.rstrip("/")
        self.missing = "" if api_key and call_control_id and http is not None else \
            "telnyx.api_key (TELNYX_API_KEY) not configured: closing the stream"

    async def _action(self, action: str, body: dict) -> None:
        if self.missing:
            raise PhoneActionError(f"{action} needs telnyx.api_key (TELNYX_API_KEY)")
        status, answer = await rest_request(
            self.http, "POST", f"{self.base}/v2/calls/{quote(self.call_id, safe=':')}/actions/{action}",
            what=f"telnyx {action}", json=body, headers={"Authorization": f"Bearer {self.api_key}"})
        if status < 300:
            return
        errors = answer.get("errors") if isinstance(answer, dict) else None
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        if action == "hangup" and _str(first.get("code")) == ALREADY_OVER:
            return  # the call is over either way
        raise PhoneActionError(f"Telnyx {action} HTTP {status}: {_str(first.get('detail') or first.get('title'))[:200]}",
                               status)

    async def hang_up(self) -> None:
        await self._action("hangup", {})

    async def transfer(self, number: str, caller_id: str = "", timeout: int = 30) -> None:
        body = {"to": number, "timeout_secs": int(timeout)}
        if caller_id:
            body["from"] = caller_id
        await self._action("transfer", body)


def signature_ok(public_key: str, timestamp: str, body: bytes, signature: str, now: float | None = None) -> bool:
    """Telnyx's Ed25519 webhook signature over `timestamp|body`; the key as base64 (32 bytes) or PEM.
    The timestamp is read as the SDK reads it (int(): spaces and a sign allowed, digits only after)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        when = int(timestamp)
    except ValueError:
        return False
    if not signature or abs((time.time() if now is None else now) - when) > SIGNATURE_TOLERANCE_S:
        return False
    try:
        key = load_pem_public_key(public_key.encode()) if public_key.lstrip().startswith("-----") else \
            Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + body)
        return True
    except (InvalidSignature, ValueError, TypeError, binascii.Error):
        return False


def texml(stream_url: str, after: str = "", language: str = "") -> str:
    """TeXML's `<Connect><Stream>` in bidirectional RTP mode (else audio we send is dropped), PCMU
    8 kHz both ways; `after` is spoken if we close the stream without hanging up."""
    tail = f"<Say{lang_attr(language)}>{xml_text(after)}</Say><Hangup/>" if after else ""
    return (f'{XML_HEAD}<Response><Connect><Stream url={xml_attr(stream_url)} bidirectionalMode="rtp" '
            'bidirectionalCodec="PCMU" bidirectionalSamplingRate="8000" codec="PCMU"></Stream></Connect>'
            f"{tail}</Response>")


class Telnyx(NetworkSpec):
    name, label = "telnyx", "Telnyx"
    settings = TelnyxConfig
    env = {"TELNYX_API_KEY": "api_key", "TELNYX_PUBLIC_KEY": "public_key", "TELNYX_API_BASE": "api_base"}
    secret_fields = ("api_key",)
    webhook_path = "/telnyx/voice"
    media_path = "/telnyx/media"

    def startup_warnings(self, config) -> list[str]:
        return [] if config.telnyx.public_key else unauthenticated("/telnyx/voice is", "telnyx.public_key")

    async def read_webhook(self, config, request) -> Webhook | str:
        body = await request.read()
        if config.telnyx.public_key and not signature_ok(
                config.telnyx.public_key, request.headers.get("telnyx-timestamp", ""), body,
                request.headers.get("telnyx-signature-ed25519", "")):
            log.warning("event=webhook_signature_invalid network=telnyx remote=%s had_signature=%s",
                        request.remote, bool(request.headers.get("telnyx-signature-ed25519")))
            return "invalid telnyx-signature-ed25519"
        text = body.decode("utf-8", "replace")
        fields: dict = {}
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
                fields = data if isinstance(data, dict) else {}
            except ValueError:
                pass
        else:
            fields = dict(parse_qsl(text, keep_blank_values=True))
        return Webhook(_str(fields.get("CallSid") or fields.get("call_control_id")),  # checked by ids.py
                       _str(fields.get("From") or fields.get("from")), _str(fields.get("To") or fields.get("to")))

    def answer(self, config, request, persona, hook, params) -> str:
        query = {"bot": params["bot"]}
        if config.telnyx.api_key:
            query["ticket"] = stream_ticket(config.telnyx.api_key, self.name, params["bot"])
        return texml(media_url(config, request, self.media_path, query), persona.fallback_message, persona.language)

    def refusal(self, text: str, language: str = "") -> str:
        return f"{XML_HEAD}<Response><Say{lang_attr(language)}>{xml_text(text)}</Say><Hangup/></Response>"

    def codec(self, query) -> TelnyxCodec:
        return TelnyxCodec(query)

    def secret(self, config) -> str:
        return config.telnyx.api_key

    def control(self, config, http, started: Started) -> PhoneControl:
        return TelnyxControl(http, config.telnyx.api_key, config.telnyx.api_base, started.call_sid)

    def fake_caller(self) -> type:
        from .fake import TelnyxCaller
        return TelnyxCaller


SPEC = Telnyx()
