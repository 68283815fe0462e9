"""The built-in echo bot: no network, no key. It plays the caller's last utterance back.

It behaves like a realtime model on the wire that matters to the call: a local energy VAD emits
speech_started/stopped, each reply is a response with an id, audio arrives in deltas faster than
real time (like GLM's), and `cancel_response` stops it. It works at 16 kHz, so a call to it
exercises both resamplers exactly like a real model does. The greeting is a short two-tone
chime (there is no text-to-speech offline); its transcript is the persona's greeting text. Text
sent to it (an instruction to say goodbye, keys pressed) is answered with a falling chime.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator, Sequence

from ..audio import EnergyVAD, fade, pcm_ms, tone
from ..persona import Persona
from ..logs import CallLogger
from .base import (AudioDelta, Capabilities, ContextTurn, InputTranscript, OutputTranscript, Provider,
                   ProviderEvent, ProviderSpec, ResponseDone, ResponseStarted, SessionReady, SpeechStarted,
                   SpeechStopped)

DELTA_MS = 200
MAX_UTTERANCE_SECONDS = 30
_END = object()


class EchoProvider(Provider):
    def __init__(self, persona: Persona, log: CallLogger, rate: int | None = None,
                 context: Sequence[ContextTurn] = ()):
        self.persona = persona
        self.context = tuple(context)
        self.log = log
        rate = rate or persona.audio.output_rate
        self.rate = rate
        td = persona.turn_detection
        self.capabilities = Capabilities(input_format="pcm16", input_rate=rate, output_format="pcm16",
                                         output_rate=rate, vad_silence_ms=td.silence_ms, tools=False)
        self._vad = EnergyVAD(rate, threshold=td.threshold, stop_ms=td.silence_ms)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._utterance = bytearray()
        self._preroll = bytearray()  # audio just before the VAD fired, so the first syllable survives
        self._ids = itertools.count(1)
        self._speaker: asyncio.Task | None = None
        self._closed = False

    async def connect(self) -> None:
        self._queue.put_nowait(SessionReady("echo"))
        if self.persona.greeting and not self.context:  # a continued call is not greeted again
            self._start_response(self._chime((660, 0.25), (880, 0.35)), self.persona.greeting)

    async def events(self) -> AsyncIterator[ProviderEvent]:
        while True:
            ev = await self._queue.get()
            if ev is _END:
                self._queue.put_nowait(_END)
                return
            yield ev

    async def send_audio(self, audio: bytes) -> None:
        if self._closed:
            return
        was_speaking = self._vad.speaking
        edge = self._vad.process(audio)
        if was_speaking or edge == "start":
            self._utterance += audio
            if len(self._utterance) > MAX_UTTERANCE_SECONDS * self.rate * 2:
                del self._utterance[:len(audio)]
        else:
            self._preroll += audio
            del self._preroll[:-int(self.rate * 2 * 0.1)]
        if edge == "start":
            self._utterance[:0] = self._preroll
            self._preroll.clear()
            self._queue.put_nowait(SpeechStarted())
        elif edge == "stop":
            self._queue.put_nowait(SpeechStopped())
            # Trailing silence (the VAD's hang time) is not part of what was said.
            keep = max(0, len(self._utterance) - self.rate * 2 * self.persona.turn_detection.silence_ms // 1000)
            utterance = bytes(self._utterance[:keep])
            self._utterance.clear()
            seconds = pcm_ms(len(utterance), self.rate) / 1000
            self._queue.put_nowait(InputTranscript(f"[{seconds:.1f} s of audio]"))
            if utterance:
                self._start_response(utterance, f"(echo of {seconds:.1f} s)")

    async def send_text(self, text: str, respond: bool = True) -> None:
        """An instruction to speak (a goodbye at shutdown, a reprompt, keys pressed): there is no
        text-to-speech offline, so the answer is a short falling chime. It is a response like a
        model's, so "say it, then wait until it was heard" ends when it was heard instead of
        waiting out its timeout in silence."""
        if respond and not self._closed:
            self._start_response(self._chime((880, 0.2), (660, 0.3)), "(chime)")

    def _chime(self, *notes: tuple[float, float]) -> bytes:
        """(hz, seconds) notes one after the other, each faded in and out (no clicks)."""
        return b"".join(fade(tone(hz, seconds, self.rate, 6000), self.rate) for hz, seconds in notes)

    def _start_response(self, audio: bytes, transcript: str) -> None:
        if self._speaker is not None and not self._speaker.done():
            self._speaker.cancel()
        rid = f"echo_resp_{next(self._ids)}"
        self._speaker = asyncio.create_task(self._speak(rid, audio, transcript), name="echo-speaker")

    async def _speak(self, rid: str, audio: bytes, transcript: str) -> None:
        self._queue.put_nowait(ResponseStarted(rid))
        self._queue.put_nowait(OutputTranscript(rid, transcript))
        step = self.rate * 2 * DELTA_MS // 1000
        status = "completed"
        try:
            for i in range(0, len(audio), step):
                self._queue.put_nowait(AudioDelta(rid, f"{rid}_item", audio[i:i + step]))
                await asyncio.sleep(DELTA_MS / 4000)  # 4x faster than real time, like a model
            self._queue.put_nowait(OutputTranscript(rid, transcript, final=True))
        except asyncio.CancelledError:
            status = "cancelled"
        self._queue.put_nowait(ResponseDone(rid, status))

    async def cancel_response(self, response_id: str) -> None:
        if self._speaker is not None and not self._speaker.done():
            self._speaker.cancel()

    async def close(self) -> None:
        self._closed = True
        if self._speaker is not None and not self._speaker.done():
            self._speaker.cancel()
            try:
                await self._speaker
            except asyncio.CancelledError:
                pass
        self._queue.put_nowait(_END)


SPEC = ProviderSpec(
    name="echo", label="echo", default_model="echo",
    input_formats=("pcm16",), output_formats=("pcm",), turn_detection=("server_vad",),
    factory=lambda persona, settings, log, context, http=None: EchoProvider(persona, log, context=context),
    needs_key=False,
)
