"""Exotel (Voicebot applet): media WebSocket `/exotel/media` (docs/protocols.md "Exotel").

No webhook of ours: the applet in the Exotel flow is given our URL
`wss://KEY:TOKEN@host/exotel/media?bot=NAME&sample-rate=16000` and opens it when the call reaches
it. Frames are Twilio's set in snake_case with string counters: `connected` (may not come),
`start` (`stream_sid` top-level, and maybe inside; `start.call_sid`, `from`, `to`,
`custom_parameters`, `media_format` with `encoding` audio/x-raw and `sample_rate`), `media`,
`dtmf`, `mark` (our marks echoed once played), `stop`. Audio is 16-bit LE PCM at 8 kHz unless the
URL asks for `sample-rate=16000|24000`. We send `media`, `mark`, `clear`, each with `stream_sid`;
our media chunks are multiples of 320 bytes and at least 3.2 KB but for a short one where the
phone would otherwise run dry (`min_chunk_bytes`, honoured by the Playout).

Authentication: HTTP Basic credentials in the URL, checked when `exotel.api_key` and
`exotel.api_token` are set. Hang-up: closing the socket (the flow goes on to its next applet).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging

from . import PhoneEvent, Started
from .network import Network
from .twilio import FrameError, TwilioMediaStream, _str, decode_event

log = logging.getLogger("gateway")
RATES = (8000, 16000, 24000)
L16 = "audio/l16"


class ExotelMediaStream(TwilioMediaStream):
    network = "exotel"
    sid_field = "stream_sid"
    min_chunk_bytes = 3200  # Exotel: chunks of at least 3.2 KB (a shorter last one allowed)

    def __init__(self, ws, log, max_protocol_errors: int = 50, query=None):
        super().__init__(ws, log, max_protocol_errors)
        self.query = dict(query or {})

    def _decode(self, msg: dict) -> PhoneEvent | None:
        event = msg["event"]
        if event != "start":
            return decode_event(msg)  # connected, media, dtmf, mark, stop: Twilio's shapes
        start = msg.get("start")
        if not isinstance(start, dict):
            raise FrameError("start without a start object")
        sid = _str(msg.get("stream_sid") or start.get("stream_sid"))
        if not sid:
            raise FrameError("start without stream_sid")
        fmt = start.get("media_format") or {}
        params = start.get("custom_parameters") or {}
        if not isinstance(fmt, dict) or not isinstance(params, dict):
            raise FrameError("media_format or custom_parameters is not an object")
        params = {_str(k): _str(v) for k, v in params.items()}
        if self.query.get("bot"):
            params["bot"] = self.query["bot"]
        params.update({"from": _str(start.get("from")), "to": _str(start.get("to"))})
        rate = _str(fmt.get("sample_rate") or self.query.get("sample-rate") or "8000")
        encoding = _str(fmt.get("encoding") or "audio/x-raw")
        bits = _str(fmt.get("bit_rate") or "16")
        return Started(stream_sid=sid, call_sid=_str(start.get("call_sid")), account_sid=_str(start.get("account_sid")),
                       custom_parameters=params, encoding=L16 if encoding in ("audio/x-raw", "raw", "slin") and bits == "16"
                       else encoding, sample_rate=int(rate) if rate.isdigit() else 0)

    async def play(self, audio: bytes) -> bool:
        return await self._send({"event": "media", "stream_sid": self.stream_sid,
                                 "media": {"payload": base64.b64encode(audio).decode("ascii")}})

    async def mark(self, name: str) -> bool:
        return await self._send({"event": "mark", "stream_sid": self.stream_sid, "mark": {"name": name}})

    async def clear(self) -> bool:
        return await self._send({"event": "clear", "stream_sid": self.stream_sid})


def basic_auth_ok(header: str, key: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, f"{key}:{token}".encode())


class Exotel(Network):
    name = "exotel"
    webhook_path = ""  # the Voicebot applet dials the media URL directly
    media_path = "/exotel/media"
    formats = tuple((L16, rate) for rate in RATES)
    formats_wanted = "16-bit PCM (audio/x-raw) at 8000, 16000 or 24000 Hz"
    stream_class = ExotelMediaStream

    def startup_warnings(self, config) -> list[str]:
        if not (config.exotel.api_key and config.exotel.api_token):
            return ["event=signatures_unchecked note=\"no exotel.api_key/api_token: /exotel/media is unauthenticated "
                    "(allow only Exotel's addresses at your proxy)\""]
        return []

    def upgrade_refused(self, config, request) -> str | None:
        key, token = config.exotel.api_key, config.exotel.api_token
        if key and token and not basic_auth_ok(request.headers.get("Authorization", ""), key, token):
            return "missing or wrong basic auth (exotel.api_key / exotel.api_token)"
        return None
