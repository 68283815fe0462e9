"""Property-based fuzzing: whatever arrives — random JSON, mutated real frames, random YAML —
every parser answers with its defined error (or drops the event), never an unhandled exception.

Parsers covered: the config/persona loader and both models' server-event translators (every
phone network's codec is fuzzed the same way in test_codecs.py). Example counts are set per test (`FUZZ_EXAMPLES` scales them);
hypothesis' database is off so CI runs are independent.
"""

from __future__ import annotations

import json
import logging
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, Persona, PersonaAudio, load_config
from gateway.providers.glm import GlmProviderConfig
from gateway.providers.openai import OpenAIProviderConfig
from gateway.logs import CallLogger
from gateway.providers.base import ProviderError
from gateway.providers.glm import GlmRealtime
from gateway.providers.openai import OpenAIRealtime
from tests.conftest import REPO

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
FUZZ = settings(max_examples=int(400 * SCALE), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LOG = CallLogger(logging.getLogger("gateway.fuzz"), call="CAfuzz")

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20)


def _providers():
    glm = GlmRealtime(Persona(provider="glm", audio=PersonaAudio("wav", "pcm")), GlmProviderConfig(), LOG)
    oai = OpenAIRealtime(Persona(provider="openai", audio=PersonaAudio("pcmu", "pcmu")), OpenAIProviderConfig(), LOG)
    oai._ready.set()
    return glm, oai


SERVER_EVENTS = ["session.updated", "error", "response.created", "response.done", "response.cancelled",
                 "response.audio.delta", "response.output_audio.delta", "response.audio_transcript.delta",
                 "response.output_audio_transcript.done", "response.function_call_arguments.done",
                 "response.output_item.added", "conversation.item.input_audio_transcription.completed",
                 "input_audio_buffer.speech_started", "heartbeat", "rate_limits.updated"]


@FUZZ
@given(st.sampled_from(SERVER_EVENTS), st.dictionaries(
    st.sampled_from(["response", "error", "delta", "item", "item_id", "response_id", "transcript", "session",
                     "arguments", "name", "call_id", "text", "usage"]), json_value, max_size=6))
def test_model_event_translators(event_type, fields):
    for provider in _providers():
        events = provider._decode(json.dumps({"type": event_type, **fields}))  # the reader's path: never raises
        assert isinstance(events, list)
        for ev in events:
            assert not isinstance(ev, ProviderError) or isinstance(ev.code, str)


yaml_scalar = st.none() | st.booleans() | st.integers(-5, 100000) | st.floats(allow_nan=False, width=32) \
    | st.text(alphabet="abcxyz_-.+:/{}$ 0123456789", max_size=20)
yaml_tree = st.recursive(yaml_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["provider", "voice", "tools", "audio", "turn_detection", "input_format", "type", "dtmf",
                     "shortcuts", "http_tools", "name", "url", "parameters", "transfer_to", "limits", "server",
                     "port", "routing", "numbers", "storage", "x"]), inner, max_size=4), max_leaves=12)


def _mutate(tree, path_seed: int, value, drop: bool):
    """Replace (or drop) one value at a pseudo-random path inside a YAML tree."""
    node = tree
    for _ in range(3):
        if not isinstance(node, dict) or not node:
            break
        key = sorted(node, key=str)[path_seed % len(node)]
        path_seed //= 5
        if isinstance(node[key], dict) and node[key] and path_seed % 2:
            node = node[key]
            continue
        if drop:
            del node[key]
        else:
            node[key] = value
        break
    return tree


REAL_YAML = {name: (REPO / name).read_text() for name in ("config.yaml", "bots/support.yaml", "bots/support-openai.yaml")}


@settings(max_examples=int(150 * SCALE), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(sorted(REAL_YAML)), seed=st.integers(0, 10**6), value=yaml_tree, drop=st.booleans(),
       raw=st.text(max_size=80))
def test_config_and_persona_loader(tmp_path_factory, which, seed, value, drop, raw):
    """Shipped files with one value mutated or dropped, and raw text: a ConfigError or a config."""
    d = tmp_path_factory.mktemp("cfg")
    (d / "bots").mkdir()
    for name, text in REAL_YAML.items():
        (d / name).write_text(text)
    tree = yaml.safe_load(REAL_YAML[which])
    (d / which).write_text(yaml.safe_dump(_mutate(tree, seed, value, drop), allow_unicode=True))
    for attempt in range(2):
        try:
            load_config(d / "config.yaml", env={})
        except ConfigError:
            pass  # the defined error: names the file and the field
        (d / "bots" / "raw.yaml").write_text(raw)  # second round: a persona file of random text
