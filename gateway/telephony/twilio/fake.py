"""Twilio's side of a call, for the simulator: POSTs the voice webhook (signed when it holds the
auth token), reads `<Connect><Stream>`, sends `connected` and `start` with the TwiML's
`<Parameter>`s, 20 ms mu-law `media`, `dtmf`, `stop`, and checks our media/mark/clear (31951)."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from ..fake import DialError, FakeCaller, refused_message
from .signature import compute

SHAPES = {"media": ({"event", "streamSid", "media"},) * 2, "mark": ({"event", "streamSid", "mark"},) * 2,
          "clear": ({"event", "streamSid"},) * 2}


class TwilioCaller(FakeCaller):
    network = "twilio"
    marks_on_clear = True  # Twilio echoes every pending mark at a clear
    token_env = ("TWILIO_AUTH_TOKEN",)

    def call_id(self, bot):
        return "CA" + uuid.uuid4().hex

    def stream_id(self, call_id):
        return "MZ" + uuid.uuid4().hex

    async def dial(self) -> None:
        phone = self.phone
        form = {"CallSid": phone.call_sid, "AccountSid": phone.account_sid, "From": phone.caller, "To": phone.dialed,
                "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01", "Caller": phone.caller,
                "Called": phone.dialed, **phone.extra_form}
        url = phone.webhook_url or phone.public("/twilio/voice", bot=True)
        headers = {"X-Twilio-Signature": compute(phone.auth_token, url, form)} if phone.auth_token else {}
        root, refused = await self.post_webhook(url, urlencode(form).encode(), headers)
        stream = root.find("./Connect/Stream")
        if stream is None:
            say = root.find("./Say")
            raise DialError(refused_message(refused, say.text if say is not None else ""))
        self.stream_from(stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")})

    def connect_headers(self):
        if not self.phone.auth_token:
            return {}
        return {"X-Twilio-Signature": compute(self.phone.auth_token, self.phone.result.stream_url)}

    def hello(self):
        return [{"event": "connected", "protocol": "Call", "version": "1.0.0"}]

    def start(self, params):
        p = self.phone
        return {"event": "start", "sequenceNumber": self.next_seq(), "streamSid": p.stream_sid,
                "start": {"accountSid": p.account_sid, "streamSid": p.stream_sid, "callSid": p.call_sid,
                          "tracks": ["inbound"], "customParameters": params,
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}

    def _frame(self, event: str, body: dict) -> dict:
        return {"event": event, "sequenceNumber": self.next_seq(), "streamSid": self.phone.stream_sid, event: body}

    def media(self, audio, chunk, ts_ms):
        return self._frame("media", self.media_body(audio, str(chunk), ts_ms))

    def dtmf(self, digit):
        return self._frame("dtmf", {"track": "inbound_track", "digit": digit})

    def stop(self):
        p = self.phone
        return [{"event": "stop", "sequenceNumber": self.next_seq(), "streamSid": p.stream_sid,
                 "stop": {"accountSid": p.account_sid, "callSid": p.call_sid}}]

    def read(self, data, binary):
        return self.read_media_family(data, binary, SHAPES, "streamSid")

    def echo(self, token):
        return {"event": "mark", "sequenceNumber": self.next_seq(), "streamSid": self.phone.stream_sid,
                "mark": {"name": token}}
