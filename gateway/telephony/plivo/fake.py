"""Plivo's side of a call, for the simulator: POSTs the answer webhook (signature V3 when it holds
the auth token), reads `<Stream bidirectional="true">URL</Stream>`, sends `start` (no `connected`)
with numeric counters, and checks our playAudio/checkpoint/clearAudio; acknowledges checkpoints
with `playedStream` and clears with `clearedAudio`."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from ..fake import DialError, FakeCaller, refused_message
from .signature import v3_signature

SHAPES = {"playAudio": ({"event", "media"}, {"event", "media", "streamId"}),
          "checkpoint": ({"event", "streamId", "name"},) * 2, "clearAudio": ({"event", "streamId"},) * 2}


class PlivoCaller(FakeCaller):
    network = "plivo"
    token_env = ("PLIVO_AUTH_TOKEN",)

    async def dial(self) -> None:
        phone = self.phone
        form = {"CallUUID": phone.call_sid, "From": phone.caller, "To": phone.dialed, "Direction": "inbound",
                "CallStatus": "ringing", "Event": "StartApp", **phone.extra_form}
        url = phone.webhook_url or phone.public("/plivo/voice", bot=True)
        headers = {}
        if phone.auth_token:
            nonce = uuid.uuid4().hex[:20]
            headers = {"X-Plivo-Signature-V3": v3_signature(phone.auth_token, "POST", url, list(form.items()), nonce),
                       "X-Plivo-Signature-V3-Nonce": nonce}
        root, refused = await self.post_webhook(url, urlencode(form).encode(), headers)
        stream = root.find("./Stream")
        if stream is None:
            say = root.find("./Speak")
            raise DialError(refused_message(refused, say.text if say is not None else ""))
        if stream.get("bidirectional") != "true" or stream.get("contentType") != "audio/x-mulaw;rate=8000":
            self.violation(f"Stream attributes {dict(stream.attrib)}: audio sent back would not play")
        self.stream_from((stream.text or "").strip())

    def start(self, params):
        p = self.phone
        return {"event": "start", "sequenceNumber": int(self.next_seq()),
                "start": {"callId": p.call_sid, "streamId": p.stream_sid, "accountId": "MA" + "X" * 18,
                          "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
                "extra_headers": ""}

    def _frame(self, event: str, body: dict) -> dict:
        return {"event": event, "sequenceNumber": int(self.next_seq()), "streamId": self.phone.stream_sid, event: body}

    def media(self, audio, chunk, ts_ms):
        return self._frame("media", self.media_body(audio, chunk, ts_ms))

    def dtmf(self, digit):
        return self._frame("dtmf", {"track": "inbound_track", "digit": digit})

    def read(self, data, binary):
        if binary:
            self.violation("binary frame from the gateway (Plivo takes JSON text)")
            return []
        checked = self.json_frame(data, SHAPES, "streamId")
        if checked is None:
            return []
        event, frame = checked
        if event == "playAudio":
            media = frame.get("media")
            if isinstance(media, dict):
                if (media.get("contentType"), media.get("sampleRate")) != ("audio/x-mulaw", 8000):
                    self.violation(f"playAudio format {media.get('contentType')!r} {media.get('sampleRate')!r}")
                media = {k: v for k, v in media.items() if k == "payload"}
            audio = self.media_payload(media)
            return [("audio", audio)] if audio is not None else []
        if event == "checkpoint":
            name = self.mark_name({"name": frame.get("name")})
            return [("mark", name)] if name is not None else []
        return [("clear",)]

    def echo(self, token):
        return {"event": "playedStream", "sequenceNumber": int(self.next_seq()), "streamId": self.phone.stream_sid,
                "name": token}

    def cleared(self):
        return {"event": "clearedAudio", "sequenceNumber": int(self.next_seq()), "streamId": self.phone.stream_sid}
