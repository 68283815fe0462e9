"""What the bot can do besides talking: end the call, transfer it to a person, call business
systems (HTTP tools from the persona's YAML), and react to the caller's keypad.

One `ToolRunner` per call. A model's function call arrives inside a response; its output goes back
only after that response is done (a `response.create` while one is active is an error on both
models), then the model is asked to continue. Phone actions wait for the bot's last words to be
*played* (all marks echoed) before acting, so a goodbye is heard in full.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from .httptools import run_http_tool
from .providers.base import ToolCall
from .telephony.twilio_rest import TwilioRestError

if TYPE_CHECKING:  # the runner works for a Call and uses its small public surface below
    import aiohttp

    from .call import Call

PLAYED_TIMEOUT = 30.0  # longest we wait for the bot's last words to be heard before acting


class ToolRunner:
    def __init__(self, call: "Call"):
        self.call = call
        self.persona = call.persona
        self._tasks: set[asyncio.Task] = set()
        self._digits = ""
        self._digit_timer: asyncio.Task | None = None
        self._http = {t.name: t for t in self.persona.http_tools}
        self.session: aiohttp.ClientSession | None = None  # the app's shared HTTP client (set by app.py)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro, name=f"tool:{self.call.call_id}")
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
        call = self.call
        try:
            args = json.loads(ev.arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as e:
            call.log.warning("tool_bad_arguments", name=ev.name, error=str(e)[:200])
            return await self._reply(ev, {"ok": False, "error": f"arguments are not a JSON object: {e}"})
        call.log.info("tool_call", name=ev.name, call_id=ev.call_id)
        call.rec.event("tool_call", call.offset(), name=ev.name, arguments=args, call_id=ev.call_id)
        if ev.name == "end_call" and "end_call" in self.persona.tools:
            await self._reply(ev, {"ok": True, "note": "the line closes after your goodbye is heard"}, respond=False)
            await call.wait_played(PLAYED_TIMEOUT)
            await call.hang_up("bot_hangup", why=str(args.get("reason", ""))[:200])
        elif ev.name == "transfer_call" and "transfer_call" in self.persona.tools:
            await self._transfer_by_model(ev, args)
        elif ev.name in self._http:
            result = await run_http_tool(self._http[ev.name], args, call.log, self.session)
            await self._reply(ev, result)
        else:
            await self._reply(ev, {"ok": False, "error": f"there is no tool named {ev.name!r}"})

    async def _reply(self, ev: ToolCall, result: dict, respond: bool = True) -> None:
        call = self.call
        await call.wait_response_done(ev.response_id)
        await call.provider.send_tool_result(ev.call_id, json.dumps(result, ensure_ascii=False), respond)
        call.rec.event("tool_result", call.offset(), name=ev.name, call_id=ev.call_id,
                       ok=result.get("ok", "error" not in result), result=json.dumps(result)[:2000])

    async def _transfer_by_model(self, ev: ToolCall, args: dict) -> None:
        target = args.get("target")
        number = self.persona.transfer_targets.get(target) if target else self.persona.transfer_to
        if not number:
            return await self._reply(ev, {"ok": False, "error": f"no transfer target {target!r}; "
                                          f"known: {sorted(self.persona.transfer_targets) or ['(default)']}"})
        await self.call.wait_response_done(ev.response_id)
        await self.call.wait_played(PLAYED_TIMEOUT)  # "I'm transferring you now" is heard first
        try:
            await self.call.transfer(number, target=target or "default", why=str(args.get("reason", ""))[:200])
        except TwilioRestError as e:
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
        self._digit_timer = asyncio.create_task(self._digits_done(), name=f"dtmf:{self.call.call_id}")

    async def _digits_done(self) -> None:
        await asyncio.sleep(self.persona.dtmf.inter_digit_ms / 1000)
        digits, self._digits = self._digits, ""
        call = self.call
        await call.wait_response_done(None)  # never while the model is mid-reply
        await call.provider.send_text(f"(The caller pressed {' '.join(digits)} on the phone keypad.)")
        call.log.info("dtmf_to_model", digits=digits)

    async def _shortcut(self, digit: str, action: str) -> None:
        call = self.call
        call.log.info("dtmf_shortcut", digit=digit, action=action)
        call.rec.event("dtmf_shortcut", call.offset(), digit=digit, action=action)
        await call.silence_bot()
        if action == "end_call":
            await call.hang_up("bot_hangup", why=f"keypad {digit}")
            return
        target = action.split(":", 1)[1] if ":" in action else None
        number = self.persona.transfer_targets[target] if target else self.persona.transfer_to
        try:
            await call.transfer(number, target=target or "default", why=f"keypad {digit}")
        except TwilioRestError as e:
            call.log.error("transfer_failed", error=str(e)[:300])
            await call.provider.send_text(f"(The caller pressed {digit} to reach a person, but the transfer "
                                          f"failed. Apologise and offer another way to help.)")
