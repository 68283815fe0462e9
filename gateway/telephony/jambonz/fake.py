"""jambonz's side of a call, for the simulator: POSTs the application's call webhook (JSON, signed
with `Jambonz-Signature` when it holds the webhook secret), requires a `listen` verb with bidirectional
streaming on, mono and one rate both ways, opens the URL with subprotocol `audio.jambonz.org`, sends the
preamble (the call's attributes, `sampleRate`, `mixType`, the verb's `metadata`), binary PCM and DTMF
as JSON; checks ours: binary frames of whole samples and `{"type": "killAudio"}`. No marks: the
gateway paces its audio, so the player waits for a little audio first, as AudioSocket's does."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

from ..fake import DialError, FakeCaller


def signature_header(secret: str, body: bytes, now: float | None = None) -> str:
    stamp = str(int(time.time() if now is None else now))
    return f"t={stamp},v1={hmac.new(secret.encode(), stamp.encode() + b'.' + body, hashlib.sha256).hexdigest()}"


class JambonzCaller(FakeCaller):
    network = "jambonz"
    pcm = True
    jitter_frames = 2
    ws_protocols = ("audio.jambonz.org",)
    token_env = ("JAMBONZ_WEBHOOK_SECRET",)

    def __init__(self, phone, sample_rate: int = 8000):
        super().__init__(phone, sample_rate)
        self.account = str(uuid.uuid4())
        self._metadata: dict = {}

    async def dial(self) -> None:
        phone = self.phone
        hook = {"callSid": phone.call_sid, "direction": "inbound", "from": phone.caller, "to": phone.dialed,
                "callId": str(uuid.uuid4()), "sipStatus": 100, "callStatus": "trying", "accountSid": self.account,
                "applicationSid": str(uuid.uuid4()), **phone.extra_form}
        body = json.dumps(hook).encode()
        headers = {"Content-Type": "application/json"}
        if phone.auth_token:
            headers["Jambonz-Signature"] = signature_header(phone.auth_token, body)
        text, refused = await phone.request("POST", phone.webhook_url or phone.public("/jambonz/voice", bot=True),
                                            data=body, headers=headers)
        verbs = json.loads(text)
        listen = next((v for v in verbs if isinstance(v, dict) and v.get("verb") == "listen"), None)
        if listen is None:
            say = next((v.get("text") for v in verbs if isinstance(v, dict) and v.get("verb") == "say"), "-")
            raise DialError(f"refused: {refused} (the caller hears: {say})" if refused else
                            f"no listen verb in the answer (the caller hears: {say})")
        back = listen.get("bidirectionalAudio") or {}
        rate = listen.get("sampleRate", 8000)
        if not (back.get("enabled", True) and back.get("streaming") and back.get("sampleRate") == rate):
            self.violation(f"listen {json.dumps(back)}: audio sent back would be ignored or play at the wrong rate")
        if listen.get("mixType", "mono") != "mono":
            self.violation(f"listen mixType {listen.get('mixType')!r}: the gateway takes mono")
        self.rate = int(rate)
        phone.use_rate(self.rate)
        self._metadata = listen.get("metadata") or {}
        self.stream_from(listen.get("url", ""), self._metadata)

    def start(self, params):
        p = self.phone
        return {"callSid": p.call_sid, "direction": "inbound", "from": p.caller, "to": p.dialed,
                "accountSid": self.account, "sampleRate": self.rate, "mixType": "mono", **self._metadata}

    def media(self, audio, chunk, ts_ms):
        return audio

    def dtmf(self, digit):
        return {"event": "dtmf", "dtmf": digit, "duration": "250"}

    def read(self, data, binary):
        if binary:
            if not data or len(data) % 2:
                self.violation(f"binary frame of {len(data)} bytes: not whole 16-bit samples")
            return [("audio", data)]
        frame = self.parse_json(data)
        if frame == {"type": "killAudio"}:
            return [("clear",)]
        if frame is not None:
            self.violation(f"unknown jambonz command {data[:80]}")
        return []
