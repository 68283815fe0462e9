"""The call-level test matrix: every test here runs once per realtime model (GLM, OpenAI, Qwen,
Gemini).

Real sockets on 127.0.0.1, protocol-faithful fake model servers, on the fast-forwarded event-loop
clock (looptime; gateway/clock.py): every timing is exact and a call takes milliseconds. What is
about timing itself runs once more on the real clock at the end of this module. The call code
has no idea which model it talks to; these tests prove it behaves the same with each. What is
specific to one model's wire protocol lives in test_call_glm.py / test_call_openai.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import numpy as np
import pytest

from gateway.web_state import CALLS, RECENT
from gateway.audio import PHONE_RATE
from tests.audio_check import dominant_hz, max_discontinuity, samples, ulaw_samples, voiced_runs
from tests.models import CORE_ONLY
from tests.phone_helpers import dial, ended, logged, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime


async def test_caller_440hz_reaches_the_model_at_440hz(make_gateway, model):
    gw = await model.gateway(make_gateway)
    phone = await dial(gw.url, bot=model.quiet)
    await phone.silence(0.3)
    await phone.say(ulaw_tone(440, 1.0))
    await phone.silence(0.3)
    await phone.hangup()
    s = model.fake.sessions[0]
    assert not s.errors_sent, s.errors_sent
    rate = s.input_rate  # GLM, Qwen, Gemini: 16 kHz PCM; OpenAI: 8 kHz mu-law as it came from the phone
    x = samples(bytes(s.audio))
    start, stop = max(voiced_runs(x, rate), key=lambda r: r[1] - r[0])
    assert (stop - start) / rate == pytest.approx(1.0, abs=0.05)
    assert dominant_hz(x[start:stop], rate) == pytest.approx(440, rel=0.02)
    assert max_discontinuity(x[start + rate // 20:stop - rate // 20], rate, 440) < 0.1  # no clicks at frame edges


async def test_greeting_first_and_model_tone_reaches_caller_clean(make_gateway, model):
    """The greeting (a 1 kHz tone from the model) is the first thing the caller hears, arrives at
    8 kHz at 1 kHz, unbroken, without clicks, and is paced (short lead at Twilio)."""
    model.fake.greeting_tone_hz = 1000
    model.fake.reply_seconds = 1.5
    gw = await model.gateway(make_gateway)
    phone = await dial(gw.url, bot=model.greeter)
    await phone.silence(2.5)
    await phone.hangup()
    assert model.fake.sessions[0].responses[0]["kind"] == "greeting"
    heard = ulaw_samples(phone.result.heard)
    runs = voiced_runs(heard, PHONE_RATE)
    assert len(runs) == 1, runs  # one unbroken tone: no gaps at delta or frame edges
    start, stop = runs[0]
    assert (stop - start) / PHONE_RATE == pytest.approx(1.5, abs=0.05)
    assert dominant_hz(heard[start:stop], PHONE_RATE) == pytest.approx(1000, rel=0.005)
    assert max_discontinuity(heard[start + 80:stop - 80], PHONE_RATE, 1000) < 0.15
    # Pacing: the model sent 1.5 s in ~0.2 s, but at no time was more than the lead (200 ms) plus
    # one chunk (100 ms) plus a little scheduling slack ahead of real time at the phone.
    t = np.array(phone.result.media_times) - phone.result.media_times[0]
    ahead = np.cumsum(phone.result.media_sizes) / 8000 - t
    assert ahead.max() < 0.2 + 0.1 + 0.06, ahead.max()
    assert max(phone.result.media_sizes) == 800 and len(t) <= 1.5 / 0.1 + 1  # 100 ms chunks
    assert phone.result.first_audio_at - phone.result.start_sent_at < 1.0
    assert not phone.result.violations
    summary = await ended(gw, phone)
    greeting = summary.transcript[0]
    assert greeting.role == "bot" and greeting.text == "Hello, thanks for calling Northwind."
    assert not greeting.interrupted
    assert not model.fake.sessions[0].errors_sent


async def test_barge_in_clears_within_a_frame_cancels_and_cuts_transcript(make_gateway, model):
    model.fake.reply_seconds = 4.0
    model.fake.delta_interval = 0.4  # 0.5 s deltas a bit faster than real time: still generating at barge-in
    gw = await model.gateway(make_gateway)
    phone = await dial(gw.url, bot=model.greeter)
    await phone.silence(1.2)  # ~1 s of greeting heard
    await phone.say(ulaw_tone(440, 0.6))
    await phone.silence(0.1)
    s = model.fake.sessions[0]
    assert s.speech_started_at and phone.result.clears, "barge-in should have cleared the phone"
    delay = phone.result.clears[0] - s.speech_started_at[0]
    assert 0 <= delay < 0.020, f"clear {delay * 1000:.1f} ms after speech_started"
    # The reply stopped at once: cancelled by the gateway, or (Gemini) cut by the service itself.
    assert s.cancels and s.cancels[0] - s.speech_started_at[0] < 0.05
    greeting = s.responses[0]
    assert greeting["kind"] == "greeting" and greeting["status"] == "cancelled"
    if model.client_cancel:
        assert greeting["late_deltas"] >= 1  # the fake kept talking for a moment after the cancel...
    clear_at = phone.result.clears[0]
    late = [t for t in phone.result.media_times if clear_at < t < clear_at + 0.5]
    assert not late, "...and none of it reached the caller"
    await phone.silence(1.5)  # the fake answers the caller's speech
    await phone.hangup()
    summary = await ended(gw, phone)
    bot = [e for e in summary.transcript if e.role == "bot"]
    cut = bot[0]
    assert cut.interrupted and cut.text == "Hello, thanks for calling Northwind."
    assert cut.heard and cut.text.startswith(cut.heard) and len(cut.heard) < len(cut.text)
    assert 700 <= cut.heard_ms <= 1400  # ~1.2 s after connect, minus set-up and the lead
    assert summary.barge_ins == 1
    assert any(e.role == "caller" for e in summary.transcript)
    assert len(bot) == 2 and not bot[1].interrupted  # the reply to the caller, played whole
    assert not phone.result.violations
    assert not s.errors_sent, s.errors_sent  # no cancel of an idle response, no truncate overshoot


async def test_speech_with_nothing_playing_is_not_a_barge_in(make_gateway, model):
    gw = await model.gateway(make_gateway)
    phone = await dial(gw.url, bot=model.quiet)
    await phone.silence(0.3)
    await phone.say(ulaw_tone(440, 0.5))
    await phone.silence(0.3)
    s = model.fake.sessions[0]
    assert s.speech_started_at, "the caller's speech reached the model (its VAD fired)"
    heard = samples(bytes(s.audio))
    assert abs(dominant_hz(heard[-int(0.8 * s.input_rate):], s.input_rate) - 440) < 5  # the tone itself
    assert not phone.result.clears and not s.cancels
    assert not s.errors_sent
    await phone.hangup()


async def test_talking_again_after_the_reply_played_is_not_a_barge_in(make_gateway, model):
    """The reply finished and was heard: the caller's next words start a new turn; nothing is
    cancelled (that would be `response_cancel_not_active`) or truncated."""
    gw = await model.gateway(make_gateway)
    phone = await dial(gw.url, bot=model.quiet)
    await phone.say(ulaw_tone(440, 0.4))
    await wait_for(lambda: model.fake.sessions[0].responses
                   and model.fake.sessions[0].responses[0]["status"] == "completed", 4, "the reply")
    await phone.silence(2.0)  # the 1.5 s reply plays out
    await phone.say(ulaw_tone(440, 0.4))
    await phone.silence(0.8)
    await phone.hangup()
    s = model.fake.sessions[0]
    assert not phone.result.clears and not s.cancels and not s.errors_sent
    assert not [e for e in s.events if e.get("type") in ("conversation.item.truncate", "conversation.item.delete")]
    summary = await ended(gw, phone)
    assert summary.barge_ins == 0
    assert [e.role for e in summary.transcript][:3] == ["caller", "bot", "caller"]


async def test_caller_hangup_closes_upstream_within_a_second(make_gateway, model):
    gw = await model.gateway(make_gateway)
    phone = await dial(gw.url, bot=model.greeter)
    await phone.silence(0.5)
    s = model.fake.sessions[0]
    t = time.monotonic()
    await phone.hangup()
    await asyncio.wait_for(s.closed.wait(), 1.0)
    assert time.monotonic() - t < 1.0
    assert (await ended(gw, phone)).end_reason == "caller_hangup"
    assert not gw.app[CALLS]


async def test_upstream_drop_mid_sentence_reconnects_with_the_conversation(make_gateway, model, caplog):
    """The model socket dies mid-greeting (no close frame): a new session opens with the
    conversation so far, the caller's audio meanwhile is kept, and the call goes on."""
    model.fake.reply_seconds = 3.0
    model.fake.fail_after_deltas = 2
    model.fake.fail_first_session_only = True
    gw = await model.gateway(make_gateway)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot=model.greeter)
        await wait_for(lambda: len(model.fake.sessions) == 2 and model.fake.sessions[1].session_config, 4,
                       "a second session")
        first, second = model.fake.sessions
        gap = second.events[0]["_t"] - max(e["_t"] for e in first.events)
        await phone.silence(1.0)
        await phone.say(ulaw_tone(440, 0.5))
        await wait_for(lambda: second.responses and second.responses[-1]["status"] == "completed", 4,
                       "the reply from the new session")
        await phone.hangup()
        summary = await ended(gw, phone)
    assert summary.end_reason == "caller_hangup" and summary.sessions == 2
    assert logged(caplog, "model_session_renewed", "why=model:upstream_closed")
    assert gap < 1.0, f"{gap:.2f} s without a model"
    assert any(e.role == "caller" for e in summary.transcript)
    assert not first.errors_sent and not second.errors_sent


