"""Twilio Media Streams (bidirectional, `<Connect><Stream>`): wire frames <-> typed phone events.

Twilio sends JSON text frames: connected, start, media, dtmf, mark, stop. We send exactly three
shapes: media, mark, clear, each carrying the active streamSid and nothing else (extra or
missing fields earn a 31951 warning; binary frames a 31950). A `mark` comes back when the audio
queued before it has been played; `clear` drops Twilio's buffer and echoes every pending mark.
Pure: no I/O (the shared WsPhoneStream runs the socket).
"""

from __future__ import annotations

import base64

from ...speedups import dumps
from .. import MULAW, PhoneEvent, Started
from ..codec import Frame, JsonEventCodec
from ..wire import FrameError, as_int, as_str, family_event, media_audio, string_map, sub_object


class TwilioCodec(JsonEventCodec):
    network, label = "twilio", "Twilio"
    sid_field = "streamSid"

    def __init__(self) -> None:
        super().__init__()
        self._sid_json = b""  # the stream's sid as a JSON string: our frames are put together from bytes

    # ---------------------------------------------------------------- inbound
    def decode_start(self, msg: dict) -> Started:
        started = decode_start(msg)
        if self.state.sid is None:
            self._sid_json = dumps(started.stream_sid)
        return started

    def decode_event(self, event: str, msg: dict) -> PhoneEvent | None:
        if event == "media":
            ts = as_str(sub_object(msg, "media", "media", required=True).get("timestamp"))
            return media_audio(msg, timestamp_ms=int(ts) if ts.isascii() and ts.isdigit() else None)
        return family_event(event, msg)  # dtmf, mark, stop

    # ---------------------------------------------------------------- outbound
    # Per message only the payload or the mark's name changes: frames are put together from bytes
    # (the same JSON a serializer would write, field for field).
    def play(self, audio: bytes):
        return (Frame(b'{"event":"media","streamSid":%b,"media":{"payload":"%b"}}'
                      % (self._sid_json, base64.b64encode(audio))),)

    def mark(self, name: str):
        return (Frame(b'{"event":"mark","streamSid":%b,"mark":{"name":%b}}' % (self._sid_json, dumps(name))),)

    def clear(self):
        return (Frame(b'{"event":"clear","streamSid":%b}' % self._sid_json),)


def decode_start(msg: dict) -> Started:
    start = sub_object(msg, "start", "start", required=True)
    sid = as_str(start.get("streamSid") or msg.get("streamSid"))
    if not sid:
        raise FrameError("start without streamSid")
    params = start.get("customParameters") or {}
    if not isinstance(params, dict):
        raise FrameError("customParameters is not an object")
    fmt = sub_object(start, "mediaFormat", "start")
    return Started(stream_sid=sid, call_sid=as_str(start.get("callSid")), account_sid=as_str(start.get("accountSid")),
                   custom_parameters=string_map(params), encoding=as_str(fmt.get("encoding") or MULAW),
                   sample_rate=as_int(fmt.get("sampleRate"), 8000), channels=as_int(fmt.get("channels"), 1))
