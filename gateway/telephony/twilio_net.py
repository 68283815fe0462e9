"""Twilio as a network: `POST /twilio/voice` answers `<Connect><Stream>` TwiML, the media
WebSocket is `/twilio/media` (twilio.py), requests carry X-Twilio-Signature, the stream's `start`
our per-call token; hang-up and transfer go through Twilio's REST API (twilio_rest.py)."""

from __future__ import annotations

import hmac
import logging

from . import PhoneControl, Started
from .network import Network, Webhook, media_url, public_request_url
from .signature import call_token, is_valid
from .twilio import TwilioMediaStream, connect_twiml, dial_twiml, say_and_hangup_twiml
from .twilio_rest import TwilioRest, TwilioRestError

log = logging.getLogger("gateway")


def request_signature(request) -> str:
    """Twilio's signature header, or SignalWire's (same algorithm, its signing key)."""
    return request.headers.get("X-Twilio-Signature") or request.headers.get("X-SignalWire-Signature", "")


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


class Twilio(Network):
    name = "twilio"
    webhook_path = "/twilio/voice"
    media_path = "/twilio/media"

    def startup_warnings(self, config) -> list[str]:
        if config.twilio.auth_token and config.twilio.insecure_skip_signature:
            return ["event=signatures_disabled note=\"twilio.insecure_skip_signature is true: anyone who can reach "
                    "the webhook and media stream can open calls and model sessions\""]
        if not config.twilio.auth_token:
            return ["event=signatures_unchecked note=\"no twilio.auth_token: webhook and media stream are "
                    "unauthenticated (fine on a laptop, not on the internet)\""]
        return []

    async def read_webhook(self, config, request) -> Webhook | str:
        """SignalWire's compatibility API speaks this network too: the same form fields and TwiML
        (cXML), signed the same way with the project's signing key (`twilio.auth_token`), in
        `X-SignalWire-Signature` where Twilio uses `X-Twilio-Signature`."""
        try:
            form = await request.post()
        except Exception:  # noqa: BLE001 - a malformed body still gets TwiML, never a 500
            form = {}
        if config.signatures_required:
            signature = request_signature(request)
            fields = [(k, v) for k, v in form.items() if isinstance(v, str)] if hasattr(form, "items") else []
            if not is_valid(config.twilio.auth_token, public_request_url(config, request), fields, signature):
                log.warning("event=webhook_signature_invalid remote=%s had_signature=%s path=%s",
                            request.remote, bool(signature), request.path)
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
        if config.signatures_required and not is_valid(
                config.twilio.auth_token, public_request_url(config, request, websocket=True), None,
                request_signature(request)):
            return "invalid X-Twilio-Signature"
        return None

    def stream(self, ws, log, max_protocol_errors, query):
        return TwilioMediaStream(ws, log, max_protocol_errors)

    def start_refused(self, config, started: Started) -> str | None:
        """Our per-call token, which the TwiML's <Parameter>s carried, must come back in `start`."""
        if config.signatures_required and not hmac.compare_digest(
                started.custom_parameters.get("token", ""), call_token(config.twilio.auth_token, started.call_sid or "")):
            return "missing or wrong call token in start"
        return None

    def control(self, config, http, started: Started) -> PhoneControl:
        rest = TwilioRest(config.twilio.account_sid, config.twilio.auth_token, http, config.twilio.api_base)
        return TwilioControl(rest, started.call_sid)