async def test_a_model_that_stays_down_ends_the_call_with_the_apology(make_gateway, model, caplog):
    model.fake.reply_seconds = 3.0
    model.fake.fail_after_deltas = 2
    gw = await model.gateway(make_gateway, extra="limits:\n  model_reconnect_attempts: 2\n")
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot=model.greeter)
        await wait_for(lambda: model.fake.sessions, 3, "the first session")
        model.fake.api_key = "wrongid.wrongsecretwrong"  # from now on every reconnection is refused
        assert await phone.wait_closed(6), "the gateway should give up and close the stream (TwiML apologises)"
        summary = await ended(gw, phone)
    assert phone.result.closed_by == "gateway" and phone.result.close_code == 1000
    assert summary.end_reason == "model_error"
    assert logged(caplog, "model_reconnect_gave_up", f"call={phone.call_sid}")
    assert len(model.fake.rejected) == 2  # two attempts, then the apology
    assert "Sorry, we are having technical difficulties" in phone.result.twiml  # what Twilio then says
    assert not gw.app[CALLS]


async def test_fatal_model_error_ends_call(make_gateway, model, caplog):
    model.fake.fatal_error_on_update = model.fatal_code
    gw = await model.gateway(make_gateway)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot=model.greeter)
        assert await phone.wait_closed(3)
        summary = await ended(gw, phone)
    assert summary.end_reason == "model_error"
    assert logged(caplog, model.fatal_code, f"call={phone.call_sid}")


