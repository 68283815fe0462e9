"""Twilio Media Streams (bidirectional, `<Connect><Stream>`): wire frames <-> typed phone events.

Twilio sends JSON text frames: connected, start, media, dtmf, mark, stop. We send exactly three
shapes: media, mark, clear, each carrying the active streamSid and nothing else (extra or
missing fields earn a 31951 warning; binary frames a 31950). A `mark` comes back when the audio
queued before it has been played; `clear` drops Twilio's buffer and echoes every pending mark.

Bad input never raises out of here: each bad frame becomes a log line and a counted
`protocol error`; the call decides when too many is too many.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import AsyncIterator
from xml.sax.saxutils import quoteattr, escape

from aiohttp import WSMsgType, web

from ..logs import CallLogger
from ..speedups import dumps, loads
from . import Audio, Dtmf, MarkPlayed, PhoneEvent, Started, Stopped


class FrameError(ValueError):
    """A frame we cannot use; the message says why (for the log line)."""


def _str(v: object) -> str:
    return v if isinstance(v, str) else ("" if v is None else str(v))


def _int(v: object, default: int) -> int:
    """Numbers Twilio sends as numbers (or, in old captures, strings); 0 when unusable."""
    if v is None:
        return default
    s = _str(v)
    return int(s) if s.isdigit() else 0


def parse_frame(text: str) -> dict:
    """Parse and shape-check one Twilio frame; returns the JSON object or raises FrameError."""
    try:
        msg = loads(text)
    except ValueError:
        raise FrameError("not JSON") from None
    if not isinstance(msg, dict):
        raise FrameError("JSON is not an object")
    event = msg.get("event")
    if not isinstance(event, str):
        raise FrameError("no event field")
    return msg


def decode_event(msg: dict) -> PhoneEvent | None:
    """Turn a parsed frame into a phone event (None for `connected`). Raises FrameError."""
    event = msg["event"]
    if event == "connected":
        return None
    if event == "start":
        start = msg.get("start")
        if not isinstance(start, dict):
            raise FrameError("start without a start object")
        sid = _str(start.get("streamSid") or msg.get("streamSid"))
        if not sid:
            raise FrameError("start without streamSid")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise FrameError("customParameters is not an object")
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict):
            raise FrameError("mediaFormat is not an object")
        return Started(stream_sid=sid, call_sid=_str(start.get("callSid")),
                       account_sid=_str(start.get("accountSid")),
                       custom_parameters={_str(k): _str(v) for k, v in params.items()},
                       encoding=_str(fmt.get("encoding") or "audio/x-mulaw"),
                       sample_rate=_int(fmt.get("sampleRate"), 8000), channels=_int(fmt.get("channels"), 1))
    if event == "media":
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise FrameError("media without a payload")
        try:
            payload = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError):
            raise FrameError("media payload is not valid base64") from None
        track = _str(media.get("track") or "inbound")
        ts = _str(media.get("timestamp"))
        return Audio(payload=payload, track=track, timestamp_ms=int(ts) if ts.isdigit() else None)
    if event == "dtmf":
        dtmf = msg.get("dtmf")
        digit = _str(dtmf.get("digit")) if isinstance(dtmf, dict) else ""
        if not digit:
            raise FrameError("dtmf without a digit")
        return Dtmf(digit=digit[:8])
    if event == "mark":
        mark = msg.get("mark")
        name = _str(mark.get("name")) if isinstance(mark, dict) else ""
        if not name:
            raise FrameError("mark without a name")
        return MarkPlayed(name=name)
    if event == "stop":
        return Stopped(reason="stop")
    raise FrameError(f"unknown event {event[:40]!r}")


class TwilioMediaStream:
    """One Twilio media-stream WebSocket: typed events in, media/mark/clear out.

    All writes go through one lock so a `clear` can never interleave inside another frame and
    frames leave in the order the call issued them.
    """

    network = "twilio"
    sid_field = "streamSid"  # where frames name their stream (other networks' streams subclass this one)

    def __init__(self, ws: web.WebSocketResponse, log: CallLogger, max_protocol_errors: int = 50):
        self.ws = ws
        self.log = log
        self.stream_sid: str | None = None
        self._sid_json = b""  # the stream's sid as a JSON string, for frames built from parts
        self.protocol_errors = 0
        self.max_protocol_errors = max_protocol_errors
        self._send_lock = asyncio.Lock()
        self.media_frames_in = 0
        self._stop_reason: str | None = None

    # ---------------------------------------------------------------- inbound
    async def wait_started(self) -> Started | None:
        """Reads frames until `start` (returned) or the end of the stream (None)."""
        while True:
            ev = await self.next_event()
            if isinstance(ev, Started):
                return ev
            if isinstance(ev, Stopped):
                return None

    async def events(self) -> AsyncIterator[PhoneEvent]:
        """Typed events after `start`, ending with exactly one `Stopped`."""
        while True:
            ev = await self.next_event()
            yield ev
            if isinstance(ev, Stopped):
                return

    async def next_event(self) -> PhoneEvent:
        """The next usable event; bad frames are logged, counted and skipped. After the stream
        has stopped (hang-up, socket closed, too many bad frames) it keeps returning `Stopped`."""
        while self._stop_reason is None:
            msg = await self.ws.receive()
            if msg.type == WSMsgType.TEXT:
                ev = self._handle_text(msg.data)
                if isinstance(ev, Stopped):
                    self._stop_reason = "stop"
                elif ev is not None:
                    return ev
            elif msg.type == WSMsgType.BINARY:
                ev = self._handle_binary(msg.data)
                if ev is not None:
                    return ev
            elif msg.type == WSMsgType.ERROR:
                exc = self.ws.exception()
                self.log.warning("phone_ws_error", error=f"{type(exc).__name__}: {exc}"[:200],
                                 close_code=self.ws.close_code)
                self._stop_reason = "ws_error"
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                self._stop_reason = "closed"
            if self._stop_reason is None and self.protocol_errors > self.max_protocol_errors:
                self.log.warning("phone_protocol_errors_exceeded", count=self.protocol_errors)
                self._stop_reason = "protocol_errors"
        return Stopped(reason=self._stop_reason)

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    def _bad(self, reason: str, **fields: object) -> None:
        self.protocol_errors += 1
        self.log.warning("phone_bad_frame", reason=reason, count=self.protocol_errors, **fields)

    def _handle_text(self, text: str) -> PhoneEvent | None:
        try:
            msg = parse_frame(text)
            ev = self._decode(msg)
        except FrameError as e:
            self._bad(str(e), size=len(text))
            return None
        except (TypeError, ValueError) as e:  # a field of a type no Twilio frame has
            self._bad(f"malformed frame ({type(e).__name__})", size=len(text))
            return None
        if ev is None:
            return None
        if isinstance(ev, Started):
            if self.stream_sid is not None:
                self._bad("second start ignored", stream_sid=ev.stream_sid)
                return None
            self.stream_sid = ev.stream_sid
            self._sid_json = dumps(ev.stream_sid)
            return ev
        if self.stream_sid is None:
            self._bad(f"{msg['event']} before start dropped")
            return None
        sid = msg.get(self.sid_field)
        if sid is not None and sid != self.stream_sid:
            self._bad("frame for another streamSid dropped", stream_sid=_str(sid)[:64])
            return None
        if isinstance(ev, Audio):
            if ev.track not in ("inbound", "inbound_track"):
                return None  # outbound-track echo (tracks="both_tracks"): not the caller
            self.media_frames_in += 1
        return ev

    def _decode(self, msg: dict) -> PhoneEvent | None:
        return decode_event(msg)

    def _handle_binary(self, data: bytes) -> PhoneEvent | None:
        """A binary frame: none of Twilio's (networks that send audio in binary frames override this)."""
        self._bad("binary frame (Twilio sends JSON text only)", size=len(data))
        return None

    # ---------------------------------------------------------------- outbound
    # Per message, only the payload or the mark's name changes: frames are put together from
    # bytes (the same JSON a serializer would write, field for field) and sent as text frames.
    async def _send(self, frame: bytes | dict) -> bool:
        """One text frame: bytes already put together (Twilio's hot path), or a dict to serialise
        (networks whose frames are built as dicts)."""
        if self.ws.closed or self.stream_sid is None:
            return False
        if isinstance(frame, dict):
            frame = dumps(frame)
        async with self._send_lock:
            try:
                await self.ws.send_frame(frame, WSMsgType.TEXT)
                return True
            except (ConnectionError, RuntimeError):
                return False

    async def play(self, ulaw: bytes) -> bool:
        return await self._send(b'{"event":"media","streamSid":%b,"media":{"payload":"%b"}}'
                                % (self._sid_json, base64.b64encode(ulaw)))

    async def mark(self, name: str) -> bool:
        return await self._send(b'{"event":"mark","streamSid":%b,"mark":{"name":%b}}' % (self._sid_json, dumps(name)))

    async def clear(self) -> bool:
        return await self._send(b'{"event":"clear","streamSid":%b}' % self._sid_json)

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        """Closing is how we hand the call to the TwiML after </Connect> (or end it)."""
        if not self.ws.closed:
            try:
                await asyncio.wait_for(self.ws.close(code=code, message=message), 2.0)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                pass


