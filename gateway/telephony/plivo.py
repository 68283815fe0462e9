"""Plivo: answer webhook `POST /plivo/voice` returns `<Stream bidirectional="true">wss://…</Stream>`
(the URL is the element's text), media WebSocket `/plivo/media` (docs/protocols.md "Plivo Audio
Streams").

No `connected`: `start` comes first (`start.callId`, `start.streamId`), then `media`, `dtmf`,
`playedStream` (a `checkpoint` of ours whose audio has played), `clearedAudio` (our `clearAudio`
done); sequence numbers are numbers or strings. We send `playAudio` (mu-law 8 kHz), `checkpoint`,
`clearAudio`. Whether checkpoints pending at a clear are acknowledged is unconfirmed: the Playout
ignores acknowledgements of a cleared generation, so either way they count as not heard.

Webhooks carry `X-Plivo-Signature-V3` (+ `-Nonce`), checked when `plivo.auth_token` is set; the
media URL then carries a short-lived ticket for the bot the webhook chose. Hang-up: REST
`DELETE /v1/Account/{auth_id}/Call/{call_uuid}/`. Transfers are not supported here (the model is
told so, and the call goes on).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from typing import Iterable
from urllib.parse import parse_qs, quote, urlsplit

from . import MarkPlayed, PhoneActionError, PhoneControl, PhoneEvent, Started
from .network import Network, Webhook, media_url, public_request_url, rest_request, stream_ticket
from .twilio import FrameError, TwilioMediaStream, _attr, _str, _text, decode_event

log = logging.getLogger("gateway")


class PlivoMediaStream(TwilioMediaStream):
    network = "plivo"
    sid_field = "streamId"

    def __init__(self, ws, log, max_protocol_errors: int = 50, query=None):
        super().__init__(ws, log, max_protocol_errors)
        self.query = dict(query or {})

    def _decode(self, msg: dict) -> PhoneEvent | None:
        event = msg["event"]
        if event == "start":
            start = msg.get("start")
            if not isinstance(start, dict):
                raise FrameError("start without a start object")
            sid = _str(start.get("streamId") or msg.get("streamId"))
            if not sid:
                raise FrameError("start without streamId")
            fmt = start.get("mediaFormat") or {}
            if not isinstance(fmt, dict):
                raise FrameError("mediaFormat is not an object")
            params = {k: v for k, v in self.query.items() if k in ("bot", "ticket", "from", "to")}
            rate = _str(fmt.get("sampleRate") or "8000")
            return Started(stream_sid=sid, call_sid=_str(start.get("callId")), account_sid=_str(start.get("accountId")),
                           custom_parameters=params, encoding=_str(fmt.get("encoding")),
                           sample_rate=int(rate) if rate.isdigit() else 0)
        if event in ("playedStream", "played"):  # an older article names the acknowledgement `played`
            name = _str(msg.get("name"))
            if not name:
                raise FrameError(f"{event} without a name")
            return MarkPlayed(name=name)
        if event in ("clearedAudio", "connected"):
            return None
        return decode_event(msg)  # media, dtmf, stop: Twilio's shapes

    async def play(self, ulaw: bytes) -> bool:
        return await self._send({"event": "playAudio", "media": {
            "contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": base64.b64encode(ulaw).decode("ascii")}})

    async def mark(self, name: str) -> bool:
        return await self._send({"event": "checkpoint", "streamId": self.stream_sid, "name": name})

    async def clear(self) -> bool:
        return await self._send({"event": "clearAudio", "streamId": self.stream_sid})


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


# ------------------------------------------------------------------ signatures (V3)

def v3_signature(auth_token: str, method: str, url: str, params: Iterable[tuple[str, str]], nonce: str) -> str:
    """Plivo's X-Plivo-Signature-V3: base64(HMAC-SHA256(auth token, signed URL + "." + nonce)).
    The signed URL is the URL without its query, then `?` and the query's pairs sorted (`k=v`
    joined by `&`); for a POST with fields, `.` (only after a non-empty query) and the fields
    sorted by name (a name's values sorted), each as name then value, nothing between. A GET's
    parameters are part of its query."""
    parts = urlsplit(url)
    signed = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = parse_qs(parts.query, keep_blank_values=True)
    fields: dict[str, list[str]] = {}
    for k, v in params:
        (query if method.upper() == "GET" else fields).setdefault(k, []).append(v)
    pairs = "&".join(f"{k}={v}" for k in sorted(query) for v in sorted(query[k]))
    if fields:
        signed += f"?{pairs}" + ("." if pairs else "") + "".join(k + v for k in sorted(fields) for v in sorted(fields[k]))
    elif pairs:
        signed += f"?{pairs}"
    mac = hmac.new(auth_token.encode(), f"{signed}.{nonce}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def v3_ok(auth_token: str, method: str, url: str, params, nonce: str, header: str) -> bool:
    if not (auth_token and nonce and header):
        return False
    expected = v3_signature(auth_token, method, url, params, nonce)
    return any(hmac.compare_digest(expected, s.strip()) for s in header.split(","))


class Plivo(Network):
    name = "plivo"
    webhook_path = "/plivo/voice"
    media_path = "/plivo/media"

    def startup_warnings(self, config) -> list[str]:
        if not config.plivo.auth_token:
            return ["event=signatures_unchecked note=\"no plivo.auth_token: /plivo/voice and /plivo/media are "
                    "unauthenticated\""]
        return []

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
        tail = f"<Speak{self._lang(persona.language)}>{_text(persona.fallback_message)}</Speak>" \
            if persona.fallback_message else ""
        return ('<?xml version="1.0" encoding="UTF-8"?><Response><Stream bidirectional="true" keepCallAlive="true" '
                f'contentType="audio/x-mulaw;rate=8000">{_text(url)}</Stream>{tail}</Response>')

    @staticmethod
    def _lang(language: str) -> str:
        return f" language={_attr(language)}" if language else ""

    def refusal(self, text: str, language: str = "") -> str:
        return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Speak{self._lang(language)}>{_text(text)}</Speak>'
                "<Hangup/></Response>")

    stream_class = PlivoMediaStream

    def secret(self, config) -> str:
        return config.plivo.auth_token

    def control(self, config, http, started: Started) -> PhoneControl:
        return PlivoControl(http, config.plivo.auth_id, config.plivo.auth_token, config.plivo.api_base,
                            started.call_sid)
