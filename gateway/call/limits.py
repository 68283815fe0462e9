"""A call's limits: the bot wraps up before the maximum call length, and a caller who stays
silent is asked once whether they are still there, then said goodbye to."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from ..config import LimitsConfig
from .actions import PhoneActions
from .journal import Journal
from .model_link import ModelLink

TICK_SECONDS = 0.1


class CallLimits:
    def __init__(self, *, limits: LimitsConfig, max_call_seconds: float, actions: PhoneActions, model: ModelLink,
                 journal: Journal, quiet: Callable[[], bool], caller_speaking: Callable[[], bool],
                 started_at: float, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.max_call_seconds = max_call_seconds
        self.actions = actions
        self.model = model
        self.journal = journal
        self.quiet = quiet
        self.caller_speaking = caller_speaking
        self.started_at = started_at
        self.clock = clock

    async def run(self) -> str:
        """Watches the call; returns (an end reason) only once it has hung up."""
        limits = self.limits
        wrap_after = self.max_call_seconds - limits.wrap_up_seconds \
            if limits.wrap_up_seconds and self.max_call_seconds > limits.wrap_up_seconds else None
        quiet_since: float | None = None
        reprompted = False
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if not self.model.ready or self.actions.wrapping:
                continue
            now = self.clock()
            if wrap_after is not None and now - self.started_at >= wrap_after:
                self.journal.event("limit", log_as="limit_wrap_up", what="max_call_seconds", action="wrap_up",
                                   after_s=round(now - self.started_at, 1))
                await self.actions.goodbye("max_duration", "(The call has reached its time limit. Thank the caller "
                                           "and say a short, polite goodbye now.)", why="time limit")
                return "max_duration"
            if self.caller_speaking():
                reprompted = False
            if not self.quiet() or not limits.silence_timeout_seconds:
                quiet_since = None
                continue
            quiet_since = quiet_since or now
            if now - quiet_since < limits.silence_timeout_seconds:
                continue
            quiet_since = None
            silent_s = round(limits.silence_timeout_seconds)
            if not reprompted:
                reprompted = True
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
