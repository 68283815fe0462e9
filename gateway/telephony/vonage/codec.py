"""Vonage Voice API WebSockets frames <-> typed events (docs/protocols.md "Vonage Voice API WebSockets").

Vonage sends a text `websocket:connected` first (its `content-type` names the audio, the NCCO
endpoint's headers ride along at the top level), then binary frames of 20 ms 16-bit LE PCM (640
bytes at 16 kHz), and text `websocket:dtmf`, `websocket:notify` (the payload of a `notify` of ours
once the audio before it has played: our mark), `websocket:cleared`. We send binary frames of exactly
20 ms, `{"action":"clear"}` and `{"action":"notify","payload":{"mark":…}}`. Frames do not name the
stream; the call's uuid rides in the media URL's query. Pure: no I/O.
"""

from __future__ import annotations

import uuid
from typing import Mapping

from ...speedups import dumps
from .. import L16, Dtmf, MarkPlayed, PhoneEvent, Started
from ..codec import CodecBase, Frame
from ..network import query_params
from ..wire import FrameError, as_str, digit_of, json_object, pcm_audio

RATE = 16000


class VonageCodec(CodecBase):
    network, label = "vonage", "Vonage"

    def __init__(self, query: Mapping[str, str] | None = None):
        super().__init__(query)
        self.frame_bytes = RATE * 2 // 50

    def decode_text(self, text: str) -> PhoneEvent | None:
        msg = json_object(text)
        event = msg["event"]
        if event == "websocket:connected":
            kind, _, rate = as_str(msg.get("content-type")).partition(";rate=")
            rate = int(rate) if rate.isdigit() else 0
            if kind == L16 and rate:
                self.frame_bytes = rate * 2 // 50
            call = self.query.get("uuid") or as_str(msg.get("uuid"))
            return self.state.start(Started(stream_sid=call or str(uuid.uuid4()), call_sid=call, account_sid="",
                                            custom_parameters=query_params(self.query),
                                            encoding=L16 if kind == L16 else kind, sample_rate=rate))
        self.state.check(event)
        if event == "websocket:dtmf":
            return Dtmf(digit=digit_of(msg.get("digit"), "websocket:dtmf"))
        if event == "websocket:notify":
            payload = msg.get("payload")
            name = as_str(payload.get("mark")) if isinstance(payload, dict) else ""
            if not name:
                raise FrameError("websocket:notify without our mark")
            return MarkPlayed(name=name)
        if event in ("websocket:cleared", "websocket:media:update"):
            return None
        raise FrameError(f"unknown event {event[:40]!r}")

    def decode_binary(self, data: bytes) -> PhoneEvent | None:
        return pcm_audio(data, self.state.sid is not None, "websocket:connected")

    def play(self, audio: bytes):
        """Binary frames of exactly 20 ms (the Playout's chunks are whole frames)."""
        n = self.frame_bytes
        return tuple(Frame(audio[i:i + n], binary=True) for i in range(0, len(audio), n))

    def mark(self, name: str):
        return (Frame(dumps({"action": "notify", "payload": {"mark": name}})),)

    def clear(self):
        return (Frame(b'{"action":"clear"}'),)
