"""Caller audio to the model: batched in steady stretches, sent at once around speech.

A model's server VAD can only judge audio it has received. Batching caller audio into appends of
`input_block_ms` (GLM: 100 ms, its recommended size; OpenAI: `append_ms`) saves a message, a
base64 encoding and a resampler pass per frame, but an onset that waits in a half-full batch
reaches the model up to one batch late, and so does the first silence after speech: every
barge-in and every end of turn would start late by that much. So batching is kept for the steady
quiet stretches only (most of a call: the caller listens, or thinks), and these frames go at once
(with whatever is pending, in one append):
- every voiced frame: the onset, and the speech after it, on which the model's VAD decides
  "speech started" (a barge-in waits on that) and keeps deciding "still speaking";
- the first unvoiced frame after speech (the first silence);
- after speech (a voiced run of at least `SPEECH_MS`), every frame for the model's end-of-turn
  silence (`Capabilities.vad_silence_ms`) plus one batch: the model's end-of-turn clock then runs
  on audio that arrives in real time, and the turn ends when the caller's silence says so, not
  one batch later. Longer than that the model has decided either way, and batching resumes.
A click (a voiced run under SPEECH_MS) costs one early send and no trailing stretch.
"Voiced" is the energy measure the confirm barge-in policy uses (`BargeIn.threshold`: RMS of the
frame as 16-bit PCM), computed once per frame here and shared with the barge-in check.

The pending batch lives here, not in a model session, so it survives a session swap unchanged.
"""

from __future__ import annotations

import math
from typing import Callable

from ..audio import FRAME_MS, audioop
from .audio_bridge import AudioBridge
from .model_link import ModelLink
from ..clock import monotonic

SPEECH_MS = 60  # a voiced run this long is speech (shorter: a click, a blip; the echo bot's VAD agrees)
# GLM takes at most 50 appends a second: two sends closer than this (a burst of late frames from
# the network) are merged, the second waits for the next frame.
MIN_SEND_GAP_S = FRAME_MS / 2000


class Uplink:
    def __init__(self, bridge: AudioBridge, model: ModelLink, *, threshold: int, block_ms: int,
                 vad_silence_ms: int, clock: Callable[[], float] = monotonic):
        """`threshold`: frame RMS that counts as voiced; `block_ms`: the append size in steady
        stretches (0: every frame at once); `vad_silence_ms`: how long the model's VAD waits in
        silence before it ends a turn."""
        self._bridge = bridge
        self._model = model
        self._threshold = threshold
        self._pcm = bridge.phone.pcm
        self._block = int(bridge.phone.bytes_per_ms * block_ms)
        self._trailing_s = (vad_silence_ms + block_ms) / 1000
        self._clock = clock
        self._pending = bytearray()  # phone-format audio waiting for a full block
        self._live_until = -math.inf  # frames go at once until then (after speech)
        self._last_send = -math.inf
        self.voiced = False  # the last frame was voiced
        self.voiced_run_ms = 0  # the current voiced run (0 while unvoiced)
        self.last_voiced_at: float | None = None  # arrival of the caller's last voiced frame (clock)
        self.appends = 0  # sends to the model (for the benchmark and tests)

    def energy(self, audio: bytes) -> int:
        """RMS of one phone frame as 16-bit PCM."""
        return audioop.rms(audio if self._pcm else audioop.ulaw2lin(audio, 2), 2)

    async def frame(self, audio: bytes) -> bool:
        """One caller frame (phone format): sent now or batched; returns whether it was voiced."""
        now = self._clock()
        voiced = self.energy(audio) >= self._threshold
        speech_ended = not voiced and self.voiced and self.voiced_run_ms >= SPEECH_MS
        if voiced:
            self.voiced_run_ms += FRAME_MS
            self.last_voiced_at = now
        elif speech_ended:  # the first silence after speech: the model's end-of-turn clock starts
            self._live_until = now + self._trailing_s
        if not voiced:
            self.voiced_run_ms = 0
        self.voiced = voiced
        self._pending += audio
        live = voiced or now < self._live_until
        if live and now - self._last_send >= MIN_SEND_GAP_S or len(self._pending) >= self._block:
            await self._send(now)
        return voiced

    async def _send(self, now: float) -> None:
        audio = bytes(self._pending)
        self._pending.clear()
        self._last_send = now
        self.appends += 1
        await self._model.send_audio(self._bridge.to_model(audio))
