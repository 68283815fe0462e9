"""The call's link to the model: the current session, caller audio held while no session is
ready, renewal before the service's maximum session age, reconnection after a drop, and one event
stream across all the sessions a call uses.

Renewal (before the service's maximum age, at a quiet moment): a fresh session is opened with the
conversation so far while the old one keeps taking audio, then swapped in; the caller hears no gap.
Reconnect (the service ended the session with a renewable error, or the socket died): caller audio
is buffered while a new session opens, with backoff; sessions that keep dying right after opening
count against `limits.model_reconnect_attempts`, then the call gets the fatal error.

The service may also announce the end of a connection (`SessionEnding`, Gemini's goAway): the
renewal then happens at the next quiet moment before that time, or when the time is nearly up.
A fresh session takes what continuing needs from the one it replaces (`Provider.carry_over`:
Gemini's session-resumption handle), so the service keeps the context itself where it can.

Never needs two sessions for one call for longer than the swap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence

from ..config import LimitsConfig
from ..providers.base import ContextTurn, Provider, ProviderConnectError, ProviderError, ProviderEvent, SessionEnding
from .journal import Journal
from ..clock import monotonic

PREREADY_BUFFER_MS = 2000  # caller audio kept while a session opens (older audio is dropped)
RENEW_RETRY_SECONDS = 30.0  # a failed early renewal is retried; the service's own expiry is the backstop
RECONNECT_DELAYS = [0.2, 0.8, 2.0, 4.0, 8.0]  # before each attempt to replace a session that died
QUICK_DEATH_SECONDS = 15.0  # a session dying sooner than this after opening counts against the budget
ENDING_MARGIN_SECONDS = 3.0  # an announced end: renew this long before it even if nobody is quiet


@dataclass(frozen=True)
class SessionLost:
    """The session died; a replacement is being opened (whatever reply was running is over)."""
    why: str


@dataclass(frozen=True)
class SessionReplaced:
    """From here on, events come from a fresh session that continues the conversation."""
    why: str


LinkEvent = ProviderEvent | SessionLost | SessionReplaced
SessionFactory = Callable[[Sequence[ContextTurn]], Provider]


class ModelLink:
    def __init__(self, first: Provider, *, new_session: SessionFactory | None, context: Callable[[], list[ContextTurn]],
                 quiet: Callable[[], bool], limits: LimitsConfig, journal: Journal,
                 clock: Callable[[], float] = monotonic):
        """`new_session(context)`: an unconnected session continuing the conversation (None: a
        session that ends ends the call). `context()`: the conversation so far. `quiet()`:
        nobody is talking (the moment for an early renewal)."""
        self.session = first
        self.capabilities = first.capabilities
        self.ready = False  # caller audio goes straight to the session (else it is buffered)
        self.sessions = 1
        self._new_session = new_session
        self._context = context
        self._quiet = quiet
        self._limits = limits
        self._journal = journal
        self._clock = clock
        # Caller audio (model format) while no session is ready, bounded by bytes.
        caps = first.capabilities
        bytes_per_ms = caps.input_rate * (2 if caps.input_format == "pcm16" else 1) / 1000
        self._buffer_limit = int(bytes_per_ms * PREREADY_BUFFER_MS)
        self._buffer_append = int(bytes_per_ms * max(caps.input_block_ms, 100))  # sent in appends this big
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._swap = asyncio.Lock()
        self._session_started = clock()
        self._quick_deaths = 0
        self._ending: asyncio.Event = asyncio.Event()  # the service announced the session's end
        self._ending_at = 0.0

    # -------------------------------------------------------------- caller audio
    async def open(self) -> None:
        """Connect the first session (raises ProviderConnectError) and start sending audio."""
        await self.session.connect()
        await self._now_ready()

    async def send_audio(self, audio: bytes) -> None:
        if self.ready:
            await self.session.send_audio(audio)
            return
        self._buffer.append(audio)
        self._buffered += len(audio)
        while self._buffered > self._buffer_limit and len(self._buffer) > 1:  # the oldest audio gives way
            self._buffered -= len(self._buffer.popleft())

    async def _now_ready(self) -> None:
        """Send what was buffered (in appends of the usual size, not one per frame), then go live."""
        self._session_started = self._clock()
        while self._buffer:  # audio arriving while this flushes joins the buffer, keeping order
            audio = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            for i in range(0, len(audio), self._buffer_append):
                await self.session.send_audio(audio[i:i + self._buffer_append])
        self.ready = True

    # -------------------------------------------------------------- intents
    async def cancel_response(self, response_id: str) -> None:
        await self.session.cancel_response(response_id)

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        await self.session.truncate(item_id, audio_end_ms)

    async def delete_item(self, item_id: str) -> None:
        await self.session.delete_item(item_id)

    async def send_text(self, text: str, respond: bool = True) -> None:
        await self.session.send_text(text, respond)

    async def send_tool_result(self, call_id: str, output: str, respond: bool = True) -> None:
        await self.session.send_tool_result(call_id, output, respond)

    # -------------------------------------------------------------- one stream of events
    async def events(self) -> AsyncIterator[LinkEvent]:
        """Events of the current session, then of its successors. Ends after a fatal
        ProviderError that could not be recovered from, or when the last session ends."""
        while True:
            session = self.session
            async for ev in session.events():
                if isinstance(ev, SessionEnding):
                    if session is self.session:
                        self._journal.log.info("model_session_ending", seconds_left=round(ev.seconds_left, 1))
                        self._ending_at = self._clock() + ev.seconds_left
                        self._ending.set()
                    continue
                if not (isinstance(ev, ProviderError) and ev.fatal):
                    yield ev
                    continue
                if session is not self.session:
                    break  # a replaced session ending: not this call's problem
                if ev.renewable and self._new_session is not None:
                    yield SessionLost(f"model:{ev.code}")
                    if await self._replace(f"model:{ev.code}", failed=session):
                        break
                yield ev
                return
            if session is self.session:
                return  # the session ended and nothing replaced it
            yield SessionReplaced("renewed")

    async def run_renewals(self) -> None:
        """A task for providers with a maximum session age: moves the call to a fresh session
        before that age, or before an end the service announced, at a quiet moment. Never returns."""
        age = self.capabilities.max_session_seconds or 0.0
        while True:
            wait = max(0.05, self._session_started + age - self._clock())
            try:
                await asyncio.wait_for(self._ending.wait(), wait)
            except asyncio.TimeoutError:
                pass
            ending = self._ending.is_set()
            if not ending and (self._clock() - self._session_started < age or not self.ready):
                continue  # replaced meanwhile (the service ended the session first), or not up yet
            while not self._quiet() and not (ending and self._clock() >= self._ending_at - ENDING_MARGIN_SECONDS):
                await asyncio.sleep(0.05)
            self._ending.clear()
            if not await self._replace("session_ending" if ending else "session_age"):
                await asyncio.sleep(RENEW_RETRY_SECONDS)

    async def _replace(self, why: str, failed: Provider | None = None) -> bool:
        """Continue the call in a fresh session. `failed`: the session that just ended (caller
        audio is buffered until the new one is up); None: the current one still works and keeps
        taking audio until the new one is ready, so the switch is seamless."""
        if self._new_session is None:
            return False
        log = self._journal.log
        async with self._swap:
            old = self.session
            if failed is not None and old is not failed:
                return True  # already replaced by the renewer
            if failed is not None:
                # Sessions that keep dying right after opening (a flapping upstream) count as one
                # long outage: the budget is for consecutive quick deaths, not per drop.
                quick = self._clock() - self._session_started < QUICK_DEATH_SECONDS
                self._quick_deaths = self._quick_deaths + 1 if quick else 1
                if self._quick_deaths > self._limits.model_reconnect_attempts:
                    log.error("model_reconnect_gave_up", why=why, reason="keeps failing", drops=self._quick_deaths)
                    return False
                self.ready = False
                await self.close_session(old)
            t0 = self._clock()
            context = self._context()
            # A session that failed is retried with backoff (the caller's audio waits in the
            # buffer); an early renewal gets one try, the old session is still fine.
            delays = RECONNECT_DELAYS[:max(1, self._limits.model_reconnect_attempts)] if failed else [0.0]
            new = None
            for attempt, delay in enumerate(delays, 1):
                await asyncio.sleep(delay)
                candidate = self._new_session(context)
                candidate.carry_over(old)
                try:
                    await candidate.connect()
                    new = candidate
                    break
                except ProviderConnectError as e:
                    log.warning("model_renew_failed", why=why, attempt=attempt, of=len(delays), error=str(e)[:300])
                    await self.close_session(candidate)
                except BaseException:
                    await self.close_session(candidate)
                    raise
            if new is None:
                log.error("model_reconnect_gave_up", why=why, attempts=len(delays))
                return False
            self.session = new
            await self._now_ready()
            if failed is None:  # shielded: a call ending right now must still close it fully
                await asyncio.shield(self.close_session(old))
            self.sessions += 1
            self._journal.event("session_renewed", log_as="model_session_renewed", why=why,
                                context_turns=len(context), switch_ms=round((self._clock() - t0) * 1000),
                                sessions=self.sessions)
            return True

    # -------------------------------------------------------------- the end
    async def close_session(self, session: Provider | None = None) -> None:
        """Close a session (default: the current one) within limits.model_close_timeout_seconds."""
        try:
            await asyncio.wait_for((session or self.session).close(), self._limits.model_close_timeout_seconds)
        except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001 - closing must not raise
            self._journal.log.warning("model_close_slow", error=type(e).__name__)
