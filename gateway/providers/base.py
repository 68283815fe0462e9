"""The model-side interface: one small ABC and typed, frozen events.

A provider turns one realtime model API (GLM-Realtime, OpenAI Realtime, the offline echo bot)
into these events, and the call's intents (send audio, cancel, truncate) into that API's wire
format. The call never looks at a provider's name: what differs between models (audio formats
and rates, whether a reply can be truncated) is declared in `Capabilities`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal, Mapping, Sequence


@dataclass(frozen=True)
class Capabilities:
    input_format: Literal["pcm16", "mulaw"]  # what send_audio() takes
    input_rate: int
    output_format: Literal["pcm16", "mulaw"]  # what AudioDelta.audio carries
    output_rate: int
    truncate: bool = False  # can shorten a reply in the model's memory to what was heard
    # The service ends a session after about this long; the call moves to a fresh one before.
    max_session_seconds: float | None = None
    # Caller audio goes to the service in appends of this many ms in steady stretches (0: every
    # frame as it comes); around speech the call's Uplink sends frames at once (call/uplink.py).
    input_block_ms: int = 0
    # How long the service's VAD waits in silence before it ends the caller's turn: after speech
    # the Uplink sends every frame at once for this long, so that clock runs in real time.
    vad_silence_ms: int = 800
    tools: bool = True  # takes the persona's functions and calls them
    # A fresh session can continue the old one's context on the service side (Gemini's
    # session-resumption handles); without it the conversation so far is replayed as text.
    resumption: bool = False
    # `cancel_response` stops generation at the service. False: the service stops by itself when
    # the caller talks (SpeechStarted(interrupted=True)); a cancel then only drops what still comes.
    cancel: bool = True

    @property
    def passthrough(self) -> bool:
        """The phone's 8 kHz mu-law goes to the model and back untouched (no decode, no resampling)."""
        return (self.input_format, self.input_rate, self.output_format, self.output_rate) == \
            ("mulaw", 8000, "mulaw", 8000)


@dataclass(frozen=True)
class ProviderSpec:
    """What a provider declares about itself, next to its code: config reads it to check personas
    and settings, fill defaults and know which environment variables and secrets exist. Adding a
    provider is its module (with a SPEC) and one line in providers/__init__.py."""
    name: str  # what a persona's `provider:` says
    label: str  # how messages name it ("GLM")
    default_model: str
    # Persona audio formats and turn detection types it takes; the first of each is the default.
    input_formats: tuple[str, ...]
    output_formats: tuple[str, ...]
    turn_detection: tuple[str, ...]
    # Builds a session: (persona, settings, log, context, http=...) -> Provider. `http` is the app's
    # aiohttp ClientSession for the provider's connections, or None (it then makes its own).
    factory: Callable[..., "Provider"]
    voices: frozenset[str] = frozenset()  # empty: any voice name is passed through
    max_output_tokens: int | None = None  # upper bound of a persona's max_response_output_tokens
    settings: type | None = None  # dataclass of `providers.<name>` in config.yaml (None: no settings)
    env: Mapping[str, str] = field(default_factory=dict)  # environment variable -> settings field
    secret_fields: tuple[str, ...] = ()  # settings fields to keep out of every log line
    needs_key: bool = True  # unusable until `api_key` is set
    # Settings checks beyond their types: (field, ok(settings), what is expected).
    checks: tuple[tuple[str, Callable[[Any], bool], str], ...] = ()
    # Whether a model of this provider takes functions (a persona with tools on one that does not
    # is refused at load time instead of failing on the first call).
    supports_tools: Callable[[str], bool] = lambda model: True

    def ready(self, settings: Any) -> bool:
        """It can open a session with these settings (its API key is set, where it needs one)."""
        return not self.needs_key or bool(self.keys(settings))

    def keys(self, settings: Any) -> list[str]:
        """Its key pool: `api_key` then `api_keys`, each once, in that order (empty: no key)."""
        keys = [getattr(settings, "api_key", ""), *getattr(settings, "api_keys", ())]
        return list(dict.fromkeys(k for k in keys if k))

    def key_variable(self) -> str | None:
        """The environment variable that sets the API key, to name in messages."""
        return next((var for var, name in self.env.items() if name == "api_key"), None)


@dataclass(frozen=True)
class ContextTurn:
    """One line of the conversation so far, replayed into a fresh session (renewal, reconnect)."""
    role: Literal["caller", "bot"]
    text: str


@dataclass(frozen=True)
class SessionReady:
    session_id: str = ""


@dataclass(frozen=True)
class ResponseStarted:
    response_id: str


@dataclass(frozen=True)
class AudioDelta:
    response_id: str
    item_id: str
    audio: bytes = field(repr=False)


@dataclass(frozen=True)
class SpeechStarted:
    # The model already stopped its reply because the caller spoke (Gemini's `interrupted`): that
    # is the model's own barge-in decision, so the phone is cleared at once whatever the policy.
    interrupted: bool = False


@dataclass(frozen=True)
class SpeechStopped:
    pass


@dataclass(frozen=True)
class InputTranscript:
    text: str
    item_id: str = ""


@dataclass(frozen=True)
class OutputTranscript:
    response_id: str
    text: str
    final: bool = False  # final=True carries the whole transcript and replaces the deltas


