"""Exotel (Voicebot applet): media WebSocket `/exotel/media` (codec.py; docs/protocols.md "Exotel").

No webhook of ours: the applet in the Exotel flow is given our URL
`wss://KEY:TOKEN@host/exotel/media?bot=NAME&sample-rate=16000` and opens it when the call reaches
it. Authentication: HTTP Basic credentials in the URL, checked when `exotel.api_key` and
`exotel.api_token` are set. Hang-up: closing the socket (the flow goes on to its next applet).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from dataclasses import dataclass

from ..network import NetworkSpec
from .. import L16
from .codec import ExotelCodec

log = logging.getLogger("gateway")
RATES = (8000, 16000, 24000)


@dataclass(frozen=True)
class ExotelConfig:
    api_key: str = ""  # with api_token: the basic auth the Voicebot applet's URL carries (KEY:TOKEN@host)
    api_token: str = ""


def basic_auth_ok(header: str, key: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, f"{key}:{token}".encode())


class Exotel(NetworkSpec):
    name, label = "exotel", "Exotel"
    settings = ExotelConfig
    env = {"EXOTEL_API_KEY": "api_key", "EXOTEL_API_TOKEN": "api_token"}
    secret_fields = ("api_token",)
    webhook_path = ""  # the Voicebot applet dials the media URL directly
    media_path = "/exotel/media"
    formats = tuple((L16, rate) for rate in RATES)
    formats_wanted = "16-bit PCM (audio/x-raw) at 8000, 16000 or 24000 Hz"

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

    def codec(self, query) -> ExotelCodec:
        return ExotelCodec(query)

    def fake_caller(self) -> type:
        from .fake import ExotelCaller
        return ExotelCaller


SPEC = Exotel()
