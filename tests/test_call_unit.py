"""The call core without sockets: the Call's parts driven through in-memory phone and model fakes
on a fast-forwarded event-loop clock (looptime), so minutes of call time take milliseconds and
every timing is exact. The socket-level tests (test_call_matrix.py and friends) cover the wire."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.call import BotLine, Call, CallerLine
from gateway.call.tools import SAY_GOODBYE
from gateway.config import Config, DtmfConfig, LimitsConfig, Persona
from gateway.logs import CallLogger
from gateway.providers.base import (ContextTurn, InputTranscript, ProviderError, ResponseDone, ResponseStarted,
                                    SpeechStarted, SpeechStopped, ToolCall)
from tests.call_fakes import MemoryModel, MemoryPhone, frame_number

pytestmark = pytest.mark.looptime


def make_call(model: MemoryModel, phone: MemoryPhone | None = None, *, new_session=None,
              limits: dict | None = None, **persona) -> tuple[Call, MemoryPhone]:
    phone = phone or MemoryPhone()
    config = Config(limits=LimitsConfig(**{"silence_timeout_seconds": 0, **(limits or {})}))
    call = Call(config=config, persona=Persona(provider="echo", name="unit", **persona), phone=phone,
                started=phone.started, session=model, new_session=new_session,
                log=CallLogger(logging.getLogger("gateway.unit"), call="CAunit"),
                clock=asyncio.get_running_loop().time)
    return call, phone


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_barge_in_clears_then_cancels_then_cuts_to_what_was_heard():
    model = MemoryModel()
    call, phone = make_call(model)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    rid = model.reply(10000, "One two three four five six seven eight nine ten.")  # streams for 2 s
    await asyncio.sleep(1.0)
    spoke_at = now()
    model.emit(SpeechStarted())
    await asyncio.sleep(0.5)

    clears = [t for t, kind, _ in phone.sent if kind == "clear"]
    assert clears == [spoke_at], "the phone is cleared the moment the caller speaks"
    assert [r for _, r in model.cancels] == [rid] and model.cancels[0][0] >= clears[0]
    assert not [1 for t, kind, _ in phone.sent if kind == "media" and t > spoke_at], "late deltas are dropped"
    (item, heard_ms), = model.truncates
    assert item == f"item_{rid}" and 900 <= heard_ms <= 1000  # what the echoed marks confirmed
    phone.hang_up()
    summary = await running
    line = summary.transcript[0]
    assert isinstance(line, BotLine) and line.interrupted and line.heard_ms == heard_ms
    assert line.heard and line.text.startswith(line.heard) and len(line.heard) < len(line.text)
    assert summary.barge_ins == 1 and summary.end_reason == "caller_hangup"


async def test_caller_speech_while_the_bot_is_silent_is_not_a_barge_in():
    model = MemoryModel()
    call, phone = make_call(model)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.emit(SpeechStarted())
    await asyncio.sleep(0.1)
    model.emit(SpeechStopped(), InputTranscript("hello?"))
    await asyncio.sleep(0.1)
    phone.hang_up()
    summary = await running
    assert "clear" not in phone.kinds() and not model.cancels and summary.barge_ins == 0
    assert summary.transcript == [CallerLine("hello?", summary.transcript[0].t)]


async def test_renewal_at_a_quiet_moment_carries_what_the_caller_heard():
    sessions: list[MemoryModel] = []

    def new_session(context):
        sessions.append(MemoryModel(context, max_session_seconds=30))
        return sessions[-1]

    first = MemoryModel(max_session_seconds=30)
    call, phone = make_call(first, new_session=new_session)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    first.emit(InputTranscript("I need help with my bill."))
    first.reply(1000, "Sure, I can help with your bill.")
    await asyncio.sleep(3)
    cut = first.reply(3000, "Let me look that up for you, it takes a moment.")
    await asyncio.sleep(0.7)
    first.emit(SpeechStarted())  # the caller talks over the second reply
    await asyncio.sleep(0.1)
    first.emit(SpeechStopped())
    assert not sessions
    await asyncio.sleep(30)  # past the session's maximum age, and quiet
    assert len(sessions) == 1 and sessions[0].connected and first.closed
    caller, bot, heard = sessions[0].context
    assert caller == ContextTurn("caller", "I need help with my bill.")
    assert bot == ContextTurn("bot", "Sure, I can help with your bill.")
    assert heard.role == "bot" and "Let me look that up for you, it takes a moment.".startswith(heard.text)
    assert 0 < len(heard.text) < len("Let me look that up for you, it takes a moment."), cut
    before = len(first.audio)
    phone.speak(b"\x01" * 480)
    await asyncio.sleep(0.1)
    assert len(first.audio) == before and sessions[0].audio == b"\x01" * 480  # audio goes to the new one
    phone.hang_up()
    summary = await running
    assert summary.sessions == 2 and sessions[0].closed


async def test_a_dropped_session_is_replaced_and_the_callers_audio_waits_in_order():
    sessions: list[MemoryModel] = []

    def new_session(context):
        sessions.append(MemoryModel(context))
        return sessions[-1]

    first = MemoryModel()
    call, phone = make_call(first, new_session=new_session)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    rid = first.reply(2000, done=False)
    await asyncio.sleep(0.2)
    first.emit(ProviderError("session_expired", "gone", fatal=True, renewable=True))
    await asyncio.sleep(0.05)
    phone.speak(bytes(range(1, 161)) * 3)  # while no session is up
    await asyncio.sleep(1.0)
    assert len(sessions) == 1 and sessions[0].audio == bytes(range(1, 161)) * 3
    assert call.conversation.active_response is None  # the lost reply was closed as incomplete
    assert call.conversation.find_turn(rid).done
    phone.hang_up()
    assert (await running).end_reason == "caller_hangup"


async def test_a_session_that_keeps_dying_ends_the_call_as_a_model_error():
    def new_session(context):
        model = MemoryModel(context)
        model.emit(ProviderError("upstream_closed", "dropped", fatal=True, renewable=True))
        return model

    first = MemoryModel()
    call, phone = make_call(first, new_session=new_session, limits={"model_reconnect_attempts": 2})
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    first.emit(ProviderError("upstream_closed", "dropped", fatal=True, renewable=True))
    summary = await asyncio.wait_for(running, 60)
    assert summary.end_reason == "model_error" and summary.error.startswith("upstream_closed")


async def test_end_call_without_a_goodbye_asks_for_one_and_hangs_up_once_it_was_heard():
    model = MemoryModel(reply_ms_to_text=800)
    call, phone = make_call(model, tools=["end_call"])
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.emit(ResponseStarted("r1"), ToolCall("r1", "c1", "end_call", '{"reason": "caller is done"}'),
               ResponseDone("r1"))
    summary = await asyncio.wait_for(running, 30)
    assert [(c, r) for c, _, r in model.tool_results] == [("c1", False)]
    assert model.texts == [SAY_GOODBYE]
    assert summary.end_reason == "bot_hangup" and phone.closed_with is not None
    assert phone.heard_ms() >= 800  # the whole goodbye went out...
    assert "clear" not in phone.kinds() and [b for b in summary.transcript if isinstance(b, BotLine)
                                             and b.text == "Goodbye!" and not b.interrupted]


async def test_end_call_after_a_spoken_goodbye_hangs_up_without_asking_again():
    model = MemoryModel()
    call, phone = make_call(model, tools=["end_call"])
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.reply(600, "Thanks for calling, goodbye!", rid="r1", done=False)
    await asyncio.sleep(0.3)
    model.emit(ToolCall("r1", "c1", "end_call", "{}"), ResponseDone("r1"))
    summary = await asyncio.wait_for(running, 30)
    assert model.texts == [] and summary.end_reason == "bot_hangup"
    assert phone.heard_ms() == 600 and phone.closed_at >= 0.1 + 0.6  # closed once all of it had played


async def test_a_silent_caller_is_reprompted_once_then_said_goodbye_to():
    model = MemoryModel(reply_ms_to_text=500)
    call, phone = make_call(model, limits={"silence_timeout_seconds": 20})
    running = asyncio.create_task(call.run())
    await asyncio.sleep(21)
    assert len(model.texts) == 1 and "still there" in model.texts[0]
    summary = await asyncio.wait_for(running, 60)
    assert len(model.texts) == 2 and "goodbye" in model.texts[1]
    assert summary.end_reason == "silence_timeout" and 40 < call.status().duration_s < 45


async def test_the_bot_wraps_up_before_the_maximum_call_length():
    model = MemoryModel(reply_ms_to_text=500)
    call, phone = make_call(model, limits={"max_call_seconds": 60, "wrap_up_seconds": 20})
    summary = await asyncio.wait_for(call.run(), 120)
    assert len(model.texts) == 1 and "time limit" in model.texts[0]
    assert summary.end_reason == "max_duration" and 40 <= call.status().duration_s < 42


async def test_keypad_shortcut_silences_the_bot_at_once_and_hangs_up():
    model = MemoryModel()
    call, phone = make_call(model, dtmf=DtmfConfig(shortcuts={"0": "end_call"}))
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.reply(10000)
    await asyncio.sleep(0.5)
    from gateway.telephony import Dtmf
    pressed_at = now()
    phone._events.put_nowait(Dtmf("0"))
    summary = await asyncio.wait_for(running, 10)
    assert [t for t, kind, _ in phone.sent if kind == "clear"] == [pressed_at]
    assert summary.end_reason == "bot_hangup" and summary.barge_ins == 1
    assert [e.text for e in summary.transcript if e.role == "dtmf"] == ["0"]


async def test_status_is_what_the_operator_api_shows():
    model = MemoryModel()
    call, phone = make_call(model)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.emit(InputTranscript("hi"))
    await asyncio.sleep(2)
    status = call.status()
    phone.hang_up()
    await running
    assert status.call_id == "CAunit" and status.caller == "+15550001111" and status.dialed == "+15550002222"
    assert status.network == "memory" and status.duration_s == 2.1 and status.last == CallerLine("hi", 0.1)


async def talked_over(reply_ms: int, **reply):
    """A call with the confirm policy whose caller starts talking 1 s into a reply of `reply_ms`."""
    from gateway.persona import BargeIn
    model = MemoryModel()
    call, phone = make_call(model, barge_in=BargeIn("confirm", min_speech_ms=300, confirm_ms=700))
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    rid = model.reply(reply_ms, **reply)
    await asyncio.sleep(1.0)
    model.emit(SpeechStarted())
    return model, phone, running, rid


def noise_burst(ms: int, seed: int = 1) -> bytes:
    import random
    import struct

    from gateway.audio import pcm16_to_ulaw
    rnd = random.Random(seed)
    return pcm16_to_ulaw(struct.pack(f"<{8 * ms}h", *(rnd.randint(-9000, 9000) for _ in range(8 * ms))))


def played_numbers(phone: MemoryPhone) -> list[int]:
    return [frame_number(frame) for _, frame in phone.played()]


async def test_confirm_policy_a_noise_burst_silences_the_bot_at_once_and_the_reply_resumes_from_what_was_heard():
    model, phone, running, _ = await talked_over(3000, numbered=True)
    spoke_at = now()
    phone.speak(noise_burst(150))
    await asyncio.sleep(0.4)
    model.emit(SpeechStopped())
    await asyncio.sleep(4)
    phone.hang_up()
    summary = await running
    clears = [t for t, kind, _ in phone.sent if kind == "clear"]
    assert clears == [spoke_at], "silent the moment the caller may be talking"
    assert not model.cancels and summary.barge_ins == 0 and not summary.transcript[0].interrupted
    played = played_numbers(phone)
    assert not [t for t, _ in phone.played() if spoke_at < t < spoke_at + 0.3], "quiet while the sound is judged"
    # Nothing lost: every frame of the reply played, in order; at most one 100 ms chunk twice.
    assert sorted(set(played)) == list(range(150)) and played == sorted(played)
    assert len(played) - 150 <= 5


async def test_confirm_policy_real_speech_silences_the_bot_at_once_and_cuts_it_after_min_speech_ms():
    from tests.phone_helpers import ulaw_tone
    model, phone, running, rid = await talked_over(10000)
    onset = now()
    for _ in range(40):  # the caller keeps talking, frame by frame
        phone.speak(ulaw_tone(180, 0.02, 6000))
        await asyncio.sleep(0.02)
    clears = [t for t, kind, _ in phone.sent if kind == "clear"]
    assert clears == [onset], "one clear, at once: the cut needs no second one"
    (cancelled_at, cancelled), = model.cancels
    assert cancelled == rid and 0.26 <= cancelled_at - onset <= 0.36  # 300 ms of speech, counted in 20 ms frames
    phone.hang_up()
    summary = await running
    assert summary.barge_ins == 1 and summary.transcript[0].interrupted
    assert not [t for t, _ in phone.played() if t > onset], "not a frame after the onset"


async def test_confirm_policy_a_caller_talking_in_bursts_is_an_interruption_and_never_talked_over():
    """Short bursts, each under min_speech_ms, with pauses between (a caller thinking aloud): the
    reply must not come back in a pause (LiveKit Agents met this: livekit/agents PR #6714)."""
    from tests.phone_helpers import ulaw_tone
    model, phone, running, rid = await talked_over(10000)
    onset = now()
    for burst in range(4):  # 200 ms of speech, then 350 ms of quiet; the model's VAD sees each onset
        if burst:
            model.emit(SpeechStarted())
        for _ in range(10):
            phone.speak(ulaw_tone(180, 0.02, 6000))
            await asyncio.sleep(0.02)
        phone.speak(b"\xff" * 160 * 17)
        await asyncio.sleep(0.35)
    (cancelled_at, _), = model.cancels
    assert cancelled_at - onset < 0.8  # the second burst decides it
    assert not [t for t, _ in phone.played() if t > onset], "never resumed into the caller's pause"
    phone.hang_up()
    assert (await running).barge_ins == 1


async def test_confirm_policy_a_sound_still_going_at_the_deadline_holds_the_reply_until_quiet():
    """Quiet-ish sound that never reaches min_speech_ms of voiced frames but goes on past confirm_ms:
    the reply waits for the caller to be quiet (RESUME_QUIET_MS), then resumes."""
    model, phone, running, _ = await talked_over(3000, numbered=True)
    spoke_at = now()
    for i in range(50):  # 1 s, frame by frame: a voiced frame every 100 ms (200 ms voiced in all)
        phone.speak(noise_burst(20) if i % 5 == 0 else b"\xff" * 160)
        if i % 5 == 0:
            ended_at = now()
        await asyncio.sleep(0.02)
    await asyncio.sleep(4)
    phone.hang_up()
    summary = await running
    resumed = min(t for t, _ in phone.played() if t > spoke_at)
    assert resumed - ended_at >= 0.28  # not before the caller had been quiet for a while
    assert summary.barge_ins == 0 and sorted(set(played_numbers(phone))) == list(range(150))


@pytest.mark.parametrize("said, cut", [("stop", True), ("mm-hm", False), ("yeah", False), ("no, the other one", True)])
async def test_confirm_policy_words_confirm_but_a_backchannel_does_not(said, cut):
    model, phone, running, _ = await talked_over(10000)
    await asyncio.sleep(0.1)
    model.emit(InputTranscript(said))  # quiet audio: only the words can confirm
    await asyncio.sleep(0.05)
    assert bool(model.cancels) is cut and phone.kinds().count("clear") == 1
    phone.hang_up()
    assert (await running).barge_ins == int(cut)


async def test_a_slow_http_tool_gets_hold_tones_instead_of_dead_air_and_they_stop_for_the_answer(monkeypatch):
    import gateway.call.tools as tools_module
    from gateway.audio import hold_tones
    from gateway.config import HttpTool
    from bench.dead_air import longest_silence

    async def slow_tool(tool, args, log, session=None):
        await asyncio.sleep(3.0)
        return {"ok": True}

    monkeypatch.setattr(tools_module, "run_http_tool", slow_tool)
    model = MemoryModel()
    phone = MemoryPhone()
    config = Config(limits=LimitsConfig(silence_timeout_seconds=0))
    call = Call(config=config, persona=Persona(provider="echo", name="unit",
                                               http_tools=[HttpTool("balance", "the balance", "http://x/")]),
                phone=phone, started=phone.started, session=model,
                log=CallLogger(logging.getLogger("gateway.unit"), call="CAunit"),
                clock=asyncio.get_running_loop().time, hold_sound=hold_tones())
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.emit(ResponseStarted("r1"), ToolCall("r1", "c1", "balance", "{}"), ResponseDone("r1"))
    asked = now()
    while not model.tool_results:
        await asyncio.sleep(0.02)
    answered = now()
    assert 2.9 <= answered - asked <= 3.2
    model.reply(1000, "Here it is.")
    await asyncio.sleep(2)
    phone.hang_up()
    summary = await running
    assert call.hold.played_ms >= 1500  # the tones filled the wait
    assert longest_silence(phone, asked, answered) <= 1000 + 100  # hold.after_ms, then no dead air
    answer = [a for t, kind, a in phone.sent if kind == "media" and t > answered + 0.35]
    assert answer and all(set(a) == {0xFF} for a in answer)  # past the lead: the answer alone, hold dropped
    assert summary.barge_ins == 0 and summary.turn_latencies_ms == []  # hold audio is not the bot's answer


async def test_the_call_limits_sleep_until_something_is_due_not_on_a_ticker():
    """A 60 s call with the silence limit on: the limits part wakes for what happens and when a
    silence is up, not ten times a second (it was 600 wake-ups here)."""
    model = MemoryModel()
    call, phone = make_call(model, limits={"silence_timeout_seconds": 30})
    waits = 0
    until = call.limits._until

    async def counted(timeout):
        nonlocal waits
        waits += 1
        return await until(timeout)
    call.limits._until = counted
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.reply(20000)  # the bot talks for 20 s, then 30 s of silence is up at ~50 s
    await asyncio.sleep(60)
    phone.hang_up()
    await running
    assert model.texts and "still there" in model.texts[0]
    assert waits <= 12
