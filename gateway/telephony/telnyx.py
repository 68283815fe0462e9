"""Telnyx: TeXML webhook `POST /telnyx/voice` answers `<Connect><Stream bidirectionalMode="rtp">`,
media WebSocket `/telnyx/media` (docs/protocols.md "Telnyx Media Streaming").

Frames are Twilio's set in snake_case: `connected`, `start` (`stream_id` top-level only; the call
is `start.call_control_id`, caller and dialed number `start.from`/`start.to`), `media`, `dtmf`,
`mark` (our marks echoed once played), `stop`, `error`. Counters come as strings. We send `media`
(PCMU in RTP mode), `mark`, `clear`, without `stream_id`. Media frames may arrive out of order
(Telnyx says so); they are passed on as they come (a late 20 ms frame is a click at worst, a
reordering buffer would add its depth to every reply) and counted (`frames_out_of_order`).

Webhooks are signed with Ed25519 over `timestamp|body` (headers `telnyx-signature-ed25519`,
`telnyx-timestamp`); checked when `telnyx.public_key` is set. The stream cannot be signed: with
`telnyx.api_key` set, the media URL carries a short-lived ticket for the bot the webhook chose.
Hang-up and transfer: Call Control REST `actions/hangup` / `actions/transfer`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from urllib.parse import parse_qsl, quote

from . import PhoneActionError, PhoneControl, PhoneEvent, Started
from .network import Network, Webhook, media_url, rest_request, stream_ticket
from .twilio import FrameError, TwilioMediaStream, _attr, _str, connect_twiml, decode_event, say_and_hangup_twiml

log = logging.getLogger("gateway")
MULAW_NAMES = ("PCMU", "audio/x-mulaw", "mulaw", "audio/PCMU")
SIGNATURE_TOLERANCE_S = 300  # a webhook signed longer ago (or ahead) than this is a replay
ALREADY_OVER = "90018"  # Telnyx: "Call has already ended"


class TelnyxMediaStream(TwilioMediaStream):
    network = "telnyx"
    sid_field = "stream_id"

    def __init__(self, ws, log, max_protocol_errors: int = 50, query=None):
        super().__init__(ws, log, max_protocol_errors)
        self.query = dict(query or {})
        self.frames_out_of_order = 0
        self._last_seq = 0

    def _decode(self, msg: dict) -> PhoneEvent | None:
        event = msg["event"]
        if event == "connected":
            return None
        if event == "start":
            start = msg.get("start")
            if not isinstance(start, dict):
                raise FrameError("start without a start object")
            sid = _str(msg.get("stream_id") or start.get("stream_id"))
            if not sid:
                raise FrameError("start without stream_id")
            fmt = start.get("media_format") or {}
            if not isinstance(fmt, dict):
                raise FrameError("media_format is not an object")
            params = start.get("custom_parameters") or {}
            params = {_str(k): _str(v) for k, v in params.items()} if isinstance(params, dict) else {}
            params.update({"from": _str(start.get("from")), "to": _str(start.get("to"))})
            params.update({k: v for k, v in self.query.items() if k in ("bot", "ticket")})
            encoding = _str(fmt.get("encoding"))
            rate = _str(fmt.get("sample_rate") or "8000")
            return Started(stream_sid=sid, call_sid=_str(start.get("call_control_id")),
                           account_sid=_str(start.get("user_id")), custom_parameters=params,
                           encoding="audio/x-mulaw" if encoding in MULAW_NAMES else encoding,
                           sample_rate=int(rate) if rate.isdigit() else 0,
                           channels=int(_str(fmt.get("channels") or 1)) if _str(fmt.get("channels") or 1).isdigit() else 1)
        if event == "media":
            seq = _str(msg.get("sequence_number"))
            if seq.isdigit():
                if int(seq) < self._last_seq:
                    self.frames_out_of_order += 1
                self._last_seq = max(self._last_seq, int(seq))
        if event == "error":  # Telnyx tells us about a frame of ours it could not use
            err = msg.get("error") or msg.get("payload") or {}
            err = err if isinstance(err, dict) else {"detail": _str(err)}
            self.log.warning("phone_network_error", code=_str(err.get("code"))[:20],
                             title=_str(err.get("title"))[:80], detail=_str(err.get("detail"))[:200])
            return None
        return decode_event(msg)  # media, dtmf, mark, stop: Twilio's shapes

    async def play(self, ulaw: bytes) -> bool:
        return await self._send({"event": "media", "media": {"payload": base64.b64encode(ulaw).decode("ascii")}})

    async def mark(self, name: str) -> bool:
        return await self._send({"event": "mark", "mark": {"name": name}})

    async def clear(self) -> bool:
        return await self._send({"event": "clear"})


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
    """Telnyx's Ed25519 webhook signature over `timestamp|body`; the key as base64 (32 bytes) or PEM."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if not (timestamp.isdigit() and signature):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > SIGNATURE_TOLERANCE_S:
        return False
    try:
        key = load_pem_public_key(public_key.encode()) if public_key.lstrip().startswith("-----") else \
            Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + body)
        return True
    except (InvalidSignature, ValueError, TypeError, binascii.Error):
        return False


class Telnyx(Network):
    name = "telnyx"
    webhook_path = "/telnyx/voice"
    media_path = "/telnyx/media"

    def startup_warnings(self, config) -> list[str]:
        if not config.telnyx.public_key:
            return ["event=signatures_unchecked note=\"no telnyx.public_key: /telnyx/voice is unauthenticated\""]
        return []

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
        url = media_url(config, request, self.media_path, query)
        twiml = connect_twiml(url, {}, after=persona.fallback_message, language=persona.language)
        # TeXML's <Stream>: bidirectional RTP mode (else audio we send is dropped), PCMU 8 kHz both ways.
        return twiml.replace(f"<Stream url={_attr(url)}>", f"<Stream url={_attr(url)} bidirectionalMode=\"rtp\" "
                             "bidirectionalCodec=\"PCMU\" bidirectionalSamplingRate=\"8000\" codec=\"PCMU\">", 1)

    stream_class = TelnyxMediaStream

    def refusal(self, text: str, language: str = "") -> str:
        return say_and_hangup_twiml(text, language)

    def secret(self, config) -> str:
        return config.telnyx.api_key

    def control(self, config, http, started: Started) -> PhoneControl:
        return TelnyxControl(http, config.telnyx.api_key, config.telnyx.api_base, started.call_sid)
