"""Call control: what the gateway does *to* a call besides relaying audio — used by the tools
(end_call, transfer_call, keypad shortcuts), the operator API and the limits.

A mixin of `Call`, kept apart so call.py stays about the audio path. It relies on the Call's
`provider`, `playout`, `persona`, `config`, `started`, `rest`, `phone`, `log`, `rec`, the
response bookkeeping (`_done`, `_active_response`, `_caller_speaking`, `_ready`) and
`_speech_started` (barge-in) / `_error`.
"""

from __future__ import annotations

import asyncio
import time

from .telephony.twilio import dial_twiml
from .telephony.twilio_rest import TwilioRestError


class CallControl:
    async def wait_response_done(self, response_id: str | None, timeout: float = 30.0) -> None:
        """Until that response (None: whichever is active) is done; a new request for speech
        while one is active is an error on every model."""
        deadline = time.monotonic() + timeout
        while True:
            rid = response_id or self._active_response
            event = self._done.get(rid) if rid else None
            if event is None or event.is_set():
                return
            try:
                await asyncio.wait_for(event.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self.log.warning("response_done_wait_timeout", response=rid)
                return

    async def wait_played(self, timeout: float) -> bool:
        """Until every bot frame sent has been confirmed played by its mark (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while self.playout.busy():
            if time.monotonic() > deadline:
                self.log.warning("played_wait_timeout", queued_ms=round(self.playout.queued_ms))
                return False
            await asyncio.sleep(0.02)
        return True

    async def say_via_model(self, instruction: str) -> None:
        """Have the model say something (an instruction as text), and wait until it was heard."""
        await self.wait_response_done(None)
        before = len(self._done)
        await self.provider.send_text(instruction)
        deadline = time.monotonic() + 5
        while len(self._done) == before and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.wait_response_done(None)
        await self.wait_played(30)

    async def _limits_loop(self, limit: float) -> str:
        """Time limit wrap-up and caller-silence handling; returns only once it has hung up."""
        limits = self.config.limits
        wrap_at = limit - limits.wrap_up_seconds if limits.wrap_up_seconds and limit > limits.wrap_up_seconds else None
        quiet_since: float | None = None
        reprompted = False
        while True:
            await asyncio.sleep(0.1)
            if not self._ready or self._wrapping:
                continue
            now = time.monotonic()
            if wrap_at is not None and now - self._t0 >= wrap_at:
                self._wrapping = True
                self.log.info("limit_wrap_up", after_s=round(now - self._t0, 1))
                self.rec.event("limit", self._offset(), what="max_call_seconds", action="wrap_up")
                await self.say_via_model("(The call has reached its time limit. Thank the caller and say a "
                                         "short, polite goodbye now.)")
                await self.hang_up("max_duration", why="time limit")
                return "max_duration"
            idle = not (self._caller_speaking or self._active_response or self.playout.busy())
            if self._caller_speaking:
                reprompted = False
            if not idle or not limits.silence_timeout_seconds:
                quiet_since = None
                continue
            quiet_since = quiet_since or now
            if now - quiet_since < limits.silence_timeout_seconds:
                continue
            quiet_since = None
            silent_s = round(limits.silence_timeout_seconds)
            self.rec.event("limit", self._offset(), what="caller_silence", action="goodbye" if reprompted else "reprompt")
            if not reprompted:
                reprompted = True
                self.log.info("caller_silent_reprompt", seconds=silent_s)
                await self.provider.send_text(f"(The caller has said nothing for {silent_s} seconds. "
                                              "Briefly ask whether they are still there.)")
                continue
            self._wrapping = True
            self.log.info("caller_silent_goodbye", seconds=silent_s)
            await self.say_via_model("(The caller is still silent. Say a short, polite goodbye now.)")
            await self.hang_up("silence_timeout", why="caller silent")
            return "silence_timeout"

    async def wrap_up(self, reason: str, timeout: float = 12.0) -> None:
        """The gateway is going away: the bot apologises and says goodbye, then the call ends."""
        if not self._wrapping and self._ready:
            self._wrapping = True
            try:
                await asyncio.wait_for(self.say_via_model(
                    "(The service is restarting now. Apologise briefly, say the caller can call back in a "
                    "minute, and say goodbye.)"), timeout)
            except asyncio.TimeoutError:
                self.log.warning("wrap_up_slow", timeout_s=timeout)
        await self.hang_up(reason, why="gateway stopping")

    async def silence_bot(self) -> None:
        """Stop the bot mid-sentence (a keypad shortcut acts now): clear the phone, cancel the reply."""
        if self.playout.busy() or self._active_response is not None:
            await self._speech_started()

    async def hang_up(self, reason: str, why: str = "") -> None:
        """End the call from our side: Twilio's REST API completes it (no fallback message is
        spoken); without credentials, closing the stream is the only way (Twilio then runs the
        TwiML after </Connect>, i.e. the fallback message)."""
        self._forced_end = reason
        self.log.info("hang_up", reason=reason, why=why or None)
        self.rec.event("hang_up", self._offset(), reason=reason, why=why or None)
        if self.rest is not None and self.rest.configured and self.started.call_sid:
            try:
                await self.rest.hang_up(self.started.call_sid)
            except TwilioRestError as e:
                self.log.error("hang_up_failed", error=str(e)[:300])
        else:
            self.log.warning("hang_up_without_rest", note="twilio credentials not configured: closing the stream")
        await self.phone.close()

    async def transfer(self, number: str, target: str, why: str = "") -> None:
        """Move the caller to `number` with a <Dial> (Twilio REST call update). Raises
        TwilioRestError if Twilio refuses; then the call goes on with the bot."""
        if self.rest is None or not self.rest.configured or not self.started.call_sid:
            raise TwilioRestError(0, None, "transfers need twilio.account_sid and twilio.auth_token")
        params = self.started.custom_parameters
        caller_id = self.persona.transfer_caller_id or params.get("to", "")
        twiml = dial_twiml(number, caller_id=caller_id, timeout=self.persona.transfer_timeout_seconds)
        try:
            await self.rest.redirect(self.started.call_sid, twiml)
        except TwilioRestError as e:
            self.rec.event("transfer_failed", self._offset(), target=target, number=number, error=str(e)[:300])
            raise
        self._forced_end = "transferred"
        self.log.info("transferred", target=target, number=number, why=why or None)
        self.rec.event("transferred", self._offset(), target=target, number=number, why=why or None)
        self.rec.update(error=None)
        await self.phone.close()
