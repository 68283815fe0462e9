"""Our Twilio signature against Twilio's own validator (twilio 9.x `RequestValidator`): keys sorted,
and for a key that repeats its distinct values sorted. Fixed vectors computed once with the SDK keep
the check without it; with it installed (the test extra), every case is recomputed live."""

from __future__ import annotations

import aiohttp
import pytest
from multidict import MultiDict

from gateway.telephony.signature import compute, is_valid, url_variants
from tests.conftest import TWILIO_TOKEN
from tests.test_signature import FORM, PUBLIC, signed_gateway

# (token, url, form fields in arrival order, signature computed by twilio 9.13.0 compute_signature)
VECTORS = [
    ("12345", "https://mycompany.com/myapp.php?foo=1&bar=2",  # a repeated key, values out of order
     [("CallSid", "CA1234567890ABCDE"), ("Digits", "9"), ("Digits", "1"), ("Digits", "5"), ("From", "+14158675309")],
     "5/gqfbLle1NqlAGb0v0NN4v/hro="),
    ("12345", "https://mycompany.com/myapp.php",  # a repeated key-value pair counts once
     [("a", "x"), ("a", "b"), ("a", "x")], "EQvFZNkAFEYJWEFdeemUpUwmSLc="),
    ("s3cr3t-token", "https://gw.example.com/twilio/voice?bot=support",  # unicode
     [("SpeechResult", "你好，世界"), ("Caller", "+33 6 ☎"), ("Body", "Ünïcödé é")], "ghnvtoIxTvx69R57d/73eZ43Xps="),
    ("s3cr3t-token", "https://gw.example.com/twilio/voice",  # empty values, one of them repeated
     [("Empty", ""), ("A", ""), ("To", "+15005550006"), ("A", "z")], "9H+IiFJTI3JdAL57EdeH2TaozvY="),
    ("s3cr3t-token", "https://gw.example.com:8443/twilio/voice?bot=x",  # a port; case and prefix order
     [("b", "1"), ("B", "2"), ("a", "3"), ("_", "4"), ("Ab", "1"), ("A", "b1")], "sYq3pVnZWsRoGNSCms4KuMuSl5g="),
    ("s3cr3t-token", "https://gw.example.com:443/twilio/voice", [], "voRZ8JMejPl09AfmmRrGlVqoYVY="),  # no fields
]


@pytest.mark.parametrize("token,url,fields,expected", VECTORS)
def test_fixed_vectors_computed_by_twilios_sdk(token, url, fields, expected):
    assert compute(token, url, fields) == expected
    assert compute(token, url, MultiDict(fields)) == expected  # aiohttp's form type gives the same
    assert is_valid(token, url, fields, expected)


@pytest.mark.parametrize("token,url,fields,expected", VECTORS)
def test_cross_check_with_twilios_request_validator(token, url, fields, expected):
    request_validator = pytest.importorskip("twilio.request_validator")
    sdk = request_validator.RequestValidator(token)
    assert sdk.compute_signature(url, MultiDict(fields)) == compute(token, url, fields) == expected
    reordered = list(reversed(fields))  # arrival order never matters
    assert sdk.compute_signature(url, MultiDict(reordered)) == compute(token, url, reordered)
    # which URL forms each validator accepts a signature for: the same ones
    for signed_over in {url, *url_variants(url), url.replace(":8443", ""), url.replace(":443", "")}:
        sig = compute(token, signed_over, fields)
        assert is_valid(token, url, fields, sig) == sdk.validate(url, MultiDict(fields), sig), signed_over


async def test_webhook_with_a_repeated_field_in_unsorted_order_is_accepted(make_gateway, fake_glm):
    request_validator = pytest.importorskip("twilio.request_validator")
    gw = await signed_gateway(make_gateway, fake_glm)
    path = "/twilio/voice?bot=glm-quiet"
    form = [*FORM.items(), ("StirVerstat", "TN-Validation-Passed-C"), ("StirVerstat", "TN-Validation-Passed-A")]
    signature = request_validator.RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + path, MultiDict(form))
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + path, data=form, headers={"X-Twilio-Signature": signature}) as r:
            status, twiml = r.status, await r.text()
    assert status == 200 and "<Stream" in twiml
