"""The call's audio formats, both ways: phone (its format, 20 ms frames) <-> model.

The phone speaks 8 kHz mu-law (Twilio, Telnyx, Plivo) or 16-bit PCM at its rate (Exotel 8/16/24
kHz, Vonage 16 kHz, AudioSocket 8 kHz): `PhoneFormat`, from the stream's `start`. Owns the
stateful pieces (resamplers carry filter state across frames, the framer holds the partial frame),
so one bridge serves one call for its whole life, across model sessions (every session of a call
has the same persona, hence the same formats). Where the model takes and returns the phone's
mu-law (`passthrough`), bytes go through untouched. The recording and the barge-in check hear
8 kHz mu-law whatever the phone speaks (`to_ulaw8k`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..audio import FRAME_MS, MULAW_SILENCE, PHONE_RATE, Framer, Resampler, pcm16_to_ulaw, pcm_ms, ulaw_to_pcm16
from ..providers.base import Capabilities

MULAW = "audio/x-mulaw"
L16 = "audio/l16"  # signed 16-bit little-endian PCM, mono


@dataclass(frozen=True)
class PhoneFormat:
    encoding: str = MULAW  # MULAW or L16
    rate: int = PHONE_RATE

    @classmethod
    def of(cls, started) -> "PhoneFormat":
        return cls(L16 if started.encoding == L16 else MULAW, started.sample_rate or PHONE_RATE)

    @property
    def pcm(self) -> bool:
        return self.encoding == L16

    @property
    def bytes_per_ms(self) -> float:
        return self.rate * (2 if self.pcm else 1) / 1000

    @property
    def frame_bytes(self) -> int:
        return int(self.bytes_per_ms * FRAME_MS)

    @property
    def silence(self) -> bytes:
        return b"\0\0" if self.pcm else MULAW_SILENCE


class AudioBridge:
    def __init__(self, caps: Capabilities, phone: PhoneFormat = PhoneFormat()):
        self.caps = caps
        self.phone = phone
        # Phone and model audio as PCM16 at their rates (None: a format no resampling touches).
        self._in = Resampler(phone.rate, caps.input_rate, low_latency=True) \
            if caps.input_format == "pcm16" or phone.pcm else None
        self._out = Resampler(caps.output_rate, phone.rate) if caps.output_format == "pcm16" or phone.pcm else None
        # to 8 kHz for the recording and the barge-in check: one filter per direction (each a stream)
        self._rec = {side: Resampler(phone.rate, PHONE_RATE) for side in ("caller", "bot")} \
            if phone.pcm and phone.rate != PHONE_RATE else None
        self._framer = Framer(phone.frame_bytes, phone.silence[:1])

    def _phone_pcm(self, audio: bytes) -> bytes:
        return audio if self.phone.pcm else ulaw_to_pcm16(audio)

    def to_model(self, audio: bytes) -> bytes:
        """Caller audio (one append's worth: the Uplink converts whole batches, one resampler pass
        per append rather than per frame) in the model's input format."""
        if self._in is None:
            return audio  # mu-law both sides
        pcm = self._in.process(self._phone_pcm(audio))
        return pcm if self.caps.input_format == "pcm16" else pcm16_to_ulaw(pcm)

    def to_ulaw8k(self, audio: bytes, side: str = "caller") -> bytes:
        """Phone audio of one side ("caller", "bot") as 8 kHz mu-law (the recording, the barge-in check)."""
        if not self.phone.pcm:
            return audio
        return pcm16_to_ulaw(audio if self._rec is None else self._rec[side].process(audio))

    def model_ms(self, audio: bytes) -> float:
        """Duration of model output audio."""
        return len(audio) / 8 if self.caps.output_format != "pcm16" else pcm_ms(len(audio), self.caps.output_rate)

    def _out_phone(self, pcm: bytes) -> bytes:
        return pcm if self.phone.pcm else pcm16_to_ulaw(pcm)

    def to_phone(self, audio: bytes) -> list[bytes]:
        """Model output -> whole 20 ms phone frames (the remainder waits for the next delta)."""
        if self._out is None:
            return self._framer.push(audio)
        pcm = audio if self.caps.output_format == "pcm16" else ulaw_to_pcm16(audio)
        return self._framer.push(self._out_phone(self._out.process(pcm)))

    def end_of_reply(self) -> list[bytes]:
        """A reply ended: what the filter still holds and the last partial frame (padded)."""
        frames = self._framer.push(self._out_phone(self._out.flush())) if self._out is not None else []
        tail = self._framer.flush()
        return frames + ([tail] if tail else [])

    def drop_bot_audio(self) -> None:
        """Barge-in: forget the partial frame and the filter's memory of the cut reply."""
        self._framer.reset()
        if self._out is not None:
            self._out.reset()

    def phone_sound(self, ulaw: bytes | None) -> bytes | None:
        """A whole 8 kHz mu-law sound (the hold sound) in the phone's format."""
        if ulaw is None or not self.phone.pcm:
            return ulaw
        up = Resampler(PHONE_RATE, self.phone.rate)
        return up.process(ulaw_to_pcm16(ulaw)) + up.flush()
