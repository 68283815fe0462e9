"""What the gateway does *to* a phone call besides relaying audio: hang up, transfer to a person,
have the bot say something, and wait until the caller has heard it. Used by the bot's tools, the
keypad shortcuts, the limits, the drain at shutdown and the operator API.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from ..config import Persona
from ..playout import Playout
from ..telephony import PhoneActionError, PhoneControl, PhoneStream, Started
from .conversation import Conversation
from .hold import HoldSound
from .journal import Journal
from .model_link import ModelLink
from ..clock import monotonic


class PhoneActions:
    def __init__(self, *, phone: PhoneStream, playout: Playout, conversation: Conversation, model: ModelLink,
                 journal: Journal, persona: Persona, started: Started, control: PhoneControl | None,
                 hold: HoldSound | None = None, clock: Callable[[], float] = monotonic):
        self.phone = phone
        self.playout = playout
        self.conversation = conversation
        self.model = model
        self.journal = journal
        self.persona = persona
        self.started = started
        self.control = control or PhoneControl()  # the network's hang-up and transfer
        self.hold = hold
        self.clock = clock
        self.ended_by: str | None = None  # set when we end the call (the call's end reason)
        self.wrapping = False  # a goodbye is under way: limits and drain leave the call alone

    # -------------------------------------------------------------- waiting
    async def wait_response_done(self, response_id: str | None, timeout: float = 30.0) -> None:
        """Until that response (None: whichever is active) is done; a new request for speech
        while one is active is an error on every model."""
        deadline = self.clock() + timeout
        while True:
            event = self.conversation.done_event(response_id)
            if event is None or event.is_set():
                return
            try:
                await asyncio.wait_for(event.wait(), max(0.0, deadline - self.clock()))
            except asyncio.TimeoutError:
                self.journal.log.warning("response_done_wait_timeout", response=response_id)
                return

    async def wait_played(self, timeout: float) -> bool:
        """Until every bot frame sent has been confirmed played by its mark (or `timeout`): woken
        by the playout going idle, not polled."""
        deadline = self.clock() + timeout
        while self.playout.busy():
            left = deadline - self.clock()
            if left <= 0:
                self.journal.log.warning("played_wait_timeout", queued_ms=round(self.playout.queued_ms))
                return False
            if self.playout.idle.is_set():  # idle by the marks, our clock not quite there: a frame at most
                await asyncio.sleep(min(left, 0.02))
                continue
            timer = asyncio.get_running_loop().call_later(left, self.playout.idle.set)
            try:
                await self.playout.idle.wait()
            finally:
                timer.cancel()
        return True

    # -------------------------------------------------------------- speaking
    async def say(self, instruction: str) -> None:
        """Have the model say something (an instruction as text), and wait until it was heard."""
        await self.wait_response_done(None)
        before = self.conversation.responses_seen
        await self.model.send_text(instruction)
        deadline = self.clock() + 5
        while self.conversation.responses_seen == before and self.clock() < deadline:
            await asyncio.sleep(0.02)
        await self.wait_response_done(None)
        await self.wait_played(30)

    async def goodbye(self, reason: str, instruction: str, why: str, timeout: float | None = None) -> None:
        """The bot says a last thing (once per call), then we hang up."""
        if not self.wrapping and self.model.ready:
            self.wrapping = True
            try:
                await asyncio.wait_for(self.say(instruction), timeout)
            except asyncio.TimeoutError:
                self.journal.log.warning("goodbye_slow", timeout_s=timeout)
        await self.hang_up(reason, why=why)

    # -------------------------------------------------------------- the line
    async def hang_up(self, reason: str, why: str = "") -> None:
        """End the call from our side: the network ends it (Twilio: REST, no fallback message is
        spoken); without that means, closing the stream is the only way (Twilio then runs the
        TwiML after </Connect>, i.e. the fallback message)."""
        self.ended_by = reason
        self.journal.event("hang_up", reason=reason, why=why or None)
        if not self.control.missing:
            try:
                await self.control.hang_up()
            except PhoneActionError as e:
                self.journal.log.error("hang_up_failed", error=str(e)[:300])
        else:
            self.journal.log.warning("hang_up_without_rest", note=self.control.missing)
        await self.phone.close()

    async def transfer(self, number: str, target: str, why: str = "") -> None:
        """Move the caller to `number` through the network. Raises PhoneActionError if the
        network refuses or cannot; then the call goes on with the bot."""
        caller_id = self.persona.transfer_caller_id or self.started.custom_parameters.get("to", "")
        if self.hold is not None:
            self.hold.begin("transfer")  # not silence while the transfer is being set up
        try:
            await self.control.transfer(number, caller_id=caller_id, timeout=self.persona.transfer_timeout_seconds)
        except PhoneActionError as e:
            if self.hold is not None:
                self.hold.end("transfer")
            self.journal.event("transfer_failed", level="warning", target=target, number=number, error=str(e)[:300])
            raise
        self.ended_by = "transferred"
        self.journal.event("transferred", target=target, number=number, why=why or None)
        self.journal.update(error=None)
        await self.phone.close()
