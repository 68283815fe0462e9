"""The Twilio REST client against the fake REST server: auth, form fields, retries, 20404."""

from __future__ import annotations

import pytest

from gateway.telephony.twilio_rest import TwilioRest, TwilioRestError
from tests.conftest import TWILIO_SID as SID, TWILIO_TOKEN as TOKEN


async def test_hang_up_redirect_and_create(fake_rest):
    rest = TwilioRest(SID, TOKEN, fake_rest.url, backoff=0.01)
    assert await rest.hang_up("CAabc") is True
    assert await rest.hang_up("CAabc") is False  # already over: 20404 is not an error
    twiml = '<Response><Dial timeout="20"><Number>+15550009999</Number></Dial></Response>'
    assert (await rest.redirect("CAdef", twiml))["sid"] == "CAdef"
    created = await rest.create_call("+15551230000", "+15005550006", "https://gw.example/twilio/voice?bot=support")
    assert created["status"] == "queued"
    forms = [r.form for r in fake_rest.requests]
    assert forms[0] == {"Status": "completed"} and forms[2] == {"Twiml": twiml}
    assert forms[3] == {"To": "+15551230000", "From": "+15005550006",
                        "Url": "https://gw.example/twilio/voice?bot=support", "Method": "POST"}
    assert not fake_rest.rejected


async def test_retries_5xx_then_succeeds_and_gives_up_on_4xx(fake_rest):
    rest = TwilioRest(SID, TOKEN, fake_rest.url, backoff=0.01)
    fake_rest.fail_next = [503, 500]
    assert await rest.hang_up("CA1") is True
    assert len(fake_rest.requests) == 3
    fake_rest.fail_next = [503, 503, 503]
    with pytest.raises(TwilioRestError, match="503"):
        await rest.hang_up("CA2")
    bad = TwilioRest(SID, "wrong-token", fake_rest.url, backoff=0.01)
    n = len(fake_rest.requests)
    with pytest.raises(TwilioRestError) as e:
        await bad.hang_up("CA3")
    assert e.value.status == 401 and e.value.code == 20003 and len(fake_rest.requests) == n + 1  # not retried


async def test_unreachable_api_and_missing_credentials_are_clear_errors():
    with pytest.raises(TwilioRestError, match="not configured"):
        await TwilioRest("", "").hang_up("CA1")
    rest = TwilioRest(SID, TOKEN, "http://127.0.0.1:9", backoff=0.01, timeout=1)
    with pytest.raises(TwilioRestError, match="ClientConnectorError|Cannot connect"):
        await rest.hang_up("CA1")
