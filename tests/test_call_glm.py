"""GLM-Realtime wire specifics (JWT, WAV appends, greeting modes, heartbeats) with the fake GLM.

What every model must do on a call (audio quality, barge-in, failures) is in test_call_matrix.py."""

from __future__ import annotations

import base64
import io
import logging
import time
import wave

import pytest

from tests.audio_check import dominant_hz, max_discontinuity, samples, voiced_runs
from tests.conftest import GLM_KEY
from tests.phone_helpers import dial, ended, logged, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime


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
    assert [t["name"] for t in cfg["tools"]] == ["end_call", "transfer_call"] and "北风" in cfg["instructions"]
    transfer = cfg["tools"][1]["parameters"]["properties"]
    assert transfer["target"]["enum"] == ["billing"]  # the shipped persona's named target
    assert cfg["greeting_config"]["enable"] is True
    await phone.hangup()
    assert not s.errors_sent


async def test_caller_audio_reaches_glm_as_100ms_16k_wav_files(make_gateway, fake_glm):
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


async def test_silent_upstream_is_detected_by_heartbeat_watchdog(make_gateway, fake_glm, caplog):
    gw = await make_gateway(fake_glm, extra="providers:\n  glm:\n    heartbeat_timeout_seconds: 0.6\n"
                                            "limits:\n  model_reconnect_attempts: 0\n")  # the watchdog alone
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="glm-quiet")
        await wait_for(lambda: fake_glm.sessions and fake_glm.sessions[0].session_config, 3, "session")
        fake_glm.stall = True
        assert await phone.wait_closed(4)
        summary = await ended(gw, phone)
    assert summary.end_reason == "model_error"
    assert logged(caplog, "heartbeat_timeout")


async def test_raw_key_auth_mode(make_gateway, fake_glm):
    fake_glm.auth = "key"
    gw = await make_gateway(fake_glm, extra="providers:\n  glm:\n    auth: key\n")
    phone = await dial(gw.url, bot="glm-greeter")
    await wait_for(lambda: phone.result.first_audio_at is not None, 3, "greeting over raw-key auth")
    assert fake_glm.sessions[0].auth_header == f"Bearer {GLM_KEY}"
    await phone.hangup()