async def test_rejected_key_fails_the_call_without_leaking_it(make_gateway, model, gateway_log):
    gw = await model.gateway(make_gateway, env={model.key_env: model.wrong_key})
    phone = await dial(gw.url, bot=model.greeter)
    assert await phone.wait_closed(5)
    summary = await ended(gw, phone)
    assert summary.end_reason == "model_error"
    assert model.fake.rejected
    text = gateway_log.getvalue()
    assert "event=model_connect_failed" in text and model.refusal in text
    assert model.key_header in text  # the fake's websockets server dumps the upgrade's headers: scrubbed
    assert "wrongsecret123456" not in text and "eyJ" not in text


async def test_no_secret_in_any_log_line(make_gateway, model, gateway_log):
    gw = await model.gateway(make_gateway)
    phone = await dial(gw.url, bot=model.greeter)
    await phone.silence(0.5)
    await phone.say(ulaw_tone(440, 0.5))
    await phone.silence(0.8)
    await phone.hangup()
    await ended(gw, phone)
    text = gateway_log.getvalue()
    assert "event=call_ended" in text and "event=barge_in" in text
    assert model.secret not in text and "eyJ" not in text


CALL_TASK_PREFIXES = ("phone:", "model:", "playout:", "renew:", "limits:", "tool:", "dtmf:", "glm-", "openai-", "qwen-",
                      "gemini-", "echo-")


