"""The longest silence the caller hears while the bot waits on something, without and with hold
audio: a 3 s HTTP tool call, and a model session that dies and takes 3 s to come back.

Runs the real Call on the unit tests' in-memory phone and model, on a fast-forwarded clock (the
HTTP tool is replaced by a 3 s wait); silence is measured on the phone's playback timeline.

  .venv/py3.11/bin/python bench/dead_air.py
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import looptime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gateway.call.tools as tools_module  # noqa: E402
from gateway.audio import hold_tones  # noqa: E402
from gateway.call import Call  # noqa: E402
from gateway.config import Config, HttpTool, LimitsConfig, Persona  # noqa: E402
from gateway.logs import CallLogger  # noqa: E402
from gateway.providers.base import ProviderError, ResponseDone, ToolCall  # noqa: E402
from tests.call_fakes import MemoryModel, MemoryPhone  # noqa: E402


def longest_silence(phone: MemoryPhone, start: float, end: float) -> float:
    """Longest stretch in [start, end] with nothing playing at the phone (played in real time)."""
    playing, until = [], 0.0
    for t, kind, audio in phone.sent:
        if kind == "clear":
            until = t
        if kind == "media":
            begin = max(t, until)
            until = begin + len(audio) / 8000
            playing.append((begin, until))
    longest, cursor = 0.0, start
    for a, b in playing:
        if b <= start or a >= end:
            continue
        longest = max(longest, min(a, end) - cursor)
        cursor = max(cursor, b)
    return max(longest, end - cursor) * 1000


async def tool_call(hold: bytes | None) -> float:
    async def slow_tool(tool, args, log, session=None):
        await asyncio.sleep(3.0)
        return {"ok": True, "balance": "42.00"}

    tools_module.run_http_tool = slow_tool
    loop = asyncio.get_running_loop()
    model, phone = MemoryModel(), MemoryPhone()
    persona = Persona(provider="echo", name="bench", http_tools=[HttpTool("balance", "the balance", "http://x/")])
    call = Call(config=Config(limits=LimitsConfig(silence_timeout_seconds=0)), persona=persona, phone=phone,
                started=phone.started, session=model, log=CallLogger(logging.getLogger("bench"), call="CA1"),
                clock=loop.time, hold_sound=hold)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.reply(800, "Let me check that.", rid="r1", done=False)  # what the bot says before the tool
    await asyncio.sleep(0.3)
    model.emit(ToolCall("r1", "c1", "balance", "{}"), ResponseDone("r1"))
    started = loop.time()
    while not model.tool_results:
        await asyncio.sleep(0.02)
    model.reply(1000, "Your balance is 42 dollars.")
    answered = loop.time()
    await asyncio.sleep(2)
    phone.hang_up()
    await running
    return longest_silence(phone, started, answered + 0.3)


async def reconnect(hold: bytes | None) -> float:
    loop = asyncio.get_running_loop()

    class SlowModel(MemoryModel):
        async def connect(self):
            await asyncio.sleep(2.8)
            await super().connect()

    model, phone = MemoryModel(), MemoryPhone()
    call = Call(config=Config(limits=LimitsConfig(silence_timeout_seconds=0)),
                persona=Persona(provider="echo", name="bench"), phone=phone, started=phone.started, session=model,
                new_session=lambda context: SlowModel(context),
                log=CallLogger(logging.getLogger("bench"), call="CA2"), clock=loop.time, hold_sound=hold)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.reply(600, "One moment.")
    await asyncio.sleep(1.0)
    model.emit(ProviderError("upstream_closed", "dropped", fatal=True, renewable=True))
    lost = loop.time()
    while call.model.sessions < 2:
        await asyncio.sleep(0.02)
    back = loop.time()
    call.model.session.reply(800, "Sorry about that. Where were we?")
    await asyncio.sleep(2)
    phone.hang_up()
    await running
    return longest_silence(phone, lost, back + 0.3)


def main() -> None:
    logging.disable(logging.CRITICAL)
    print(f"{'while':34}{'hold: none':>14}{'hold: tones':>14}")
    for name, scenario in (("a 3 s HTTP tool call", tool_call), ("a model session back after ~3 s", reconnect)):
        row = f"{name:34}"
        for hold in (None, hold_tones()):
            loop = looptime.new_event_loop()
            try:
                row += f"{loop.run_until_complete(scenario(hold)):>11.0f} ms"
            finally:
                loop.close()
        print(row)


if __name__ == "__main__":
    main()
