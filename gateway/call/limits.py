"""A call's limits: the bot wraps up before the maximum call length, and a caller who stays
silent is asked once whether they are still there, then said goodbye to.

No ticker: a timer for what is due (the wrap-up, the end of the allowed silence) and a wake-up
for what happened (`wake()`: the caller or the bot started or stopped, the model came up), so a
call costs nothing here between those moments (it was ten wake-ups a second for the whole call).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from ..config import LimitsConfig
from .actions import PhoneActions
from .journal import Journal
from .model_link import ModelLink
from ..clock import monotonic


class CallLimits:
    def __init__(self, *, limits: LimitsConfig, max_call_seconds: float, actions: PhoneActions, model: ModelLink,
                 journal: Journal, quiet: Callable[[], bool], caller_speaking: Callable[[], bool],
                 started_at: float, clock: Callable[[], float] = monotonic):
        self.limits = limits
        self.max_call_seconds = max_call_seconds
        self.actions = actions
        self.model = model
        self.journal = journal
        self.quiet = quiet
        self.caller_speaking = caller_speaking
        self.started_at = started_at
        self.clock = clock
        self._changed = asyncio.Event()
        self._woken = False
        self._reprompted = False

    def wake(self, caller_spoke: bool = False) -> None:
        """Something that may end or start a silence happened (`caller_spoke`: the caller began to
        talk: a later silence may be re-prompted again)."""
        if caller_spoke:
            self._reprompted = False
        self._woken = True
        self._changed.set()

    async def _until(self, timeout: float | None) -> bool:
        """Until `wake()` (True) or `timeout` seconds (> 0; None: no timer). A timer that sets the
        event, not asyncio.wait_for: that can swallow the call's cancellation when the wait ends at
        the same moment (Python < 3.12), and this task would then outlive its call."""
        if not self._changed.is_set():
            timer = asyncio.get_running_loop().call_later(timeout, self._changed.set) if timeout is not None else None
            try:
                await self._changed.wait()
            finally:
                if timer is not None:
                    timer.cancel()
        woken, self._woken = self._woken, False
        self._changed.clear()
        return woken

    async def run(self) -> str:
        """Watches the call; returns (an end reason) only once it has hung up."""
        limits = self.limits
        wrap_after = self.max_call_seconds - limits.wrap_up_seconds \
            if limits.wrap_up_seconds and self.max_call_seconds > limits.wrap_up_seconds else None
        wrap_at = self.started_at + wrap_after if wrap_after is not None else None
        quiet_since: float | None = None
        while True:
            now = self.clock()
            due = wrap_at - now if wrap_at is not None else None
            if not self.model.ready or self.actions.wrapping:  # nothing to do until that changes
                if await self._until(due if due is not None and due > 0 else None):
                    quiet_since = None
                continue
            if wrap_at is not None and now >= wrap_at:
                self.journal.event("limit", log_as="limit_wrap_up", what="max_call_seconds", action="wrap_up",
                                   after_s=round(now - self.started_at, 1))
                await self.actions.goodbye("max_duration", "(The call has reached its time limit. Thank the caller "
                                           "and say a short, polite goodbye now.)", why="time limit")
                return "max_duration"
            if self.caller_speaking():
                self._reprompted = False
            if not self.quiet() or not limits.silence_timeout_seconds:
                quiet_since = None
                await self._until(due)
                continue
            if quiet_since is None:
                quiet_since = now
            left = quiet_since + limits.silence_timeout_seconds - now
            if left > 0:
                if await self._until(left if due is None else min(left, due)):
                    quiet_since = None  # something happened: a silence starts again from here, if any
                continue
            quiet_since = None
            silent_s = round(limits.silence_timeout_seconds)
            if not self._reprompted:
                self._reprompted = True
                self.journal.event("limit", log_as="caller_silent_reprompt", what="caller_silence",
                                   action="reprompt", seconds=silent_s)
                await self.model.send_text(f"(The caller has said nothing for {silent_s} seconds. "
                                           "Briefly ask whether they are still there.)")
                continue
            self.journal.event("limit", log_as="caller_silent_goodbye", what="caller_silence", action="goodbye",
                               seconds=silent_s)
            await self.actions.goodbye("silence_timeout", "(The caller is still silent. Say a short, polite "
                                       "goodbye now.)", why="caller silent")
            return "silence_timeout"
