"""Qwen-Omni realtime wire specifics with the fake DashScope service, and conformance with the
official `dashscope` SDK: its own OmniRealtimeConversation client runs against our fake (so the
fake answers what the SDK sends the way the SDK expects), and the gateway's events and
`session.update` stay within what the SDK sends (the same session object the SDK builds for the
same settings).

What every model must do on a call is in test_call_matrix.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from dashscope.audio.qwen_omni import (AudioFormatConfig, MultiModality, OmniRealtimeCallback,
                                       OmniRealtimeConversation)

from gateway.audio import tone
from gateway.config import ConfigError, load_persona
from tests.conftest import QWEN_KEY
from tests.phone_helpers import dial, ended, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime


class Collect(OmniRealtimeCallback):
    """The SDK's callback (it runs on the SDK's thread): every server event it hands over."""

    def __init__(self):
        self.events: list[dict] = []

    def on_event(self, message) -> None:
        self.events.append(message)

    def types(self) -> list[str]:
        return [e.get("type") for e in self.events]


async def until(cb: Collect, event_type: str, count: int = 1, timeout: float = 5.0) -> None:
    await wait_for(lambda: cb.types().count(event_type) >= count, timeout, event_type)


def sdk_update_session(conv: OmniRealtimeConversation, tools: list | None, instructions: str) -> None:
    """The SDK's update_session with the settings the gateway uses for the agent persona."""
    kwargs = {"instructions": instructions}
    if tools:
        kwargs["tools"] = tools
    conv.update_session(output_modalities=[MultiModality.TEXT, MultiModality.AUDIO], voice="Cherry",
                        input_audio_config=AudioFormatConfig(sample_rate=16000),
                        output_audio_config=AudioFormatConfig(sample_rate=24000),
                        input_audio_transcription_model="qwen3-asr-flash-realtime",
                        turn_detection_type="server_vad", turn_detection_threshold=0.5, prefix_padding_ms=300,
                        turn_detection_silence_duration_ms=600,
                        turn_detection_param={"create_response": True, "interrupt_response": False}, **kwargs)


# The real clock: the SDK runs in threads, which looptime does not wait for. On the fast-forwarded
# clock, the fake's reply (1.5 s in 50 ms steps) ran out in virtual time while the SDK's
# cancel_response was on its way, and the cancel met "no active response" (failed once in a run).
@pytest.mark.looptime(False)
async def test_the_dashscope_sdk_client_runs_against_the_fake(fake_qwen):
    """Every client method of the SDK against the fake: all accepted, and the server events come
    back in the order and shape the SDK reads (session id, response ids, transcripts, audio)."""
    cb = Collect()
    conv = OmniRealtimeConversation(model="qwen3.5-omni-flash-realtime", callback=cb, url=fake_qwen.url,
                                    api_key=QWEN_KEY)
    await asyncio.to_thread(conv.connect)
    await until(cb, "session.created")
    assert conv.get_session_id().startswith("sess_")
    await asyncio.to_thread(sdk_update_session, conv, None, "You are a test bot.")
    await until(cb, "session.updated")
    speech = tone(440, 0.6, 16000) + bytes(16000 * 2)  # 0.6 s of speech, then 1 s of silence
    for at in range(0, len(speech), 3200):  # 100 ms appends, as the SDK's samples send them
        await asyncio.to_thread(conv.append_audio, base64.b64encode(speech[at:at + 3200]).decode())
    await until(cb, "response.done")
    assert conv.get_last_response_id() and conv.get_last_first_audio_delay() is not None
    fake_qwen.reply_seconds = 6.0  # this reply is still streaming (~0.6 s) when the SDK cancels it
    await asyncio.to_thread(conv.create_response, 'Say exactly: "Hello there."')
    await until(cb, "response.created", 2)
    await asyncio.to_thread(conv.cancel_response)
    await until(cb, "response.done", 2)
    await asyncio.to_thread(conv.create_item, {"type": "message", "role": "user",
                                               "content": [{"type": "input_text", "text": "hi"}]})
    await asyncio.to_thread(conv.commit)
    await asyncio.to_thread(conv.clear_appended_audio)
    await until(cb, "input_audio_buffer.cleared")
    await asyncio.to_thread(conv.end_session, 5)  # returns once session.finished came
    await asyncio.to_thread(conv.close)
    s = fake_qwen.sessions[0]
    await asyncio.wait_for(s.closed.wait(), 3)
    assert parse_qs(urlsplit(s.path).query)["model"] == ["qwen3.5-omni-flash-realtime"]
    assert s.auth_header == f"Bearer {QWEN_KEY}" and s.finished
    assert "error" not in cb.types(), [e for e in cb.events if e.get("type") == "error"]
    types = cb.types()
    for t in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
              "conversation.item.input_audio_transcription.completed", "response.audio.delta",
              "response.audio_transcript.delta", "response.audio_transcript.done", "session.finished"):
        assert t in types, t
    assert types.index("input_audio_buffer.speech_stopped") < types.index("response.created")
    done = [e for e in cb.events if e.get("type") == "response.done"]
    assert [d["response"]["status"] for d in done] == ["completed", "cancelled"]
    assert {e["type"] for e in s.events} == {"session.update", "input_audio_buffer.append", "response.create",
                                             "response.cancel", "conversation.item.create",
                                             "input_audio_buffer.commit", "input_audio_buffer.clear",
                                             "session.finish"}


