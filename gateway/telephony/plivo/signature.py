"""Plivo's webhook signature, X-Plivo-Signature-V3 (as Plivo's SDK computes and checks it)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Iterable
from urllib.parse import parse_qs, urlsplit


def v3_signature(auth_token: str, method: str, url: str, params: Iterable[tuple[str, str]], nonce: str) -> str:
    """Plivo's X-Plivo-Signature-V3: base64(HMAC-SHA256(auth token, signed URL + "." + nonce)).
    The signed URL is the URL without its query, then `?` and the query's pairs sorted (`k=v`
    joined by `&`); for a POST with fields, `.` (only after a non-empty query) and the fields
    sorted by name (a name's values sorted), each as name then value, nothing between. A GET's
    parameters are part of its query."""
    parts = urlsplit(url)
    signed = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = parse_qs(parts.query, keep_blank_values=True)
    fields: dict[str, list[str]] = {}
    for k, v in params:
        (query if method.upper() == "GET" else fields).setdefault(k, []).append(v)
    pairs = "&".join(f"{k}={v}" for k in sorted(query) for v in sorted(query[k]))
    if fields:
        signed += f"?{pairs}" + ("." if pairs else "") + "".join(k + v for k in sorted(fields) for v in sorted(fields[k]))
    elif pairs:
        signed += f"?{pairs}"
    mac = hmac.new(auth_token.encode(), f"{signed}.{nonce}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def v3_ok(auth_token: str, method: str, url: str, params, nonce: str, header: str) -> bool:
    if not (auth_token and nonce and header):
        return False
    expected = v3_signature(auth_token, method, url, params, nonce)
    return any(hmac.compare_digest(expected.encode(), s.strip().encode("utf-8", "surrogateescape"))
               for s in header.split(","))

