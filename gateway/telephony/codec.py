"""What a network's codec is: a pure translator between its wire frames and our typed events.

A codec does no I/O and knows no socket: `decode_text` / `decode_binary` turn one inbound frame
into a `PhoneEvent` (None for frames that carry nothing for the call, FrameError for frames we
cannot use), and `play` / `mark` / `clear` / `hang_up` turn our intents into the frames to send,
each a `Frame` (text or binary bytes). The shared stream loop (`WsPhoneStream`) does the socket,
the lock, the logging and the counting, the same for every network.

State a codec keeps is the wire's own: the stream's id once `start` named it (outbound frames
carry it), sequence numbers, the frame size the preamble chose.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Protocol, Sequence

from . import PhoneEvent, Started
from .wire import FrameError, json_object


class Frame(NamedTuple):
    data: bytes
    binary: bool = False  # False: a text frame (JSON); True: a binary frame (audio)


NO_FRAMES: tuple[Frame, ...] = ()


class Codec(Protocol):
    network: str
    stream_sid: str | None
    # Our audio per frame must be at least this long (Exotel: 3,200 bytes); the Playout honours it.
    min_chunk_bytes: int
    # The network has no marks and no clear: the stream plays our audio out on our own clock and
    # reports marks itself (AudioSocket, jambonz); `frame_bytes` is then one paced frame.
    paced: bool

    def decode_text(self, text: str) -> PhoneEvent | None: ...
    def decode_binary(self, data: bytes) -> PhoneEvent | None: ...
    def play(self, audio: bytes) -> Sequence[Frame]: ...
    def mark(self, name: str) -> Sequence[Frame]: ...
    def clear(self) -> Sequence[Frame]: ...
    def hang_up(self) -> Sequence[Frame]: ...


class StreamState:
    """The stream-id bookkeeping every codec needs, written once: exactly one start, nothing
    before it, and frames naming another stream dropped. Codecs hold one (composition)."""

    def __init__(self) -> None:
        self.sid: str | None = None

    def start(self, started: Started) -> Started:
        if self.sid is not None:
            raise FrameError("second start ignored")
        if not started.stream_sid:
            raise FrameError("start without a stream id")
        self.sid = started.stream_sid
        return started

    def check(self, event: str, named: object = None) -> None:
        """A frame after start; `named`: the stream id the frame carries (None: it names none)."""
        if self.sid is None:
            raise FrameError(f"{event} before start dropped")
        if named is not None and named != self.sid:
            raise FrameError("frame for another stream dropped")


class CodecBase:
    """What most codecs start from (a shared base, not another network's class): the media URL's
    query, the stream state, JSON text only, and no frame of its own to hang up with."""
    network = ""
    label = ""
    min_chunk_bytes = 0
    paced = False

    def __init__(self, query: Mapping[str, str] | None = None):
        self.query = dict(query or {})
        self.state = StreamState()

    @property
    def stream_sid(self) -> str | None:
        return self.state.sid

    def decode_binary(self, data: bytes) -> PhoneEvent | None:
        raise FrameError(f"binary frame ({self.label or self.network} sends JSON text only)")

    def hang_up(self) -> Sequence[Frame]:
        return NO_FRAMES


class JsonEventCodec(CodecBase):
    """Codecs whose frames are JSON objects named by their `event` (the Twilio-like family):
    `connected` carries nothing, `start` starts the stream, every other frame must come after it and
    name this stream where it names one (`sid_field`)."""
    sid_field = ""

    def decode_text(self, text: str) -> PhoneEvent | None:
        msg = json_object(text)
        event = msg["event"]
        if event == "connected":
            return None
        if event == "start":
            return self.state.start(self.decode_start(msg))
        self.network_says(event, msg)
        self.state.check(event, self.named_sid(msg))
        return self.decode_event(event, msg)

    def decode_start(self, msg: dict) -> Started:
        raise NotImplementedError

    def network_says(self, event: str, msg: dict) -> None:
        """A frame about the network's own trouble, before any stream check (raise NetworkNotice)."""

    def named_sid(self, msg: dict) -> object:
        return msg.get(self.sid_field)

    def decode_event(self, event: str, msg: dict) -> PhoneEvent | None:
        raise NotImplementedError
