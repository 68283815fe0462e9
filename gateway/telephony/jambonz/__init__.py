"""jambonz (the open-source CPaaS): the application's call webhook `POST /jambonz/voice` answers a
verb array whose `listen` streams the call to our media WebSocket `/jambonz/media` (codec.py;
docs/networks.md "jambonz").

The answer: `listen` with our URL (`?bot=…`, and a ticket when `jambonz.webhook_secret` is set),
`sampleRate` from `jambonz.sample_rate`, mono, bidirectional streaming on at the same rate,
`passDtmf`; then, if the persona has one, the fallback `say` (reached only when we close the socket
ourselves) and `hangup`. Webhooks are signed with the application's webhook secret
(`Jambonz-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`), checked when it is set.
Hang-up: jambonz's REST API (`PUT /v1/Accounts/{account}/Calls/{call}` `{"call_status":
"completed"}`) when `jambonz.api_key` and `jambonz.api_base` are set, else closing the socket.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

from .. import L16, PhoneActionError, PhoneControl, Started
from ..network import NetworkSpec, Webhook, media_url, rest_request, stream_ticket, unauthenticated
from ..wire import as_str
from .codec import JambonzCodec

log = logging.getLogger("gateway")
RATES = (8000, 16000, 24000)
SIGNATURE_TOLERANCE_S = 300


@dataclass(frozen=True)
class JambonzConfig:
    webhook_secret: str = ""  # the application's webhook secret: signed webhooks, and the media URL's ticket
    sample_rate: int = 8000  # listen's sampleRate both ways: 8000, 16000 or 24000
    api_key: str = ""  # with api_base: REST hang-up (else the socket is closed)
    api_base: str = ""  # e.g. https://api.jambonz.cloud (self-hosted: your api server)


def signature_ok(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    """`Jambonz-Signature: t=<unix>,v1=<hex>`: HMAC-SHA256 of "<t>.<body>" with the webhook secret, recent."""
    parts = dict(p.strip().partition("=")[::2] for p in header.split(","))
    stamp, given = parts.get("t", ""), [p.strip().partition("=")[2] for p in header.split(",")
                                        if p.strip().startswith("v1=")]
    if not (stamp.isascii() and stamp.isdigit() and given):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > SIGNATURE_TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest().encode()
    return any(hmac.compare_digest(expected, g.encode("utf-8", "surrogateescape")) for g in given)


class JambonzControl(PhoneControl):
    network = "jambonz"

    def __init__(self, http, api_key: str, api_base: str, account_sid: str, call_sid: str):
        self.http, self.api_key, self.account, self.call = http, api_key, account_sid, call_sid
        self.base = api_base.rstrip("/")
        self.missing = "" if api_key and api_base and account_sid and call_sid and http is not None else \
            "jambonz.api_key / jambonz.api_base (JAMBONZ_API_KEY, JAMBONZ_API_BASE) not configured: closing the stream"

    async def hang_up(self) -> None:
        status, body = await rest_request(
            self.http, "PUT", f"{self.base}/v1/Accounts/{quote(self.account)}/Calls/{quote(self.call)}",
            what="jambonz hangup", json={"call_status": "completed"},
            headers={"Authorization": f"Bearer {self.api_key}"})
        if status >= 300 and status != 404:  # 404: the call is already over
            raise PhoneActionError(f"jambonz hangup HTTP {status}: {as_str(body)[:200]}", status)


class Jambonz(NetworkSpec):
    name, label = "jambonz", "jambonz"
    settings = JambonzConfig
    env = {"JAMBONZ_WEBHOOK_SECRET": "webhook_secret", "JAMBONZ_API_KEY": "api_key", "JAMBONZ_API_BASE": "api_base"}
    secret_fields = ("webhook_secret", "api_key")
    checks = (("sample_rate", lambda s: s.sample_rate in RATES, "8000, 16000 or 24000"),
              ("api_base", lambda s: not s.api_base or s.api_base.startswith(("http://", "https://")),
               "an http(s):// URL"))
    webhook_path = "/jambonz/voice"
    media_path = "/jambonz/media"
    ws_protocols = ("audio.jambonz.org",)
    document_type = "application/json"
    formats = tuple((L16, rate) for rate in RATES)
    formats_wanted = "mono 16-bit PCM (listen mixType mono) at 8000, 16000 or 24000 Hz"

    def startup_warnings(self, config) -> list[str]:
        return [] if config.jambonz.webhook_secret else unauthenticated("/jambonz/voice and /jambonz/media are",
                                                                        "jambonz.webhook_secret")

    async def read_webhook(self, config, request) -> Webhook | str:
        body = await request.read()
        secret = config.jambonz.webhook_secret
        if secret and not signature_ok(secret, request.headers.get("Jambonz-Signature", ""), body):
            log.warning("event=webhook_signature_invalid network=jambonz remote=%s had_signature=%s",
                        request.remote, bool(request.headers.get("Jambonz-Signature")))
            return "invalid Jambonz-Signature"
        try:
            data = json.loads(body) if body else dict(request.query)
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        return Webhook(as_str(data.get("callSid")), as_str(data.get("from")), as_str(data.get("to")))  # checked by ids.py

    def answer(self, config, request, persona, hook, params) -> str:
        query = {"bot": params["bot"]}
        if config.jambonz.webhook_secret:
            query["ticket"] = stream_ticket(config.jambonz.webhook_secret, self.name, params["bot"])
        rate = config.jambonz.sample_rate
        verbs: list[dict] = [{"verb": "listen", "url": media_url(config, request, self.media_path, query),
                              "sampleRate": rate, "mixType": "mono", "passDtmf": True,
                              "bidirectionalAudio": {"enabled": True, "streaming": True, "sampleRate": rate},
                              "metadata": {"bot": params["bot"]}}]
        if persona.fallback_message:  # reached only when we close the socket ourselves
            verbs.append(self._say(persona.fallback_message, persona.language))
        return json.dumps([*verbs, {"verb": "hangup"}])

    @staticmethod
    def _say(text: str, language: str = "") -> dict:
        return {"verb": "say", "text": text, **({"synthesizer": {"language": language}} if language else {})}

    def refusal(self, text: str, language: str = "") -> str:
        return json.dumps([self._say(text, language), {"verb": "hangup"}])

    def hangup_document(self) -> str:
        return json.dumps([{"verb": "hangup"}])

    def codec(self, query) -> JambonzCodec:
        return JambonzCodec(query)

    def secret(self, config) -> str:
        return config.jambonz.webhook_secret

    def control(self, config, http, started: Started) -> PhoneControl:
        j = config.jambonz
        return JambonzControl(http, j.api_key, j.api_base, started.account_sid, started.call_sid)

    def fake_caller(self) -> type:
        from .fake import JambonzCaller
        return JambonzCaller


SPEC = Jambonz()
