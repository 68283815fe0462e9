"""config.yaml + bots/*.yaml -> validated, typed, frozen objects.

Every error names the file and the dotted field (`bots/support.yaml: turn_detection.silence_ms:
expected an integer, got 'long'`), unknown keys are errors (a typo must not silently become a
default), `${VAR}` / `${VAR:-default}` pull secrets from the environment, and the environment
overrides listed in docs/design.md ("Contracts") win over the file.
"""

from __future__ import annotations

import contextvars
import dataclasses
import importlib.util
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from .audio import load_phone_sound
from .httptools import schema_problem
from .persona import BUILTIN_TOOLS, DtmfConfig, HttpTool, Persona, PersonaAudio, TurnDetection
from .providers import SPECS
from .telephony.registry import NETWORKS

__all__ = ["BUILTIN_TOOLS", "Config", "ConfigError", "DtmfConfig", "HttpTool", "Persona", "PersonaAudio",
           "TurnDetection", "load_config", "load_persona"]


class ConfigError(Exception):
    """A config or persona problem; the message names the file and the field (one line each)."""


# While load_config runs: the problems found so far (checking goes on after each).
_PROBLEMS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("config_problems", default=None)


def _problem(message: str) -> None:
    """A problem: noted, and checking goes on (load_config reports them all at the end); raised at
    once when the checks run outside load_config (load_persona on its own)."""
    problems = _PROBLEMS.get()
    if problems is None:
        raise ConfigError(message)
    problems.append(message)


class _FromEnvironment(str):
    """A value that `${VAR}` put in: a string, which a number or true/false field may also read
    (`max_sessions: ${GLM_MAX_SESSIONS}`), as YAML would had it been written in the file."""


# ---------------------------------------------------------------- schema: config.yaml

@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # The URL Twilio uses to reach us (https://gw.example.com). Empty: derived from each
    # webhook request's Host header, which is fine on a laptop and wrong behind most proxies.
    public_url: str = ""
    # Names this gateway in call records (plus the process id and a random suffix, so that every
    # process is told apart, see storage.lease_seconds). Empty: hostname.
    instance_id: str = ""
    # On SIGTERM/SIGINT: stop taking calls, let live ones finish for up to this long, then wrap
    # them up (goodbye, hang up). A second signal skips the wait.
    drain_seconds: float = 300.0
    # A request's headers, and its body, must arrive within this long (slow clients must not hold
    # connections); idle keep-alive connections are closed after it too.
    request_timeout_seconds: float = 15.0


# `providers:` in config.yaml: one section per provider that has settings, typed by its spec.
ProvidersConfig = dataclasses.make_dataclass(
    "ProvidersConfig", [(name, spec.settings, field(default_factory=spec.settings))
                        for name, spec in SPECS.items() if spec.settings is not None], frozen=True)


@dataclass(frozen=True)
class RoutingConfig:
    default_bot: str = "support"
    fallback_bot: str = "echo"  # answers when the default bot's provider has no API key
    numbers: dict[str, str] = field(default_factory=dict)  # dialed number (E.164) -> bot


@dataclass(frozen=True)
class LimitsConfig:
    max_call_seconds: int = 1800
    start_timeout_seconds: float = 10.0  # WS open -> Twilio `start`
    max_message_bytes: int = 65536
    max_protocol_errors: int = 50  # bad frames tolerated per call before we hang up
    model_close_timeout_seconds: float = 1.0
    # The bot is told to wrap up this long before max_call_seconds, then hangs up once it has.
    wrap_up_seconds: float = 20.0
    # Caller silent this long after the bot stopped: reprompt once; silent again: goodbye. 0 = off.
    silence_timeout_seconds: float = 20.0
    max_concurrent_calls: int = 100  # more: new callers hear a polite busy message (model accounts cap sessions)
    max_model_errors: int = 5  # consecutive recoverable model errors before the call is given up
    # A model socket that drops or stops heart-beating is replaced (with the conversation so far)
    # up to this many times in a row, with backoff; then the caller hears the fallback apology.
    model_reconnect_attempts: int = 3
    # A webhook answered with <Connect><Stream> but no stream this long after is closed in the call
    # log as `no_stream` (by whichever instance sweeps first; a stream that starts later reopens it).
    stream_wait_seconds: float = 30.0


