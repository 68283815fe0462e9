"""jambonz `listen` frames <-> typed events (docs/protocols.md "jambonz"; docs/networks.md).

The socket is opened with subprotocol `audio.jambonz.org`. jambonz's first message is one JSON text
frame with the call's attributes (`callSid`, `from`, `to`, `direction`, `accountSid`, …) plus
`sampleRate` and `mixType`; after it binary frames of 16-bit signed little-endian PCM at that rate,
and, with `passDtmf`, DTMF as JSON text (`{"event": "dtmf", "dtmf": "5", "duration": …}`). Back to
jambonz (bidirectional streaming on): binary PCM frames at `bidirectionalAudio.sampleRate` (our answer
sets it to the preamble's rate) and `{"type": "killAudio"}` to stop what is playing. The protocol has
no marks we can rely on, so the stream paces our audio on its own clock and emulates them (`paced`),
as for AudioSocket. Pure: no I/O.
"""

from __future__ import annotations

import uuid

from .. import L16, Dtmf, PhoneEvent, Started
from ..codec import NO_FRAMES, CodecBase, Frame
from ..network import query_params
from ..wire import FrameError, as_int, as_str, digit_of, json_object, pcm_audio

KILL_AUDIO = b'{"type":"killAudio"}'


class JambonzCodec(CodecBase):
    network, label = "jambonz", "jambonz"
    paced = True

    def __init__(self, query=None):
        super().__init__(query)
        self.frame_bytes = 320  # 20 ms at the preamble's rate, once it is known

    def decode_text(self, text: str) -> PhoneEvent | None:
        msg = json_object(text, kind=None)  # the preamble has no event field
        if self.state.sid is None:
            return self.state.start(self._preamble(msg))
        event = as_str(msg.get("event") or msg.get("type"))
        if event == "dtmf":
            return Dtmf(digit=digit_of(msg.get("dtmf") or msg.get("digit"), "dtmf"))
        raise FrameError(f"unknown message {event[:40]!r}" if event else "a second preamble ignored")

    def _preamble(self, msg: dict) -> Started:
        call = as_str(msg.get("callSid") or msg.get("call_sid"))
        rate = as_int(msg.get("sampleRate"), 8000)
        mix = as_str(msg.get("mixType") or "mono")
        if rate > 0 and rate % 50 == 0:
            self.frame_bytes = rate * 2 // 50
        params = query_params(self.query)
        params.update({k: as_str(msg.get(k)) for k in ("from", "to") if msg.get(k)})
        return Started(stream_sid=call or str(uuid.uuid4()), call_sid=call, account_sid=as_str(msg.get("accountSid")),
                       custom_parameters=params, encoding=L16 if mix == "mono" else f"{L16} ({mix[:20]})",
                       sample_rate=rate, channels=1 if mix == "mono" else 2)

    def decode_binary(self, data: bytes) -> PhoneEvent | None:
        return pcm_audio(data, self.state.sid is not None, "the preamble")

    def play(self, audio: bytes):
        return (Frame(audio, binary=True),)

    def mark(self, name: str):
        return NO_FRAMES  # emulated by the stream's pacing

    def clear(self):
        return (Frame(KILL_AUDIO),)

    def hang_up(self):
        return NO_FRAMES
