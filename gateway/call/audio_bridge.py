"""The call's audio formats, both ways: phone (8 kHz mu-law, 20 ms frames) <-> model.

Owns the stateful pieces (resamplers carry filter state across frames, the framer holds the
partial frame), so one bridge serves one call for its whole life, across model sessions (every
session of a call has the same persona, hence the same formats). Where the model takes and
returns the phone's mu-law (`passthrough`), bytes go through untouched.
"""

from __future__ import annotations

from ..audio import PHONE_RATE, Framer, Resampler, pcm16_to_ulaw, pcm_ms, ulaw_to_pcm16
from ..providers.base import Capabilities


class AudioBridge:
    def __init__(self, caps: Capabilities):
        self.caps = caps
        self._in = Resampler(PHONE_RATE, caps.input_rate) if caps.input_format == "pcm16" else None
        self._out = Resampler(caps.output_rate, PHONE_RATE) if caps.output_format == "pcm16" else None
        self._framer = Framer()
        # Where the model takes appends of a fixed length, caller audio is decoded and resampled a
        # whole append at a time (the model hears nothing sooner either way; numpy's per-call cost
        # is most of the resampler's): b"" until the block is complete.
        self._in_block = PHONE_RATE * caps.input_block_ms // 1000 if self._in is not None else 0
        self._in_pending = bytearray()

    def to_model(self, ulaw: bytes) -> bytes:
        """Caller audio in the model's input format (b"" while a block is being gathered)."""
        if self._in is None:
            return ulaw
        if self._in_block:
            pending = self._in_pending
            pending += ulaw
            if len(pending) < self._in_block:
                return b""
            ulaw = bytes(pending)
            pending.clear()
        return self._in.process(ulaw_to_pcm16(ulaw))

    def model_ms(self, audio: bytes) -> float:
        """Duration of model output audio."""
        return len(audio) / 8 if self._out is None else pcm_ms(len(audio), self.caps.output_rate)

    def to_phone(self, audio: bytes) -> list[bytes]:
        """Model output -> whole 20 ms mu-law frames (the remainder waits for the next delta)."""
        return self._framer.push(audio if self._out is None else pcm16_to_ulaw(self._out.process(audio)))

    def end_of_reply(self) -> list[bytes]:
        """A reply ended: what the filter still holds and the last partial frame (padded)."""
        frames = self._framer.push(pcm16_to_ulaw(self._out.flush())) if self._out is not None else []
        tail = self._framer.flush()
        return frames + ([tail] if tail else [])

    def drop_bot_audio(self) -> None:
        """Barge-in: forget the partial frame and the filter's memory of the cut reply."""
        self._framer.reset()
        if self._out is not None:
            self._out.reset()
