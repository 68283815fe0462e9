"""Each network's answer document and request authentication: Telnyx Ed25519 webhook signatures,
Plivo signature V3 (known answers from Plivo's own SDK), the media URL's ticket, and the bot
chosen by the dialed number when the media URL names none."""

from __future__ import annotations

import base64
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.telephony import telnyx
from gateway.telephony.plivo import signature as plivo
from gateway.telephony.network import stream_ticket, ticket_ok
from tests.conftest import PLIVO_ID, PLIVO_TOKEN, TELNYX_KEY
from tests.phone_helpers import OPEN_PHONES, ended, ulaw_tone, wait_for
from gateway.phone_sim import DialError, SimulatedPhone


def _phone(url, network, **kw) -> SimulatedPhone:
    phone = SimulatedPhone(url, network=network, **kw)
    OPEN_PHONES.append(phone)
    return phone


def _public_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def test_telnyx_signature_checks_key_body_and_age():
    key = Ed25519PrivateKey.generate()
    ts, body = str(int(time.time())), b"CallSid=v3%3Aabc&From=%2B1&To=%2B2"
    sig = base64.b64encode(key.sign(ts.encode() + b"|" + body)).decode()
    assert telnyx.signature_ok(_public_b64(key), ts, body, sig)
    assert not telnyx.signature_ok(_public_b64(key), ts, body + b"&x=1", sig)  # tampered
    assert not telnyx.signature_ok(_public_b64(Ed25519PrivateKey.generate()), ts, body, sig)  # other key
    assert not telnyx.signature_ok(_public_b64(key), ts, body, sig, now=int(ts) + 301)  # replayed late
    assert not telnyx.signature_ok(_public_b64(key), ts, body, "not base64!")
    assert not telnyx.signature_ok("not a key", ts, body, sig)


@pytest.mark.parametrize("url,fields", [
    ("https://gw.example.com/plivo/voice", {"CallUUID": "c0ffee", "From": "+15550001111", "To": "+15005550006"}),
    ("https://gw.example.com/plivo/voice?bot=echo&b=2&a=1", {"From": "+1 555", "To": "x&y=z"}),
    ("https://gw.example.com/plivo/voice?bot=echo", {}),
])
def test_plivo_signature_v3_matches_plivos_own_validator(url, fields):
    from plivo.utils.signature_v3 import validate_v3_signature

    ours = plivo.v3_signature(PLIVO_TOKEN, "POST", url, list(fields.items()), "31415926")
    assert validate_v3_signature("POST", url, "31415926", PLIVO_TOKEN, ours, dict(fields))
    assert plivo.v3_ok(PLIVO_TOKEN, "POST", url, list(fields.items()), "31415926", f"other,{ours}")
    assert not plivo.v3_ok(PLIVO_TOKEN, "POST", url, list(fields.items()), "27182818", ours)


def test_stream_ticket_names_network_bot_and_expires():
    t = stream_ticket("secret", "plivo", "echo", now=1000)
    assert ticket_ok("secret", "plivo", "echo", t, now=1200)
    assert not ticket_ok("secret", "plivo", "support", t, now=1200)
    assert not ticket_ok("secret", "telnyx", "echo", t, now=1200)
    assert not ticket_ok("secret", "plivo", "echo", t, now=1301)
    assert not ticket_ok("other", "plivo", "echo", t, now=1200)


async def test_telnyx_answer_is_texml_and_unsigned_webhooks_are_refused(make_gateway):
    key = Ed25519PrivateKey.generate()
    gw = await make_gateway(env={"TELNYX_API_KEY": TELNYX_KEY, "TELNYX_PUBLIC_KEY": _public_b64(key)})
    phone = _phone(gw.url, "telnyx", bot="echo", signing_key=key)
    await phone.dial()
    assert phone.result.twiml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="ws://')
    assert '/telnyx/media?bot=echo&amp;ticket=' in phone.result.twiml
    assert 'bidirectionalMode="rtp" bidirectionalCodec="PCMU" bidirectionalSamplingRate="8000"' in phone.result.twiml
    for signing_key in (None, Ed25519PrivateKey.generate()):
        with pytest.raises(DialError, match="HTTP 403"):
            await _phone(gw.url, "telnyx", bot="echo", signing_key=signing_key).dial()


async def test_plivo_answer_is_stream_xml_and_bad_signatures_are_refused(make_gateway):
    gw = await make_gateway(env={"PLIVO_AUTH_ID": PLIVO_ID, "PLIVO_AUTH_TOKEN": PLIVO_TOKEN})
    phone = _phone(gw.url, "plivo", bot="echo", auth_token=PLIVO_TOKEN)
    await phone.dial()
    assert phone.result.twiml.startswith(
        '<?xml version="1.0" encoding="UTF-8"?><Response><Stream bidirectional="true" keepCallAlive="true" '
        'contentType="audio/x-mulaw;rate=8000">ws://')
    assert "/plivo/media?bot=echo&amp;from=%2B15550001111&amp;to=%2B15005550006&amp;ticket=" in phone.result.twiml
    for token in ("", "wrong-token"):
        with pytest.raises(DialError, match="HTTP 403"):
            await _phone(gw.url, "plivo", bot="echo", auth_token=token).dial()


@pytest.mark.parametrize("network", ["telnyx", "plivo"])
async def test_a_media_url_without_a_valid_ticket_is_closed_before_any_model(make_gateway, network):
    env = {"TELNYX_API_KEY": TELNYX_KEY} if network == "telnyx" else {"PLIVO_AUTH_ID": PLIVO_ID,
                                                                       "PLIVO_AUTH_TOKEN": PLIVO_TOKEN}
    gw = await make_gateway(env=env)
    phone = _phone(gw.url, network)
    for query in ("bot=echo", "bot=support&ticket=" + stream_ticket(env.popitem()[1], network, "echo")):
        phone.result.stream_url = f"{gw.url.replace('http', 'ws')}/{network}/media?{query}"
        phone.closed.clear()
        await phone.connect()
        assert await phone.wait_closed(3)
        assert phone.result.close_code == 1008 and phone.result.media_frames == 0
        await phone.close()


async def test_without_a_bot_in_the_url_the_dialed_number_routes(make_gateway):
    """A Telnyx stream opened straight at /telnyx/media (no query: e.g. a TeXML app of the
    operator's own): `start.to` picks the bot by routing (+15005550007 -> echo)."""
    gw = await make_gateway()
    phone = _phone(gw.url, "telnyx", dialed="+15005550007")
    phone.result.stream_url = f"{gw.url.replace('http', 'ws')}/telnyx/media"
    await phone.connect()
    await phone.say(ulaw_tone(440, 0.6))
    await wait_for(lambda: phone.result.first_audio_after(phone.result.speech_ends[0]) is not None, 5, "the echo")
    await phone.hangup()
    summary = await ended(gw, phone)
    assert summary.bot == "echo" and summary.end_reason == "caller_hangup"
