"""Hold audio: the caller hears something, not dead air, while the bot waits on something — a slow
HTTP tool, a model session being replaced, a transfer being dialled.

After `hold.after_ms` of waiting (the bot's own audio played out first), the persona's hold sound is
paced into the playout like bot speech, a few hundred ms ahead at most; when the wait ends, the
queued hold audio is dropped (what already sits at the phone, at most the playout lead, plays out),
and a caller who starts talking over it simply clears it (it is not a barge-in: no reply is cut).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

from ..audio import PHONE_FRAME_BYTES, hold_tones, load_phone_sound
from ..persona import HoldAudio
from ..playout import Playout
from .journal import Journal
from ..clock import monotonic

HOLD = "hold"  # the playout's response id for hold audio
AHEAD_MS = 300  # hold audio queued ahead of the phone at most
TICK_SECONDS = 0.1


def load_hold_sound(setting: HoldAudio, base_dir: Path) -> bytes | None:
    """The persona's hold sound as 8 kHz mu-law, or None for `none`."""
    if setting.sound == "none":
        return None
    return hold_tones() if setting.sound == "tones" else load_phone_sound(base_dir / setting.sound)


class HoldSound:
    def __init__(self, sound: bytes | None, after_ms: int, playout: Playout, journal: Journal,
                 clock: Callable[[], float] = monotonic, frame_bytes: int = PHONE_FRAME_BYTES):
        cut = len(sound) - len(sound) % frame_bytes if sound else 0
        self.frames = [sound[i:i + frame_bytes] for i in range(0, cut, frame_bytes)] if sound else []
        self.after = after_ms / 1000
        self.playout = playout
        self.journal = journal
        self.clock = clock
        self._waits: dict[str, float] = {}  # what is being waited on -> since when
        self._task: asyncio.Task | None = None
        self._next = 0
        self.played_ms = 0.0

    @property
    def waiting(self) -> bool:
        return bool(self._waits)

    def begin(self, why: str) -> None:
        """Something the caller would otherwise wait for in silence has started."""
        self._waits.setdefault(why, self.clock())
        if self.frames and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name=f"hold:{why}")

    def end(self, why: str) -> None:
        self._waits.pop(why, None)
        if not self._waits:
            self.stop()

    def stop(self) -> None:
        """No more hold audio: the queued part is dropped (the phone plays out its short lead)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.playout.drop(HOLD)

    def only_hold_audible(self) -> bool:
        """What the phone is playing (or about to) is hold audio only: nothing of the bot's."""
        return self.playout.queued_ms == self.playout.queued_for(HOLD) and self.playout.last_response == HOLD

    async def _run(self) -> None:
        started = False
        while self._waits:
            await asyncio.sleep(TICK_SECONDS)
            bot_queued = self.playout.queued_ms - self.playout.queued_for(HOLD)
            if bot_queued > 0 or (not started and self.clock() - min(self._waits.values()) < self.after):
                continue  # the bot's own audio first; hold only after a real wait
            if not started:
                started = True
                self.journal.event("hold", log_as="hold_audio", why=",".join(sorted(self._waits)))
            if self.playout.queued_for(HOLD) < AHEAD_MS:
                n = AHEAD_MS // 20
                batch = [self.frames[(self._next + i) % len(self.frames)] for i in range(n)]
                self._next = (self._next + n) % len(self.frames)
                self.playout.enqueue(batch, HOLD)
                self.played_ms += n * 20
