"""Plivo Audio Streams frames <-> typed events (docs/protocols.md "Plivo Audio Streams").

No `connected`: `start` comes first (`start.callId`, `start.streamId`), then `media`, `dtmf`,
`playedStream` (a `checkpoint` of ours whose audio has played), `clearedAudio` (our `clearAudio`
done); sequence numbers are numbers or strings. We send `playAudio` (mu-law 8 kHz), `checkpoint`,
`clearAudio`. Whether checkpoints pending at a clear are acknowledged is unconfirmed: the Playout
ignores acknowledgements of a cleared generation, so either way they count as not heard.
The bot, caller and dialed number ride in the media URL's query. Pure: no I/O.
"""

from __future__ import annotations

from ...speedups import dumps
from .. import MarkPlayed, PhoneEvent, Started
from ..codec import Frame, JsonEventCodec
from ..network import query_params
from ..wire import FrameError, as_int, as_str, b64, family_event, sub_object


class PlivoCodec(JsonEventCodec):
    network, label = "plivo", "Plivo"
    sid_field = "streamId"

    def decode_start(self, msg: dict) -> Started:
        start = sub_object(msg, "start", "start", required=True)
        sid = as_str(start.get("streamId") or msg.get("streamId"))
        if not sid:
            raise FrameError("start without streamId")
        fmt = sub_object(start, "mediaFormat", "start")
        return Started(stream_sid=sid, call_sid=as_str(start.get("callId")), account_sid=as_str(start.get("accountId")),
                       custom_parameters=query_params(self.query), encoding=as_str(fmt.get("encoding")),
                       sample_rate=as_int(fmt.get("sampleRate"), 8000))

    def decode_event(self, event: str, msg: dict) -> PhoneEvent | None:
        if event in ("playedStream", "played"):  # an older article names the acknowledgement `played`
            name = as_str(msg.get("name"))
            if not name:
                raise FrameError(f"{event} without a name")
            return MarkPlayed(name=name)
        if event == "clearedAudio":
            return None
        if event == "mark":  # Plivo's mark is `playedStream`: a `mark` is none of its frames
            raise FrameError("unknown event 'mark'")
        return family_event(event, msg)  # media, dtmf, stop

    def play(self, audio: bytes):
        return (Frame(dumps({"event": "playAudio", "media": {
            "contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": b64(audio)}})),)

    def mark(self, name: str):
        return (Frame(dumps({"event": "checkpoint", "streamId": self.stream_sid, "name": name})),)

    def clear(self):
        return (Frame(dumps({"event": "clearAudio", "streamId": self.stream_sid})),)
