"""What every network's fake caller shares (the simulator's side of a network, `<network>/fake.py`).

A fake caller is the network as our gateway meets it: it dials (POSTs the webhook, or whatever the
network does first), writes the frames the network sends (hello, start, 20 ms of audio, keypad,
stop) and reads ours, checking each against the network's documented shapes. The simulated phone
(gateway.phone_sim) does the rest the same for every network: sockets, the real-time microphone,
the playback buffer that echoes marks, the heard timeline, the summary.

`read(data, binary)` returns effects for the phone's player: ("audio", bytes), ("mark", token),
("clear",), ("hangup",); wrong frames become `phone.violation(...)`.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..audio import PHONE_RATE

Effect = tuple
Out = str | bytes | dict  # a text frame, a binary frame, or JSON to send as text


class DialError(Exception):
    """The webhook did not connect us to a stream (e.g. TwiML that says sorry and hangs up)."""

    def __init__(self, message: str, status: int = 200):
        super().__init__(message)
        self.status = status  # the webhook's HTTP status


class FakeCaller:
    network = ""
    transport = "ws"  # "ws" or "tcp"
    pcm = False  # the phone speaks 16-bit PCM (else 8 kHz mu-law)
    marks_on_clear = False  # pending marks are echoed at a clear (Twilio does; for others unconfirmed)
    jitter_frames = 0  # a paced network's player waits for this many frames before it plays
    ws_protocols: tuple[str, ...] = ()
    token_env: tuple[str, ...] = ()  # environment variables the CLI reads the secret from (joined by ":")

    def __init__(self, phone, sample_rate: int = PHONE_RATE):
        self.phone = phone
        self.rate = sample_rate if self.pcm else PHONE_RATE
        self._seq = 0

    # ------------------------------------------------------------------ identity
    def call_id(self, bot: str | None) -> str:
        return str(uuid.uuid4())

    def stream_id(self, call_id: str) -> str:
        return str(uuid.uuid4())

    def next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    # ------------------------------------------------------------------ what the network sends
    async def dial(self) -> None:
        """Fill `phone.result` (stream_url, parameters, the answer document); DialError if refused."""
        raise NotImplementedError

    def connect_headers(self) -> dict[str, str]:
        return {}

    def hello(self) -> list[Out]:
        return []

    def start(self, params: dict[str, str]) -> Out:
        raise NotImplementedError

    def media(self, audio: bytes, chunk: int, ts_ms: int) -> Out:
        raise NotImplementedError

    def dtmf(self, digit: str) -> Out:
        raise NotImplementedError

    def stop(self) -> list[Out]:
        return []

    # ------------------------------------------------------------------ what we send
    def read(self, data: str | bytes, binary: bool) -> list[Effect]:
        raise NotImplementedError

    def echo(self, token: Any) -> Out | None:
        """The frame that says a mark's audio has played (None: the network has no marks)."""
        return None

    def cleared(self) -> Out | None:
        """The network's acknowledgement of a clear, if it sends one."""
        return None

    async def read_tcp(self, reader) -> bytes | None:
        """TCP networks: the next whole message from the gateway (None: closed)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for the fakes
    def violation(self, text: str) -> None:
        self.phone.violation(text)

    def parse_json(self, text: str) -> Any:
        """One of our text frames as JSON (None, and a violation, when it is not)."""
        try:
            return json.loads(text)
        except ValueError:
            self.violation(f"not JSON: {text[:60]}")
            return None

    def json_frame(self, text: str, shapes: dict, sid_field: str | None) -> tuple[str, dict] | None:
        """One of our JSON frames checked against the network's shapes: event -> (fields required,
        fields allowed); `sid_field` must name this stream where it appears. None: unusable."""
        frame = self.parse_json(text)
        event = frame.get("event") if isinstance(frame, dict) else None
        if event not in shapes:
            self.violation(f"31951 unknown event {event!r}")
            return None
        required, allowed = shapes[event]
        if not required <= set(frame) <= allowed:
            self.violation(f"31951 {event} fields {sorted(frame)}")
        if sid_field and sid_field in required | (set(frame) & allowed) and frame.get(sid_field) != self.phone.stream_sid:
            self.violation(f"31951 {event} with {sid_field} {frame.get(sid_field)!r}")
        return event, frame

    # Twilio, Telnyx and Exotel spell media, mark and clear alike (Plivo's checkpoint is its own).
    def read_media_family(self, data: str | bytes, binary: bool, shapes: dict, sid_field: str) -> list[Effect]:
        if binary:
            self.violation(f"31950 binary frame from the gateway ({self.network} takes JSON text)")
            return []
        checked = self.json_frame(data, shapes, sid_field)
        if checked is None:
            return []
        event, frame = checked
        if event == "media":
            audio = self.media_payload(frame.get("media"))
            return [("audio", audio)] if audio is not None else []
        if event == "mark":
            name = self.mark_name(frame.get("mark"))
            return [("mark", name)] if name is not None else []
        return [("clear",)]

    @staticmethod
    def media_body(audio: bytes, chunk: int | str, ts_ms: int) -> dict:
        return {"track": "inbound", "chunk": chunk, "timestamp": str(ts_ms), "payload": base64.b64encode(audio).decode()}

    def media_payload(self, media: object) -> bytes | None:
        if not isinstance(media, dict) or set(media) != {"payload"}:
            self.violation(f"31951 media.media {media!r:.80}")
            return None
        try:
            return base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            self.violation("media payload not base64")
            return None

    def mark_name(self, mark: object) -> str | None:
        if not isinstance(mark, dict) or set(mark) != {"name"} or not isinstance(mark.get("name"), str):
            self.violation(f"31951 mark.mark {mark!r:.80}")
            return None
        return mark["name"]

    async def post_webhook(self, url: str, body: bytes, headers: dict) -> tuple[ET.Element, str | None]:
        """POST the incoming-call webhook (a form) and parse the XML answer; and why it refused, if it said."""
        text, refused = await self.phone.request(
            "POST", url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
        return ET.fromstring(text), refused

    def stream_from(self, url: str, params: dict[str, str] | None = None) -> None:
        """The stream URL the answer named, and the parameters it carries (its query included)."""
        self.phone.result.stream_url = url
        self.phone.result.parameters = {**(params or {}), **dict(parse_qsl(urlsplit(url).query))}


def refused_message(refused: str | None, says: str) -> str:
    says = f"the caller hears: {says or '-'}"
    return f"refused: {refused} ({says})" if refused else f"no stream in the answer ({says})"
