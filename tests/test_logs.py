"""The redactor: configured secrets, GLM secret halves, JWTs and bearer tokens never reach a log."""

from __future__ import annotations

import jwt

from gateway.logs import Redactor


def test_redactor_scrubs_every_secret_shape():
    r = Redactor()
    r.add("keyid12345.supersecretvalue99")
    token = jwt.encode({"a": 1}, "k" * 32, algorithm="HS256")
    text = (f"key=keyid12345.supersecretvalue99 half=supersecretvalue99 jwt={token} "
            f"hdr='Authorization: Bearer sk-live-abcdef123456' ok=+15551230000")
    clean = r.scrub(text)
    assert "supersecretvalue99" not in clean and token not in clean and "sk-live-abcdef123456" not in clean
    assert "ok=+15551230000" in clean  # phone numbers and ordinary fields survive
