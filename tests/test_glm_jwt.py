"""GLM's JWT as Zhipu's own SDKs build it (`exp` in milliseconds), the `s` alternative, the fake
service checking every part of the token, and the gateway falling back to the other `exp` unit
once when the service refuses the token (both documented refusal forms: HTTP 401 on the upgrade,
an `error` event with an authentication code before the session exists)."""

from __future__ import annotations

import base64
import io
import logging
import time
import wave

import jwt
import pytest

from gateway.providers.glm import make_jwt
from tests.conftest import GLM_KEY
from tests.phone_helpers import dial, ended, logged, ulaw_tone, wait_for

KEY_ID, SECRET = GLM_KEY.split(".")


def _token(exp: int, *, secret: str = SECRET, key_id: str = KEY_ID, headers: dict | None = None) -> str:
    return jwt.encode({"api_key": key_id, "exp": exp, "timestamp": int(time.time() * 1000)}, secret,
                      algorithm="HS256", headers={"alg": "HS256", "sign_type": "SIGN"} if headers is None else headers)


def test_token_is_what_zhipus_sdks_build_exp_in_milliseconds():
    # zhipuai 2.1.5 / zai-sdk 0.2.3 core/_jwt_token.py: exp = round(now * 1000) + ttl * 1000, timestamp in ms
    now = 1_754_000_000.4567
    token = make_jwt(GLM_KEY, 600, now=now)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"api_key": KEY_ID, "exp": 1_754_000_000_457 + 600_000, "timestamp": 1_754_000_000_457}
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"}


def test_token_with_exp_in_seconds_when_configured():
    now = 1_754_000_000.4567
    claims = jwt.decode(make_jwt(GLM_KEY, 600, now=now, exp_unit="s"), SECRET, algorithms=["HS256"],
                        options={"verify_exp": False})
    assert claims == {"api_key": KEY_ID, "exp": 1_754_000_600, "timestamp": 1_754_000_000_457}


def test_fake_glm_checks_the_token_like_the_service():
    from tests.fakes.glm_server import FakeGLM

    fake = FakeGLM(api_key=GLM_KEY)  # expects exp in ms, like the SDKs
    now = time.time()
    ms, s = int(now * 1000) + 600_000, int(now) + 600
    assert fake._auth_problem(f"Bearer {_token(ms)}") is None
    assert fake._auth_problem(f"Bearer {_token(ms, secret='another-secret-0123456789')}") == "bad jwt: InvalidSignatureError"
    assert fake._auth_problem(f"Bearer {_token(ms, key_id='someoneelse')}") == "jwt api_key claim does not match"
    assert "header" in fake._auth_problem(f"Bearer {_token(ms, headers={'alg': 'HS256'})}")
    assert fake._auth_problem(f"Bearer {_token(int(now * 1000) - 1000)}") == "jwt expired"
    assert fake._auth_problem(f"Bearer {_token(s)}") == "jwt expired"  # seconds read as ms: 1970
    assert fake._auth_problem("") == "no bearer token"
    fake.jwt_exp_unit = "s"
    assert fake._auth_problem(f"Bearer {_token(s)}") is None
    assert fake._auth_problem(f"Bearer {_token(int(now) - 1)}") == "jwt expired"
    assert fake._auth_problem(f"Bearer {_token(ms)}") == "jwt exp is beyond the longest token lifetime"


@pytest.mark.parametrize("unit", ["ms", "s"])
async def test_a_call_authenticates_with_either_unit_when_configured(make_gateway, fake_glm, unit):
    fake_glm.jwt_exp_unit = unit
    gw = await make_gateway(fake_glm, extra=f"providers:\n  glm:\n    jwt_exp_unit: {unit}\n")
    phone = await dial(gw.url, bot="glm-quiet")
    await wait_for(lambda: fake_glm.sessions and fake_glm.sessions[0].session_config, 3, "session.update")
    await phone.hangup()
    await ended(gw, phone)
    assert not fake_glm.rejected and len(fake_glm.sessions) == 1
    exp = fake_glm.sessions[0].jwt_claims["exp"]
    assert (exp > 10**11) == (unit == "ms")


@pytest.mark.parametrize("refusal", ["http", "event"])
async def test_refused_exp_unit_falls_back_once_and_is_kept(make_gateway, fake_glm, gateway_log, caplog, refusal):
    fake_glm.jwt_exp_unit = "s"  # a service that reads exp in seconds; the gateway is left at its default, ms
    fake_glm.auth_refusal = refusal
    gw = await make_gateway(fake_glm)
    with caplog.at_level(logging.INFO, logger="gateway"):
        first = await dial(gw.url, bot="glm-quiet")
        await wait_for(lambda: any(s.session_config for s in fake_glm.sessions), 5, "a configured session")
        await first.say(ulaw_tone(440, 0.3))
        session = next(s for s in fake_glm.sessions if s.session_config)
        def frames() -> list[int]:
            out = []
            for e in session.events:
                if e["type"] == "input_audio_buffer.append":
                    with wave.open(io.BytesIO(base64.b64decode(e["audio"]))) as w:
                        out.append(w.getnframes())
            return out
        # the retried session gets the same uplink: quiet stretches in 100 ms appends, never longer
        await wait_for(lambda: 1600 in frames(), 3, "a 100 ms append")
        assert max(frames()) <= 1600
        await first.hangup()
        summary = await ended(gw, first)
        assert summary.end_reason == "caller_hangup"
        assert fake_glm.rejected == ["jwt exp is beyond the longest token lifetime"]  # the ms attempt
        assert logged(caplog, "model_auth_refused", "exp_unit=ms", "retry_exp_unit=s")
        assert logged(caplog, "glm_jwt_exp_unit", "exp_unit=s", "configured=ms")
        # the rest of the process's connections use what worked: no second refusal, no second notice
        second = await dial(gw.url, bot="glm-quiet")
        await wait_for(lambda: sum(bool(s.session_config) for s in fake_glm.sessions) == 2, 5, "a second session")
        await second.hangup()
        await ended(gw, second)
    assert len(fake_glm.rejected) == 1
    assert sum("glm_jwt_exp_unit" in r.getMessage() for r in caplog.records) == 1
    assert SECRET not in gateway_log.getvalue() and "eyJ" not in gateway_log.getvalue()


@pytest.mark.parametrize("refusal", ["http", "event"])
async def test_a_wrong_key_is_refused_in_both_units_and_says_what_to_fix(make_gateway, fake_glm, gateway_log,
                                                                         refusal):
    fake_glm.auth_refusal = refusal
    gw = await make_gateway(fake_glm, env={"ZHIPU_API_KEY": "fakeid0123.wrongsecret123456"})
    phone = await dial(gw.url, bot="glm-quiet")
    assert await phone.wait_closed(5)
    summary = await ended(gw, phone)
    assert summary.end_reason == "model_error"
    assert len(fake_glm.rejected) == 2  # ms, then s, then no more
    text = gateway_log.getvalue()
    assert "event=model_connect_failed" in text and "check providers.glm.api_key" in text
    assert "wrongsecret123456" not in text and "eyJ" not in text
