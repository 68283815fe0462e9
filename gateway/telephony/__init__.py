"""The phone side: one module per network, each turning its frames into these typed events.

Intents go the other way as methods on the network's stream object: `play(audio)`,
`mark(name)`, `clear()`, `close()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Started:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
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
