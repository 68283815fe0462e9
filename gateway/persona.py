"""The schema of a bot persona (`bots/<name>.yaml`): typed, frozen, documented field by field.

Kept apart from config.py (which loads and checks personas against the providers' declared
specs) so the providers can read a persona's fields without importing the config loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class TurnDetection:
    # glm: server_vad | client_vad; openai: server_vad | semantic_vad; echo: always its own VAD.
    type: str = "server_vad"  # checked against the provider's spec when the persona loads
    # Energy threshold of the echo bot's local VAD (GLM's server VAD has no tunables in its spec).
    threshold: int = 400
    silence_ms: int = 600  # end of turn after this much silence (echo; OpenAI server_vad)
    prefix_padding_ms: int = 300  # OpenAI server_vad: audio kept before detected speech
    eagerness: Literal["auto", "low", "medium", "high"] = "auto"  # OpenAI semantic_vad


@dataclass(frozen=True)
class PersonaAudio:
    # What the model is sent; empty = the provider's default (resolved at load time).
    #   glm: wav (default; one complete 16 kHz WAV file per chunk) | pcm16 (16 kHz) | pcm24 (24 kHz)
    #   openai: pcmu (default; the phone's mu-law passes through untouched) | pcm (24 kHz PCM16)
    input_format: str = ""  # checked against the provider's spec when the persona loads
    # What the model sends back; empty = default. glm/echo: pcm; openai: pcmu (default) | pcm.
    output_format: str = ""
    output_rate: int = 24000  # PCM output rate of glm/echo (OpenAI's pcm is always 24 kHz)


@dataclass(frozen=True)
class HttpTool:
    """A business-system call the model may make: JSON-Schema-checked arguments -> HTTP request ->
    the response (or a clear error) back to the model as the function's output."""
    name: str
    description: str
    url: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"  # GET sends arguments as the query
    headers: dict[str, str] = field(default_factory=dict)  # values may be ${ENV} secrets
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class DtmfConfig:
    inter_digit_ms: int = 1500  # digits pressed closer than this reach the model together
    # Digit -> action taken without the model: "transfer", "transfer:<target name>", "end_call".
    shortcuts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BargeIn:
    """What happens when the caller starts talking while the bot is speaking.

    immediate: the bot is cut at once (cleared, cancelled, transcript cut to what was heard).
    confirm: the bot is silent at once too (the phone is cleared, what it had not played is kept),
    but only cut once the interruption is confirmed — caller speech of at least `min_speech_ms` by
    the gateway's own energy measure (short bursts close together add up), or a transcript with
    words; unconfirmed after `confirm_ms` (a cough, a door, an "mm-hm") and once the caller has been
    quiet for a moment, the same reply resumes from where the marks say it was heard: nothing lost,
    at most the chunk that was playing heard twice, and the model not cancelled."""
    policy: Literal["immediate", "confirm"] = "immediate"
    min_speech_ms: int = 300
    confirm_ms: int = 700
    threshold: int = 500  # RMS of 16-bit PCM above which a 20 ms frame counts as speech (confirm)


@dataclass(frozen=True)
class HoldAudio:
    """What the caller hears instead of silence while the bot waits on something (a slow HTTP
    tool, a model session being replaced, a transfer being dialled)."""
    sound: str = "tones"  # tones: the built-in soft hold tones | none | a WAV file (8 kHz mono PCM16 or mu-law)
    after_ms: int = 1000  # silence longer than this gets the hold sound


BUILTIN_TOOLS = ("end_call", "transfer_call")


@dataclass(frozen=True)
class Persona:
    provider: str  # a provider name (providers.SPECS); checked when the persona loads
    description: str = ""
    model: str = ""
    voice: str = ""
    instructions: str = ""
    greeting: str = ""
    language: str = "en-US"
    temperature: float | None = None
    max_response_output_tokens: str = "inf"
    turn_detection: TurnDetection = field(default_factory=TurnDetection)
    audio: PersonaAudio = field(default_factory=PersonaAudio)
    max_call_seconds: int | None = None
    record: bool | None = None  # record this bot's calls (None: the config's recording.enabled)
    tools: list[str] = field(default_factory=list)  # built-in tools to enable: end_call, transfer_call
    transfer_to: str = ""  # E.164 number transfer_call dials when no named target is asked for
    transfer_targets: dict[str, str] = field(default_factory=dict)  # name -> E.164 (e.g. billing: "+1…")
    transfer_caller_id: str = ""  # caller ID shown to the transfer target; empty: the caller's number
    transfer_timeout_seconds: int = 30
    http_tools: list[HttpTool] = field(default_factory=list)
    dtmf: DtmfConfig = field(default_factory=DtmfConfig)
    barge_in: BargeIn = field(default_factory=BargeIn)
    hold: HoldAudio = field(default_factory=HoldAudio)
    # Spoken by Twilio (<Say>) when the stream ends without a hang-up, e.g. after a model failure.
    fallback_message: str = "Sorry, we are having technical difficulties. Please call again later."
    # When no key of the provider has a free session (providers.<name>.max_sessions): `busy` (the
    # caller hears busy_message, no model session is opened) or another bot's name (it takes the call).
    overflow: str = "busy"
    busy_message: str = "All our lines are busy right now. Please call again in a few minutes. Goodbye."
    # Outbound calls answered by a machine: left after the beep (Twilio <Say>), then the call ends.
    # Empty: a machine is hung up on without a message.
    voicemail_message: str = ""
    name: str = field(default="", metadata={"internal": True})
    path: str = field(default="", metadata={"internal": True})
