"""A phone call bridged to (fake) GLM-Realtime: real sockets on 127.0.0.1, real 20 ms timing."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
import wave

import numpy as np
import pytest

from gateway.app import CALLS, RECENT
from gateway.audio import PHONE_RATE
from tests.audio_check import dominant_hz, max_discontinuity, samples, ulaw_samples, voiced_runs
from tests.conftest import GLM_KEY
from tests.phone_helpers import dial, logged, ulaw_tone, wait_for


def summary_of(gw, phone):
    return next(s for s in gw.app[RECENT] if s.call_id == phone.call_sid)


async def ended(gw, phone, timeout: float = 3.0):
    await wait_for(lambda: any(s.call_id == phone.call_sid for s in gw.app[RECENT]), timeout, "the call to end")
    return summary_of(gw, phone)


async def test_session_update_and_jwt_are_what_glm_expects(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    phone = await dial(gw.url, bot="support")  # the shipped customer-service persona
    await wait_for(lambda: fake_glm.sessions and fake_glm.sessions[0].session_config, 3, "session.update")
    s = fake_glm.sessions[0]
    assert s.jwt_header == {"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"} or \
        {k: s.jwt_header[k] for k in ("alg", "sign_type")} == {"alg": "HS256", "sign_type": "SIGN"}
    assert s.jwt_claims["api_key"] == GLM_KEY.split(".")[0]
    assert abs(s.jwt_claims["timestamp"] / 1000 - time.time()) < 60 and s.jwt_claims["exp"] > time.time()
    cfg = s.session_config
    assert cfg["turn_detection"] == {"type": "server_vad"}
    assert cfg["input_audio_format"] == "wav" and cfg["output_audio_format"] == "pcm"
    assert cfg["beta_fields"]["chat_mode"] == "audio"
    assert cfg["model"] == "glm-realtime-flash" and cfg["voice"] == "tongtong"
    assert cfg["tools"] == [] and "北风" in cfg["instructions"]
    assert cfg["greeting_config"]["enable"] is True
    await phone.hangup()
    assert not s.errors_sent


async def test_caller_440hz_reaches_glm_as_16k_wav_at_440hz(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    phone = await dial(gw.url, bot="glm-quiet")
    await phone.silence(0.3)
    await phone.say(ulaw_tone(440, 1.0))
    await phone.silence(0.3)
    await phone.hangup()
    s = fake_glm.sessions[0]
    assert not s.errors_sent, s.errors_sent  # every append was a valid 16 kHz WAV file
    assert s.input_rate == 16000
    x = samples(bytes(s.audio))
    start, stop = max(voiced_runs(x, 16000), key=lambda r: r[1] - r[0])
    assert (stop - start) / 16000 == pytest.approx(1.0, abs=0.05)
    assert dominant_hz(x[start:stop], 16000) == pytest.approx(440, rel=0.02)
    assert max_discontinuity(x[start + 800:stop - 800], 16000, 440) < 0.1  # no clicks at frame edges
    appends = [e for e in s.events if e["type"] == "input_audio_buffer.append"]
    with wave.open(io.BytesIO(base64.b64decode(appends[0]["audio"]))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.getnframes() == 1600  # 100 ms per append, as GLM recommends
    span = appends[-1]["_t"] - appends[0]["_t"]
    assert len(appends) / max(span, 1e-3) < 50  # GLM's limit: at most 50 appends a second


async def test_greeting_first_and_model_tone_reaches_caller_clean(make_gateway, fake_glm):
    """The greeting (a 1 kHz tone at 24 kHz from the model) is the first thing the caller hears,
    arrives at 8 kHz at 1 kHz, unbroken, without clicks, and is paced (short lead at Twilio)."""
    fake_glm.greeting_tone_hz = 1000
    fake_glm.reply_seconds = 1.5
    gw = await make_gateway(fake_glm)
    phone = await dial(gw.url, bot="glm-greeter")
    await phone.silence(2.5)
    await phone.hangup()
    assert fake_glm.sessions[0].responses[0]["kind"] == "greeting"
    heard = ulaw_samples(phone.result.heard)
    runs = voiced_runs(heard, PHONE_RATE)
    assert len(runs) == 1, runs  # one unbroken tone: no gaps at delta or frame edges
    start, stop = runs[0]
    assert (stop - start) / PHONE_RATE == pytest.approx(1.5, abs=0.05)
    assert dominant_hz(heard[start:stop], PHONE_RATE) == pytest.approx(1000, rel=0.005)
    assert max_discontinuity(heard[start + 80:stop - 80], PHONE_RATE, 1000) < 0.15
    # Pacing: the model sent 1.5 s in ~0.2 s, but at no time was more than the lead (200 ms)
    # plus a little scheduling slack ahead of real time at the phone.
    t = np.array(phone.result.media_times) - phone.result.media_times[0]
    ahead = (np.arange(1, len(t) + 1) * 0.02) - t
    assert ahead.max() < 0.2 + 0.06, ahead.max()
    assert phone.result.first_audio_at - phone.result.start_sent_at < 1.0
    assert not phone.result.violations
    summary = await ended(gw, phone)
    greeting = summary.transcript[0]
    assert greeting["role"] == "bot" and greeting["text"] == "Hello, thanks for calling Northwind."
    assert not greeting["interrupted"]


async def test_greeting_by_response_create(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm, extra="providers:\n  glm:\n    greeting: response_create\n")
    phone = await dial(gw.url, bot="glm-greeter")
    await wait_for(lambda: phone.result.first_audio_at is not None, 3, "greeting audio")
    s = fake_glm.sessions[0]
    types = [e["type"] for e in s.events]
    assert "greeting_config" not in s.session_config
    assert types.index("conversation.item.create") < types.index("response.create")
    item = next(e for e in s.events if e["type"] == "conversation.item.create")["item"]
    assert "Hello, thanks for calling Northwind." in item["content"][0]["text"]
    await phone.hangup()


async def test_barge_in_clears_within_a_frame_cancels_and_cuts_transcript(make_gateway, fake_glm):
    fake_glm.reply_seconds = 4.0
    fake_glm.delta_interval = 0.4  # 0.5 s deltas a bit faster than real time: still generating at barge-in
    gw = await make_gateway(fake_glm)
    phone = await dial(gw.url, bot="glm-greeter")
    await phone.silence(1.2)  # ~1 s of greeting heard
    await phone.say(ulaw_tone(440, 0.6))
    await phone.silence(0.1)
    s = fake_glm.sessions[0]
    assert s.speech_started_at and phone.result.clears, "barge-in should have cleared the phone"
    delay = phone.result.clears[0] - s.speech_started_at[0]
    assert 0 <= delay < 0.020, f"clear {delay * 1000:.1f} ms after speech_started"
    assert s.cancels and s.cancels[0] - s.speech_started_at[0] < 0.05
    greeting = s.responses[0]
    assert greeting["kind"] == "greeting" and greeting["status"] == "cancelled"
    assert greeting["late_deltas"] >= 1  # the fake kept talking for a moment after the cancel...
    clear_at = phone.result.clears[0]
    late = [t for t in phone.result.media_times if clear_at < t < clear_at + 0.5]
    assert not late, "...and none of it reached the caller"
    await phone.silence(1.5)  # the fake answers the caller's speech
    await phone.hangup()
    summary = await ended(gw, phone)
    bot = [e for e in summary.transcript if e["role"] == "bot"]
    cut = bot[0]
    assert cut["interrupted"] and cut["text"] == "Hello, thanks for calling Northwind."
    assert cut["heard"] and cut["text"].startswith(cut["heard"]) and len(cut["heard"]) < len(cut["text"])
    assert 700 <= cut["heard_ms"] <= 1400  # ~1.2 s after connect, minus set-up and the lead
    assert summary.barge_ins == 1
    assert any(e["role"] == "caller" for e in summary.transcript)
    assert len(bot) == 2 and not bot[1]["interrupted"]  # the reply to the caller, played whole
    assert not phone.result.violations


async def test_speech_with_nothing_playing_is_not_a_barge_in(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    phone = await dial(gw.url, bot="glm-quiet")
    await phone.silence(0.3)
    await phone.say(ulaw_tone(440, 0.5))
    await phone.silence(0.3)
    assert not phone.result.clears and not fake_glm.sessions[0].cancels
    assert not [e for e in fake_glm.sessions[0].errors_sent if e["error"].get("code") == "response_cancel_not_active"]
    await phone.hangup()


async def test_caller_hangup_closes_upstream_within_a_second(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    phone = await dial(gw.url, bot="glm-greeter")
    await phone.silence(0.5)
    s = fake_glm.sessions[0]
    t = time.monotonic()
    await phone.hangup()
    await asyncio.wait_for(s.closed.wait(), 1.0)
    assert time.monotonic() - t < 1.0
    assert (await ended(gw, phone)).end_reason == "caller_hangup"
    assert not gw.app[CALLS]


async def test_upstream_drop_mid_sentence_ends_call_cleanly(make_gateway, fake_glm, caplog):
    fake_glm.reply_seconds = 3.0
    fake_glm.fail_after_deltas = 2
    gw = await make_gateway(fake_glm)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="glm-greeter")
        assert await phone.wait_closed(3), "the gateway should close the stream (TwiML then says sorry)"
        summary = await ended(gw, phone)
    assert phone.result.closed_by == "gateway" and phone.result.close_code == 1000
    assert summary.end_reason == "model_error"
    assert logged(caplog, "model_failed", f"call={phone.call_sid}")
    assert not gw.app[CALLS]


async def test_fatal_glm_error_ends_call(make_gateway, fake_glm, caplog):
    fake_glm.fatal_error_on_update = "1113"
    gw = await make_gateway(fake_glm)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="glm-greeter")
        assert await phone.wait_closed(3)
        summary = await ended(gw, phone)
    assert summary.end_reason == "model_error"
    assert logged(caplog, "code=1113")


async def test_silent_upstream_is_detected_by_heartbeat_watchdog(make_gateway, fake_glm, caplog):
    gw = await make_gateway(fake_glm, extra="providers:\n  glm:\n    heartbeat_timeout_seconds: 0.6\n")
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="glm-quiet")
        await wait_for(lambda: fake_glm.sessions and fake_glm.sessions[0].session_config, 3, "session")
        fake_glm.stall = True
        assert await phone.wait_closed(4)
        summary = await ended(gw, phone)
    assert summary.end_reason == "model_error"
    assert logged(caplog, "heartbeat_timeout")


async def test_rejected_key_fails_the_call_without_leaking_it(make_gateway, fake_glm, gateway_log):
    gw = await make_gateway(fake_glm, env={"ZHIPU_API_KEY": "wrongid.wrongsecret123456"})
    phone = await dial(gw.url, bot="glm-greeter")
    assert await phone.wait_closed(5)
    summary = await ended(gw, phone)
    assert summary.end_reason == "model_error"
    assert fake_glm.rejected
    text = gateway_log.getvalue()
    assert "event=model_connect_failed" in text and "HTTP 401" in text
    assert "Authorization: Bearer ***" in text  # websockets' header dump, scrubbed
    assert "wrongsecret123456" not in text and "eyJ" not in text


async def test_raw_key_auth_mode(make_gateway, fake_glm):
    fake_glm.auth = "key"
    gw = await make_gateway(fake_glm, extra="providers:\n  glm:\n    auth: key\n")
    phone = await dial(gw.url, bot="glm-greeter")
    await wait_for(lambda: phone.result.first_audio_at is not None, 3, "greeting over raw-key auth")
    assert fake_glm.sessions[0].auth_header == f"Bearer {GLM_KEY}"
    await phone.hangup()


async def test_no_secret_in_any_log_line(make_gateway, fake_glm, gateway_log):
    gw = await make_gateway(fake_glm)
    phone = await dial(gw.url, bot="glm-greeter")
    await phone.silence(0.5)
    await phone.say(ulaw_tone(440, 0.5))
    await phone.silence(0.8)
    await phone.hangup()
    await ended(gw, phone)
    text = gateway_log.getvalue()
    assert "event=call_ended" in text and "event=barge_in" in text
    assert GLM_KEY.split(".")[1] not in text and "eyJ" not in text


CALL_TASK_PREFIXES = ("phone:", "model:", "playout:", "glm-", "echo-")


async def test_no_task_or_socket_outlives_its_calls(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    phones = [await dial(gw.url, bot=bot) for bot in ("glm-greeter", "echo", "glm-quiet")]
    await phones[0].silence(0.5)
    assert any(t.get_name().startswith(CALL_TASK_PREFIXES) for t in asyncio.all_tasks())
    for p in phones:
        await p.hangup()
    await wait_for(lambda: len(gw.app[RECENT]) == 3, 3, "all calls to end")
    await asyncio.sleep(0.05)
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(CALL_TASK_PREFIXES)]
    assert not left, left
    assert all(s.closed.is_set() for s in fake_glm.sessions)


async def test_shutdown_ends_live_calls_with_reason(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    phone = await dial(gw.url, bot="glm-greeter")
    await phone.silence(0.3)
    await gw.runner.shutdown()
    assert await phone.wait_closed(3)
    assert phone.result.close_code == 1001
    summary = await ended(gw, phone)
    assert summary.end_reason == "shutdown"
    assert fake_glm.sessions[0].closed.is_set()
