"""Twilio request signatures (`X-Twilio-Signature`) and our per-call stream token.

Webhook: base64(HMAC-SHA1(auth token, full URL + every POST field sorted by name, name then
value)); with `X-Twilio-Webhooks-Signature-Settings: key=…,algorithm=HMAC_SHA256` the same string
signed with HMAC-SHA256 by the SharedKey secret (`twilio.webhook_shared_key`, else the auth token),
as twilio's `RequestValidator` checks it. A name that repeats counts each of its distinct values once, in sorted order (exactly as
Twilio's own `RequestValidator.compute_signature`). Media-stream WebSocket upgrade: the same over
the `wss://` URL, no fields. Twilio's validators accept the URL with the default port added, or
with its port removed, so we try those forms too.

The per-call token closes a gap signatures leave: the stream's `start` frame carries custom
parameters from our own TwiML, so we put an HMAC of the CallSid there and refuse a `start` that
does not carry the right one (a replayed or hand-made stream cannot pick a call and a bot).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
HMAC_SHA1, HMAC_SHA256 = "HMAC_SHA1", "HMAC_SHA256"
_HASHES = {HMAC_SHA1: hashlib.sha1, HMAC_SHA256: hashlib.sha256}


def signature_algorithm(settings_header: str) -> str:
    """The algorithm `X-Twilio-Webhooks-Signature-Settings` names (`key=…,algorithm=…`); none, or
    no `algorithm=`: HMAC_SHA1 (the auth token's signature)."""
    for part in (settings_header or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return HMAC_SHA1


def signing_key(settings_header: str, auth_token: str, shared_key: str) -> tuple[str, str]:
    """(algorithm, secret) for a request: HMAC-SHA256 requests are signed with the SharedKey
    secret when one is configured, else (as the SDK validator is given it) the auth token."""
    algorithm = signature_algorithm(settings_header)
    return algorithm, (shared_key or auth_token) if algorithm != HMAC_SHA1 else auth_token


def compute(token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
            algorithm: str = HMAC_SHA1) -> str:
    values: dict[str, set[str]] = {}
    for k, v in (params.items() if isinstance(params, Mapping) else (params or [])):  # a MultiDict: every pair
        values.setdefault(k, set()).add(v)
    data = url + "".join(k + v for k in sorted(values) for v in sorted(values[k]))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), _HASHES[algorithm]).digest()).decode()


def url_variants(url: str) -> list[str]:
    """The URL as given, plus the same with the scheme's default port added, or its port removed."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    variants = [url]
    if default is None or not parts.hostname:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    else:  # Twilio's validators drop any port, not only the default one
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    return variants


def is_valid(token: str, url: str, params, signature: str, algorithm: str = HMAC_SHA1) -> bool:
    """An algorithm we do not know fails (as in the SDK): never a fallback to a weaker check."""
    if not token or not signature or algorithm not in _HASHES:
        return False
    given = signature.encode("utf-8", "surrogateescape")  # a header may carry anything
    return any(hmac.compare_digest(compute(token, u, params, algorithm).encode(), given) for u in url_variants(url))


def call_token(token: str, call_sid: str) -> str:
    """The per-call token put in the stream's <Parameter>s and required back in `start`."""
    return hmac.new(token.encode(), f"stream:{call_sid}".encode(), hashlib.sha256).hexdigest()[:32]


def request_signature(request) -> str:
    """Twilio's signature header, or SignalWire's (same algorithm, its signing key)."""
    return request.headers.get("X-Twilio-Signature") or request.headers.get("X-SignalWire-Signature", "")


def signed(settings, request, url: str, fields) -> bool:
    algorithm, key = signing_key(request.headers.get(SETTINGS_HEADER, ""), settings.auth_token,
                                 settings.webhook_shared_key)
    return is_valid(key, url, fields, request_signature(request), algorithm)