@dataclass(frozen=True)
class ToolCall:
    response_id: str
    call_id: str
    name: str
    arguments: str  # JSON text, as the model produced it


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    status: str = "completed"  # completed | cancelled | failed | incomplete
    usage: dict | None = None


@dataclass(frozen=True)
class ProviderError:
    code: str
    message: str
    fatal: bool = False  # this session cannot continue
    renewable: bool = False  # ...but a fresh session with the conversation so far can


@dataclass(frozen=True)
class SessionEnding:
    """The service will close this connection in about `seconds_left` (Gemini's goAway): the call
    moves to a fresh session at the next quiet moment, or right away when time runs out."""
    seconds_left: float


ProviderEvent = (SessionReady | ResponseStarted | AudioDelta | SpeechStarted | SpeechStopped
                 | InputTranscript | OutputTranscript | ToolCall | ResponseDone | ProviderError | SessionEnding)


class ProviderConnectError(Exception):
    """The session could not be opened (refused, timed out, rejected configuration)."""

    def __init__(self, message: str, *, auth_refused: bool = False):
        super().__init__(message)
        self.auth_refused = auth_refused  # the service said the credentials are not valid


class Provider(abc.ABC):
    """One realtime model session for one call.

    A provider is built with the conversation so far (`context`, empty for a new call); a
    session opened with context continues that conversation and does not greet again.

    Lifecycle: `await connect()` (returns once the session is configured), then `send_audio`
    and the other intents while `events()` is iterated, then `await close()`. `events()` ends
    when the session ends for any reason; a fatal `ProviderError` comes first when there is
    one to report. `close()` is idempotent and bounded in time.
    """

    capabilities: Capabilities

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    def events(self) -> AsyncIterator[ProviderEvent]: ...

    @abc.abstractmethod
    async def send_audio(self, audio: bytes) -> None:
        """Caller audio in `capabilities.input_format` at `capabilities.input_rate`, sent as one
        append (the call decides the batching: call/uplink.py)."""

    def carry_over(self, previous: "Provider") -> None:
        """Called on a fresh, unconnected session before it replaces `previous` (renewal or
        reconnect): take what continuing needs from it (Gemini: its session-resumption handle)."""

    @abc.abstractmethod
    async def cancel_response(self, response_id: str) -> None:
        """Stop generating the given response (only called while it is active)."""

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """Shorten the model's memory of a reply to what was heard (when capabilities.truncate)."""

    async def delete_item(self, item_id: str) -> None:
        """Forget a reply the caller heard none of (when capabilities.truncate)."""

    async def send_tool_result(self, call_id: str, output: str, respond: bool = True) -> None:
        """Give the model a function call's output; `respond`: and let it speak about it."""

    async def send_text(self, text: str, respond: bool = True) -> None:
        """Tell the model something as if the caller had said it (e.g. keys pressed)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def context_note(context: Sequence[ContextTurn], max_chars: int = 6000) -> str:
    """The conversation so far as text appended to the instructions of a fresh session.

    Not every model has a documented way to seed assistant turns, and instructions are honoured
    by every realtime model, so a continued call is described rather than replayed. The newest
    lines are kept when it is long.
    """
    if not context:
        return ""
    lines, size = [], 0
    for turn in reversed(context):
        line = f"{'Caller' if turn.role == 'caller' else 'You'}: {turn.text}"
        size += len(line) + 1
        if size > max_chars:
            break
        lines.append(line)
    return ("\n\nThis phone call is already in progress (the connection to you was renewed). "
            "The conversation so far:\n" + "\n".join(reversed(lines)) +
            "\nContinue from there. Do not greet the caller again.")


def greeting_instruction(greeting: str) -> str:
    """What a model without a greeting setting is told to say first (the greeting quoted exactly)."""
    return f'The phone call has just connected. Greet the caller by saying exactly: "{greeting}"'


def persona_tools(persona) -> list[dict]:
    """The persona's functions in the shape both GLM and OpenAI take in `session.tools`."""
    tools: list[dict] = []
    if "end_call" in persona.tools:
        tools.append({"type": "function", "name": "end_call", "description": (
            "End the phone call. First say a short goodbye; the line is closed once the caller has "
            "heard it. Use it when the caller has nothing else or asks to hang up."),
            "parameters": {"type": "object", "properties": {
                "reason": {"type": "string", "description": "why the call ends, for the call log"}}}})
    if "transfer_call" in persona.tools:
        params: dict = {"type": "object", "properties": {
            "reason": {"type": "string", "description": "why the caller needs a person, for the call log"}}}
        targets = sorted(persona.transfer_targets)
        if targets:
            params["properties"]["target"] = {"type": "string", "enum": targets, "description": (
                "which team to transfer to" + ("" if persona.transfer_to else " (required)"))}
            if not persona.transfer_to:
                params["required"] = ["target"]
        tools.append({"type": "function", "name": "transfer_call", "description": (
            "Transfer the caller to a human colleague. First tell the caller you are transferring them. "
            "If it fails you get an error: tell the caller and offer another way to help."),
            "parameters": params})
    for tool in persona.http_tools:
        tools.append({"type": "function", "name": tool.name, "description": tool.description,
                      "parameters": tool.parameters})
    return tools
