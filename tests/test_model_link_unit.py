"""The call core's side of the newer model seams, without sockets on the looptime clock: a session
end the service announces (Gemini's goAway) renews the session at the next quiet moment, or just
before that end, and the fresh session takes over from the old one (`Provider.carry_over`: Gemini's
resumption handle); a model that cuts its own reply for the caller (`SpeechStarted(interrupted)`)
clears the phone at once whatever the barge-in policy."""

from __future__ import annotations

import asyncio

import pytest

from gateway.persona import BargeIn
from gateway.providers.base import ResponseDone, SessionEnding, SpeechStarted
from tests.call_fakes import MemoryModel
from tests.test_call_unit import make_call, now

pytestmark = pytest.mark.looptime


class ResumableModel(MemoryModel):
    """A session that continues its predecessor on the service side (like Gemini's handles)."""

    def __init__(self, context=(), **kw):
        super().__init__(context, **kw)
        self.previous: MemoryModel | None = None

    def carry_over(self, previous) -> None:
        self.previous = previous


async def test_an_announced_end_renews_at_the_next_quiet_moment_carrying_the_session_over():
    sessions: list[ResumableModel] = []

    def new_session(context):
        sessions.append(ResumableModel(context, max_session_seconds=600))
        return sessions[-1]

    first = ResumableModel(max_session_seconds=600)
    call, phone = make_call(first, new_session=new_session)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    first.reply(3000, "A reply of three seconds.")
    await asyncio.sleep(0.5)
    first.emit(SessionEnding(20.0))  # goAway: about 20 s left
    await asyncio.sleep(1.0)
    assert not sessions, "not while the bot is talking"
    await asyncio.sleep(3.0)  # the reply has played: a quiet moment
    assert len(sessions) == 1 and sessions[0].connected and first.closed
    assert sessions[0].previous is first  # e.g. the resumption handle goes to the new session
    phone.hang_up()
    summary = await running
    assert summary.sessions == 2


async def test_an_announced_end_renews_before_it_even_if_nobody_is_ever_quiet():
    sessions: list[ResumableModel] = []

    def new_session(context):
        sessions.append(ResumableModel(context, max_session_seconds=600))
        return sessions[-1]

    first = ResumableModel(max_session_seconds=600)
    call, phone = make_call(first, new_session=new_session)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    first.emit(SpeechStarted())  # the caller talks on and on
    first.emit(SessionEnding(10.0))
    t0 = now()
    await wait_until(lambda: sessions, 15)
    assert 6.5 <= now() - t0 <= 7.5  # the margin before the announced end (3 s), not at the end
    phone.hang_up()
    await running


@pytest.mark.parametrize("policy", ["immediate", "confirm"])
async def test_the_models_own_interruption_clears_at_once_whatever_the_policy(policy):
    model = MemoryModel()
    call, phone = make_call(model, barge_in=BargeIn(policy=policy))
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    rid = model.reply(10000, "One two three four five six seven eight nine ten.")
    await asyncio.sleep(1.0)
    spoke_at = now()
    model.emit(SpeechStarted(interrupted=True), ResponseDone(rid, "cancelled"))
    await asyncio.sleep(0.5)
    assert [t for t, kind, _ in phone.sent if kind == "clear"] == [spoke_at]
    assert not [1 for t, kind, _ in phone.sent if kind == "media" and t > spoke_at]
    phone.hang_up()
    summary = await running
    assert summary.barge_ins == 1 and summary.transcript[0].interrupted


async def wait_until(condition, timeout: float) -> None:
    deadline = now() + timeout
    while not condition():
        assert now() < deadline, "timed out"
        await asyncio.sleep(0.05)