async def test_no_task_or_socket_outlives_its_calls(make_gateway, model):
    gw = await model.gateway(make_gateway)
    phones = [await dial(gw.url, bot=bot) for bot in (model.greeter, "echo", model.quiet)]
    await phones[0].silence(0.5)
    assert any(t.get_name().startswith(CALL_TASK_PREFIXES) for t in asyncio.all_tasks())
    for p in phones:
        await p.hangup()
    await wait_for(lambda: len(gw.app[RECENT]) == 3, 3, "all calls to end")
    await asyncio.sleep(0.05)
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(CALL_TASK_PREFIXES)]
    assert not left, left
    assert all(s.closed.is_set() for s in model.fake.sessions)


async def test_shutdown_ends_live_calls_with_reason(make_gateway, model):
    gw = await model.gateway(make_gateway)
    phone = await dial(gw.url, bot=model.greeter)
    await phone.silence(0.3)
    await gw.runner.shutdown()
    assert await phone.wait_closed(3)
    assert phone.result.close_code == 1001
    summary = await ended(gw, phone)
    assert summary.end_reason == "shutdown"
    assert model.fake.sessions[0].closed.is_set()


async def test_garbage_from_the_model_is_dropped_and_the_call_goes_on(make_gateway, model, caplog):
    gw = await model.gateway(make_gateway)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot=model.quiet)
        await wait_for(lambda: model.fake.sessions and model.fake.sessions[0].session_config, 3, "session")
        for raw in ["not json", b"\x00\x01binary", "[1, 2]", '{"type": "response.done", "response": "x"}',
                    '{"type": "response.created", "response": [1]}', '{"type": "error", "error": "text"}',
                    '{"type": "response.output_audio.delta", "delta": 5}', '{"no": "type"}']:
            await model.fake.broadcast(raw)
        await phone.say(ulaw_tone(440, 0.5))
        await wait_for(lambda: phone.result.media_bytes > 50 * 160, 4, "1 s of the reply")
        await phone.hangup()
        summary = await ended(gw, phone)
    assert summary.end_reason == "caller_hangup"
    assert [e.role for e in summary.transcript][:2] == ["caller", "bot"]
    assert logged(caplog, "model_bad_event", f"call={phone.call_sid}")


# What timing itself is about, once more on the real clock (real 20 ms pacing, real scheduling, the
# sockets' real delays), for two models: the rest of the matrix is exact on the fast-forwarded one.
@pytest.mark.looptime(False)
@pytest.mark.parametrize(**CORE_ONLY)
async def test_on_the_real_clock_the_greeting_is_paced_clean_and_first(make_gateway, model):
    await test_greeting_first_and_model_tone_reaches_caller_clean(make_gateway, model)


@pytest.mark.looptime(False)
@pytest.mark.parametrize(**CORE_ONLY)
async def test_on_the_real_clock_a_barge_in_clears_within_a_frame(make_gateway, model):
    await test_barge_in_clears_within_a_frame_cancels_and_cuts_transcript(make_gateway, model)


@pytest.mark.looptime(False)
@pytest.mark.parametrize(**CORE_ONLY)
async def test_on_the_real_clock_440hz_arrives_at_440hz(make_gateway, model):
    await test_caller_440hz_reaches_the_model_at_440hz(make_gateway, model)