# -------------------------------------------------------------------- TwiML

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(text: str) -> str:
    """XML 1.0 cannot carry most control characters, escaped or not: a caller ID with a NUL or ESC
    would make the whole TwiML unreadable. They become U+FFFD; everything else is escaped as usual."""
    return _NOT_XML.sub("\ufffd", text)


def _attr(value: str) -> str:
    return quoteattr(_xml_safe(value))


def _text(value: str) -> str:
    return escape(_xml_safe(value))


def connect_twiml(stream_url: str, parameters: dict[str, str], after: str = "", language: str = "") -> str:
    """`<Connect><Stream>` TwiML; `after` is spoken if we close the stream without hanging up."""
    params = "".join(f"<Parameter name={_attr(k)} value={_attr(v)}/>" for k, v in parameters.items() if v)
    tail = ""
    if after:
        lang = f" language={_attr(language)}" if language else ""
        tail = f"<Say{lang}>{_text(after)}</Say><Hangup/>"
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Connect><Stream url={_attr(stream_url)}>{params}</Stream></Connect>{tail}</Response>")


def say_and_hangup_twiml(text: str, language: str = "") -> str:
    lang = f" language={_attr(language)}" if language else ""
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Say{lang}>{_text(text)}</Say><Hangup/></Response>")


def dial_twiml(number: str, caller_id: str = "", timeout: int = 30, say: str = "", language: str = "") -> str:
    """Transfer TwiML for a call update: optionally say something, then `<Dial>` the number."""
    lang = f" language={_attr(language)}" if language else ""
    spoken = f"<Say{lang}>{_text(say)}</Say>" if say else ""
    cid = f" callerId={_attr(caller_id)}" if caller_id else ""
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response>{spoken}<Dial{cid} timeout=\"{int(timeout)}\"><Number>{_text(number)}</Number></Dial></Response>")
