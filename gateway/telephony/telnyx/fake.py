"""Telnyx's side of a call, for the simulator: POSTs the TeXML webhook (Ed25519-signed when it holds
a signing key), requires `bidirectionalMode="rtp"`, sends snake_case frames with string counters,
and checks our media/mark/clear."""

from __future__ import annotations

import base64
import time
import uuid
from urllib.parse import urlencode

from ..fake import DialError, FakeCaller, refused_message

SHAPES = {"media": ({"event", "media"}, {"event", "media", "stream_id"}),
          "mark": ({"event", "mark"}, {"event", "mark", "stream_id"}),
          "clear": ({"event"}, {"event", "stream_id"})}


class TelnyxCaller(FakeCaller):
    network = "telnyx"

    def call_id(self, bot):
        return "v3:" + uuid.uuid4().hex

    async def dial(self) -> None:
        phone = self.phone
        form = {"CallSid": phone.call_sid, "AccountSid": phone.account_sid, "From": phone.caller, "To": phone.dialed,
                "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01", "Caller": phone.caller,
                "Called": phone.dialed, **phone.extra_form}
        url = phone.webhook_url or phone.public("/telnyx/voice", bot=True)
        body, headers = urlencode(form).encode(), {}
        if phone.signing_key is not None:
            ts = str(int(time.time()))
            sig = phone.signing_key.sign(ts.encode() + b"|" + body)
            headers = {"telnyx-timestamp": ts, "telnyx-signature-ed25519": base64.b64encode(sig).decode()}
        root, refused = await self.post_webhook(url, body, headers)
        stream = root.find("./Connect/Stream")
        if stream is None:
            say = root.find("./Say")
            raise DialError(refused_message(refused, say.text if say is not None else ""))
        if stream.get("bidirectionalMode") != "rtp":
            self.violation("Stream without bidirectionalMode=\"rtp\": Telnyx drops the audio we send back")
        self.stream_from(stream.get("url", ""))

    def hello(self):
        return [{"event": "connected", "version": "1.0.0"}]

    def start(self, params):
        p = self.phone
        return {"event": "start", "sequence_number": self.next_seq(), "stream_id": p.stream_sid,
                "start": {"user_id": str(uuid.uuid4()), "call_control_id": p.call_sid,
                          "call_session_id": str(uuid.uuid4()), "client_state": None, "from": p.caller,
                          "to": p.dialed, "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}

    def _frame(self, event: str, body: dict) -> dict:
        return {"event": event, "sequence_number": self.next_seq(), event: body, "stream_id": self.phone.stream_sid}

    def media(self, audio, chunk, ts_ms):
        return self._frame("media", self.media_body(audio, str(chunk), ts_ms))

    def dtmf(self, digit):
        return self._frame("dtmf", {"track": "inbound_track", "digit": digit})

    def stop(self):
        return [self._frame("stop", {"user_id": "", "call_control_id": self.phone.call_sid})]

    def read(self, data, binary):
        return self.read_media_family(data, binary, SHAPES, "stream_id")

    def echo(self, token):
        return {"event": "mark", "sequence_number": self.next_seq(), "mark": {"name": token},
                "stream_id": self.phone.stream_sid}
