"""The confirm barge-in policy: is the caller interrupting, or was that a cough?

The caller started talking over the bot (the model's VAD said speech_started while bot audio was
audible). Under `confirm` the bot is silent at once anyway (`Playout.hold`: the phone is cleared,
what it had not played is kept), and this part decides:
- an interruption: `min_speech_ms` of voiced caller frames (the Uplink's energy measure), or a
  transcript with words other than a lone backchannel; short bursts close together add up (a
  caller who keeps talking in bursts is interrupting, LiveKit Agents met it: livekit/agents#6714);
  then the coordinator cuts the reply (`cut`: cancel, truncate to what was heard);
- not one: the model's VAD says the speech ended, or `confirm_ms` passed without enough speech
  and the caller has been quiet for RESUME_QUIET_MS (never resume into the caller's own pause);
  then the reply resumes where the marks say it was heard, nothing lost.
Timers for what is due, frames and model events for what happened: nothing polls.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..persona import BargeIn
from ..playout import Playout
from .journal import Journal
from .uplink import Uplink

# A held reply comes back only after the caller has been quiet this long (by our energy measure).
RESUME_QUIET_MS = 300
# A new possible interruption this soon after one was dismissed continues its count of voiced
# ms: a caller talking in short bursts (each under min_speech_ms) is interrupting.
BURST_WINDOW_S = 2.0

# A short acknowledgement while the bot talks is not an interruption ("mm-hm", "yeah", "ok").
BACKCHANNELS = frozenset("mm mmm hm mhm hmm mhmm um uh huh uhhuh mmhmm yeah yes yep ok okay right sure alright aha ah oh i see got it "
                         "嗯 哦 对 好 是 啊 嗯嗯 好的 对对".split())


def interrupts(transcript: str) -> bool:
    """Caller words that make an interruption: anything but a lone backchannel ("stop" does, "mm-hm"
    does not)."""
    words = re.findall(r"\w+", transcript.lower())
    return bool(words) and not (len(words) <= 2 and all(w in BACKCHANNELS for w in words))


@dataclass
class BargeInCheck:
    """One pending decision: voiced ms counted in 20 ms phone frames; `timer`: whichever of
    "confirm_ms is up" and "the caller has been quiet long enough" is due next."""
    since: float
    timer: asyncio.TimerHandle | None = None
    voiced_ms: int = 0


class BargeInJudge:
    def __init__(self, policy: BargeIn, *, playout: Playout, uplink: Uplink, journal: Journal,
                 clock: Callable[[], float], cut: Callable[..., Awaitable[None]],
                 on_hold: Callable[[float], None] | None = None):
        """`cut(by=..., **why)`: the coordinator's barge-in (clear, cancel, cut to what was heard);
        `on_hold(at)`: the bot went silent at `at` (the recording drops what it had not played)."""
        self.policy = policy
        self._playout = playout
        self._uplink = uplink
        self._journal = journal
        self._clock = clock
        self._cut = cut
        self._on_hold = on_hold
        self._check: BargeInCheck | None = None
        self._dismissed: tuple[float, int] | None = None  # the last "not one": when, voiced ms

    @property
    def pending(self) -> bool:
        return self._check is not None

    async def caller_started(self) -> None:
        """Speech began while the bot was audible: silent now, decide later."""
        if self._check is not None:
            return
        now = self._clock()
        carried = self._dismissed[1] if self._dismissed and now - self._dismissed[0] < BURST_WINDOW_S else 0
        check = self._check = BargeInCheck(now, voiced_ms=carried)
        check.timer = asyncio.get_running_loop().call_later(self.policy.confirm_ms / 1000, self._expired)
        await self._playout.hold()
        if self._on_hold is not None:
            self._on_hold(now)
        self._journal.log.debug("barge_in_pending", carried_ms=carried or None)
        if check.voiced_ms >= self.policy.min_speech_ms:  # another burst of a caller who keeps talking
            await self._confirm("bursts")

    async def frame(self, voiced: bool, frame_ms: int = 20) -> None:
        """One caller frame while a decision is pending."""
        check = self._check
        if check is not None and voiced:
            check.voiced_ms += frame_ms
            if check.voiced_ms >= self.policy.min_speech_ms:
                await self._confirm("speech")

    async def words(self, transcript: str) -> None:
        if self._check is not None and interrupts(transcript):
            await self._confirm("words")

    def speech_ended(self) -> None:
        """The model's VAD says the caller stopped before it was an interruption."""
        self._dismiss("speech ended")

    def decided(self) -> None:
        """The reply was cut some other way (confirmed, the keypad, the call ending): nothing pending."""
        check, self._check = self._check, None
        if check is not None and check.timer is not None:
            check.timer.cancel()

    # ------------------------------------------------------------------ inside
    def _expired(self) -> None:
        """confirm_ms is up without enough speech: not an interruption, once the caller is quiet."""
        check = self._check
        if check is None:
            return
        last = self._uplink.last_voiced_at
        wait = 0.0 if last is None else RESUME_QUIET_MS / 1000 - (self._clock() - last)
        if wait > 0.001:  # (a timer due at exactly that moment may fire a hair early)
            check.timer = asyncio.get_running_loop().call_later(wait, self._expired)
        else:
            self._dismiss("not confirmed in time")

    async def _confirm(self, how: str) -> None:
        check = self._check
        if check is None:
            return
        self.decided()
        self._dismissed = None
        why: dict[str, Any] = dict(confirmed_by=how, after_ms=round((self._clock() - check.since) * 1000))
        await self._cut(by="caller", **why)

    def _dismiss(self, why: str) -> None:
        """Not an interruption (a cough, a click, an "mm-hm"): the reply goes on from what was heard."""
        check = self._check
        if check is None:
            return
        self.decided()
        self._dismissed = (self._clock(), check.voiced_ms)
        self._playout.resume()
        self._journal.event("barge_in_ignored", why=why, voiced_ms=check.voiced_ms,
                            paused_ms=round((self._clock() - check.since) * 1000))
