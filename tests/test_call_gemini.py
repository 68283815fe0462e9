"""Gemini Live wire specifics with the fake Live API: every client message the gateway sends is a
valid google-genai `LiveClientMessage` in its camelCase wire form, goAway and connection limits
move the call to a resumed session (the service keeps the context, no second greeting), and the
model's own `interrupted` clears the phone at once whatever the barge-in policy.

What every model must do on a call is in test_call_matrix.py.
"""

from __future__ import annotations

import base64
import json
import logging
import textwrap
from collections import Counter

import pytest
from google.genai import types

from gateway.providers.gemini import session_url
from tests.conftest import GEMINI_KEY
from tests.phone_helpers import dial, ended, logged, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime


def conformance(sessions) -> Counter:
    """Validates every message the gateway sent to these fake sessions as the SDK's
    LiveClientMessage (extra fields forbidden) and checks it is already in the SDK's own JSON form
    (camelCase, nothing the SDK would drop: the round trip gives the same JSON). `realtimeInputConfig`
    is checked as `RealtimeInputConfig`: the SDK sends it in `setup` from its LiveConnectConfig,
    though its LiveClientSetup type does not list it. Returns the count per message kind."""
    kinds: Counter = Counter()
    for s in sessions:
        for event in s.events:
            msg = {k: v for k, v in event.items() if k != "_t"}
            (kind, body), = msg.items()
            if kind == "setup" and "realtimeInputConfig" in body:
                body = dict(body)
                ric = body.pop("realtimeInputConfig")
                parsed_ric = types.RealtimeInputConfig.model_validate_json(json.dumps(ric))
                assert same_json(json.loads(parsed_ric.model_dump_json(by_alias=True, exclude_none=True)), ric)
                msg = {kind: body}
            parsed = types.LiveClientMessage.model_validate_json(json.dumps(msg))
            assert same_json(json.loads(parsed.model_dump_json(by_alias=True, exclude_none=True)), msg), msg
            kinds[kind] += 1
    return kinds


def same_json(sdk, ours) -> bool:
    """The same JSON, except that base64 `data` may differ in alphabet (the SDK dumps URL-safe
    base64; the API takes either, as protobuf JSON does)."""
    if isinstance(sdk, dict) and isinstance(ours, dict):
        return sdk.keys() == ours.keys() and all(
            base64.urlsafe_b64decode(sdk[k]) == base64.b64decode(ours[k]) if k == "data" else same_json(sdk[k], ours[k])
            for k in sdk)
    if isinstance(sdk, list) and isinstance(ours, list):
        return len(sdk) == len(ours) and all(same_json(a, b) for a, b in zip(sdk, ours))
    return sdk == ours and type(sdk) is type(ours)


def write_bot(config_dir, name: str, text: str) -> None:
    (config_dir / "bots" / f"{name}.yaml").write_text(textwrap.dedent(text))


async def test_setup_is_what_the_live_api_expects(make_gateway, fake_gemini):
    gw = await make_gateway(gemini=fake_gemini)
    phone = await dial(gw.url, bot="gemini-greeter")
    await wait_for(lambda: fake_gemini.sessions and fake_gemini.sessions[0].responses, 3, "the greeting")
    s = fake_gemini.sessions[0]
    assert s.key == GEMINI_KEY and "key=" not in s.path
    setup = s.session_config
    assert setup["model"] == "models/gemini-3.8-live"
    assert setup["generationConfig"] == {"responseModalities": ["AUDIO"]}
    assert setup["systemInstruction"] == {"parts": [{"text": "You are a test bot."}]}
    assert setup["realtimeInputConfig"]["automaticActivityDetection"]["disabled"] is False
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
    assert setup["sessionResumption"] == {} and setup["contextWindowCompression"] == {"slidingWindow": {}}
    assert "tools" not in setup  # the greeter has none
    assert s.texts == ['The phone call has just connected. Greet the caller by saying exactly: '
                       '"Hello, thanks for calling Northwind."'] and s.responses[0]["kind"] == "greeting"
    await phone.hangup()
    assert conformance(fake_gemini.sessions)["setup"] == 1


