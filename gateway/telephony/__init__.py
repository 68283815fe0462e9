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
