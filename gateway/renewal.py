"""Model session renewal: a call moves to a fresh model session with the conversation so far.

Before the service's maximum session age (at a quiet moment: no seamless gap for the caller), or
at once when the service ends a session with a renewable error. A mixin of `Call`; it relies on
the Call's `provider`, `_make_session`, `summary`, `playout`, `_ready`, `_preready`,
`_session_started`, `_active_response`, `_caller_speaking`, `_renew_lock`, `log`, `rec` and
`_session_open` / `_response_done` / `_close_session`.
"""

from __future__ import annotations

import asyncio
import time

from .providers.base import ContextTurn, Provider, ProviderConnectError, ResponseDone

MAX_CONTEXT_TURNS = 60  # transcript lines replayed into a renewed session
RENEW_RETRY_SECONDS = 30.0  # a failed early renewal is retried; the service's own expiry is the backstop
RECONNECT_DELAYS = [0.2, 0.8, 2.0, 4.0, 8.0]  # before each attempt to replace a session that died
QUICK_DEATH_SECONDS = 15.0  # a session dying sooner than this after opening counts against the budget


class SessionRenewal:
    def _context(self) -> list[ContextTurn]:
        """The conversation so far as the caller experienced it: bot lines are what was heard."""
        turns: list[ContextTurn] = []
        for e in self.summary.transcript:
            if e["role"] == "caller" and e["text"]:
                turns.append(ContextTurn("caller", e["text"]))
            elif e["role"] == "bot" and e.get("heard"):
                turns.append(ContextTurn("bot", e["heard"]))
            elif e["role"] == "dtmf":
                turns.append(ContextTurn("caller", f"(pressed {e['text']} on the phone keypad)"))
        return turns[-MAX_CONTEXT_TURNS:]

    def _quiet(self) -> bool:
        """Nobody is talking: the moment to swap sessions without the caller noticing."""
        return not (self._caller_speaking or self._active_response or self.playout.busy())

    async def _renew_loop(self) -> str:
        """Moves the call to a fresh session before the service's maximum session age."""
        age = self.provider.capabilities.max_session_seconds or 0.0
        while True:
            await asyncio.sleep(max(0.05, self._session_started + age - time.monotonic()))
            if time.monotonic() - self._session_started < age or not self._ready:
                continue  # renewed meanwhile (the service ended the session first), or not up yet
            while not self._quiet():
                await asyncio.sleep(0.05)
            if not await self._renew("session_age"):
                await asyncio.sleep(RENEW_RETRY_SECONDS)

    async def _renew(self, why: str, failed: Provider | None = None) -> bool:
        """Continue the call in a fresh session. `failed`: the session that just ended (caller
        audio is buffered until the new one is up); None: the current one still works and keeps
        taking audio until the new one is ready, so the switch is seamless."""
        if self._make_session is None:
            return False
        async with self._renew_lock:
            old = self.provider
            if failed is not None and old is not failed:
                return True  # already replaced by the renewer
            if failed is not None:
                # Sessions that keep dying right after opening (a flapping upstream) count as one
                # long outage: the budget is for consecutive quick deaths, not per drop.
                quick = time.monotonic() - self._session_started < QUICK_DEATH_SECONDS
                self._quick_deaths = self._quick_deaths + 1 if quick else 1
                if self._quick_deaths > self.config.limits.model_reconnect_attempts:
                    self.log.error("model_reconnect_gave_up", why=why, reason="keeps failing",
                                   drops=self._quick_deaths)
                    return False
            t0 = time.monotonic()
            if failed is not None:
                self._ready = False
                await self._close_session(old)
            if self._active_response is not None:  # a reply the old session will never finish
                self._response_done(ResponseDone(self._active_response, "incomplete"))
            context = self._context()
            # A session that failed is retried with backoff (the caller's audio waits in the
            # buffer); an early renewal gets one try, the old session is still fine.
            delays = RECONNECT_DELAYS[:max(1, self.config.limits.model_reconnect_attempts)] if failed else [0.0]
            new = None
            for attempt, delay in enumerate(delays, 1):
                await asyncio.sleep(delay)
                candidate = self._make_session(context)
                try:
                    await candidate.connect()
                    new = candidate
                    break
                except ProviderConnectError as e:
                    self.log.warning("model_renew_failed", why=why, attempt=attempt, of=len(delays),
                                     error=str(e)[:300])
                    await self._close_session(candidate)
                except BaseException:
                    await self._close_session(candidate)
                    raise
            if new is None:
                self.log.error("model_reconnect_gave_up", why=why, attempts=len(delays))
                return False
            self.provider = new
            await self._session_open()
            if failed is None:  # shielded: a call ending right now must still close it fully
                await asyncio.shield(self._close_session(old))
            self.summary.sessions += 1
            self.rec.event("session_renewed", self._offset(), why=why, context_turns=len(context))
            self.log.info("model_session_renewed", why=why, context_turns=len(context),
                          switch_ms=round((time.monotonic() - t0) * 1000), sessions=self.summary.sessions)
            return True
