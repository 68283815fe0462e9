"""What the bot can do besides talking: end the call, transfer it to a person, call business
systems (HTTP tools from the persona's YAML), and react to the caller's keypad.

One `ToolRunner` per call. A model's function call arrives inside a response; its output goes back
only after that response is done (a `response.create` while one is active is an error on both
models), then the model is asked to continue. Phone actions wait for the bot's last words to be
*played* (all marks echoed) before acting, so a goodbye is heard in full — and when the bot ended
the call without saying anything, it is asked for a short goodbye first.
"""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable

import aiohttp

from ..config import Persona
from ..httptools import run_http_tool
from ..providers.base import ToolCall
from ..telephony import PhoneActionError
from .actions import PhoneActions
from .conversation import Conversation
from .hold import HoldSound
from .journal import Journal
from .model_link import ModelLink

PLAYED_TIMEOUT = 30.0  # longest we wait for the bot's last words to be heard before acting
SAY_GOODBYE = "(You ended the call without saying goodbye. Say a short, polite goodbye to the caller now.)"


class ToolRunner:
    def __init__(self, *, persona: Persona, actions: PhoneActions, model: ModelLink, conversation: Conversation,
                 journal: Journal, stop_bot: Callable[[], Awaitable[None]], hold: HoldSound | None = None,
                 http: aiohttp.ClientSession | None = None, name: str = ""):
        """`stop_bot()`: silence the bot now (a keypad shortcut acts at once); `http`: the app's
        shared client session for HTTP tools (None: one per request, for tests)."""
        self.persona = persona
        self.actions = actions
        self.model = model
        self.conversation = conversation
        self.journal = journal
        self.stop_bot = stop_bot
        self.name = name
        self._tasks: set[asyncio.Task] = set()
        self._digits = ""
        self._digit_timer: asyncio.Task | None = None
        self._http = {t.name: t for t in persona.http_tools}
        self.http = http
        self.hold = hold
        self._ending = False

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro, name=f"tool:{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks) + ([self._digit_timer] if self._digit_timer else []):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ function calls
    def handle(self, ev: ToolCall) -> None:
        self._spawn(self._run(ev))

    async def _run(self, ev: ToolCall) -> None:
        try:
            await self._dispatch(ev)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the model must always get an answer
            self.journal.log.error("tool_failed", name=ev.name, error=f"{type(e).__name__}: {e}"[:300])
            await self._reply(ev, {"ok": False, "error": f"the tool failed: {type(e).__name__}"})

    async def _dispatch(self, ev: ToolCall) -> None:
        try:
            args = json.loads(ev.arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as e:
            self.journal.log.warning("tool_bad_arguments", name=ev.name, error=str(e)[:200])
            return await self._reply(ev, {"ok": False, "error": f"arguments are not a JSON object: {e}"})
        self.journal.event("tool_call", name=ev.name, arguments=args, call_id=ev.call_id)
        if ev.name == "end_call" and "end_call" in self.persona.tools:
            await self._end_call(ev, args)
        elif ev.name == "transfer_call" and "transfer_call" in self.persona.tools:
            await self._transfer_by_model(ev, args)
        elif ev.name in self._http:
            if self.hold is not None:
                self.hold.begin(f"tool:{ev.call_id}")  # a slow business system: hold tones, not silence
            try:
                result = await run_http_tool(self._http[ev.name], args, self.journal.log, self.http)
            finally:
                if self.hold is not None:
                    self.hold.end(f"tool:{ev.call_id}")
            await self._reply(ev, result)
        else:
            await self._reply(ev, {"ok": False, "error": f"there is no tool named {ev.name!r}"})

    async def _reply(self, ev: ToolCall, result: dict, respond: bool = True) -> None:
        await self.actions.wait_response_done(ev.response_id)
        await self.model.send_tool_result(ev.call_id, json.dumps(result, ensure_ascii=False), respond)
        self.journal.event("tool_result", level="debug", name=ev.name, call_id=ev.call_id,
                           ok=result.get("ok", "error" not in result), result=json.dumps(result)[:2000])

    async def _end_call(self, ev: ToolCall, args: dict) -> None:
        if self._ending:  # e.g. the goodbye we asked for called end_call again
            return await self._reply(ev, {"ok": True, "note": "the call is already ending"}, respond=False)
        self._ending = True
        await self._reply(ev, {"ok": True, "note": "the line closes after your goodbye is heard"}, respond=False)
        await self.actions.wait_played(PLAYED_TIMEOUT)
        turn = self.conversation.find_turn(ev.response_id)
        if turn is None or turn.generated_ms <= 0:  # hanging up in silence is rude: ask for a goodbye
            self.journal.log.info("goodbye_requested", why="end_call came without speech")
            await self.actions.say(SAY_GOODBYE)
        await self.actions.hang_up("bot_hangup", why=str(args.get("reason", ""))[:200])

    async def _transfer_by_model(self, ev: ToolCall, args: dict) -> None:
        target = args.get("target")
        number = self.persona.transfer_targets.get(target) if target else self.persona.transfer_to
        if not number:
            return await self._reply(ev, {"ok": False, "error": f"no transfer target {target!r}; "
                                          f"known: {sorted(self.persona.transfer_targets) or ['(default)']}"})
        await self.actions.wait_response_done(ev.response_id)
        await self.actions.wait_played(PLAYED_TIMEOUT)  # "I'm transferring you now" is heard first
        try:
            await self.actions.transfer(number, target=target or "default", why=str(args.get("reason", ""))[:200])
        except PhoneActionError as e:
            await self._reply(ev, {"ok": False, "error": f"the transfer failed ({e.message or e.status}); "
                                   "tell the caller and offer another way to help"})

    # ------------------------------------------------------------------ keypad
    def dtmf(self, digit: str) -> None:
        """A key press: a persona shortcut acts at once without the model; other digits are
        collected until the caller pauses, then told to the model as text."""
        action = self.persona.dtmf.shortcuts.get(digit)
        if action is not None and not self._digits:
            self._spawn(self._shortcut(digit, action))
            return
        self._digits += digit
        if self._digit_timer is not None:
            self._digit_timer.cancel()
        self._digit_timer = asyncio.create_task(self._digits_done(), name=f"dtmf:{self.name}")

    async def _digits_done(self) -> None:
        await asyncio.sleep(self.persona.dtmf.inter_digit_ms / 1000)
        digits, self._digits = self._digits, ""
        await self.actions.wait_response_done(None)  # never while the model is mid-reply
        await self.model.send_text(f"(The caller pressed {' '.join(digits)} on the phone keypad.)")
        self.journal.log.info("dtmf_to_model", digits=digits)

    async def _shortcut(self, digit: str, action: str) -> None:
        self.journal.event("dtmf_shortcut", digit=digit, action=action)
        await self.stop_bot()
        if action == "end_call":
            await self.actions.hang_up("bot_hangup", why=f"keypad {digit}")
            return
        target = action.split(":", 1)[1] if ":" in action else None
        number = self.persona.transfer_targets[target] if target else self.persona.transfer_to
        try:
            await self.actions.transfer(number, target=target or "default", why=f"keypad {digit}")
        except PhoneActionError as e:
            self.journal.log.error("transfer_failed", error=str(e)[:300])
            await self.model.send_text(f"(The caller pressed {digit} to reach a person, but the transfer "
                                       f"failed. Apologise and offer another way to help.)")
