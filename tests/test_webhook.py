"""POST /twilio/voice: which bot, and TwiML exactly as Twilio wants it."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import aiohttp
import pytest

FORM = {"CallSid": "CA1", "AccountSid": "AC1", "From": "+15551230000", "To": "+15005550006",
        "CallStatus": "ringing", "Direction": "inbound", "FromCity": "SPRINGFIELD", "NewTwilioField": "x"}


async def post(url: str, form: dict, query: str = "") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/twilio/voice{query}", data=form) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.text()


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


async def test_routes_by_dialed_number_with_parameters(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm, extra="server:\n  public_url: https://gw.example.com/\n")
    status, ctype, twiml = await post(gw.url, FORM)
    assert status == 200 and ctype.startswith("text/xml")
    url, params = stream_of(twiml)
    assert url == "wss://gw.example.com/twilio/media"  # wss, and no query string
    assert params == {"bot": "support", "from": "+15551230000", "to": "+15005550006", "call_sid": "CA1"}
    root = ET.fromstring(twiml)
    assert [c.tag for c in root] == ["Connect", "Say", "Hangup"]  # said only if we close the stream


async def test_query_bot_wins_over_number(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    _, _, twiml = await post(gw.url, FORM, "?bot=glm-greeter")
    assert stream_of(twiml)[1]["bot"] == "glm-greeter"


async def test_default_bot_and_fallback_without_key(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    _, _, twiml = await post(gw.url, {**FORM, "To": "+19999999999"})
    assert stream_of(twiml)[1]["bot"] == "support"
    offline = await make_gateway(None)  # no ZHIPU key: the default falls back to echo
    _, _, twiml = await post(offline.url, {**FORM, "To": "+19999999999"})
    assert stream_of(twiml)[1]["bot"] == "echo"


@pytest.mark.parametrize("query,to", [("?bot=nobody", FORM["To"]), ("?bot=../../etc/passwd", FORM["To"])])
async def test_unknown_bot_says_sorry_and_hangs_up(make_gateway, fake_glm, caplog, query, to):
    gw = await make_gateway(fake_glm)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        status, _, twiml = await post(gw.url, {**FORM, "To": to}, query)
    assert status == 200
    root = ET.fromstring(twiml)
    assert root.find("./Connect") is None and root.find("./Say") is not None and root.find("./Hangup") is not None
    assert any("webhook_rejected" in r.getMessage() and "call=CA1" in r.getMessage() for r in caplog.records)


async def test_bot_whose_provider_has_no_key_is_refused_politely(make_gateway):
    gw = await make_gateway(None)
    status, _, twiml = await post(gw.url, FORM, "?bot=support")
    assert status == 200 and ET.fromstring(twiml).find("./Connect") is None


async def test_parameters_are_xml_escaped(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    _, _, twiml = await post(gw.url, {**FORM, "From": '"<evil>&\'', "To": "+15005550007"})
    assert stream_of(twiml)[1]["from"] == '"<evil>&\''


async def test_garbage_body_still_gets_twiml(make_gateway, fake_glm):
    gw = await make_gateway(fake_glm)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.url}/twilio/voice", data=b"\xff\xfe%%%",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 200
            ET.fromstring(await r.text())


async def test_health_endpoints(make_gateway):
    gw = await make_gateway(None)
    async with aiohttp.ClientSession() as s:
        for path in ("/healthz", "/readyz"):
            async with s.get(gw.url + path) as r:
                assert r.status == 200


async def test_control_characters_in_a_number_are_refused_at_the_edge(make_gateway, fake_glm):
    """No caller ID has NUL, ESC or a newline: refused where it enters (ids.py), with a 400 that
    says why, before anything is stored, reserved or answered (issue 20)."""
    gw = await make_gateway(fake_glm)
    status, _, text = await post(gw.url, {**FORM, "From": "+1555\x00\x1b[31m\n0001", "To": "+15005550007"})
    assert (status, text) == (400, "caller: control characters (NUL, newline, ...) or invalid Unicode are not allowed\n")
