"""Twilio signatures: the published known-answer vector, default-port variants, tampering."""

from __future__ import annotations

from gateway.telephony.signature import call_token, compute, is_valid, url_variants

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
    assert url_variants("https://gw.example:8443/x") == ["https://gw.example:8443/x"]
    signed_with_port = compute(TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", FIELDS)
    assert is_valid(TOKEN, URL, FIELDS, signed_with_port)


def test_tampering_is_caught():
    assert not is_valid(TOKEN, URL, {**FIELDS, "To": "+18005551213"}, EXPECTED)  # a changed field
    assert not is_valid(TOKEN, URL + "&x=1", FIELDS, EXPECTED)  # a changed URL
    assert not is_valid("54321", URL, FIELDS, EXPECTED)  # another account's token
    assert not is_valid(TOKEN, URL, FIELDS, "")  # no signature
    assert not is_valid("", URL, FIELDS, EXPECTED)  # no token configured: nothing is valid
    assert call_token(TOKEN, "CA1") != call_token(TOKEN, "CA2") and len(call_token(TOKEN, "CA1")) == 32
