"""In-memory stand-ins for the two sockets of a call, for socket-free tests of the call core.

`MemoryPhone` behaves like Twilio's side of a media stream: audio we send plays in real time
(on the event loop's clock, so `looptime` can fast-forward it), a mark is echoed once the audio
before it has played, `clear` drops what is queued and echoes every pending mark at once.
`MemoryModel` is a realtime model session the test scripts: it records what the call sends it
and emits whatever events the test asks for.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator, Sequence

from gateway.providers.base import (AudioDelta, Capabilities, ContextTurn, OutputTranscript, Provider,
                                    ProviderEvent, ResponseDone, ResponseStarted, SessionReady)
from gateway.telephony import Audio, MarkPlayed, Started, Stopped

MULAW_SILENCE = b"\xff"
_END = object()


class MemoryPhone:
    network = "memory"

    def __init__(self, call_sid: str = "CAunit", params: dict | None = None):
        self.started = Started(stream_sid="MZunit", call_sid=call_sid, account_sid="ACunit",
                               custom_parameters={"from": "+15550001111", "to": "+15550002222", **(params or {})})
        self._events: asyncio.Queue = asyncio.Queue()
        self.sent: list[tuple[float, str, object]] = []  # (loop time, "media"|"mark"|"clear", payload)
        self._play_until = 0.0
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self.closed_with: int | None = None
        self.closed_at: float | None = None
        self.media_frames_in = 0
        self.protocol_errors = 0

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # the caller's side
    def speak(self, ulaw: bytes) -> None:
        for i in range(0, len(ulaw), 160):
            self._events.put_nowait(Audio(ulaw[i:i + 160]))
            self.media_frames_in += 1

    def hang_up(self) -> None:
        self._events.put_nowait(Stopped("stop"))

    def heard_ms(self) -> float:
        """Bot audio that has played by now."""
        return sum(len(p) / 8 for t, kind, p in self.sent if kind == "media")

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.sent]

    def played(self, frame_bytes: int = 160) -> list[tuple[float, bytes]]:
        """(start, frame) of every 20 ms frame that really played, as a phone buffer plays them: in
        order from when they arrive, a clear dropping what had not started yet."""
        out: list[tuple[float, bytes]] = []
        queue: list[tuple[float, bytes]] = []  # (start, frame) scheduled, not yet known to play
        until = 0.0
        for t, kind, payload in self.sent:
            out += [q for q in queue if q[0] < t]  # started before this moment: played (at least in part)
            queue = [q for q in queue if q[0] >= t]
            if kind == "clear":
                queue, until = [], t
            elif kind == "media":
                for i in range(0, len(payload), frame_bytes):
                    start = max(until, t)
                    queue.append((start, payload[i:i + frame_bytes]))
                    until = start + frame_bytes / 8000
        return out + [q for q in queue if q[0] < self.now]

    # what the call uses
    async def events(self) -> AsyncIterator:
        while True:
            ev = await self._events.get()
            yield ev
            if isinstance(ev, Stopped):
                return

    async def play(self, audio: bytes) -> bool:
        if self.closed_with is not None:
            return False
        self.sent.append((self.now, "media", audio))
        self._play_until = max(self._play_until, self.now) + len(audio) / 8000
        return True

    async def mark(self, name: str) -> bool:
        if self.closed_with is not None:
            return False
        self.sent.append((self.now, "mark", name))
        loop = asyncio.get_running_loop()
        self._pending[name] = loop.call_at(max(self._play_until, self.now), self._echo, name)
        return True

    def _echo(self, name: str) -> None:
        if self._pending.pop(name, None) is not None:
            self._events.put_nowait(MarkPlayed(name))

    async def clear(self) -> bool:
        self.sent.append((self.now, "clear", None))
        self._play_until = self.now
        for name, handle in list(self._pending.items()):
            handle.cancel()
            self._echo(name)
        return True

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        if self.closed_with is None:
            self.closed_with, self.closed_at = code, self.now
            self._events.put_nowait(Stopped("closed"))


def frame_number(frame: bytes) -> int:
    """The number of a frame of a `numbered` reply."""
    return frame[0] << 8 | frame[1]


class MemoryModel(Provider):
    """A scripted model session: 8 kHz mu-law both ways (passthrough), truncation supported."""

    def __init__(self, context: Sequence[ContextTurn] = (), *, max_session_seconds: float | None = None,
                 reply_ms_to_text: int = 0):
        self.context = tuple(context)
        self.capabilities = Capabilities("mulaw", 8000, "mulaw", 8000, truncate=True,
                                         max_session_seconds=max_session_seconds)
        self.reply_ms_to_text = reply_ms_to_text  # answer each send_text with this much speech
        self.connected = self.closed = False
        self.audio = bytearray()
        self.cancels: list[tuple[float, str]] = []
        self.truncates: list[tuple[str, int]] = []
        self.deletes: list[str] = []
        self.texts: list[str] = []
        self.tool_results: list[tuple[str, str, bool]] = []
        self._queue: asyncio.Queue = asyncio.Queue()
        self._ids = itertools.count(1)
        self._speaking: asyncio.Task | None = None

    def emit(self, *events: ProviderEvent) -> None:
        for ev in events:
            self._queue.put_nowait(ev)

    def reply(self, ms: int, text: str = "Hello there, how can I help you today?", *, rid: str | None = None,
              delta_ms: int = 200, done: bool = True, numbered: bool = False) -> str:
        """Stream a reply of `ms` of audio, 5x faster than real time like a real model. `numbered`:
        20 ms frame k is k as two bytes, repeated (`frame_number` reads it back: a test can tell
        which audio played, in which order), else silence."""
        rid = rid or f"resp_{next(self._ids)}"
        self._speaking = asyncio.create_task(self._speak(rid, ms, text, delta_ms, done, numbered))
        return rid

    async def _speak(self, rid: str, ms: int, text: str, delta_ms: int, done: bool, numbered: bool = False) -> None:
        self.emit(ResponseStarted(rid), OutputTranscript(rid, text))  # transcripts run ahead of audio
        status = "completed"
        try:
            for start in range(0, ms, delta_ms):
                audio = b"".join(bytes([k >> 8, k & 0xFF]) * 80 for k in range(start // 20, (start + delta_ms) // 20)) \
                    if numbered else MULAW_SILENCE * (8 * delta_ms)
                self.emit(AudioDelta(rid, f"item_{rid}", audio))
                await asyncio.sleep(delta_ms / 5000)
            self.emit(OutputTranscript(rid, text, final=True))
        except asyncio.CancelledError:
            status = "cancelled"
        if done:
            self.emit(ResponseDone(rid, status))

    async def connect(self) -> None:
        self.connected = True
        self.emit(SessionReady("memory"))

    async def events(self) -> AsyncIterator[ProviderEvent]:
        while True:
            ev = await self._queue.get()
            if ev is _END:
                return
            yield ev

    async def send_audio(self, audio: bytes) -> None:
        self.audio += audio

    async def cancel_response(self, response_id: str) -> None:
        self.cancels.append((asyncio.get_running_loop().time(), response_id))
        if self._speaking is not None:
            self._speaking.cancel()

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        self.truncates.append((item_id, audio_end_ms))

    async def delete_item(self, item_id: str) -> None:
        self.deletes.append(item_id)

    async def send_text(self, text: str, respond: bool = True) -> None:
        self.texts.append(text)
        if respond and self.reply_ms_to_text:
            self.reply(self.reply_ms_to_text, "Goodbye!")

    async def send_tool_result(self, call_id: str, output: str, respond: bool = True) -> None:
        self.tool_results.append((call_id, output, respond))

    async def close(self) -> None:
        self.closed = True
        if self._speaking is not None:
            self._speaking.cancel()
        self._queue.put_nowait(_END)
