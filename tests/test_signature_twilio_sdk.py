"""Our Twilio signature against Twilio's own validator (twilio 9.x `RequestValidator`): keys sorted,
and for a key that repeats its distinct values sorted. Fixed vectors computed once with the SDK keep
the check without it; with it installed (the test extra), every case is recomputed live."""

from __future__ import annotations

import aiohttp
import pytest
from multidict import MultiDict

from gateway.telephony.twilio.signature import HMAC_SHA256, compute, is_valid, signature_algorithm, url_variants
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


# HMAC-SHA256 (X-Twilio-Webhooks-Signature-Settings: key=…,algorithm=HMAC_SHA256), by twilio 9.13.0
SHA256_VECTORS = [
    ("shared-key-secret", "https://gw.example.com/twilio/voice?bot=support",
     [("CallSid", "CA1"), ("From", "+14158675309"), ("To", "+15005550006")], "tz0fi3ScsluC9iGotH8WeZOjpCgLPZorwv/FLCvswpg="),
    ("shared-key-secret", "https://mycompany.com/myapp.php?foo=1&bar=2",
     [("CallSid", "CA1234567890ABCDE"), ("Digits", "9"), ("Digits", "1"), ("Digits", "5")],
     "D3739YtNIBN5ESwK0N2P6OOJbWg3/WdTbaOBNiYnewk="),
    ("s3cr3t-token", "https://gw.example.com:8443/twilio/voice", [("SpeechResult", "你好，世界"), ("Empty", ""), ("A", "z")],
     "/KGad4xhure8m+ET7h4ruh676+fmdAxq+QWt+SeSYmc="),
    ("s3cr3t-token", "wss://gw.example.com/twilio/media", [], "M7nH+YH6ZutA7sUUL4KL7Ki0lrOYYpaWHqWGK/bQGMI="),
]
SHARED_KEY = "twilio-shared-key-secret-0123456789"


@pytest.mark.parametrize("token,url,fields,expected", SHA256_VECTORS)
def test_hmac_sha256_vectors_computed_by_twilios_sdk(token, url, fields, expected):
    assert compute(token, url, fields, HMAC_SHA256) == expected
    assert is_valid(token, url, fields, expected, HMAC_SHA256)
    assert not is_valid(token, url, fields, expected)  # the same signature is not a SHA-1 one
    assert not is_valid(token, url, fields, expected, "HMAC_SHA512")  # an algorithm we do not know fails
    request_validator = pytest.importorskip("twilio.request_validator")
    sdk = request_validator.RequestValidator(token)
    assert sdk.compute_signature(url, MultiDict(fields), HMAC_SHA256) == expected
    for signed_over in {url, *url_variants(url)} if url.startswith("https") else ():  # the SDK adds :80 to wss
        sig = compute(token, signed_over, fields, HMAC_SHA256)
        assert is_valid(token, url, fields, sig, HMAC_SHA256) == sdk.validate(url, MultiDict(fields), sig, HMAC_SHA256)


@pytest.mark.parametrize("header", ["key=webhooks_sharedkey_1,algorithm=HMAC_SHA256", " algorithm = hmac_sha256 ,key=x",
                                    "", "key=only", "algorithm=", "garbage"])
def test_settings_header_names_the_algorithm_as_the_sdk_reads_it(header):
    request_validator = pytest.importorskip("twilio.request_validator")
    assert signature_algorithm(header) == request_validator.get_signature_algorithm(header).upper()


async def test_hmac_sha256_webhooks_with_the_shared_key_else_the_auth_token(make_gateway, fake_glm, caplog):
    """TWILIO_WEBHOOK_SHARED_KEY set: SHA-256 requests must be signed with it (SHA-1 ones with the auth token);
    not set: SHA-256 requests are checked with the auth token, as the SDK validator given it would."""
    request_validator = pytest.importorskip("twilio.request_validator")
    path = "/twilio/voice?bot=glm-quiet"
    settings = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}

    def sign(secret: str, algorithm: str | None = None) -> str:
        return request_validator.RequestValidator(secret).compute_signature(PUBLIC + path, FORM, algorithm)

    async def post(gw, signature: str, headers: dict) -> int:
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url + path, data=FORM, headers={"X-Twilio-Signature": signature, **headers}) as r:
                return r.status

    shared = await make_gateway(glm=fake_glm, env={"TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC,
                                                   "TWILIO_WEBHOOK_SHARED_KEY": SHARED_KEY})
    assert await post(shared, sign(SHARED_KEY, HMAC_SHA256), settings) == 200
    assert await post(shared, sign(TWILIO_TOKEN), {}) == 200  # the auth token's SHA-1 still works
    assert await post(shared, sign(TWILIO_TOKEN, HMAC_SHA256), settings) == 403  # the shared key is the secret
    assert await post(shared, sign(SHARED_KEY, HMAC_SHA256), {}) == 403  # no settings header: SHA-1
    assert await post(shared, sign(SHARED_KEY, HMAC_SHA256),
                      {"X-Twilio-Webhooks-Signature-Settings": "algorithm=HMAC_SHA512"}) == 403
    token_only = await make_gateway(glm=fake_glm, env={"TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC})
    assert await post(token_only, sign(TWILIO_TOKEN, HMAC_SHA256), settings) == 200
    assert SHARED_KEY not in caplog.text
