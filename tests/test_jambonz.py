"""jambonz's own: the verb array the webhook answers, its signature, the subprotocol, wideband calls and
the REST hang-up (the shared matrix in test_call_networks.py runs every call-level check over jambonz
too, through its fake caller and tests/networks/jambonz.py)."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from gateway.phone_sim import DialError
from gateway.telephony.jambonz import signature_ok
from gateway.telephony.jambonz.fake import signature_header
from tests.audio_check import dominant_hz, samples, voiced_runs
from tests.networks import profile
from tests.networks.jambonz import SECRET
from tests.phone_helpers import ended, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime


def test_signature_is_hmac_sha256_of_time_and_body_and_recent():
    body = b'{"callSid": "abc"}'
    header = signature_header(SECRET, body)
    assert signature_ok(SECRET, header, body)
    assert not signature_ok(SECRET, header, body + b" ")
    assert not signature_ok("other-secret", header, body)
    assert not signature_ok(SECRET, signature_header(SECRET, body, now=time.time() - 301), body)
    for broken in ("", "t=,v1=", "v1=" + "0" * 64, "t=²,v1=00", "t=1,v1=é"):
        assert not signature_ok(SECRET, broken, body)


async def test_answer_is_a_listen_verb_streaming_both_ways_then_the_fallback(make_gateway, fake_openai, tmp_path):
    net = profile("jambonz")
    await net.start(tmp_path, None)
    try:
        gw = await net.gateway(make_gateway, openai=fake_openai, extra="jambonz:\n  sample_rate: 16000\n")
        phone = net.phone(gw.url, bot="openai-greeter")
        await phone.dial()
        listen, say, hangup = json.loads(phone.result.twiml)
        assert listen["verb"] == "listen" and listen["mixType"] == "mono" and listen["passDtmf"] is True
        assert listen["sampleRate"] == 16000 == listen["bidirectionalAudio"]["sampleRate"]
        assert listen["bidirectionalAudio"] == {"enabled": True, "streaming": True, "sampleRate": 16000}
        assert listen["url"].startswith(gw.url.replace("http", "ws") + "/jambonz/media?bot=openai-greeter&ticket=")
        assert say["verb"] == "say" and hangup == {"verb": "hangup"} and phone.rate == 16000
        await phone.connect()
        assert phone.ws.protocol == "audio.jambonz.org"
        await phone.silence(2.2)  # the greeting, at 16 kHz
        await phone.hangup()
        heard = samples(bytes(phone.result.heard_pcm))
        start, stop = max(voiced_runs(heard, 16000), key=lambda r: r[1] - r[0])
        assert dominant_hz(heard[start:stop], 16000) == pytest.approx(fake_openai.greeting_tone_hz, rel=0.01)
        assert not phone.result.violations, phone.result.violations
    finally:
        await net.stop()


@pytest.mark.parametrize("secret", ["", "not-the-secret"], ids=["unsigned", "wrong-secret"])
async def test_webhook_needs_the_signature_when_configured(make_gateway, fake_openai, tmp_path, secret):
    net = profile("jambonz")
    await net.start(tmp_path, None)
    try:
        gw = await net.gateway(make_gateway, openai=fake_openai)
        phone = net.phone(gw.url, bot="openai-greeter", auth_token=secret)
        with pytest.raises(DialError) as e:
            await phone.dial()
        assert e.value.status == 403 and not fake_openai.sessions
    finally:
        await net.stop()


async def test_without_the_subprotocol_or_the_ticket_there_is_no_call(make_gateway, fake_openai, tmp_path):
    net = profile("jambonz")
    await net.start(tmp_path, None)
    try:
        gw = await net.gateway(make_gateway, openai=fake_openai)
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(gw.url.replace("http", "ws") + "/jambonz/media?bot=openai-greeter",
                                    protocols=("audio.jambonz.org",)) as ws:
                await ws.send_str(json.dumps({"callSid": "c1", "sampleRate": 8000, "mixType": "mono"}))
                msg = await ws.receive(timeout=3)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008 and not fake_openai.sessions
    finally:
        await net.stop()


async def test_a_bot_hang_up_goes_through_jambonz_rest(make_gateway, fake_openai, tmp_path):
    fake_openai.tool_calls = [("end_call", {"reason": "caller is done"})]
    net = profile("jambonz")
    await net.start(tmp_path, None)
    try:
        gw = await net.gateway(make_gateway, openai=fake_openai)
        phone = await net.dial(gw.url, bot="openai-agent")
        await phone.say(ulaw_tone(440, 0.5))
        await wait_for(lambda: net.rest.requests, 6, "the hang-up")
        (request,) = net.rest.requests
        assert (request.action, request.call_id, request.body) == ("hangup", phone.call_sid, {"call_status": "completed"})
        assert (await ended(gw, phone)).end_reason == "bot_hangup"
    finally:
        await net.stop()