@dataclass(frozen=True)
class AudioConfig:
    playout_lead_ms: int = 200  # audio queued at Twilio ahead of the caller's ear
    # Bot audio per media message (one mark each): a multiple of 20 ms, at most the lead. Larger
    # means fewer messages both ways; heard time (barge-in cuts) is known to within one chunk.
    chunk_ms: int = 100


@dataclass(frozen=True)
class StorageConfig:
    # sqlite:///PATH (relative to this config file's directory) or postgresql://user:pass@host/db
    url: str = "sqlite:///data/calls.db"
    retention_days: int = 90  # call records older than this are purged; 0 keeps them forever
    # Each gateway process holds a lease in the call log, renewed every third of this; open calls
    # of a process whose lease expired (it died) are closed as `crashed` by any live instance. Long
    # enough to ride out a database hiccup or a stalled loop, short enough that a dead process's
    # calls stop showing as live within about a minute.
    lease_seconds: float = 30.0


@dataclass(frozen=True)
class RecordingConfig:
    # Stereo WAV per call (caller left, bot right, as the caller heard it). Off by default; a
    # persona's `record:` overrides it either way.
    enabled: bool = False
    dir: str = "data/recordings"  # relative to this config file's directory; the outbox when `url` is set
    retention_days: int = 30  # 0 keeps them as long as their call record
    # "" keeps recordings in `dir`; s3://bucket/prefix uploads each when its call ends (any
    # S3-compatible store: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
    url: str = ""


@dataclass(frozen=True)
class OperatorConfig:
    token: str = ""  # bearer token for /api/ and the dashboard; empty = the API answers 401 to all
    # Per client address: sustained requests per second and burst; requests with a wrong or missing
    # token have a bucket of their own (the same sizes), so they never lock out the right token.
    rate_limit_per_second: float = 10.0
    rate_limit_burst: int = 40


@dataclass(frozen=True)
class MetricsConfig:
    public: bool = False  # true: /metrics answers without the operator token (a private network only)


WEBHOOK_EVENTS = ("call.started", "call.ended")


@dataclass(frozen=True)
class WebhookConfig:
    url: str  # http(s)://… that receives the JSON events (POST)
    secret: str  # signs each delivery (X-Gateway-Signature); the receiver checks it
    events: list[str] = field(default_factory=lambda: list(WEBHOOK_EVENTS))
    # A failed delivery is tried again after first_retry_seconds, then doubling up to max_retry_seconds
    # (the schedule is kept in the call log, so a restart does not reset it).
    first_retry_seconds: float = 2.0
    max_retry_seconds: float = 3600.0


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class _Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    webhooks: list[WebhookConfig] = field(default_factory=list)
    bots_dir: str = "bots"
    # Filled by load_config, not by YAML:
    bots: dict[str, "Persona"] = field(default_factory=dict, metadata={"internal": True})
    path: str = field(default="", metadata={"internal": True})

    @property
    def signatures_required(self) -> bool:
        return bool(self.twilio.auth_token) and not self.twilio.insecure_skip_signature

    def provider_settings(self, provider: str) -> Any:
        """`providers.<provider>` (None for a provider without settings)."""
        return getattr(self.providers, provider, None)

    def provider_ready(self, persona: "Persona") -> bool:
        """True when the persona's provider has what it needs to open a session (an API key)."""
        spec = SPECS.get(persona.provider)
        return spec is not None and spec.ready(self.provider_settings(persona.provider))

    def secrets(self) -> list[str]:
        """Every configured secret, for the log redactor."""
        db_password = urlsplit(self.storage.url).password if "://" in self.storage.url else None
        tool_headers = [v for p in self.bots.values() for t in p.http_tools for k, v in t.headers.items()
                        if any(word in k.lower() for word in ("auth", "key", "token", "secret"))]
        provider_secrets = [secret for name, spec in SPECS.items() for f in spec.secret_fields
                            for secret in _as_list(getattr(self.provider_settings(name), f, ""))]
        network_secrets = [getattr(spec.settings_of(self), f, "") for spec in NETWORKS for f in spec.secret_fields]
        return [s for s in (*provider_secrets, *network_secrets, self.operator.token, db_password, *_aws_secrets(),
                            *tool_headers, *(w.secret for w in self.webhooks)) if s]

    @property
    def base_dir(self) -> Path:
        """Relative paths in the config (bots, SQLite file, recordings) are relative to this."""
        return Path(self.path).resolve().parent if self.path else Path.cwd()


