"""Twilio signatures: the published known-answer vector, default-port variants, tampering, and the
gateway refusing unsigned webhooks and media streams (and starts without the per-call token)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from gateway.telephony.twilio.signature import call_token, compute, is_valid, url_variants
from tests.conftest import TWILIO_TOKEN

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
FIELDS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
          "From": "+14158675309", "To": "+18005551212"}
EXPECTED = "RSOYDt4T1cUTdK1PDd93/VVr8B8="  # Twilio's documented example


def test_known_answer_vector():
    assert compute(TOKEN, URL, FIELDS) == EXPECTED
    assert is_valid(TOKEN, URL, FIELDS, EXPECTED)


def test_default_port_variants_are_accepted_both_ways():
    assert url_variants("https://mycompany.com/myapp.php?foo=1") == [
        "https://mycompany.com/myapp.php?foo=1", "https://mycompany.com:443/myapp.php?foo=1"]
    assert url_variants("wss://gw.example:443/twilio/media") == [
        "wss://gw.example:443/twilio/media", "wss://gw.example/twilio/media"]
    assert url_variants("https://gw.example:8443/x") == ["https://gw.example:8443/x", "https://gw.example/x"]
    signed_with_port = compute(TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", FIELDS)
    assert is_valid(TOKEN, URL, FIELDS, signed_with_port)


def test_tampering_is_caught():
    assert not is_valid(TOKEN, URL, {**FIELDS, "To": "+18005551213"}, EXPECTED)  # a changed field
    assert not is_valid(TOKEN, URL + "&x=1", FIELDS, EXPECTED)  # a changed URL
    assert not is_valid("54321", URL, FIELDS, EXPECTED)  # another account's token
    assert not is_valid(TOKEN, URL, FIELDS, "")  # no signature
    assert not is_valid("", URL, FIELDS, EXPECTED)  # no token configured: nothing is valid
    assert call_token(TOKEN, "CA1") != call_token(TOKEN, "CA2") and len(call_token(TOKEN, "CA1")) == 32


# ---------------------------------------------------------------- at the gateway
PUBLIC = "https://gw.example.com"
FORM = {"CallSid": "CA" + "ab" * 16, "AccountSid": "AC" + "7" * 32, "From": "+15550001111", "To": "+15005550008"}


async def signed_gateway(make_gateway, fake_glm, extra=""):
    return await make_gateway(glm=fake_glm, extra=extra, env={
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "TWILIO_ACCOUNT_SID": "AC" + "7" * 32, "GATEWAY_PUBLIC_URL": PUBLIC})


async def post_webhook(gw, signature: str | None, path="/twilio/voice?bot=glm-quiet"):
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + path, data=FORM, headers=headers) as r:
            return r.status, await r.text()


async def test_webhook_needs_twilios_signature_over_the_public_url(make_gateway, fake_glm, caplog):
    gw = await signed_gateway(make_gateway, fake_glm)
    public = PUBLIC + "/twilio/voice?bot=glm-quiet"
    cases = {
        "no signature": None,
        "garbage": "not-a-signature",
        "another token": compute("other-token", public, FORM),
        "a field changed": compute(TWILIO_TOKEN, public, {**FORM, "To": "+15005550009"}),
        "the URL a proxy sees": compute(TWILIO_TOKEN, gw.url + "/twilio/voice?bot=glm-quiet", FORM),
        "another query": compute(TWILIO_TOKEN, PUBLIC + "/twilio/voice?bot=glm-greeter", FORM),
    }
    with caplog.at_level("WARNING", logger="gateway"):
        for name, sig in cases.items():
            status, body = await post_webhook(gw, sig)
            assert status == 403 and "<Stream" not in body, name
    assert sum("webhook_signature_invalid" in r.getMessage() for r in caplog.records) == len(cases)
    for url in (public, "https://gw.example.com:443/twilio/voice?bot=glm-quiet"):  # Twilio's port variants
        status, twiml = await post_webhook(gw, compute(TWILIO_TOKEN, url, FORM))
        assert status == 200 and "<Stream" in twiml
    assert f'<Parameter name="token" value="{call_token(TWILIO_TOKEN, FORM["CallSid"])}"/>' in twiml
    assert not fake_glm.sessions  # nothing rejected ever reached a model


async def _stream(gw, signature: str | None, start_params: dict) -> tuple[int | None, str]:
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(gw.url.replace("http", "ws") + "/twilio/media", headers=headers) as ws:
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send_str(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
                "streamSid": "MZ1", "accountSid": FORM["AccountSid"], "callSid": FORM["CallSid"],
                "tracks": ["inbound"], "customParameters": start_params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            try:
                msg = await ws.receive(timeout=2)
            except asyncio.TimeoutError:
                return None, "open"
            return ws.close_code, str(msg.extra or "")


async def test_media_stream_needs_the_signature_and_the_call_token(make_gateway, fake_glm):
    gw = await signed_gateway(make_gateway, fake_glm)
    good_sig = compute(TWILIO_TOKEN, "wss://gw.example.com/twilio/media")
    params = {"bot": "glm-quiet", "call_sid": FORM["CallSid"], "token": call_token(TWILIO_TOKEN, FORM["CallSid"])}
    assert (await _stream(gw, None, params))[0] == 1008
    assert (await _stream(gw, compute(TWILIO_TOKEN, "wss://elsewhere.example/twilio/media"), params))[0] == 1008
    assert (await _stream(gw, good_sig, {**params, "token": "0" * 32}))[0] == 1008
    assert (await _stream(gw, good_sig, {k: v for k, v in params.items() if k != "token"}))[0] == 1008
    assert not fake_glm.sessions
    code, _ = await _stream(gw, good_sig, params)
    assert code in (None, 1000) and len(fake_glm.sessions) == 1  # accepted: a model session was opened


async def test_turning_checks_off_needs_an_explicit_setting(make_gateway, fake_glm, caplog):
    with caplog.at_level("WARNING", logger="gateway"):
        gw = await signed_gateway(make_gateway, fake_glm, extra="twilio:\n  insecure_skip_signature: true\n")
    assert any("signatures_disabled" in r.getMessage() for r in caplog.records)
    status, twiml = await post_webhook(gw, None)
    assert status == 200 and "<Stream" in twiml and 'name="token"' not in twiml


async def test_a_public_url_with_a_path_prefix_behind_a_prefix_stripping_proxy(make_gateway, fake_glm):
    """GATEWAY_PUBLIC_URL=https://host/gw and a proxy that strips /gw: Twilio signed the URL with the
    prefix, so that is what is checked (and the stream URL in the TwiML carries it too)."""
    gw = await make_gateway(glm=fake_glm, env={
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "TWILIO_ACCOUNT_SID": "AC" + "7" * 32,
        "GATEWAY_PUBLIC_URL": "https://gw.example.com/gw"})
    signed = compute(TWILIO_TOKEN, "https://gw.example.com/gw/twilio/voice?bot=glm-quiet", FORM)
    status, twiml = await post_webhook(gw, signed)
    assert status == 200 and 'url="wss://gw.example.com/gw/twilio/media"' in twiml
    status, _ = await post_webhook(gw, compute(TWILIO_TOKEN, PUBLIC + "/twilio/voice?bot=glm-quiet", FORM))
    assert status == 403  # without the prefix is not what Twilio signed


async def test_signalwire_signs_the_same_way_in_its_own_header(make_gateway, fake_glm):
    """SignalWire (Twilio-compatible cXML) sends X-SignalWire-Signature, computed like Twilio's with
    the project's signing key: set as twilio.auth_token, it is checked the same."""
    gw = await signed_gateway(make_gateway, fake_glm)
    signed = compute(TWILIO_TOKEN, PUBLIC + "/twilio/voice?bot=glm-quiet", FORM)
    async with aiohttp.ClientSession() as s:
        for header, sig, want in (("X-SignalWire-Signature", signed, 200), ("X-SignalWire-Signature", "bad", 403)):
            async with s.post(gw.url + "/twilio/voice?bot=glm-quiet", data=FORM, headers={header: sig}) as r:
                assert r.status == want, (header, sig)
