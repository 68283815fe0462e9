"""Provider event parsers, fed directly: well-formed events map to our typed events; ill-shaped
ones are dropped with a log line, never an exception that would end the call."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from gateway.config import Persona, PersonaAudio
from gateway.providers.glm import GlmProviderConfig
from gateway.providers.openai import OpenAIProviderConfig
from gateway.logs import CallLogger
from gateway.providers.base import (AudioDelta, InputTranscript, OutputTranscript, ProviderError,
                                    ResponseDone, ResponseStarted, SpeechStarted, ToolCall)
from gateway.providers.glm import GlmRealtime
from gateway.providers.openai import OpenAIRealtime

LOG = CallLogger(logging.getLogger("gateway"), call="CAtest")


def openai() -> OpenAIRealtime:
    p = OpenAIRealtime(Persona(provider="openai", audio=PersonaAudio("pcmu", "pcmu")), OpenAIProviderConfig(), LOG)
    p._ready.set()  # as after session.updated
    return p


def glm() -> GlmRealtime:
    return GlmRealtime(Persona(provider="glm", audio=PersonaAudio("wav", "pcm")), GlmProviderConfig(), LOG)


def test_openai_ga_events_map_to_typed_events():
    p = openai()
    audio = bytes(range(160))
    assert p._translate({"type": "response.created", "response": {"id": "resp_1"}}) == [ResponseStarted("resp_1")]
    assert p._translate({"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_1",
                         "delta": base64.b64encode(audio).decode()}) == [AudioDelta("resp_1", "item_1", audio)]
    assert p._translate({"type": "input_audio_buffer.speech_started", "item_id": "i"}) == [SpeechStarted()]
    assert p._translate({"type": "conversation.item.input_audio_transcription.completed", "item_id": "i",
                         "transcript": "hello"}) == [InputTranscript("hello", "i")]
    assert p._translate({"type": "response.output_audio_transcript.done", "response_id": "resp_1",
                         "transcript": "Hi."}) == [OutputTranscript("resp_1", "Hi.", final=True)]
    p._translate({"type": "response.output_item.added", "item": {"type": "function_call", "call_id": "c1",
                                                                 "name": "end_call"}})
    assert p._translate({"type": "response.function_call_arguments.done", "response_id": "resp_1",
                         "call_id": "c1", "arguments": "{}"}) == [ToolCall("resp_1", "c1", "end_call", "{}")]
    assert p._translate({"type": "response.done", "response": {"id": "resp_1", "status": "cancelled"}}) == \
        [ResponseDone("resp_1", "cancelled", None)]
    expired = p._translate({"type": "error", "error": {"code": "session_expired", "message": "max duration"}})
    assert expired == [ProviderError("session_expired", "max duration", fatal=True, renewable=True)]
    benign = p._translate({"type": "error", "error": {"code": "response_cancel_not_active", "message": "x"}})
    assert benign[0].fatal is False


def test_openai_error_before_session_updated_fails_set_up():
    p = OpenAIRealtime(Persona(provider="openai", audio=PersonaAudio("pcmu", "pcmu")), OpenAIProviderConfig(), LOG)
    assert p._translate({"type": "error", "error": {"code": "unknown_parameter", "message": "bad"}}) == []
    assert p._ready.is_set() and "unknown_parameter" in p._setup_error


@pytest.mark.parametrize("event", [
    {"type": "response.done", "response": "not an object"},
    {"type": "response.created", "response": ["x"]},
    {"type": "error", "error": "text"},
    {"type": "response.output_audio.delta", "delta": 12},
    {"type": "response.output_audio.delta", "delta": "@@not base64@@"},
    {"type": "session.updated", "session": 5},
    {"type": ["weird"]},
    {},
])
async def test_ill_shaped_events_are_dropped_not_fatal(event):
    """Through the reader's own decoding: never an exception, never a fatal error; an event that
    cannot be read is dropped with a `model_bad_event` line."""
    for provider in (openai(), glm()):
        out = provider._decode(json.dumps(event))
        assert isinstance(out, list)
        assert all(not (isinstance(e, ProviderError) and e.fatal) for e in out)


async def test_an_event_that_does_not_fit_is_dropped_with_a_line(caplog):
    with caplog.at_level(logging.WARNING):
        assert openai()._decode(json.dumps({"type": "response.output_audio.delta", "delta": 12})) == []
        assert glm()._decode(b"\x00binary") == [] and glm()._decode("[1, 2]") == []
    assert caplog.text.count("model_bad_event") == 3
