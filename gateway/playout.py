"""Outbound playout: paced audio to the phone in chunks, a mark after each, and what was heard.

Models hand us audio in bursts (GLM: ~1.5 s deltas, faster than real time). If we forwarded it
as it came, Twilio would hold seconds of speech and a barge-in `clear` would arrive after the
caller had already heard far more than our records say. So frames wait here and only a short
lead (`lead_ms`) sits at Twilio; the rest stays in our queue where a barge-in can simply drop it.

Frames (20 ms) go out joined in chunks of up to `chunk_ms` (frames of one response only), one
media message and one mark per chunk: fewer messages both ways (each mark is echoed), and heard
time known to within one chunk. A chunk goes out whenever less than `lead_ms` is at the phone, so
at most `lead_ms` plus one chunk is ever there; `clear` drops it all at once either way.

Every chunk is followed by a mark named `<generation>:<seq>`. Twilio echoes a mark once the
audio before it has played, so echoed marks are the ground truth of what the caller heard. A
`clear` starts a new generation: Twilio echoes all pending marks at once after a clear, and
those echoes mean "dropped", not "played", so marks of old generations are ignored.

A possible interruption (barge-in policy confirm) is `hold()`: the phone is cleared at once (the
caller must not hear the bot talk over them while the gateway decides), and the chunks whose marks
had not come back go back to the front of the queue. `resume()` then plays on from the last
position the marks say was heard: at most the chunk that was playing is heard twice, no word is
lost. A confirmed interruption is `clear()` as ever, and drops them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from .audio import FRAME_MS
from .clock import monotonic

# Marks still unechoed after this many chunks (~100 s at 100 ms) are forgotten oldest-first: a phone that
# never echoes marks must not grow memory for the whole call. Such audio counts as not heard.
MAX_OUTSTANDING_MARKS = 1000
# Chunks whose audio is kept until their mark comes back, so a hold can put them back in the queue:
# ~5 s at 100 ms chunks. A phone that never echoes marks must not make us keep a whole reply.
MAX_RESUMABLE_CHUNKS = 50
# Bot audio waiting here to be paced out: 3 minutes. A reply longer than that in one go is not a
# phone conversation; what does not fit is dropped and counted (frames_dropped, in call_ended).
MAX_QUEUED_FRAMES = 9000


class PhoneSink(Protocol):
    async def play(self, audio: bytes) -> bool: ...
    async def mark(self, name: str) -> bool: ...
    async def clear(self) -> bool: ...


@dataclass
class _Mark:
    response_id: str
    played_ms: float  # the response's audio played once this mark is echoed
    ms: float  # this chunk's length
    starts_at: float  # when it starts playing, by our clock
    seq: int


@dataclass
class _Sent:
    """A chunk at the phone whose mark has not come back: what a hold puts back in the queue."""
    seq: int
    name: str
    response_id: str
    audio: bytes


class Playout:
    def __init__(self, phone: PhoneSink, lead_ms: int = 200, frame_ms: int = FRAME_MS, chunk_ms: int = FRAME_MS,
                 clock: Callable[[], float] = monotonic, bytes_per_ms: float = 8, min_chunk_frames: int = 1,
                 on_first_audio: Callable[[str, float], Awaitable[None] | None] | None = None,
                 on_frame: Callable[[bytes, float], None] | None = None,
                 on_first_heard: Callable[[str, float], None] | None = None,
                 on_idle: Callable[[], None] | None = None):
        """`on_first_audio(response_id, sent_at)`: a response's first frame went out.
        `on_frame(audio, starts_at)`: every chunk sent, with when it starts playing (recording).
        `on_first_heard(response_id, played_at)`: a response's first mark came back; `played_at`
        is when, by the marks, that audio began to play at the phone (caller-felt latency).
        `on_idle()`: nothing is queued or at the phone any more (the call's silence clock starts).
        `bytes_per_ms`: of the phone's format (8: 8 kHz mu-law; 16 kHz PCM16: 32). `min_chunk_frames`:
        a network that wants chunks of at least this many frames (Exotel) gets a shorter one only
        when its buffer would otherwise run dry (a reply's end, or a model slower than real time)."""
        self.phone = phone
        self.lead = lead_ms / 1000
        self.frame = frame_ms / 1000
        self.chunk_frames = max(1, chunk_ms // frame_ms, min_chunk_frames)
        self.min_chunk_frames = min_chunk_frames
        self.bytes_per_ms = bytes_per_ms
        self.clock = clock
        self.on_first_audio = on_first_audio
        self.on_frame = on_frame
        self.on_first_heard = on_first_heard
        self.on_idle = on_idle
        self.idle = asyncio.Event()  # set when nothing is queued or at the phone (see _check_idle)
        self.frame_bytes = int(bytes_per_ms * frame_ms)
        self.generation = 0
        self._seq = 0
        self._frames: deque[tuple[bytes, str]] = deque()
        self._wake = asyncio.Event()
        self.paused = False  # a barge-in waiting to be confirmed holds the bot back
        self.last_response = ""  # whose audio went to the phone last
        self._marks: dict[str, _Mark] = {}
        self._unheard: deque[_Sent] = deque(maxlen=MAX_RESUMABLE_CHUNKS)  # oldest first
        self._writing = False  # a chunk is being written to the phone
        self._play_until = 0.0  # when Twilio's buffer will have run dry, by our clock
        self.sent_ms: dict[str, float] = {}   # per response: audio sent to the phone
        self.heard_ms: dict[str, float] = {}  # per response: audio confirmed played by marks
        self.frames_sent = 0  # 20 ms frames
        self.chunks_sent = 0  # media messages
        self.frames_dropped = 0
        self.marks_sent = 0
        self.marks_played = 0
        self.clears = 0
        self.holds = 0
        self.repeated_ms = 0.0  # audio played again after a hold (heard, but its mark was not back yet)

    # ------------------------------------------------------------ queueing
    def enqueue(self, frames: list[bytes], response_id: str) -> None:
        room = MAX_QUEUED_FRAMES - len(self._frames)
        if len(frames) > room:  # a model far ahead of real time: keep what fits, drop the rest (logged)
            self.frames_dropped += len(frames) - max(0, room)
            frames = frames[:max(0, room)]
        for f in frames:
            self._frames.append((f, response_id))
        if frames:
            self.idle.clear()
            self._wake.set()

    @property
    def queued_ms(self) -> float:
        return len(self._frames) * self.frame * 1000

    def at_phone_ms(self) -> float:
        """Audio sent to the phone and, by our clock, not yet played."""
        return max(0.0, self._play_until - self.clock()) * 1000

    def busy(self) -> bool:
        """Bot audio is queued here or still playing at the phone."""
        return bool(self._frames) or bool(self._marks) or self.at_phone_ms() > 0

    # ------------------------------------------------------------ barge-in
    async def clear(self) -> dict[str, float]:
        """Drop everything not yet heard; returns heard ms per response that was cut.

        Sends `clear` first (latency matters: the caller is talking over us), then forgets the
        queue and the outstanding marks of this generation.
        """
        cut = {rid for _, rid in self._frames} | {m.response_id for m in self._marks.values()}
        self._frames.clear()
        self.paused = False
        await self._silence_phone()
        self._check_idle()
        return {rid: self.heard_ms.get(rid, 0.0) for rid in cut}

    async def _silence_phone(self) -> bool:
        """Clear the phone if it may still hold audio of ours; True if a clear was sent.
        State first, then the await: nothing queued may slip out while `clear` is being written,
        and a chunk being written right now must not register a mark."""
        at_phone = bool(self._marks) or self._writing or self.at_phone_ms() > 0
        self.generation += 1
        self._marks.clear()
        self._unheard.clear()
        self._play_until = self.clock()
        self._wake.set()  # the pacing loop may be waiting for the old lead to drain
        if at_phone:
            await self.phone.clear()
            self.clears += 1
        return at_phone

    def on_mark(self, name: str) -> bool:
        """A mark echoed by the phone; True when it counted as played audio."""
        mark = self._marks.pop(name, None)
        if mark is None:
            return False  # from a cleared generation, or not ours
        self.marks_played += 1
        while self._unheard and self._unheard[0].seq <= mark.seq:  # marks come back in order
            self._unheard.popleft()
        rid = mark.response_id
        if rid not in self.heard_ms and self.on_first_heard is not None:
            # The echo comes when the chunk has played: it began `ms` earlier, and not before it was sent.
            self.on_first_heard(rid, max(mark.starts_at, self.clock() - mark.ms / 1000))
        if mark.played_ms > self.heard_ms.get(rid, 0.0):
            self.heard_ms[rid] = mark.played_ms
        self._check_idle()
        return True

    def _check_idle(self) -> None:
        """Set `idle` and tell `on_idle` once nothing is queued or at the phone (by the marks,
        then our clock)."""
        if self._frames or self._marks or self._writing or self.idle.is_set():
            return
        left = self._play_until - self.clock()
        if left > 0:  # the last mark came back a hair before our clock says the audio ended
            asyncio.get_running_loop().call_later(left + 0.001, self._check_idle)
            return
        self.idle.set()
        if self.on_idle is not None:
            self.on_idle()

    # ------------------------------------------------------------ holding back
    async def hold(self) -> None:
        """Silence the bot now and keep what was not heard: the phone is cleared, the chunks whose
        marks had not come back return to the head of the queue (by the marks, not heard), and
        nothing is sent until `resume()` (or `clear()`, which drops it all)."""
        self.paused = True
        self.holds += 1
        now = self.clock()
        unheard = list(self._unheard)
        for sent in unheard:
            mark = self._marks.get(sent.name)
            if mark is None:
                continue
            # sent again after the resume: the response's position goes back to this chunk's start
            self.sent_ms[sent.response_id] = min(self.sent_ms.get(sent.response_id, 0.0), mark.played_ms - mark.ms)
            # by our clock, this much of it had played already and will be heard twice
            self.repeated_ms += min(max(0.0, (now - mark.starts_at) * 1000), mark.ms)
        fb = self.frame_bytes
        frames = [(s.audio[i:i + fb], s.response_id) for s in unheard for i in range(0, len(s.audio), fb)]
        self._frames.extendleft(reversed(frames))
        await self._silence_phone()

    def resume(self) -> None:
        """Play on from where the hold left off."""
        self.paused = False
        self._wake.set()

    def drop(self, response_id: str) -> int:
        """Forget the queued, unsent frames of one response (a hold sound that is no longer needed)."""
        before = len(self._frames)
        self._frames = deque(f for f in self._frames if f[1] != response_id)
        self._check_idle()
        return before - len(self._frames)

    def queued_for(self, response_id: str) -> float:
        """Unsent ms queued for one response."""
        return sum(len(f) for f, rid in self._frames if rid == response_id) / self.bytes_per_ms

    # ------------------------------------------------------------ the pacing loop
    async def run(self) -> None:
        """Sends frames while keeping at most `lead` of audio ahead at the phone. Never returns
        on its own unless the phone stops accepting frames."""
        while True:
            if not self._frames or self.paused:
                self._wake.clear()
                await self._wake.wait()
                continue
            lead = self._play_until - self.clock()
            if lead >= self.lead:
                # Until the lead has drained, or a clear: the next reply must not wait out the
                # cut one's lead (that wait was up to a chunk of latency after every barge-in).
                self._wake.clear()
                timer = asyncio.get_running_loop().call_later(lead - self.lead + self.frame / 2, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
                continue
            if self.min_chunk_frames > 1 and lead > self.frame and self._head_frames() < self.min_chunk_frames:
                await asyncio.sleep(self.frame / 2)  # a short chunk only when the phone would run dry
                continue
            if not await self._send(*self._next_chunk()):
                return

    def _head_frames(self) -> int:
        """Queued frames of the first queued response, counted up to `min_chunk_frames`."""
        rid, n = self._frames[0][1], 0
        for _, r in self._frames:
            if r != rid or n >= self.min_chunk_frames:
                break
            n += 1
        return n

    def _next_chunk(self) -> tuple[bytes, str, int]:
        """Up to `chunk_frames` queued frames of the first queued response, joined."""
        frames = self._frames
        audio, rid = frames.popleft()
        n = 1
        if self.chunk_frames > 1 and frames:
            parts = [audio]
            while n < self.chunk_frames and frames and frames[0][1] == rid:
                parts.append(frames.popleft()[0])
                n += 1
            audio = b"".join(parts)
        return audio, rid, n

    async def _send(self, audio: bytes, rid: str, frames: int) -> bool:
        gen = self.generation
        first = rid not in self.sent_ms
        self._seq += 1
        name = f"{self.generation}:{self._seq}"
        # Kept from before it is written: a hold while it is being written puts it back in the queue.
        self._unheard.append(_Sent(self._seq, name, rid, audio))
        self._writing = True
        try:
            if not await self.phone.play(audio):
                return False
        finally:
            self._writing = False
        if gen != self.generation:
            return True  # a clear or hold overtook this chunk while it was being written: not heard
        now = self.clock()
        self.frames_sent += frames
        self.chunks_sent += 1
        self.last_response = rid
        ms = len(audio) / self.bytes_per_ms
        starts_at = max(self._play_until, now)
        self._play_until = starts_at + ms / 1000
        if self.on_frame is not None:
            self.on_frame(audio, starts_at)
        self.sent_ms[rid] = self.sent_ms.get(rid, 0.0) + ms
        self._marks[name] = _Mark(rid, self.sent_ms[rid], ms, starts_at, self._seq)
        if len(self._marks) > MAX_OUTSTANDING_MARKS:
            del self._marks[next(iter(self._marks))]
        if not await self.phone.mark(name):
            return False
        self.marks_sent += 1
        if first and self.on_first_audio is not None:
            result = self.on_first_audio(rid, now)
            if asyncio.iscoroutine(result):
                await result
        return True