# One section per phone network that has settings (`twilio:`, `telnyx:`, …), typed by its spec.
Config = dataclasses.make_dataclass(
    "Config", [(spec.name, spec.settings, field(default_factory=spec.settings)) for spec in NETWORKS if spec.settings],
    bases=(_Config,), frozen=True, namespace={"__module__": __name__, "__doc__": "The whole validated config."})


def _aws_secrets() -> list[str]:
    """The S3 credentials of recording.url (read by the AWS SDK from the environment)."""
    return [os.environ.get(var, "") for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ---------------------------------------------------------------- generic builder

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute_env(value: str, where: str, env: typing.Mapping[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        _problem(f"{where}: environment variable {name} is not set (write ${{{name}:-}} to make it optional)")
        return ""
    result = _ENV_RE.sub(repl, value)
    return _FromEnvironment(result) if result != value else value


_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, str) else repr(value)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, allowed))}, "
                              f"got {_describe(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        (et,) = typing.get_args(tp)
        return [_coerce(et, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if isinstance(value, _FromEnvironment) and tp in (bool, int, float):
        text = value.strip()
        if tp is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if tp is int and _INTEGER.fullmatch(text):
            return int(text)
        if tp is float and _NUMBER.fullmatch(text):
            return float(text)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # phone numbers and "inf"-like values written bare in YAML
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in the schema, not in the file


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a YAML mapping; `where` is "file: dotted.path" for messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    public = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    sep = "" if where.endswith(": ") else "."
    for key in sorted(set(map(str, data)) - set(public)):
        _problem(f"{where}{sep}{key}: unknown key (known: {', '.join(sorted(public))})")
    kwargs = {}
    for name, f in public.items():
        if name in data:
            try:
                kwargs[name] = _coerce(hints[name], data[name], f"{where}{sep}{name}")
            except ConfigError as e:  # noted; the field keeps its default and the others are checked
                _problem(str(e))
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ConfigError(str(e)) from None  # nothing to build this without
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}{sep}{name}: required")
    return cls(**kwargs)


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key written twice in one mapping is an error: YAML would keep the
    last one silently, and a second `max_sessions:` further down is how a setting gets lost."""


def _unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)  # merge keys (<<) may be overridden: that is what they are for
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                    f"duplicate key {key!r}", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _load_yaml(path: Path, env: typing.Mapping[str, str]) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader that refuses duplicate keys
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    return _walk_env(data, f"{path}: ", env)


def _walk_env(node: Any, where: str, env: typing.Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return _substitute_env(node, where.rstrip(". "), env)
    if isinstance(node, dict):
        sep = "" if where.endswith(": ") else "."
        return {k: _walk_env(v, f"{where}{sep}{k}", env) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk_env(v, f"{where}[{i}]", env) for i, v in enumerate(node)]
    return node


# ---------------------------------------------------------------- loading

_ENV_OVERRIDES = {
    **{var: ("providers", name, key) for name, spec in SPECS.items() for var, key in spec.env.items()},
    **{var: (spec.name, key) for spec in NETWORKS for var, key in spec.env.items()},
    "GATEWAY_PUBLIC_URL": ("server", "public_url"),
    "GATEWAY_OPERATOR_TOKEN": ("operator", "token"),
    "GATEWAY_DATABASE_URL": ("storage", "url"),
    "GATEWAY_RECORDING_URL": ("recording", "url"),
}


def _apply_env_overrides(data: dict, env: typing.Mapping[str, str]) -> dict:
    for var, path in _ENV_OVERRIDES.items():
        if env.get(var):
            node = data
            for key in path[:-1]:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = node[key] = {}
                node = child
            node[path[-1]] = _env_value(path, env[var])
    return data


def _env_value(path: tuple[str, ...], value: str) -> Any:
    """An environment override as its field wants it: a list field takes comma-separated items."""
    tp: Any = Config
    for key in path:
        tp = typing.get_type_hints(tp).get(key) if dataclasses.is_dataclass(tp) else None
    if typing.get_origin(tp) is list:
        return [item.strip() for item in value.split(",") if item.strip()]
    if tp is int and value.strip().isdigit():
        return int(value)
    return value


def load_persona(path: Path, env: typing.Mapping[str, str] | None = None) -> Persona:
    data = _load_yaml(path, os.environ if env is None else env)
    persona = _build(Persona, data, f"{path}: ")
    where = f"{path}: "
    spec = SPECS.get(persona.provider)
    if spec is None:
        raise ConfigError(f"{where}provider: expected one of {', '.join(map(repr, SPECS))}, got {persona.provider!r}")
    if persona.voice and spec.voices and persona.voice not in spec.voices:
        _problem(f"{where}voice: {spec.label} has no voice {persona.voice!r} "
                          f"(one of {', '.join(sorted(spec.voices))})")
    tokens = persona.max_response_output_tokens
    if spec.max_output_tokens and tokens != "inf" and not (tokens.isdigit() and 1 <= int(tokens) <= spec.max_output_tokens):
        _problem(f"{where}max_response_output_tokens: expected 1..{spec.max_output_tokens} or \"inf\", "
                          f"got {tokens!r}")
    audio = dataclasses.replace(persona.audio, input_format=persona.audio.input_format or spec.input_formats[0],
                                output_format=persona.audio.output_format or spec.output_formats[0])
    for name, value, allowed in (("audio.input_format", audio.input_format, spec.input_formats),
                                 ("audio.output_format", audio.output_format, spec.output_formats),
                                 ("turn_detection.type", persona.turn_detection.type, spec.turn_detection)):
        if value not in allowed:
            _problem(f"{where}{name}: provider {persona.provider} takes "
                              f"{' or '.join(allowed)}, got {value!r}")
    _check_phone_actions(persona, where)
    _check_conversation(persona, path, where)
    if persona.language and not LANGUAGE_TAG.fullmatch(persona.language):
        _problem(f"{where}language: expected a language tag like en-US or zh-CN, got {persona.language!r}")
    if persona.temperature is not None and not 0 <= persona.temperature <= 1:
        _problem(f"{where}temperature: expected 0..1, got {persona.temperature}")
    if persona.audio.output_rate not in (8000, 16000, 24000, 48000):
        _problem(f"{where}audio.output_rate: expected 8000, 16000, 24000 or 48000")
    if persona.max_call_seconds is not None and persona.max_call_seconds <= 0:
        _problem(f"{where}max_call_seconds: must be positive")
    model = persona.model or spec.default_model
    if (persona.tools or persona.http_tools) and not spec.supports_tools(model):
        field_name = "tools" if persona.tools else "http_tools"
        _problem(f"{where}{field_name}: {spec.label} model {model!r} takes no functions "
                 f"(choose a model that does, or remove tools and http_tools)")
    return dataclasses.replace(persona, name=path.stem, path=str(path), audio=audio, model=model)


def _check_conversation(p: Persona, path: Path, where: str) -> None:
    """Barge-in policy and hold sound: catch at load what would misbehave mid-call."""
    b = p.barge_in
    if not 40 <= b.min_speech_ms <= 3000:
        _problem(f"{where}barge_in.min_speech_ms: expected 40..3000")
    if not b.min_speech_ms <= b.confirm_ms <= 5000:
        _problem(f"{where}barge_in.confirm_ms: expected min_speech_ms..5000")
    if not 0 < b.threshold < 32768:
        _problem(f"{where}barge_in.threshold: expected 1..32767")
    if not 0 <= p.hold.after_ms <= 30000:
        _problem(f"{where}hold.after_ms: expected 0..30000")
    if p.hold.sound not in ("tones", "none"):
        try:
            load_phone_sound(path.parent / p.hold.sound)
        except (OSError, ValueError) as e:
            _problem(f"{where}hold.sound: {getattr(e, 'strerror', None) or e} "
                              "(tones, none, or an 8 kHz mono 16-bit WAV next to the persona)")


E164 = re.compile(r"^\+[1-9][0-9]{6,14}\Z")  # \Z: "$" would also take a trailing newline
LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")  # BCP 47, as the models and TwiML's <Say> take it
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_phone_actions(p: Persona, where: str) -> None:
    """Tools, transfer targets and DTMF shortcuts: catch at load what would fail mid-call."""
    for i, name in enumerate(p.tools):
        if name not in BUILTIN_TOOLS:
            _problem(f"{where}tools[{i}]: unknown built-in tool {name!r} (one of {', '.join(BUILTIN_TOOLS)}; "
                              "HTTP tools go under http_tools)")
    for name, number in [("transfer_to", p.transfer_to), ("transfer_caller_id", p.transfer_caller_id),
                         *((f"transfer_targets.{k}", v) for k, v in p.transfer_targets.items())]:
        if number and not E164.match(number):
            _problem(f"{where}{name}: expected an E.164 number like +15551234567, got {number!r}")
    if "transfer_call" in p.tools and not (p.transfer_to or p.transfer_targets):
        _problem(f"{where}tools: transfer_call needs transfer_to or transfer_targets")
    names = set(BUILTIN_TOOLS)
    for i, tool in enumerate(p.http_tools):
        at = f"{where}http_tools[{i}]"
        if not TOOL_NAME.match(tool.name) or tool.name in names:
            _problem(f"{at}.name: {tool.name!r} must be unique, letters/digits/_/- (and not a built-in)")
        names.add(tool.name)
        if not re.match(r"^https?://", tool.url):
            _problem(f"{at}.url: expected an http(s):// URL")
        if tool.parameters.get("type") != "object":
            _problem(f"{at}.parameters: expected a JSON Schema with type: object")
        if problem := schema_problem(tool.parameters):
            _problem(f"{at}.parameters{problem}")
        if not 0 < tool.timeout_seconds <= 60:
            _problem(f"{at}.timeout_seconds: expected 0..60")
    if not 100 <= p.dtmf.inter_digit_ms <= 10000:
        _problem(f"{where}dtmf.inter_digit_ms: expected 100..10000")
    for digit, action in p.dtmf.shortcuts.items():
        if digit not in "0123456789*#" or len(digit) != 1:
            _problem(f"{where}dtmf.shortcuts.{digit}: expected a single key 0-9, * or #")
        target = action.split(":", 1)[1] if action.startswith("transfer:") else None
        if action not in ("transfer", "end_call") and target is None:
            _problem(f"{where}dtmf.shortcuts.{digit}: expected transfer, transfer:<target> or end_call")
        if action == "transfer" and not p.transfer_to:
            _problem(f"{where}dtmf.shortcuts.{digit}: transfer needs transfer_to")
        if target is not None and target not in p.transfer_targets:
            _problem(f"{where}dtmf.shortcuts.{digit}: no transfer target {target!r}")


def load_config(path: str | Path = "config.yaml", env: typing.Mapping[str, str] | None = None) -> Config:
    """Load and validate config.yaml and every persona in its bots_dir. Every problem found is
    reported at once (one ConfigError, one line each), not just the first."""
    problems: list[str] = []
    token = _PROBLEMS.set(problems)
    try:
        config = _load_config(Path(path), os.environ if env is None else env)
    except ConfigError as e:  # one that stops the checking (the file cannot be read, no bots_dir)
        problems.append(str(e))
    finally:
        _PROBLEMS.reset(token)
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems:\n  " + "\n  ".join(problems))
    return config


def _load_config(path: Path, env: typing.Mapping[str, str]) -> Config:
    data = _load_yaml(path, env) if path.exists() else None
    if path.exists() and data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data = _apply_env_overrides(dict(data or {}), env)
    if env.get("GATEWAY_WEBHOOK_URL"):  # one more receiver, next to any in the file
        hooks = data.get("webhooks") or []
        if isinstance(hooks, list):  # else the schema check below names the mistake
            data["webhooks"] = [*hooks, {"url": env["GATEWAY_WEBHOOK_URL"],
                                         "secret": env.get("GATEWAY_WEBHOOK_SECRET", "")}]
    cfg = _build(Config, data, f"{path}: ")
    _check_ranges(cfg, path)
    bots_dir = Path(cfg.bots_dir)
    if not bots_dir.is_absolute():
        bots_dir = path.resolve().parent / bots_dir
    if not bots_dir.is_dir():
        raise ConfigError(f"{path}: bots_dir: {bots_dir} is not a directory")
    bots, broken = {}, set()
    for persona_path in sorted(bots_dir.glob("*.yaml")):
        try:
            bots[persona_path.stem] = load_persona(persona_path, env)
        except ConfigError as e:  # reported; the other personas are still checked
            _problem(str(e))
            broken.add(persona_path.stem)
    where = f"{path}: routing"
    for key, bot in [("default_bot", cfg.routing.default_bot), ("fallback_bot", cfg.routing.fallback_bot),
                     *((f"numbers.{n}", b) for n, b in cfg.routing.numbers.items())]:
        if bot not in bots and bot not in broken:
            _problem(f"{where}.{key}: no bot {bot!r} in {bots_dir} "
                              f"(have: {', '.join(sorted(bots)) or 'none'})")
    known = {**bots, **dict.fromkeys(broken)}  # a bot that failed to load is reported once, above
    for spec in NETWORKS:  # settings that name bots, checked now that the bots are known
        if spec.settings is not None:
            try:
                cfg = dataclasses.replace(cfg, **{spec.name: spec.finish_settings(spec.settings_of(cfg), known,
                                                                                  f"{path}: {spec.name}")})
            except ValueError as e:
                _problem(str(e))
    for name, persona in bots.items():
        if persona.overflow != "busy" and persona.overflow not in broken and (
                persona.overflow not in bots or persona.overflow == name):
            _problem(f"{persona.path}: overflow: expected busy or another bot, got {persona.overflow!r} "
                              f"(bots: {', '.join(sorted(set(bots) - {name}))})")
    return dataclasses.replace(cfg, bots=bots, path=str(path))


def _check_ranges(cfg: Config, path: Path) -> None:
    checks = [
        ("server.port", 0 <= cfg.server.port <= 65535, "0..65535"),
        ("server.public_url", not cfg.server.public_url or re.match(r"^https?://[^/]+", cfg.server.public_url),
         "an http(s):// URL"),
        ("audio.playout_lead_ms", 40 <= cfg.audio.playout_lead_ms <= 2000, "40..2000"),
        ("audio.chunk_ms", 20 <= cfg.audio.chunk_ms <= cfg.audio.playout_lead_ms and cfg.audio.chunk_ms % 20 == 0,
         f"a multiple of 20 from 20 to audio.playout_lead_ms ({cfg.audio.playout_lead_ms})"),
        ("limits.max_message_bytes", 1024 <= cfg.limits.max_message_bytes <= 16 << 20, "1 KiB..16 MiB"),
        ("limits.max_call_seconds", cfg.limits.max_call_seconds > 0, "positive"),
        ("storage.url", re.match(r"^(sqlite:///.+|postgres(ql)?://.+)$", cfg.storage.url),
         "sqlite:///PATH or postgresql://…"),
        ("storage.retention_days", cfg.storage.retention_days >= 0, ">= 0"),
        ("storage.lease_seconds", cfg.storage.lease_seconds >= 1, ">= 1"),
        ("server.request_timeout_seconds", 1 <= cfg.server.request_timeout_seconds <= 300, "1..300"),
        ("limits.stream_wait_seconds", cfg.limits.stream_wait_seconds >= 1, ">= 1"),
        ("recording.retention_days", cfg.recording.retention_days >= 0, ">= 0"),
        ("recording.url", not cfg.recording.url or re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\x00-\x1f]*)?$",
                                                            cfg.recording.url), "s3://BUCKET/PREFIX (or empty: local disk)"),
    ]
    checks += [(f"providers.{name}.{key}", ok(cfg.provider_settings(name)), want)
               for name, spec in SPECS.items() for key, ok, want in spec.checks]
    checks += [(f"{spec.name}.{key}", ok(spec.settings_of(cfg)), want) for spec in NETWORKS for key, ok, want in spec.checks]
    for i, hook in enumerate(cfg.webhooks):
        checks += [(f"webhooks[{i}].url", re.match(r"^https?://[^/]+", hook.url), "an http(s):// URL"),
                   (f"webhooks[{i}].secret", len(hook.secret) >= 16,
                    "a secret of at least 16 characters (GATEWAY_WEBHOOK_SECRET for GATEWAY_WEBHOOK_URL)"),
                   *((f"webhooks[{i}].events[{j}]", e in WEBHOOK_EVENTS, " or ".join(WEBHOOK_EVENTS))
                     for j, e in enumerate(hook.events)),
                   (f"webhooks[{i}].first_retry_seconds", 0.1 <= hook.first_retry_seconds <= 3600, "0.1..3600"),
                   (f"webhooks[{i}].max_retry_seconds", hook.first_retry_seconds <= hook.max_retry_seconds <= 86400,
                    f"first_retry_seconds ({hook.first_retry_seconds:g})..86400")]
    for name, ok, want in checks:
        if not ok:
            _problem(f"{path}: {name}: expected {want}")
    if cfg.recording.url and importlib.util.find_spec("aiobotocore") is None:
        _problem(f"{path}: recording.url: S3 storage needs aiobotocore, which is not installed: "
                 "pip install 'voicebot-gateway[s3]'")
    if cfg.storage.url.startswith("postgres") and importlib.util.find_spec("asyncpg") is None:
        _problem(f"{path}: storage.url: PostgreSQL needs asyncpg, which is not installed: "
                 "pip install 'voicebot-gateway[postgres]'")
