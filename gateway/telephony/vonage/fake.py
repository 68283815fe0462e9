"""Vonage's side of a call, for the simulator: GETs the answer URL (a signed-webhook JWT when it holds
the signature secret), requires an NCCO `connect` to a websocket with audio/l16;rate=16000, sends
`websocket:connected` (the endpoint's headers at the top level), binary 640-byte frames and
`websocket:dtmf`; checks ours: binary frames of exactly 20 ms, `clear`, `notify` (answered with
`websocket:notify` once played)."""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import urlencode

from ..fake import DialError, FakeCaller

AUDIO = "audio/l16;rate=16000"


class VonageCaller(FakeCaller):
    network = "vonage"
    pcm = True
    token_env = ("VONAGE_SIGNATURE_SECRET",)

    def __init__(self, phone, sample_rate: int = 16000):
        super().__init__(phone, 16000)
        self.frame_bytes = self.rate * 2 // 50
        self._headers: dict = {}

    def stream_id(self, call_id):
        return call_id  # one UUID names the call

    async def dial(self) -> None:
        phone = self.phone
        query = {"to": phone.dialed, "from": phone.caller, "uuid": phone.call_sid,
                 "conversation_uuid": "CON-" + str(uuid.uuid4()), **({"bot": phone.bot} if phone.bot else {})}
        url = phone.public("/vonage/answer") + "?" + urlencode(query)
        headers = {}
        if phone.auth_token:  # signed webhooks: a JWT HS256 with the signature secret
            import jwt
            headers["Authorization"] = "Bearer " + jwt.encode(
                {"iat": int(time.time()), "jti": str(uuid.uuid4()), "iss": "Vonage"}, phone.auth_token, algorithm="HS256")
        text, refused = await phone.request("GET", url, headers=headers)
        ncco = json.loads(text)
        connect = next((a for a in ncco if isinstance(a, dict) and a.get("action") == "connect"), None)
        if connect is None:
            talk = next((a.get("text") for a in ncco if isinstance(a, dict) and a.get("action") == "talk"), "-")
            raise DialError(f"refused: {refused} (the caller hears: {talk})" if refused else
                            f"no connect in the NCCO (the caller hears: {talk})")
        endpoint = connect["endpoint"][0]
        if endpoint.get("type") != "websocket" or endpoint.get("content-type") != AUDIO:
            self.violation(f"NCCO endpoint {endpoint!r:.120}: want a websocket with {AUDIO}")
        self._headers = endpoint.get("headers", {})
        self.stream_from(endpoint.get("uri", ""), self._headers)

    def start(self, params):
        return {"event": "websocket:connected", "content-type": AUDIO, **self._headers}

    def media(self, audio, chunk, ts_ms):
        return audio

    def dtmf(self, digit):
        return {"event": "websocket:dtmf", "digit": digit, "duration": 260}

    def read(self, data, binary):
        if binary:
            if len(data) != self.frame_bytes:
                self.violation(f"binary frame of {len(data)} bytes: Vonage wants exactly {self.frame_bytes}")
            return [("audio", data)]
        frame = self.parse_json(data)
        action = frame.get("action") if isinstance(frame, dict) else None
        if action == "clear" and set(frame) == {"action"}:
            return [("clear",)]
        if action == "notify" and set(frame) == {"action", "payload"} and isinstance(frame["payload"], dict):
            return [("mark", frame["payload"])]
        self.violation(f"unknown Vonage action {data[:80]}")
        return []

    def echo(self, token):
        return {"event": "websocket:notify", "payload": token}

    def cleared(self):
        return {"event": "websocket:cleared"}
