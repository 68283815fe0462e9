"""Twilio as a network: `POST /twilio/voice` answers `<Connect><Stream>` TwiML (twiml.py), the media
WebSocket is `/twilio/media` (codec.py), requests carry X-Twilio-Signature (signature.py: HMAC-SHA1
with the auth token, or HMAC-SHA256 with the SharedKey when Twilio says so), the stream's `start`
our per-call token; hang-up and transfer go through Twilio's REST API (rest.py). SignalWire's
compatibility API speaks this network too (same form fields, cXML, `X-SignalWire-Signature`).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from .. import PhoneControl, Started
from ..network import NetworkSpec, Webhook, media_url, public_request_url
from .codec import TwilioCodec
from .rest import TwilioRest, TwilioRestError
from .signature import call_token, request_signature, signed
from .twiml import connect_twiml, dial_twiml, say_and_hangup_twiml

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str = ""
    auth_token: str = ""
    api_base: str = "https://api.twilio.com"
    # Webhooks and media streams must carry a valid X-Twilio-Signature whenever auth_token is set.
    # Turning that off is for local experiments only and is logged as a warning at start-up.
    insecure_skip_signature: bool = False
    # The SharedKey secret of HMAC-SHA256 signed webhooks (X-Twilio-Webhooks-Signature-Settings);
    # empty: such requests are checked with the auth token.
    webhook_shared_key: str = ""


class TwilioControl(PhoneControl):
    network = "twilio"

    def __init__(self, rest: TwilioRest | None, call_sid: str):
        self.rest, self.call_sid = rest, call_sid
        ready = rest is not None and rest.configured and call_sid
        self.missing = "" if ready else "twilio credentials not configured: closing the stream"

    async def hang_up(self) -> None:
        """Completes the call (`Status=completed`): no fallback message is spoken."""
        if not self.missing:
            await self.rest.hang_up(self.call_sid)

    async def transfer(self, number: str, caller_id: str = "", timeout: int = 30) -> None:
        """A call update with `<Dial>` TwiML. Raises TwilioRestError when Twilio refuses."""
        if self.missing:
            raise TwilioRestError(0, None, "transfers need twilio.account_sid and twilio.auth_token")
        await self.rest.redirect(self.call_sid, dial_twiml(number, caller_id=caller_id, timeout=timeout))


class Twilio(NetworkSpec):
    name, label = "twilio", "Twilio"
    settings = TwilioConfig
    env = {"TWILIO_ACCOUNT_SID": "account_sid", "TWILIO_AUTH_TOKEN": "auth_token", "TWILIO_API_BASE": "api_base",
           "TWILIO_WEBHOOK_SHARED_KEY": "webhook_shared_key"}
    secret_fields = ("auth_token", "webhook_shared_key")
    webhook_path = "/twilio/voice"
    media_path = "/twilio/media"

    def routes(self):
        from ...machine_detection import amd_callback  # outbound calls' answering-machine detection
        return [("POST", "/twilio/amd", amd_callback(public_request_url))]

    def attach(self, app, config, http) -> None:
        from ...web_state import REST
        app[REST] = TwilioRest(config.twilio.account_sid, config.twilio.auth_token, http, config.twilio.api_base)

    def startup_warnings(self, config) -> list[str]:
        if config.twilio.auth_token and config.twilio.insecure_skip_signature:
            return ["event=signatures_disabled note=\"twilio.insecure_skip_signature is true: anyone who can reach "
                    "the webhook and media stream can open calls and model sessions\""]
        if not config.twilio.auth_token:
            return ["event=signatures_unchecked note=\"no twilio.auth_token: webhook and media stream are "
                    "unauthenticated (fine on a laptop, not on the internet)\""]
        return []

    async def read_webhook(self, config, request) -> Webhook | str:
        try:
            form = await request.post()
        except Exception:  # noqa: BLE001 - a malformed body still gets TwiML, never a 500
            form = {}
        if config.signatures_required:
            fields = [(k, v) for k, v in form.items() if isinstance(v, str)] if hasattr(form, "items") else []
            if not signed(config.twilio, request, public_request_url(config, request), fields):
                log.warning("event=webhook_signature_invalid remote=%s had_signature=%s path=%s",
                            request.remote, bool(request_signature(request)), request.path)
                return "invalid X-Twilio-Signature"
        return Webhook(str(form.get("CallSid", "")), str(form.get("From", "")), str(form.get("To", "")))  # checked by ids.py

    def answer(self, config, request, persona, hook, params) -> str:
        """Twilio forbids query strings on stream URLs: everything rides as `<Parameter>`s."""
        params = dict(params)
        if config.signatures_required and hook.call_id:
            params["token"] = call_token(config.twilio.auth_token, hook.call_id)
        return connect_twiml(media_url(config, request, self.media_path), params,
                             after=persona.fallback_message, language=persona.language)

    def refusal(self, text: str, language: str = "") -> str:
        return say_and_hangup_twiml(text, language)

    def upgrade_refused(self, config, request) -> str | None:
        if config.signatures_required and not signed(config.twilio, request,
                                                     public_request_url(config, request, websocket=True), None):
            return "invalid X-Twilio-Signature"
        return None

    def codec(self, query) -> TwilioCodec:
        return TwilioCodec()

    def start_refused(self, config, started: Started) -> str | None:
        """Our per-call token, which the TwiML's <Parameter>s carried, must come back in `start`."""
        if config.signatures_required and not hmac.compare_digest(
                started.custom_parameters.get("token", "").encode("utf-8", "surrogatepass"),
                call_token(config.twilio.auth_token, started.call_sid or "").encode()):
            return "missing or wrong call token in start"
        return None

    def control(self, config, http, started: Started) -> PhoneControl:
        rest = TwilioRest(config.twilio.account_sid, config.twilio.auth_token, http, config.twilio.api_base)
        return TwilioControl(rest, started.call_sid)

    def fake_caller(self) -> type:
        from .fake import TwilioCaller
        return TwilioCaller


SPEC = Twilio()
