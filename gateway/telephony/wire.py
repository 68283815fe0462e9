"""Wire helpers every network's codec shares: reading JSON frames defensively, base64 payloads,
the start frame's common checks, and XML that a caller ID with control characters cannot break.

Codecs raise `FrameError` for a frame they cannot use; the stream loop logs it, counts it as a
protocol error and carries on (the call decides when too many is too many).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Mapping
from xml.sax.saxutils import escape, quoteattr

from ..speedups import loads
from . import Audio, Dtmf, MarkPlayed, PhoneEvent, Stopped


class FrameError(ValueError):
    """A frame we cannot use; the message says why (for the log line)."""


class NetworkNotice(Exception):
    """A frame in which the network tells us something went wrong on its side (Telnyx `error`,
    AudioSocket 0xFF): logged as `phone_network_error` with these fields, not counted as ours."""

    def __init__(self, **fields: str):
        super().__init__(fields)
        self.fields = fields


def as_str(v: object) -> str:
    """A field as text: networks send counters and ids as strings or numbers, and sometimes null."""
    return v if isinstance(v, str) else ("" if v is None else str(v))


def as_int(v: object, default: int = 0) -> int:
    """A number sent as a number or a string (`8000`, `"8000"`, `8000.0`); `default` when absent,
    0 when unusable (a rate of 0 is then refused by the format check, not by an exception).
    int() as the networks' own SDKs parse (surrounding spaces, a sign): but never bools."""
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        return 0
    if isinstance(v, float):
        return int(v) if v.is_integer() else 0
    try:
        return int(as_str(v).strip())
    except ValueError:
        return 0


def json_object(text: str, kind: str | None = "event") -> dict:
    """Parse one JSON text frame that must be an object (with a string `kind` field, unless None)."""
    try:
        msg = loads(text)
    except ValueError:
        raise FrameError("not JSON") from None
    if not isinstance(msg, dict):
        raise FrameError("JSON is not an object")
    if kind is not None and not isinstance(msg.get(kind), str):
        raise FrameError(f"no {kind} field")
    return msg


def pcm_audio(data: bytes, started: bool, first: str) -> Audio:
    """A binary frame of 16-bit PCM: after the stream's first message (`first`), whole samples."""
    if not started:
        raise FrameError(f"audio before {first}")
    if not data or len(data) % 2:
        raise FrameError("audio of an odd or zero length")
    return Audio(payload=data)


def sub_object(msg: Mapping[str, Any], key: str, what: str, required: bool = False) -> dict:
    """`msg[key]` as an object ({} when absent unless `required`); FrameError if it is something else."""
    value = msg.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise FrameError(f"{what} without a {key} object" if value is None else f"{key} is not an object")
    return value


def string_map(value: object) -> dict[str, str]:
    """Custom parameters and the like: an object of anything, as text (not an object: empty)."""
    return {as_str(k): as_str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def b64_payload(value: object, what: str = "media") -> bytes:
    if not isinstance(value, str):
        raise FrameError(f"{what} without a payload")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FrameError(f"{what} payload is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def first(*values: object) -> str:
    """The first non-empty of several spellings of one field (`stream_sid`, `streamSid`, …)."""
    return next((as_str(v) for v in values if v not in (None, "")), "")


def digit_of(value: object, what: str) -> str:
    digit = as_str(value)
    if not digit:
        raise FrameError(f"{what} without a digit")
    return digit[:8]


# ------------------------------------------------------------------ the media-stream family's bodies
# Twilio, Telnyx, Plivo and Exotel spell `media`, `dtmf` and `mark` alike: {"media": {"payload",
# "track"}}, {"dtmf": {"digit"}}, {"mark": {"name"}}.

INBOUND_TRACKS = ("inbound", "inbound_track")


def media_audio(msg: Mapping[str, Any], **fields: Any) -> Audio | None:
    """The caller's audio of a `media` frame; None for another track (tracks="both_tracks" echoes ours)."""
    media = sub_object(msg, "media", "media", required=True)
    payload = b64_payload(media.get("payload"))
    if as_str(media.get("track") or "inbound") not in INBOUND_TRACKS:
        return None
    return Audio(payload=payload, **fields)


def dtmf_key(msg: Mapping[str, Any]) -> Dtmf:
    return Dtmf(digit=digit_of(sub_object(msg, "dtmf", "dtmf").get("digit"), "dtmf"))


def mark_played(msg: Mapping[str, Any]) -> MarkPlayed:
    name = as_str(sub_object(msg, "mark", "mark").get("name"))
    if not name:
        raise FrameError("mark without a name")
    return MarkPlayed(name=name)


def family_event(event: str, msg: Mapping[str, Any]) -> PhoneEvent | None:
    """`media`, `dtmf`, `mark` or `stop` as the family spells them; FrameError for anything else."""
    if event == "media":
        return media_audio(msg)
    if event == "dtmf":
        return dtmf_key(msg)
    if event == "mark":
        return mark_played(msg)
    if event == "stop":
        return Stopped(reason="stop")
    raise FrameError(f"unknown event {event[:40]!r}")


# ------------------------------------------------------------------ XML documents (TwiML, TeXML, Plivo XML)

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


def _xml_safe(text: str) -> str:
    """XML 1.0 cannot carry most control characters, escaped or not: a caller ID with a NUL or ESC
    would make the whole document unreadable. They become U+FFFD; everything else is escaped."""
    return _NOT_XML.sub("\ufffd", text)


def xml_attr(value: str) -> str:
    return quoteattr(_xml_safe(value))


def xml_text(value: str) -> str:
    return escape(_xml_safe(value))


def lang_attr(language: str) -> str:
    return f" language={xml_attr(language)}" if language else ""
