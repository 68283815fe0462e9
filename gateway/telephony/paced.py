"""Playback emulated on our own clock, for networks with no marks and no clear (AudioSocket,
jambonz): our audio leaves one 20 ms frame per tick on an absolute clock, a mark counts as played
once the audio before it has been sent and its play time has passed, and `clear` drops what is
not yet sent — a barge-in stops the bot within one frame."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable
from ..clock import monotonic

FRAME_S = 0.02
EPSILON_S = 1e-6


class PacedOutput:
    def __init__(self, send: Callable[[bytes], Awaitable[bool]], on_mark: Callable[[str], None],
                 clock: Callable[[], float] = monotonic):
        """`send(frame)`: one frame onto the wire (False: the connection is gone); `on_mark(name)`:
        a mark's audio has played."""
        self._send, self._on_mark, self.clock = send, on_mark, clock
        self.frame_bytes = 320
        self._out: deque[bytes | str] = deque()  # whole frames and mark names, in order
        self._partial = b""  # a chunk's bytes short of a whole frame
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self, frame_bytes: int, name: str) -> None:
        self.frame_bytes = frame_bytes
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=name)

    def play(self, audio: bytes) -> None:
        audio, self._partial = self._partial + audio, b""
        n = self.frame_bytes
        whole = len(audio) - len(audio) % n
        self._out.extend(audio[i:i + n] for i in range(0, whole, n))
        self._partial = audio[whole:]
        self._wake.set()

    def mark(self, name: str) -> None:
        self._out.append(name)
        self._wake.set()

    def clear(self) -> None:
        """Drops what is not yet sent; its marks are never reported (the Playout counts them as not heard)."""
        self._out.clear()
        self._partial = b""

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        next_at = self.clock()
        while True:
            if not self._out:
                self._wake.clear()
                await self._wake.wait()
                next_at = max(next_at, self.clock())
                continue
            item = self._out[0]
            if isinstance(item, str):
                self._out.popleft()
                self._on_mark(item)
                continue
            if next_at - self.clock() > EPSILON_S:  # (a float's last digit is not a frame's time)
                await asyncio.sleep(next_at - self.clock())
                continue
            self._out.popleft()
            if not await self._send(item):
                return
            next_at += FRAME_S
            # The mark that follows is due when this frame has played: hold it until then.
            if self._out and isinstance(self._out[0], str):
                await asyncio.sleep(max(0.0, next_at - self.clock()))


class InboundBudget:
    """Caller audio arrives in real time: a token bucket of `burst_s` seconds of audio, refilled at
    the audio's own byte rate. What arrives faster is dropped and counted (`dropped_bytes`); a peer
    that keeps pushing more than `give_up_s` seconds of audio too fast is `flooding` (the stream then
    ends as a protocol error). One socket must not be able to feed a model hours of audio in seconds."""

    def __init__(self, bytes_per_s: float, clock: Callable[[], float] = monotonic, burst_s: float = 1.0,
                 give_up_s: float = 5.0):
        self.rate, self.clock = bytes_per_s, clock
        self.capacity = bytes_per_s * burst_s
        self.tokens = self.capacity
        self.limit = bytes_per_s * give_up_s
        self.dropped_bytes = 0
        self._at = clock()

    def take(self, n: int) -> bool:
        """True: `n` bytes of audio may pass now; False: dropped (counted)."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
        self._at = now
        if n <= self.tokens:
            self.tokens -= n
            return True
        self.dropped_bytes += n
        return False

    @property
    def flooding(self) -> bool:
        return self.dropped_bytes > self.limit