async def test_the_gateway_speaks_within_the_sdks_vocabulary(make_gateway, fake_qwen):
    """A gateway call with functions, a function call, keypad digits and a barge-in sends only event
    types the SDK sends, and its session.update is exactly the one the SDK's update_session builds
    for the same settings."""
    fake_qwen.tool_calls = [("lookup_order", {"order_id": "A123"})]
    fake_qwen.reply_seconds = 2.0
    gw = await make_gateway(qwen=fake_qwen, env={"ORDER_API_URL": "http://127.0.0.1:9/orders"})
    phone = await dial(gw.url, bot="qwen-agent")
    await phone.say(ulaw_tone(440, 0.5))
    s = fake_qwen.sessions[0]
    await wait_for(lambda: s.tool_outputs, 6, "the function's output")
    await wait_for(lambda: len(s.responses) >= 2 and s.responses[1]["deltas_sent"] >= 1, 4, "the follow-up")
    await phone.say(ulaw_tone(440, 0.4))  # over the follow-up: cancel
    await phone.silence(0.2)
    await phone.dtmf("1")
    await wait_for(lambda: s.texts, 3, "the digit as text")
    await phone.hangup()
    await ended(gw, phone)
    assert s.cancels and not s.errors_sent, s.errors_sent
    gateway_types = {e["type"] for e in s.events}

    cb = Collect()
    conv = OmniRealtimeConversation(model=s.model, callback=cb, url=fake_qwen.url, api_key=QWEN_KEY)
    await asyncio.to_thread(conv.connect)
    gateway_session = next(e["session"] for e in s.events if e["type"] == "session.update")
    await asyncio.to_thread(sdk_update_session, conv, gateway_session.get("tools"), gateway_session["instructions"])
    await until(cb, "session.updated")
    await asyncio.to_thread(conv.create_response, "x")
    await asyncio.to_thread(conv.cancel_response)
    await asyncio.to_thread(conv.create_item, s.tool_items[0])
    await asyncio.to_thread(conv.append_audio, base64.b64encode(bytes(3200)).decode())
    await asyncio.to_thread(conv.close)
    sdk = fake_qwen.sessions[1]
    sdk_session = next(e["session"] for e in sdk.events if e["type"] == "session.update")
    assert gateway_session == sdk_session
    assert gateway_types <= {e["type"] for e in sdk.events}
    tools = gateway_session["tools"]
    assert [t["function"]["name"] for t in tools] == ["end_call", "transfer_call", "lookup_order"]
    assert all(t["type"] == "function" and set(t["function"]) == {"name", "description", "parameters"} for t in tools)
    item = s.tool_items[0]
    assert item["type"] == "function_call_output" and json.loads(item["output"])["ok"] is False


async def test_a_qwen3_omni_flash_persona_sends_no_tools_and_one_with_tools_is_refused(tmp_path, make_gateway,
                                                                                      fake_qwen, config_dir):
    bad = tmp_path / "old-qwen.yaml"
    bad.write_text("provider: qwen\nmodel: qwen3-omni-flash-realtime\ninstructions: x\ntools: [end_call]\n")
    with pytest.raises(ConfigError, match=r"old-qwen.yaml: tools: Qwen model 'qwen3-omni-flash-realtime' takes no "
                                          r"functions"):
        load_persona(bad)
    (config_dir / "bots" / "qwen-old.yaml").write_text(
        "provider: qwen\nmodel: qwen3-omni-flash-realtime\nvoice: Chelsie\ninstructions: x\n")
    gw = await make_gateway(qwen=fake_qwen)
    phone = await dial(gw.url, bot="qwen-old")
    await wait_for(lambda: fake_qwen.sessions and fake_qwen.sessions[0].session_config, 3, "session.update")
    cfg = fake_qwen.sessions[0].session_config
    assert "tools" not in next(e["session"] for e in fake_qwen.sessions[0].events if e["type"] == "session.update")
    assert cfg["voice"] == "Chelsie" and fake_qwen.sessions[0].model == "qwen3-omni-flash-realtime"
    await phone.hangup()
