"""OpenAI Realtime wire specifics with the fake OpenAI server: GA session.update, pcmu passthrough
byte for byte, the 24 kHz PCM option, truncate/delete on barge-in, Azure-style auth, session
renewal with the conversation so far.

What every model must do on a call is in test_call_matrix.py.
"""

from __future__ import annotations

import base64
import logging
import random
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.audio import PHONE_RATE, pcm16_to_ulaw, tone
from gateway.providers.openai import session_url
from tests.audio_check import dominant_hz, max_discontinuity, samples, ulaw_samples, voiced_runs
from tests.conftest import OPENAI_KEY
from tests.phone_helpers import dial, ended, logged, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime

LAST_APPEND = 40 * 8  # mu-law held back for the next append (60 ms batches of 20 ms frames) at hang-up


async def test_session_update_is_ga_shaped_with_pcmu_both_ways(make_gateway, fake_openai):
    gw = await make_gateway(openai=fake_openai)
    phone = await dial(gw.url, bot="openai-greeter")
    await wait_for(lambda: fake_openai.sessions and fake_openai.sessions[0].session_config, 3, "session.update")
    s = fake_openai.sessions[0]
    assert s.auth_header == f"Bearer {OPENAI_KEY}"
    assert not any(k.lower() == "openai-beta" for k in s.headers)  # that would select the beta protocol
    assert parse_qs(urlsplit(s.path).query)["model"] == ["gpt-realtime"]
    cfg = s.session_config
    assert cfg["type"] == "realtime" and cfg["output_modalities"] == ["audio"]
    assert cfg["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert cfg["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert cfg["audio"]["output"]["voice"] == "alloy"
    td = cfg["audio"]["input"]["turn_detection"]
    assert td["type"] == "server_vad" and td["interrupt_response"] is False and td["create_response"] is True
    assert cfg["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "en"}
    assert "temperature" not in cfg and cfg["instructions"] == "You are a test bot."
    await wait_for(lambda: any(e["type"] == "response.create" for e in s.events), 2, "response.create")
    greet = next(e for e in s.events if e["type"] == "response.create")
    assert "Hello, thanks for calling Northwind." in greet["response"]["instructions"]
    await phone.hangup()
    assert not s.errors_sent


async def test_semantic_vad_persona(make_gateway, fake_openai, config_dir):
    (config_dir / "bots" / "openai-semantic.yaml").write_text(
        "provider: openai\ninstructions: x\nturn_detection:\n  type: semantic_vad\n  eagerness: low\n")
    gw = await make_gateway(openai=fake_openai)
    phone = await dial(gw.url, bot="openai-semantic")
    await wait_for(lambda: fake_openai.sessions and fake_openai.sessions[0].session_config, 3, "session.update")
    td = fake_openai.sessions[0].session_config["audio"]["input"]["turn_detection"]
    assert td == {"type": "semantic_vad", "eagerness": "low", "create_response": True, "interrupt_response": False}
    await phone.hangup()


async def test_pcmu_passthrough_is_byte_exact_both_ways(make_gateway, fake_openai):
    """With audio/pcmu the gateway must not touch the audio: what the caller says is what the
    model gets, and what the model says (here: the caller's words echoed) is what the caller hears."""
    fake_openai.echo = True
    gw = await make_gateway(openai=fake_openai)
    phone = await dial(gw.url, bot="openai-quiet")
    rng = random.Random(7)
    # A loud, irregular signal: a tone with noise, so any resampling or re-encoding changes bytes.
    pcm = bytearray(tone(440, 0.8, PHONE_RATE, 6000))
    for i in range(0, len(pcm), 2):
        v = int.from_bytes(pcm[i:i + 2], "little", signed=True) + rng.randint(-3000, 3000)
        pcm[i:i + 2] = max(-32768, min(32767, v)).to_bytes(2, "little", signed=True)
    said = pcm16_to_ulaw(bytes(pcm))
    await phone.silence(0.2)
    await phone.say(said)
    await wait_for(lambda: fake_openai.sessions[0].responses
                   and fake_openai.sessions[0].responses[0]["status"] == "completed", 4, "the echo reply")
    await phone.silence(1.8)
    await phone.hangup()
    s = fake_openai.sessions[0]
    assert said in bytes(s.raw_audio), "caller audio was altered on the way to the model"
    assert said in bytes(phone.result.heard), "model audio was altered on the way to the caller"
    assert not s.errors_sent and not phone.result.violations


async def test_pcm_24k_option_transcodes_both_ways(make_gateway, fake_openai):
    fake_openai.greeting_tone_hz = 1000
    gw = await make_gateway(openai=fake_openai)
    phone = await dial(gw.url, bot="openai-pcm")
    await wait_for(lambda: fake_openai.sessions and fake_openai.sessions[0].session_config, 3, "session.update")
    s = fake_openai.sessions[0]
    assert s.session_config["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s.session_config["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    await phone.silence(0.3)
    await phone.say(ulaw_tone(440, 1.0))
    await phone.silence(2.2)  # the fake replies with a 1.5 s, 600 Hz tone at 24 kHz
    await phone.hangup()
    x = samples(bytes(s.audio))
    start, stop = max(voiced_runs(x, 24000), key=lambda r: r[1] - r[0])
    assert s.input_rate == 24000 and (stop - start) / 24000 == pytest.approx(1.0, abs=0.05)
    assert dominant_hz(x[start:stop], 24000) == pytest.approx(440, rel=0.02)
    heard = ulaw_samples(phone.result.heard)
    runs = [r for r in voiced_runs(heard, PHONE_RATE) if r[1] - r[0] > PHONE_RATE]
    assert len(runs) == 1, runs
    a, b = runs[0]
    assert (b - a) / PHONE_RATE == pytest.approx(1.5, abs=0.05)
    assert dominant_hz(heard[a:b], PHONE_RATE) == pytest.approx(600, rel=0.01)
    assert max_discontinuity(heard[a + 80:b - 80], PHONE_RATE, 600) < 0.15
    assert not s.errors_sent


async def test_barge_in_truncates_to_what_the_marks_say_was_played(make_gateway, fake_openai):
    fake_openai.reply_seconds = 4.0
    fake_openai.delta_interval = 0.4
    gw = await make_gateway(openai=fake_openai)
    phone = await dial(gw.url, bot="openai-greeter")
    await phone.silence(1.3)
    await phone.say(ulaw_tone(440, 0.6))
    await wait_for(lambda: fake_openai.sessions[0].truncates, 2, "conversation.item.truncate")
    await phone.silence(0.3)
    await phone.hangup()
    s = fake_openai.sessions[0]
    greeting = s.responses[0]
    truncate = s.truncates[0]
    assert truncate["item_id"] == greeting["item_id"] and truncate["accepted"]
    kinds = [e.get("type") for e in s.events]
    assert kinds.index("response.cancel") < kinds.index("conversation.item.truncate")  # cancel, then cut the memory
    # The phone's own account of what it played of the greeting (660 Hz) before the clear:
    heard = ulaw_samples(phone.result.heard)
    first = voiced_runs(heard, PHONE_RATE)[0]
    played_ms = (first[1] - first[0]) / PHONE_RATE * 1000
    # Marks are one chunk (100 ms) apart, plus transit; never more than was played.
    assert played_ms - 100 - 40 <= truncate["audio_end_ms"] <= played_ms + 5
    summary = await ended(gw, phone)
    cut = summary.transcript[0]
    assert cut.interrupted and cut.heard_ms == truncate["audio_end_ms"]
    assert not s.errors_sent, s.errors_sent
    assert not s.deletes


async def test_barge_in_before_anything_was_heard_deletes_the_reply(make_gateway, fake_openai):
    """Audio reached the phone but none of it was played (marks not echoed): the model must
    forget the reply entirely rather than believe the caller heard some of it."""
    fake_openai.reply_seconds = 3.0
    gw = await make_gateway(openai=fake_openai)
    phone = await dial(gw.url, bot="openai-greeter")
    phone.hold_playback = True  # a slow path to the caller's ear
    await wait_for(lambda: phone.result.first_audio_at is not None, 3, "greeting audio at the phone")
    await phone.say(ulaw_tone(440, 0.5))
    await wait_for(lambda: fake_openai.sessions[0].deletes, 2, "conversation.item.delete")
    phone.hold_playback = False
    await phone.silence(0.3)
    await phone.hangup()
    s = fake_openai.sessions[0]
    assert s.deletes == [s.responses[0]["item_id"]] and not s.truncates
    assert phone.result.clears
    assert not s.errors_sent, s.errors_sent
    summary = await ended(gw, phone)
    cut = summary.transcript[0]
    assert cut.interrupted and cut.heard == "" and cut.heard_ms == 0


async def test_azure_style_endpoint_and_api_key_header(make_gateway, fake_openai):
    fake_openai.auth = "api-key"
    base = fake_openai.url.split("/v1/")[0]
    url = f"{base}/openai/realtime?api-version=2025-04-01-preview&deployment=my-realtime"
    gw = await make_gateway(openai=fake_openai, env={"OPENAI_REALTIME_URL": url},
                            extra="providers:\n  openai:\n    auth: api-key\n")
    phone = await dial(gw.url, bot="openai-greeter")
    await wait_for(lambda: phone.result.first_audio_at is not None, 3, "greeting over api-key auth")
    s = fake_openai.sessions[0]
    assert s.headers.get("api-key") == OPENAI_KEY and not s.auth_header
    q = parse_qs(urlsplit(s.path).query)
    assert q["deployment"] == ["my-realtime"] and "model" not in q
    await phone.hangup()


def test_session_url_puts_the_personas_model_in_the_query():
    assert session_url("wss://api.openai.com/v1/realtime?model=gpt-realtime", "gpt-realtime-mini") == \
        "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini"
    assert session_url("wss://api.openai.com/v1/realtime", "gpt-realtime") == \
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    azure = "wss://x.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=d1"
    assert session_url(azure, "gpt-realtime") == azure


async def _converse(phone, fake, n: int) -> None:
    """One caller turn and the bot's whole reply (n-th response of the session)."""
    await phone.say(ulaw_tone(440, 0.5))
    await wait_for(lambda: len(fake.sessions[-1].responses) >= n
                   and fake.sessions[-1].responses[n - 1]["status"] == "completed", 4, f"reply {n}")
    await phone.silence(1.8)  # it plays out


async def test_session_renewed_at_a_quiet_moment_keeps_the_conversation(make_gateway, fake_openai, caplog):
    gw = await make_gateway(openai=fake_openai, extra="providers:\n  openai:\n    session_renew_seconds: 2\n")
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="openai-greeter")
        await phone.silence(1.9)  # the 1.5 s greeting plays out
        await _converse(phone, fake_openai, 2)  # a caller turn and a reply; > 2 s by now, and quiet
        await wait_for(lambda: len(fake_openai.sessions) == 2 and fake_openai.sessions[1].session_config, 3,
                       "a second session")
        old, new = fake_openai.sessions[:2]
        await wait_for(old.closed.is_set, 2, "the old session to close")
        await _converse(phone, fake_openai, 1)  # the call goes on in the new session
        await phone.hangup()
        summary = await ended(gw, phone)
    replayed = [(i["role"], i["content"][0]["type"], i["content"][0]["text"]) for i in new.created_items]
    assert replayed == [("assistant", "output_text", "Hello, thanks for calling Northwind."),
                        ("user", "input_text", "caller spoke 0.5 seconds"),
                        ("assistant", "output_text", fake_openai.reply_text)]
    assert not [e for e in new.events if e["type"] == "response.create"], "a continued call is not greeted again"
    assert new.responses[0]["kind"] == "reply"
    # Seamless: the caller's microphone was never dropped. Audio went to the old session until
    # the new one was ready, then to the new one (with the old one's partial append); together they
    # hold the whole call's audio but the frames in flight at the hang-up and the last partial append.
    sent = phone._mic_sent
    got = sum(len(s.raw_audio) for s in fake_openai.sessions)
    assert sent - got <= 2 * 160 + LAST_APPEND, (sent, got)
    # (by the hang-up the new session was 2 s old too, so a third may have taken over)
    assert summary.sessions == len(fake_openai.sessions) >= 2 and summary.end_reason == "caller_hangup"
    assert [e.role for e in summary.transcript] == ["bot", "caller", "bot", "caller", "bot"]
    assert logged(caplog, "model_session_renewed", "why=session_age", "context_turns=3")
    assert not any(s.errors_sent for s in fake_openai.sessions)


async def test_session_expired_by_the_service_continues_in_a_new_one(make_gateway, fake_openai, caplog):
    fake_openai.max_session_seconds = 4.5
    gw = await make_gateway(openai=fake_openai)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="openai-greeter")
        await phone.silence(1.9)
        await _converse(phone, fake_openai, 2)
        await wait_for(lambda: len(fake_openai.sessions) == 2, 3, "a new session after session_expired")
        await _converse(phone, fake_openai, 1)
        await phone.hangup()
        summary = await ended(gw, phone)
    old, new = fake_openai.sessions[:2]
    assert [e["error"]["code"] for e in old.errors_sent] == ["session_expired"]
    assert [i["role"] for i in new.created_items] == ["assistant", "user", "assistant"]
    assert summary.sessions == len(fake_openai.sessions) and summary.end_reason == "caller_hangup"
    assert logged(caplog, "model_session_renewed", "why=model:session_expired")
    # The caller's audio during the switch was buffered, not lost.
    assert phone._mic_sent - sum(len(s.raw_audio) for s in fake_openai.sessions) <= 2 * 160 + LAST_APPEND


async def test_caller_audio_goes_in_60_ms_appends_and_none_is_lost_when_sessions_swap(make_gateway, fake_openai):
    """Appends carry 60 ms (a third of the messages of one per frame); at each renewal the old
    session's partial append goes to the new one first, so the model gets every byte, in order."""
    gw = await make_gateway(openai=fake_openai, extra="providers:\n  openai:\n    session_renew_seconds: 1\n")
    phone = await dial(gw.url, bot="openai-quiet")
    # Quiet mu-law (below the fake's VAD: the call stays quiet, so renewals happen) in a 13-byte
    # cycle: a gap of 20, 40 or 60 ms anywhere would break it.
    cycle = bytes(range(0xF1, 0xFE))
    pattern = (cycle * (3 * 8000 // len(cycle) + 1))[:3 * 8000 + 77]
    await phone.silence(0.1)
    await phone.speak(pattern)
    await phone.silence(0.3)
    await phone.hangup()
    await ended(gw, phone)
    assert len(fake_openai.sessions) >= 3, "renewed at least twice while the pattern played"
    got = b"".join(bytes(s.raw_audio) for s in fake_openai.sessions).strip(b"\xff")
    assert got == pattern
    sizes = [len(base64.b64decode(e["audio"])) for s in fake_openai.sessions for e in s.events
             if e["type"] == "input_audio_buffer.append"]
    assert set(sizes[1:-1]) <= {480, 320, 160} and sizes.count(480) >= len(sizes) - 2 * len(fake_openai.sessions)
