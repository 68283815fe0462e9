"""Telnyx Media Streaming frames <-> typed events (docs/protocols.md "Telnyx Media Streaming").

Frames are Twilio's set in snake_case: `connected`, `start` (`stream_id` top-level only; the call is
`start.call_control_id`, caller and dialed number `start.from`/`start.to`), `media`, `dtmf`, `mark`
(our marks echoed once played), `stop`, `error`. Counters come as strings. We send `media` (PCMU in
RTP mode), `mark`, `clear`, without `stream_id`. Media frames may arrive out of order (Telnyx says
so); they are passed on as they come (a late 20 ms frame is a click at worst, a reordering buffer
would add its depth to every reply) and counted (`frames_out_of_order`). Pure: no I/O.
"""

from __future__ import annotations

from typing import Mapping

from ...speedups import dumps
from .. import MULAW, PhoneEvent, Started
from ..codec import Frame, JsonEventCodec
from ..network import query_params
from ..wire import FrameError, NetworkNotice, as_int, as_str, b64, family_event, string_map, sub_object

MULAW_NAMES = ("PCMU", "audio/x-mulaw", "mulaw", "audio/PCMU")


class TelnyxCodec(JsonEventCodec):
    network, label = "telnyx", "Telnyx"
    sid_field = "stream_id"

    def __init__(self, query: Mapping[str, str] | None = None):
        super().__init__(query)
        self.frames_out_of_order = 0
        self._last_seq = 0

    def network_says(self, event: str, msg: dict) -> None:
        if event == "error":  # Telnyx tells us about a frame of ours it could not use
            err = msg.get("error") or msg.get("payload") or {}
            err = err if isinstance(err, dict) else {"detail": as_str(err)}
            raise NetworkNotice(code=as_str(err.get("code"))[:20], title=as_str(err.get("title"))[:80],
                                detail=as_str(err.get("detail"))[:200])

    def decode_event(self, event: str, msg: dict) -> PhoneEvent | None:
        if event == "media":
            seq = as_int(msg.get("sequence_number"), 0)
            if seq and seq < self._last_seq:
                self.frames_out_of_order += 1
            self._last_seq = max(self._last_seq, seq)
        return family_event(event, msg)  # media, dtmf, mark, stop

    def decode_start(self, msg: dict) -> Started:
        start = sub_object(msg, "start", "start", required=True)
        sid = as_str(msg.get("stream_id") or start.get("stream_id"))
        if not sid:
            raise FrameError("start without stream_id")
        fmt = sub_object(start, "media_format", "start")
        params = string_map(start.get("custom_parameters"))
        params.update({"from": as_str(start.get("from")), "to": as_str(start.get("to"))})
        params.update(query_params(self.query, ("bot", "ticket")))
        encoding = as_str(fmt.get("encoding"))
        return Started(stream_sid=sid, call_sid=as_str(start.get("call_control_id")),
                       account_sid=as_str(start.get("user_id")), custom_parameters=params,
                       encoding=MULAW if encoding in MULAW_NAMES else encoding,
                       sample_rate=as_int(fmt.get("sample_rate"), 8000), channels=as_int(fmt.get("channels"), 1))

    def play(self, audio: bytes):
        return (Frame(dumps({"event": "media", "media": {"payload": b64(audio)}})),)

    def mark(self, name: str):
        return (Frame(dumps({"event": "mark", "mark": {"name": name}})),)

    def clear(self):
        return (Frame(b'{"event":"clear"}'),)
