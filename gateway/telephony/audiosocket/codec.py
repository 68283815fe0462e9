"""Asterisk AudioSocket messages <-> typed events (docs/protocols.md "Asterisk AudioSocket").

Every message is `type(1) length(2, big-endian) payload`: Asterisk sends 0x01 with the call's
16-byte UUID first, then 0x10 audio (16-bit LE PCM, 8 kHz, 320 bytes = 20 ms), 0x03 a DTMF digit
(one ASCII byte), 0x00 hang-up, 0xFF an error. We send 0x10 audio and 0x00 to hang up. There are
no marks and no clear: the stream paces our audio on its own clock (`paced`). Pure: no I/O.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Mapping

from .. import L16, Audio, Dtmf, PhoneEvent, Started, Stopped
from ..codec import NO_FRAMES, Frame, StreamState
from ..wire import FrameError, NetworkNotice

HANGUP, UUID, DTMF, AUDIO, ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit PCM
DTMF_DIGITS = set("0123456789*#ABCD")
ERRORS = {0x01: "calling party hung up", 0x02: "frame forwarding error", 0x04: "memory allocation error"}


def message(kind: int, payload: bytes = b"") -> bytes:
    return bytes((kind,)) + len(payload).to_bytes(2, "big") + payload


class AudioSocketCodec:
    network = "audiosocket"
    min_chunk_bytes = 0
    paced = True
    frame_bytes = FRAME_BYTES

    def __init__(self, bots: Mapping[str, str] | None = None):
        self.bots = dict(bots or {})
        self.state = StreamState()

    @property
    def stream_sid(self) -> str | None:
        return self.state.sid

    def decode(self, kind: int, payload: bytes) -> PhoneEvent | None:
        """One message (its type and payload) as an event."""
        if kind in (HANGUP, ERROR):
            if kind == ERROR:
                code = payload[0] if payload else 0
                raise NetworkNotice(code=f"0x{code:02x}", detail=ERRORS.get(code, "application error"))
            return Stopped(reason="stop")
        if kind == UUID:
            if self.state.sid is not None:
                raise FrameError("second UUID ignored")
            if len(payload) != 16:
                raise FrameError("UUID of the wrong length")
            sid = str(uuid.UUID(bytes=payload))
            bot = self.bots.get(sid, "")
            # A fixed UUID that picks the bot is shared by every call through that dialplan line.
            call_id = f"{sid}.{secrets.token_hex(4)}" if bot else sid
            return self.state.start(Started(stream_sid=sid, call_sid=call_id, account_sid="",
                                            custom_parameters={"bot": bot} if bot else {}, encoding=L16,
                                            sample_rate=8000))
        if self.state.sid is None:
            raise FrameError("message before the UUID")
        if kind == AUDIO:
            if not payload or len(payload) % 2:
                raise FrameError("audio of an odd or zero length")
            return Audio(payload=payload)
        if kind == DTMF:
            digit = payload.decode("ascii", "replace")
            if len(payload) != 1 or digit not in DTMF_DIGITS:
                raise FrameError("DTMF that is not one of 0-9*#A-D")
            return Dtmf(digit=digit)
        raise FrameError(f"unknown message type 0x{kind:02x}")

    def decode_binary(self, data: bytes) -> PhoneEvent | None:
        """A whole message (type, length, payload) in one buffer."""
        if len(data) < 3 or int.from_bytes(data[1:3], "big") != len(data) - 3:
            raise FrameError("message shorter or longer than its length says")
        return self.decode(data[0], data[3:])

    def decode_text(self, text: str) -> PhoneEvent | None:
        raise FrameError("AudioSocket has no text messages")

    def play(self, audio: bytes):
        return (Frame(message(AUDIO, audio), binary=True),)

    def mark(self, name: str):
        return NO_FRAMES  # emulated by the stream's pacing

    def clear(self):
        return NO_FRAMES

    def hang_up(self):
        return (Frame(message(HANGUP), binary=True),)
