"""Outbound calls: an operator asks (POST /api/calls), Twilio dials, the bot speaks first.

The request becomes a Twilio REST "create call" whose `Url` is our own webhook with the bot and a
signed ticket (`?bot=…&outbound=…`). The ticket carries the context variables and an expiry,
signed with HMAC-SHA256 under the Twilio auth token, so no state has to survive between the
request and the answer (any gateway instance can take the webhook) and nobody can forge an
"outbound" webhook with made-up context. When the callee answers, Twilio fetches the webhook, the
stream starts with `direction=outbound` and the context, and the bot is told it placed the call
and should speak first.

Answering machines: every call is placed with Twilio's asynchronous machine detection
(`amd_params`): the callee is connected at once (a person hears the bot without delay) while
Twilio listens in the background and posts its verdict to /twilio/amd (machine_detection.py).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from urllib.parse import urlencode

from .config import E164, Config, Persona
from .ids import text_problem

TICKET_TTL_SECONDS = 3600  # Twilio fetches the webhook when the callee answers: well within this
MAX_CONTEXT_BYTES = 1500  # travels in the URL and as a stream <Parameter>


class OutboundError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _sign(secret: str, payload: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:18]).decode()


def make_ticket(secret: str, bot: str, to: str, context: dict, now: float | None = None) -> str:
    body = json.dumps({"bot": bot, "to": to, "ctx": context,
                       "exp": int((time.time() if now is None else now) + TICKET_TTL_SECONDS)},
                      separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + _sign(secret, body)


def read_ticket(secret: str, ticket: str, bot: str, now: float | None = None) -> dict | None:
    """The ticket's content if it is genuine, for this bot, and not expired; else None."""
    try:
        encoded, signature = ticket.split(".", 1)
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        # as bytes: compare_digest refuses str with non-ASCII characters (a forged ticket may have them)
        if not hmac.compare_digest(signature.encode(), _sign(secret, body).encode()):
            return None
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("bot") != bot or not isinstance(data.get("ctx"), dict):
        return None
    if data.get("exp", 0) < (time.time() if now is None else now):
        return None
    return data


def plan_call(config: Config, body: object) -> dict:
    """Validate an outbound request; returns what the REST call needs. Raises OutboundError."""
    if not isinstance(body, dict):
        raise OutboundError(400, "expected a JSON object with to, bot and optional from and context")
    to, bot, from_ = body.get("to"), body.get("bot"), body.get("from")
    context = body.get("context") or {}
    if not isinstance(to, str) or not E164.match(to):
        raise OutboundError(400, "to: an E.164 number like +15551234567")
    persona = config.bots.get(bot) if isinstance(bot, str) else None
    if persona is None:
        raise OutboundError(400, f"bot: one of {', '.join(sorted(config.bots))}")
    if not config.provider_ready(persona):
        raise OutboundError(409, f"bot {bot!r}: its provider has no API key")
    if not isinstance(context, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float, bool))
                                                for k, v in context.items()):
        raise OutboundError(400, "context: an object of names to strings or numbers")
    for k, v in context.items():  # they reach the model's instructions and the media URL
        bad = text_problem(k, "context: a name", 10 ** 6) or (
            isinstance(v, str) and text_problem(v, f"context.{k}", 10 ** 6))  # (sizes: checked below)
        if bad:
            raise OutboundError(400, bad)
    if len(json.dumps(context, ensure_ascii=False).encode()) > MAX_CONTEXT_BYTES:
        raise OutboundError(400, f"context: at most {MAX_CONTEXT_BYTES} bytes")
    if from_ is None:
        from_ = next((n for n, b in sorted(config.routing.numbers.items()) if b == bot), None)
    if not isinstance(from_, str) or not E164.match(from_):
        raise OutboundError(400, "from: the Twilio number to call from (E.164); none is routed to this bot")
    if not config.twilio.account_sid or not config.twilio.auth_token:
        raise OutboundError(503, "outbound calls need twilio.account_sid and twilio.auth_token")
    if not config.server.public_url:
        raise OutboundError(503, "outbound calls need GATEWAY_PUBLIC_URL: Twilio must be able to reach the webhook")
    ticket = make_ticket(config.twilio.auth_token, bot, to, context)
    url = f"{config.server.public_url.rstrip('/')}/twilio/voice?" + urlencode({"bot": bot, "outbound": ticket})
    return {"to": to, "from": from_, "url": url, "bot": bot, "context": context, "amd": amd_params(config, bot)}


def amd_params(config: Config, bot: str) -> dict[str, str]:
    """Twilio's asynchronous answering-machine detection for a call we place.

    `DetectMessageEnd` rather than `Enable`: a person is reported as soon as recognised either
    way, but `Enable` reports a machine at the start of its greeting (`machine_start`), when a
    message would be spoken over the greeting and lost before the beep; `DetectMessageEnd`
    waits for the end of the greeting (`machine_end_beep`/`_silence`/`_other`), the moment to
    leave one. Asynchronous: the call is connected to the bot at once (no silence for a person
    while Twilio listens), the verdict comes to /twilio/amd, signed like our other webhooks; the
    bot is named in its URL (covered by the signature) for the persona's voicemail message."""
    callback = f"{config.server.public_url.rstrip('/')}/twilio/amd?" + urlencode({"bot": bot})
    return {"MachineDetection": "DetectMessageEnd", "AsyncAmd": "true", "AsyncAmdStatusCallback": callback,
            "AsyncAmdStatusCallbackMethod": "POST"}


def outbound_persona(persona: Persona, to: str, context: dict) -> Persona:
    """The persona for a call it placed: it knows whom it called and why, and does not greet
    like a hotline."""
    facts = "\n".join(f"- {k}: {v}" for k, v in context.items()) or "- (none given)"
    note = (f"\n\nThis is an OUTBOUND call: you called {to}; they just answered. What you know about "
            f"this call:\n{facts}\nSpeak first: greet them, say who you are and why you are calling.")
    return dataclasses.replace(persona, instructions=persona.instructions + note, greeting="")


SPEAK_FIRST = "(The person you called has answered the phone. Speak first.)"
