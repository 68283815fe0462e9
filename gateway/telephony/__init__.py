"""The phone side: one folder per network (`telephony/<network>/`: its `NetworkSpec`, a pure codec
and its fake caller), each turning its frames into these typed events. The registry of networks
is `telephony/registry.py`.

Intents go the other way as methods of the call's `PhoneStream`: `play(audio)`, `mark(name)`,
`clear()`, `close()`. The call core is typed against `PhoneStream` and sees nothing else of a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol

# The encodings a stream's `Started` names (what the call core converts from and to).
MULAW = "audio/x-mulaw"  # 8 kHz G.711 mu-law
L16 = "audio/l16"  # signed 16-bit little-endian PCM, mono, at the stream's rate


@dataclass(frozen=True)
class Started:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = MULAW
    sample_rate: int = 8000
    channels: int = 1


@dataclass(frozen=True)
class Audio:
    payload: bytes = field(repr=False)  # 8 kHz mu-law, normally 160 bytes (20 ms)
    track: str = "inbound"
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class MarkPlayed:
    name: str


@dataclass(frozen=True)
class Stopped:
    reason: str  # "stop" (Twilio said so), "closed", "ws_error", "protocol_errors"


PhoneEvent = Started | Audio | Dtmf | MarkPlayed | Stopped


class PhoneActionError(Exception):
    """A network refused (or cannot do) something we asked of the call: hang up, transfer.
    `message` says why, for the log and for the model ("the transfer failed (…)")."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.message, self.status = message, status


class PhoneControl:
    """What the gateway does to a call beyond its media stream, one object per call, made by the
    call's network module: hang up, transfer. This base can do neither (the stream's own close
    is then the only way out)."""

    network = ""
    # Why `hang_up` cannot end the call ("" when it can): the caller of `hang_up` then only
    # closes the stream, and logs this.
    missing = "this network has no hang-up besides closing the stream"

    async def hang_up(self) -> None:
        """End the call at the network. Raises PhoneActionError."""

    async def transfer(self, number: str, caller_id: str = "", timeout: int = 30) -> None:
        """Move the caller to `number`. Raises PhoneActionError when it cannot."""
        raise PhoneActionError(f"transfers are not supported on {self.network or 'this network'}")


class PhoneStream(Protocol):
    """One call's media stream as the call core uses it, whatever the network (a WebSocket's
    `WsPhoneStream`, AudioSocket's TCP stream, the tests' in-memory phone). Its play/mark/clear
    are the Playout's `PhoneSink`."""

    network: str  # the network's name, for records, metrics and the dashboard
    min_chunk_bytes: int  # our audio per message must be at least this long (0: any length)
    media_frames_in: int  # caller audio frames received
    protocol_errors: int  # frames that could not be used
    log: Any  # the stream's CallLogger; the app swaps in the call's once `start` names the call

    async def wait_started(self) -> Started | None: ...
    def events(self) -> AsyncIterator[PhoneEvent]: ...
    async def play(self, audio: bytes) -> bool: ...
    async def mark(self, name: str) -> bool: ...
    async def clear(self) -> bool: ...
    async def close(self, code: int = 1000, message: bytes = b"") -> None: ...
