"""Exotel Voicebot frames <-> typed events (docs/protocols.md "Exotel").

Frames are Twilio's set in snake_case with string counters: `connected` (may not come), `start`,
`media`, `dtmf`, `mark` (our marks echoed once played), `stop`. Every documented form of `start` is
read: the developer site's (`stream_sid` top-level and inside, `media_format: {encoding:
"audio/x-raw", sample_rate: "8000", bit_rate: "16"}`), the Agent-Stream reference's (no
`stream_sid`, `encoding: "linear16"`, numeric rates) and the camelCase `streamSid`/`callSid` that
Exotel's own bridge code reads. With no stream id at all we make one, and our frames carry it.
Audio is 16-bit LE PCM at 8 kHz unless the URL asks for `sample-rate=16000|24000`.

We send `media`, `mark`, `clear`, each with `stream_sid`. Exotel wants media chunks of 3,200 to
100,000 bytes in multiples of 320: the Playout sends at least 3,200 (`min_chunk_bytes`) but for the
last of a reply, which is padded here with silence rather than sent short. Pure: no I/O.
"""

from __future__ import annotations

import uuid
from typing import Mapping

from ...speedups import dumps
from .. import L16, PhoneEvent, Started
from ..codec import Frame, JsonEventCodec
from ..wire import FrameError, as_int, as_str, b64, family_event, first, string_map, sub_object

PCM_ENCODINGS = ("audio/x-raw", "raw", "slin", "linear16", "audio/l16", "l16", "pcm")
MIN_CHUNK, CHUNK_STEP = 3200, 320


def padded(audio: bytes) -> bytes:
    """Our media chunk as Exotel takes it: at least 3,200 bytes, a multiple of 320 (silence added)."""
    want = max(MIN_CHUNK, -(-len(audio) // CHUNK_STEP) * CHUNK_STEP)
    return audio + bytes(want - len(audio))


class ExotelCodec(JsonEventCodec):
    network, label = "exotel", "Exotel"
    min_chunk_bytes = MIN_CHUNK

    def __init__(self, query: Mapping[str, str] | None = None):
        super().__init__(query)
        self._sid_named = True  # False: the start named no stream (ours is made up), frames are not matched

    def named_sid(self, msg: dict) -> object:
        return first(msg.get("stream_sid"), msg.get("streamSid")) or None if self._sid_named else None

    def decode_event(self, event: str, msg: dict) -> PhoneEvent | None:
        return family_event(event, msg)  # media, dtmf, mark, stop

    def decode_start(self, msg: dict) -> Started:
        start = sub_object(msg, "start", "start", required=True)
        fmt = sub_object(start, "media_format", "start") or sub_object(start, "mediaFormat", "start")
        raw_params = start.get("custom_parameters", start.get("customParameters")) or {}
        if not isinstance(raw_params, dict):
            raise FrameError("custom_parameters is not an object")
        params = string_map(raw_params)
        if self.query.get("bot"):
            params["bot"] = self.query["bot"]
        params.update({"from": as_str(start.get("from")), "to": as_str(start.get("to"))})
        sid = first(msg.get("stream_sid"), start.get("stream_sid"), msg.get("streamSid"), start.get("streamSid"))
        self._sid_named = bool(sid)
        encoding = as_str(fmt.get("encoding") or "audio/x-raw")
        bits = as_int(fmt.get("bit_rate", fmt.get("bitRate")), 16)
        rate = as_int(fmt.get("sample_rate", fmt.get("sampleRate")), 0) or as_int(self.query.get("sample-rate"), 8000)
        return Started(stream_sid=sid or f"gw-{uuid.uuid4().hex}",
                       call_sid=first(start.get("call_sid"), start.get("callSid")),
                       account_sid=first(start.get("account_sid"), start.get("accountSid")), custom_parameters=params,
                       encoding=L16 if encoding.lower() in PCM_ENCODINGS and bits == 16 else encoding, sample_rate=rate)

    def play(self, audio: bytes):
        return (Frame(dumps({"event": "media", "stream_sid": self.stream_sid, "media": {"payload": b64(padded(audio))}})),)

    def mark(self, name: str):
        return (Frame(dumps({"event": "mark", "stream_sid": self.stream_sid, "mark": {"name": name}})),)

    def clear(self):
        return (Frame(dumps({"event": "clear", "stream_sid": self.stream_sid})),)
