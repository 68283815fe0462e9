"""Helpers for call-level tests: dial the gateway with the simulated phone, wait on conditions."""

from __future__ import annotations

import asyncio
from typing import Callable

from gateway.audio import PHONE_RATE, pcm16_to_ulaw, tone
from gateway.phone_sim import SimulatedPhone


OPEN_PHONES: list[SimulatedPhone] = []  # closed by the autouse fixture in conftest
# Gateways started with a Twilio auth token check signatures; phones dialing them sign like Twilio.
AUTH_TOKENS: dict[str, str] = {}


def new_phone(gw_url: str, bot: str | None = None, **kw) -> SimulatedPhone:
    kw.setdefault("auth_token", AUTH_TOKENS.get(gw_url, ""))
    phone = SimulatedPhone(gw_url, bot=bot, **kw)
    OPEN_PHONES.append(phone)
    return phone


async def dial(gw_url: str, bot: str | None = None, **kw) -> SimulatedPhone:
    phone = new_phone(gw_url, bot, **kw)
    await phone.dial()
    await phone.connect()
    return phone


async def wait_for(cond: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()  # its clock: fast-forwarded in looptime tests, else real time
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def ulaw_tone(hz: float, seconds: float, amplitude: int = 8000) -> bytes:
    return pcm16_to_ulaw(tone(hz, seconds, PHONE_RATE, amplitude))


def logged(caplog, *parts: str) -> bool:
    return any(all(p in r.getMessage() for p in parts) for r in caplog.records)


def summary_of(gw, phone):
    """The finished call's summary (the gateway keeps the last ones in app[RECENT])."""
    from gateway.web_state import RECENT
    return next(s for s in gw.app[RECENT] if _is_call(s, phone))


def _is_call(summary, phone) -> bool:
    """The summary of `phone`'s call (AudioSocket: a UUID that picks the bot gets a per-call suffix)."""
    return summary.call_id == phone.call_sid or summary.call_id.startswith(phone.call_sid + ".")


async def ended(gw, phone, timeout: float = 3.0):
    """Wait until the gateway has finished `phone`'s call; its summary."""
    from gateway.web_state import RECENT
    await wait_for(lambda: any(_is_call(s, phone) for s in gw.app[RECENT]), timeout, "the call to end")
    return summary_of(gw, phone)