def test_the_key_can_go_in_the_query_instead():
    url = session_url("wss://h/ws/x.BidiGenerateContent?alt=1", "k1", "query")
    assert url == "wss://h/ws/x.BidiGenerateContent?alt=1&key=k1"
    assert session_url("wss://h/ws/x", "k1", "header") == "wss://h/ws/x"


async def test_every_client_message_of_an_agent_call_is_a_valid_live_client_message(make_gateway, fake_gemini,
                                                                                     fake_rest):
    """Setup with functions, caller audio, a function call answered (a failed transfer: the model
    goes on), keypad digits as a client turn, a goAway renewal resuming the session."""
    fake_gemini.tool_calls = [("transfer_call", {"target": "billing"})]
    fake_gemini.go_away_after, fake_gemini.go_away_time_left = 3.5, 3.0
    fake_rest.fail_next = [400]
    gw = await make_gateway(gemini=fake_gemini, rest=fake_rest)
    phone = await dial(gw.url, bot="gemini-agent")
    await phone.say(ulaw_tone(440, 0.5))
    first = fake_gemini.sessions[0]
    await wait_for(lambda: first.tool_outputs and len(first.responses) == 2, 6, "the tool result and the follow-up")
    out = json.loads(first.tool_outputs[0]["output"])
    assert first.tool_outputs[0]["name"] == "transfer_call" and out["ok"] is False
    await phone.silence(1.6)  # the follow-up plays out
    await phone.dtmf("1")
    await wait_for(lambda: any(s.texts for s in fake_gemini.sessions), 3, "the digit as a client turn")
    await wait_for(lambda: len(fake_gemini.sessions) == 2 and fake_gemini.sessions[1].session_config, 6,
                   "the resumed session after goAway")
    await phone.silence(0.3)
    await phone.hangup()
    await ended(gw, phone)
    kinds = conformance(fake_gemini.sessions)
    assert kinds["setup"] == 2 and kinds["clientContent"] >= 1 and kinds["toolResponse"] == 1
    assert kinds["realtimeInput"] > 50
    decls = first.session_config["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in decls] == ["end_call", "transfer_call", "lookup_order"]
    assert decls[2]["parametersJsonSchema"]["properties"]["order_id"]["pattern"] == "^[A-Z][0-9]{3}$"
    assert not first.errors_sent and not fake_gemini.sessions[1].errors_sent


async def test_go_away_renews_at_a_quiet_moment_resuming_the_session(make_gateway, fake_gemini, caplog):
    fake_gemini.go_away_after, fake_gemini.go_away_time_left = 2.5, 4.0
    gw = await make_gateway(gemini=fake_gemini)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="gemini-greeter")
        await phone.silence(2.8)  # the greeting plays; goAway comes; quiet: renewal
        await wait_for(lambda: len(fake_gemini.sessions) == 2 and fake_gemini.sessions[1].session_config, 3,
                       "a second session")
        first, second = fake_gemini.sessions
        await phone.say(ulaw_tone(440, 0.5))
        await wait_for(lambda: second.responses and second.responses[-1]["status"] == "completed", 4,
                       "the reply from the resumed session")
        await phone.hangup()
        summary = await ended(gw, phone)
    assert second.session_config["sessionResumption"]["handle"] == first.handles[-1]
    assert second.resumed_from == first.handles[-1] and ("model", "Hello, thanks for calling Northwind.") in second.history
    assert second.session_config["systemInstruction"]["parts"][0]["text"] == "You are a test bot."  # no replay
    assert not second.texts and [r["kind"] for r in second.responses] == ["reply"]  # no second greeting
    assert summary.sessions == 2 and summary.end_reason == "caller_hangup"
    assert logged(caplog, "model_session_ending", "seconds_left=4")
    assert logged(caplog, "model_session_renewed", "why=session_ending")
    assert first.closed.is_set() and not first.errors_sent and not second.errors_sent
    conformance(fake_gemini.sessions)


async def test_the_connection_limit_renews_before_it_with_the_handle(make_gateway, fake_gemini, caplog):
    gw = await make_gateway(gemini=fake_gemini, extra="providers:\n  gemini:\n    session_renew_seconds: 1\n")
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="gemini-quiet")
        await wait_for(lambda: logged(caplog, "model_session_renewed"), 5, "a renewed session")
        await phone.hangup()
        await ended(gw, phone)
    assert fake_gemini.sessions[1].resumed_from == fake_gemini.sessions[0].handles[-1]
    assert logged(caplog, "model_session_renewed", "why=session_age")


