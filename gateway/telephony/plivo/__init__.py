"""Plivo: answer webhook `POST /plivo/voice` returns `<Stream bidirectional="true">wss://…</Stream>`
(the URL is the element's text), media WebSocket `/plivo/media` (codec.py; docs/protocols.md "Plivo
Audio Streams").

Webhooks carry `X-Plivo-Signature-V3` (+ `-Nonce`), checked when `plivo.auth_token` is set; the
media URL then carries a short-lived ticket for the bot the webhook chose. Hang-up: REST
`DELETE /v1/Account/{auth_id}/Call/{call_uuid}/`. Transfers are not supported here (the model is
told so, and the call goes on).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from urllib.parse import quote

from .. import PhoneActionError, PhoneControl, Started
from ..network import NetworkSpec, Webhook, media_url, public_request_url, rest_request, stream_ticket, unauthenticated
from ..wire import XML_HEAD, as_str, lang_attr, xml_text
from .codec import PlivoCodec
from .signature import v3_ok

log = logging.getLogger("gateway")
_str = as_str


@dataclass(frozen=True)
class PlivoConfig:
    auth_id: str = ""
    auth_token: str = ""  # REST (hang-up), webhook signatures (V3) and the media URL's ticket
    api_base: str = "https://api.plivo.com"


class PlivoControl(PhoneControl):
    network = "plivo"

    def __init__(self, http, auth_id: str, auth_token: str, api_base: str, call_uuid: str):
        self.http, self.auth_id, self.auth_token, self.call_uuid = http, auth_id, auth_token, call_uuid
        self.base = api_base.rstrip("/")
        self.missing = "" if auth_id and auth_token and call_uuid and http is not None else \
            "plivo.auth_id / plivo.auth_token (PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN) not configured: closing the stream"

    async def hang_up(self) -> None:
        status, body = await rest_request(
            self.http, "DELETE", f"{self.base}/v1/Account/{quote(self.auth_id)}/Call/{quote(self.call_uuid)}/",
            what="plivo hangup", headers={"Authorization": "Basic " + base64.b64encode(
                f"{self.auth_id}:{self.auth_token}".encode()).decode("ascii")})
        if status >= 300 and status != 404:  # 404: the call is already over
            error = body.get("error") if isinstance(body, dict) else None
            raise PhoneActionError(f"Plivo hangup HTTP {status}: {_str(error)[:200]}", status)

    async def transfer(self, number: str, caller_id: str = "", timeout: int = 30) -> None:
        raise PhoneActionError("transfers are not supported on Plivo calls by this gateway; "
                               "offer the caller the number instead")


class Plivo(NetworkSpec):
    name, label = "plivo", "Plivo"
    settings = PlivoConfig
    env = {"PLIVO_AUTH_ID": "auth_id", "PLIVO_AUTH_TOKEN": "auth_token", "PLIVO_API_BASE": "api_base"}
    secret_fields = ("auth_token",)
    webhook_path = "/plivo/voice"
    media_path = "/plivo/media"

    def startup_warnings(self, config) -> list[str]:
        return [] if config.plivo.auth_token else unauthenticated("/plivo/voice and /plivo/media are",
                                                                  "plivo.auth_token")

    async def read_webhook(self, config, request) -> Webhook | str:
        try:
            form = await request.post()
        except Exception:  # noqa: BLE001 - a malformed body still gets an answer, never a 500
            form = {}
        fields = [(k, v) for k, v in form.items() if isinstance(v, str)] if hasattr(form, "items") else []
        if config.plivo.auth_token and not v3_ok(
                config.plivo.auth_token, request.method, public_request_url(config, request), fields,
                request.headers.get("X-Plivo-Signature-V3-Nonce", ""), request.headers.get("X-Plivo-Signature-V3", "")):
            log.warning("event=webhook_signature_invalid network=plivo remote=%s had_signature=%s",
                        request.remote, bool(request.headers.get("X-Plivo-Signature-V3")))
            return "invalid X-Plivo-Signature-V3"
        return Webhook(str(form.get("CallUUID", "")), str(form.get("From", "")), str(form.get("To", "")))  # checked by ids.py

    def answer(self, config, request, persona, hook, params) -> str:
        query = {"bot": params["bot"], "from": params.get("from", ""), "to": params.get("to", "")}
        if config.plivo.auth_token:
            query["ticket"] = stream_ticket(config.plivo.auth_token, self.name, params["bot"])
        url = media_url(config, request, self.media_path, query)
        # keepCallAlive: what follows runs only once the stream is closed (our fallback message).
        tail = f"<Speak{lang_attr(persona.language)}>{xml_text(persona.fallback_message)}</Speak>" \
            if persona.fallback_message else ""
        return (f'{XML_HEAD}<Response><Stream bidirectional="true" keepCallAlive="true" '
                f'contentType="audio/x-mulaw;rate=8000">{xml_text(url)}</Stream>{tail}</Response>')

    def refusal(self, text: str, language: str = "") -> str:
        return f"{XML_HEAD}<Response><Speak{lang_attr(language)}>{xml_text(text)}</Speak><Hangup/></Response>"

    def codec(self, query) -> PlivoCodec:
        return PlivoCodec(query)

    def secret(self, config) -> str:
        return config.plivo.auth_token

    def control(self, config, http, started: Started) -> PhoneControl:
        return PlivoControl(http, config.plivo.auth_id, config.plivo.auth_token, config.plivo.api_base,
                            started.call_sid)

    def fake_caller(self) -> type:
        from .fake import PlivoCaller
        return PlivoCaller


SPEC = Plivo()
