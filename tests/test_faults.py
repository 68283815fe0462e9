"""Fault injection between the gateway and the model (tests/fakes/fault_proxy.py): drops,
delays, a silent upstream and corrupted messages, on both models. The call must survive each
one the way a caller would want: at most a short gap, nothing left hanging."""

from __future__ import annotations

import logging

import pytest

from tests.fakes.fault_proxy import FaultProxy
from tests.phone_helpers import dial, ended, logged, ulaw_tone, wait_for
from tests.models import CORE_ONLY

pytestmark = pytest.mark.looptime

URL_ENV = {"glm": "GLM_REALTIME_URL", "openai": "OPENAI_REALTIME_URL", "qwen": "QWEN_REALTIME_URL",
           "gemini": "GEMINI_LIVE_URL"}


@pytest.fixture
async def proxy(model):
    p = FaultProxy(model.fake.url)
    await p.start()
    yield p
    await p.stop()


async def _talk(phone, fake, n: int) -> None:
    await phone.say(ulaw_tone(440, 0.5))
    await wait_for(lambda: sum(r["status"] == "completed" and r["kind"] == "reply"
                               for s in fake.sessions for r in s.responses) >= n, 5, f"reply {n}")


async def test_drop_mid_call_reconnects_and_the_call_goes_on(make_gateway, model, proxy, caplog):
    gw = await model.gateway(make_gateway, env={URL_ENV[model.name]: proxy.url})
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot=model.quiet)
        await _talk(phone, model.fake, 1)
        proxy.drop_all()
        await wait_for(lambda: proxy.connections == 2, 3, "the reconnection")
        await phone.silence(0.5)
        await _talk(phone, model.fake, 2)
        await phone.hangup()
        summary = await ended(gw, phone)
    assert summary.end_reason == "caller_hangup" and summary.sessions == 2
    assert proxy.injected["drop"] == 1 and logged(caplog, "model_session_renewed", "upstream_closed")


@pytest.mark.parametrize(**CORE_ONLY)
async def test_a_slow_upstream_still_makes_a_whole_call(make_gateway, model, proxy):
    proxy.mode, proxy.delay_s = "delay", 0.15  # every model message 150 ms late
    gw = await model.gateway(make_gateway, env={URL_ENV[model.name]: proxy.url})
    phone = await dial(gw.url, bot=model.greeter)
    await wait_for(lambda: phone.result.first_audio_at is not None, 5, "the greeting")
    await phone.silence(2.5)
    await _talk(phone, model.fake, 1)
    await phone.silence(3.0)  # everything arrives late: give the last messages time to come through
    await phone.hangup()
    summary = await ended(gw, phone)
    assert summary.end_reason == "caller_hangup" and [e.role for e in summary.transcript][:3] == \
        ["bot", "caller", "bot"]
    assert proxy.injected["delay"] > 10


async def test_corrupted_model_messages_are_dropped_and_the_call_goes_on(make_gateway, model, proxy, caplog):
    gw = await model.gateway(make_gateway, env={URL_ENV[model.name]: proxy.url})
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot=model.quiet)
        await wait_for(lambda: model.fake.sessions and model.fake.sessions[0].session_config, 3, "session")
        proxy.corrupt_next = 4  # the next four model messages (the reply's start) arrive as garbage
        await _talk(phone, model.fake, 1)
        await phone.silence(2.0)
        await phone.hangup()
        summary = await ended(gw, phone)
    assert proxy.injected["corrupt"] == 4 and summary.end_reason == "caller_hangup"
    assert logged(caplog, "model_bad_event")


async def test_a_silent_glm_upstream_is_replaced(make_gateway, fake_glm, caplog):
    fake_glm.heartbeat_interval = 0.2  # a healthy GLM is never silent for long
    proxy = FaultProxy(fake_glm.url)
    await proxy.start()
    try:
        gw = await make_gateway(glm=fake_glm, env={"GLM_REALTIME_URL": proxy.url},
                                extra="providers:\n  glm:\n    heartbeat_timeout_seconds: 0.8\n")
        with caplog.at_level(logging.INFO, logger="gateway"):
            phone = await dial(gw.url, bot="glm-quiet")
            await wait_for(lambda: fake_glm.sessions and fake_glm.sessions[0].session_config, 3, "session")
            proxy.stall_live()  # connected, but nothing comes through any more
            await wait_for(lambda: proxy.connections == 2, 4, "a new session after the heartbeat timeout")
            await phone.silence(0.3)
            await phone.say(ulaw_tone(440, 0.5))
            await wait_for(lambda: len(fake_glm.sessions) == 2 and fake_glm.sessions[1].responses, 4, "a reply")
            await phone.hangup()
            summary = await ended(gw, phone)
        assert summary.end_reason == "caller_hangup" and summary.sessions == 2
        assert logged(caplog, "model_session_renewed", "heartbeat_timeout")
    finally:
        await proxy.stop()
