"""Exotel's side of a call, for the simulator: no webhook (the Voicebot applet is configured with our
URL, basic auth `KEY:TOKEN`), sends `connected` and `start` in the developer site's shape (every value
a string), 16-bit PCM at the URL's rate, and checks our media/mark/clear: chunks of 3,200 to 100,000
bytes in multiples of 320."""

from __future__ import annotations

import base64
import uuid
from urllib.parse import urlencode

from ..fake import FakeCaller

SHAPES = {"media": ({"event", "stream_sid", "media"},) * 2, "mark": ({"event", "stream_sid", "mark"},) * 2,
          "clear": ({"event", "stream_sid"},) * 2}
CHUNK, MIN_CHUNK, MAX_CHUNK = 320, 3200, 100_000


class ExotelCaller(FakeCaller):
    network = "exotel"
    pcm = True
    token_env = ("EXOTEL_API_KEY", "EXOTEL_API_TOKEN")

    def call_id(self, bot):
        return uuid.uuid4().hex

    async def dial(self) -> None:
        phone = self.phone
        query = {k: v for k, v in (("bot", phone.bot), ("sample-rate", str(self.rate))) if v}
        url = phone.public("/exotel/media") + "?" + urlencode(query)
        self.stream_from("ws" + url.removeprefix("http"))

    def connect_headers(self):
        token = self.phone.auth_token  # wss://KEY:TOKEN@host/...: basic auth
        return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode("ascii")} if token else {}

    def hello(self):
        return [{"event": "connected"}]

    def start(self, params):
        p = self.phone
        return {"event": "start", "sequence_number": self.next_seq(), "stream_sid": p.stream_sid,
                "start": {"stream_sid": p.stream_sid, "call_sid": p.call_sid, "account_sid": "exotel-sim",
                          "from": p.caller, "to": p.dialed, "custom_parameters": params,
                          "media_format": {"encoding": "audio/x-raw", "sample_rate": str(self.rate), "bit_rate": "16"}}}

    def _frame(self, event: str, body: dict) -> dict:
        return {"event": event, "sequence_number": self.next_seq(), "stream_sid": self.phone.stream_sid, event: body}

    def media(self, audio, chunk, ts_ms):
        return self._frame("media", self.media_body(audio, str(chunk), ts_ms))

    def dtmf(self, digit):
        return self._frame("dtmf", {"track": "inbound_track", "digit": digit})

    def stop(self):
        return [self._frame("stop", {"call_sid": self.phone.call_sid, "account_sid": "exotel-sim",
                                     "reason": "caller_hangup"})]

    def read(self, data, binary):
        effects = self.read_media_family(data, binary, SHAPES, "stream_sid")
        for _, audio in (e for e in effects if e[0] == "audio"):
            if len(audio) % CHUNK or not MIN_CHUNK <= len(audio) <= MAX_CHUNK:
                self.violation(f"media chunk of {len(audio)} bytes: Exotel wants multiples of 320 from 3,200 to 100 KB")
        return effects

    def echo(self, token):
        return {"event": "mark", "sequence_number": self.next_seq(), "mark": {"name": token},
                "stream_sid": self.phone.stream_sid}
