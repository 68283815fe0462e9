"""The one boundary for outside input: ids and strings from a phone network or an operator are
checked here, once, where they enter — never cut, never rewritten further in.

Why refuse rather than repair: a call id that is cut in one place and not in another (the webhook
cut a 70-character CallSid to 64, the stream did not) splits one call into two records and two
model slots; an id rewritten to fit a file name makes two calls share one. So a call id is taken
exactly as the network sent it, or the request is refused (a 4xx, or the network's refusal): it
must be 1..MAX_ID_CHARS printable ASCII characters without spaces — every network's ids are
(Twilio `CA…`, Telnyx `v3:…`, Plivo/Vonage/AudioSocket UUIDs). Other strings (caller ID, dialed
number, a bot name, an operator's search words) are bounded and must not carry control characters
or lone surrogates: PostgreSQL text cannot hold NUL (a query with one fails; the slot queries then
used to fall back to "no cap") and SQLite cannot bind a lone surrogate.

Integers from a query string are ASCII digits only: `str.isdigit()` also accepts "²" (then
`int()` fails) and `int()` takes full-width "１２" as 12.
"""

from __future__ import annotations

import re

MAX_ID_CHARS = 128  # a call or stream id (Telnyx call_control_ids are the longest seen: ~90)
MAX_TEXT_CHARS = 256  # caller ID, dialed number (a SIP URI fits), a bot name, search words
_ID = re.compile(r"[\x21-\x7e]+")
# C0 and C1 controls, DEL, lone surrogates: what no caller ID, number or name needs, and what the
# stores or a terminal cannot take.
_NOT_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_DIGITS = re.compile(r"[0-9]{1,18}")


def id_problem(value: str, what: str = "call id") -> str | None:
    """Why `value` cannot be a call or stream id (None: it can). Empty is the caller's business
    (a webhook without a CallSid is answered without one)."""
    if not value:
        return None
    if len(value) > MAX_ID_CHARS:
        return f"{what}: longer than {MAX_ID_CHARS} characters"
    if not _ID.fullmatch(value):
        return f"{what}: only printable ASCII characters without spaces are allowed"
    return None


def text_problem(value: str, what: str, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Why `value` cannot be taken as a caller ID, number, name or search text (None: it can)."""
    if len(value) > max_chars:
        return f"{what}: longer than {max_chars} characters"
    if _NOT_TEXT.search(value):
        return f"{what}: control characters (NUL, newline, ...) or invalid Unicode are not allowed"
    return None


def first_problem(checks: list[str | None]) -> str | None:
    return next((p for p in checks if p), None)


def webhook_problem(call_id: str, caller: str, dialed: str, bot: str | None) -> str | None:
    """A network's incoming-call webhook, as its module read it: one check for every network."""
    return first_problem([id_problem(call_id), text_problem(caller, "caller"), text_problem(dialed, "dialed number"),
                          text_problem(bot or "", "bot", 64)])


def started_problem(started) -> str | None:
    """A media stream's `start` (a `telephony.Started`): its ids and the parameters it carried."""
    return first_problem([id_problem(started.call_sid), id_problem(started.stream_sid, "stream id"),
                          *(text_problem(f"{k}={v}", "stream parameter", 4096)
                            for k, v in started.custom_parameters.items())])


def ascii_int(raw: str) -> int | None:
    """`raw` as a non-negative integer when it is 1..18 ASCII digits, else None."""
    return int(raw) if _DIGITS.fullmatch(raw) else None


# ---------------------------------------------------------------- command-line numbers (argparse types)

def non_negative_float(raw: str) -> float:
    """`--wait 2.5`: a finite number >= 0 (argparse reports the ValueError's message)."""
    import argparse
    import math
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {raw}")
    return value


def positive_int(raw: str) -> int:
    """`--limit 20`: ASCII digits, at least 1."""
    import argparse
    value = ascii_int(raw.strip())
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {raw!r}")
    return value
