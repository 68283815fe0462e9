"""The Twilio REST client against the fake REST server: auth, form fields, retries (and what must
never be retried), 20404, one pooled connection for many requests."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.telephony.twilio.rest import TwilioRest, TwilioRestError
from tests.conftest import TWILIO_SID as SID, TWILIO_TOKEN as TOKEN
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.proc import free_port

TO, FROM, URL = "+15551230000", "+15005550006", "https://gw.example/twilio/voice?bot=support"


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def creates(fake: FakeTwilioRest) -> int:
    return sum(r.path.endswith("/Calls.json") for r in fake.requests)


async def test_hang_up_redirect_and_create(fake_rest, session):
    rest = TwilioRest(SID, TOKEN, session, fake_rest.url, backoff=0.01)
    assert await rest.hang_up("CAabc") is True
    assert await rest.hang_up("CAabc") is False  # already over: 20404 is not an error
    twiml = '<Response><Dial timeout="20"><Number>+15550009999</Number></Dial></Response>'
    assert (await rest.redirect("CAdef", twiml))["sid"] == "CAdef"
    created = await rest.create_call(TO, FROM, URL)
    assert created["status"] == "queued"
    forms = [r.form for r in fake_rest.requests]
    assert forms[0] == {"Status": "completed"} and forms[2] == {"Twiml": twiml}
    assert forms[3] == {"To": TO, "From": FROM, "Url": URL, "Method": "POST"}
    assert not fake_rest.rejected
    assert fake_rest.connections == 1, "every request rode the one pooled connection"


async def test_retries_5xx_then_succeeds_and_gives_up_on_4xx(fake_rest, session):
    rest = TwilioRest(SID, TOKEN, session, fake_rest.url, backoff=0.01)
    fake_rest.fail_next = [503, 500]
    assert await rest.hang_up("CA1") is True
    assert len(fake_rest.requests) == 3
    fake_rest.fail_next = [503, 503, 503]
    with pytest.raises(TwilioRestError, match="503"):
        await rest.hang_up("CA2")
    bad = TwilioRest(SID, "wrong-token", session, fake_rest.url, backoff=0.01)
    n = len(fake_rest.requests)
    with pytest.raises(TwilioRestError) as e:
        await bad.hang_up("CA3")
    assert e.value.status == 401 and e.value.code == 20003 and len(fake_rest.requests) == n + 1  # not retried


async def test_unreachable_api_and_missing_credentials_are_clear_errors(session):
    with pytest.raises(TwilioRestError, match="not configured"):
        await TwilioRest("", "", session).hang_up("CA1")
    rest = TwilioRest(SID, TOKEN, session, "http://127.0.0.1:9", backoff=0.01, timeout=1)
    with pytest.raises(TwilioRestError, match="ClientConnectorError|Cannot connect"):
        await rest.hang_up("CA1")


async def test_a_5xx_on_create_is_not_retried(fake_rest, session):
    """Twilio may have created the call before failing: a second POST could ring the callee twice."""
    rest = TwilioRest(SID, TOKEN, session, fake_rest.url, backoff=0.01)
    fake_rest.fail_next = [500, 500]
    with pytest.raises(TwilioRestError) as e:
        await rest.create_call(TO, FROM, URL)
    assert e.value.status == 500 and creates(fake_rest) == 1


async def test_a_timeout_on_create_is_not_retried_and_says_so(fake_rest, session):
    rest = TwilioRest(SID, TOKEN, session, fake_rest.url, backoff=0.01, timeout=0.3)
    fake_rest.stall = 1.0
    with pytest.raises(TwilioRestError, match=r"no answer within 0.3 s \(not retried: it may have gone through"):
        await rest.create_call(TO, FROM, URL)
    await asyncio.sleep(0.3)
    assert creates(fake_rest) == 1


async def test_a_refused_connection_on_create_is_retried(session):
    """Nothing reached Twilio, so trying again cannot place a second call."""
    port = free_port()
    fake = FakeTwilioRest(SID, TOKEN)
    rest = TwilioRest(SID, TOKEN, session, f"http://127.0.0.1:{port}", backoff=0.3)

    async def come_up_late():
        await asyncio.sleep(0.1)  # after the first attempt was refused, before the retry
        await fake.start(port)

    starter = asyncio.create_task(come_up_late())
    try:
        created = await rest.create_call(TO, FROM, URL)
        assert created["status"] == "queued" and creates(fake) == 1
    finally:
        await starter
        await fake.stop()


async def test_a_429_on_create_waits_for_retry_after_and_a_long_wait_is_final(fake_rest, session):
    rest = TwilioRest(SID, TOKEN, session, fake_rest.url, backoff=0.01, max_retry_after=5)
    fake_rest.fail_next, fake_rest.retry_after = [429], "0.4"
    t0 = time.monotonic()
    assert (await rest.create_call(TO, FROM, URL))["status"] == "queued"
    assert time.monotonic() - t0 >= 0.4 and creates(fake_rest) == 2  # the refused one, then the call
    fake_rest.fail_next, fake_rest.retry_after = [429], "60"
    with pytest.raises(TwilioRestError) as e:
        await rest.create_call(TO, FROM, URL)
    assert e.value.status == 429 and creates(fake_rest) == 3


async def test_the_app_has_one_client_session_closed_at_shutdown(make_gateway, fake_rest):
    from gateway.web_state import HTTP, REST
    gw = await make_gateway(rest=fake_rest)
    session = gw.app[HTTP]
    assert await gw.app[REST].hang_up("CA1") is True
    await gw.app[REST].redirect("CA2", "<Response/>")
    assert fake_rest.connections == 1 and not session.closed
    await gw.runner.cleanup()
    assert session.closed