async def test_a_dropped_connection_resumes_with_the_last_handle(make_gateway, fake_gemini):
    fake_gemini.reply_seconds = 3.0
    fake_gemini.fail_after_deltas = 2
    fake_gemini.fail_first_session_only = True
    gw = await make_gateway(gemini=fake_gemini)
    phone = await dial(gw.url, bot="gemini-greeter")
    await wait_for(lambda: len(fake_gemini.sessions) == 2 and fake_gemini.sessions[1].session_config, 4,
                   "a second session")
    first, second = fake_gemini.sessions
    assert second.resumed_from == first.handles[-1]
    await phone.silence(0.3)  # the resumed session takes over
    await phone.hangup()
    summary = await ended(gw, phone)
    assert summary.sessions == 2


async def test_an_expired_handle_falls_back_to_a_fresh_session_told_the_conversation(make_gateway, fake_gemini,
                                                                                    caplog):
    fake_gemini.reply_seconds = 3.0
    fake_gemini.fail_after_deltas = 2
    fake_gemini.fail_first_session_only = True
    gw = await make_gateway(gemini=fake_gemini)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="gemini-greeter")
        await wait_for(lambda: fake_gemini.sessions and fake_gemini.sessions[0].handles, 3, "a first handle")
        fake_gemini.resumable.clear()  # the service has forgotten every handle
        await wait_for(lambda: len(fake_gemini.sessions) == 3 and fake_gemini.sessions[2].session_config, 5,
                       "a fresh session after the refused resumption")
        first, refused, fresh = fake_gemini.sessions
        assert refused.errors_sent and "invalid session handle" in refused.errors_sent[0]["error"]["message"]
        assert not fresh.resumed_from and "sessionResumption" in fresh.session_config
        assert fresh.session_config["sessionResumption"] == {}
        text = fresh.session_config["systemInstruction"]["parts"][0]["text"]
        assert "already in progress" in text and "Hello, thanks for calling Northwind." in text
        await phone.silence(0.3)  # the fresh session takes over
        await phone.hangup()
        summary = await ended(gw, phone)
    assert logged(caplog, "model_resume_refused") and summary.sessions == 2
    refused.errors_sent.clear()  # expected here: not a protocol error of the gateway


@pytest.mark.parametrize("policy", ["confirm", "immediate"])
async def test_interrupted_clears_the_phone_at_once_whatever_the_policy(make_gateway, fake_gemini, config_dir, policy):
    write_bot(config_dir, "gemini-patient", f"""
        provider: gemini
        language: en-US
        greeting: "Hello, thanks for calling Northwind."
        instructions: You are a test bot.
        barge_in:
          policy: {policy}
          min_speech_ms: 300
          confirm_ms: 700
        """)
    fake_gemini.reply_seconds = 4.0
    fake_gemini.delta_interval = 0.4
    gw = await make_gateway(gemini=fake_gemini)
    phone = await dial(gw.url, bot="gemini-patient")
    await phone.silence(1.2)
    await phone.say(ulaw_tone(440, 0.3))
    s = fake_gemini.sessions[0]
    assert s.cancels and phone.result.clears, "the model's interruption should have cleared the phone"
    # At once: nothing like the confirmation wait (confirm_ms 700); the matrix holds it to a frame.
    assert 0 <= phone.result.clears[0] - s.cancels[0] < 0.1
    await phone.silence(1.0)
    await phone.hangup()
    summary = await ended(gw, phone)
    cut = [e for e in summary.transcript if e.role == "bot"][0]
    assert cut.interrupted and summary.barge_ins == 1


async def test_a_refused_setup_is_a_connect_error_naming_the_reason(make_gateway, fake_gemini, caplog):
    fake_gemini.fatal_error_on_update = "RESOURCE_EXHAUSTED"
    gw = await make_gateway(gemini=fake_gemini)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="gemini-quiet")
        assert await phone.wait_closed(3)
        summary = await ended(gw, phone)
    assert summary.end_reason == "model_error"
    assert logged(caplog, "model_connect_failed", "close 1008", "RESOURCE_EXHAUSTED")
    assert len(fake_gemini.sessions) == 1  # refused at set-up: not retried in a loop
