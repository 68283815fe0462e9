"""The call-level matrix once per phone network in the registry, each with its fake caller
(gateway.phone_sim speaking the network's frames) and its test profile (tests/networks/<network>.py:
its secrets, its fake REST API where it has one, what it does and does not do). Nothing here names a
network but the network-specific tests at the end.

Real sockets on 127.0.0.1, on the fast-forwarded event-loop clock (looptime; gateway/clock.py):
20 ms pacing and every timing exact, a call in milliseconds (test_barge_in_networks.py runs two
networks on the real clock as well). The call core does not know which network it
serves; these tests prove each network module turns its frames into the same call: greeting
heard, a caller tone reaching the model at its pitch, the model's tone reaching the caller clean,
barge-in (clear within a frame, cancel, cut to what was heard — whether the network acknowledges
marks pending at a clear or not), hang-up through the network's REST API after the goodbye was
heard, transfer (or a clear refusal told to the model), bad frames survived, keypad (the last three
on the fast-forwarded clock for WebSocket networks: test_networks_unit.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest

from gateway.audio import PHONE_RATE
from gateway.phone_sim import NETWORKS, SimulatedPhone
from gateway.telephony.registry import BY_NAME
from gateway.telephony.audiosocket.fake import bot_uuid
from gateway.web_state import STORE
from tests.audio_check import dominant_hz, max_discontinuity, samples, ulaw_samples, voiced_runs
from tests.conftest import EXOTEL_KEY, VONAGE_SECRET
from tests.networks import JSON_JUNK, profile
from tests.phone_helpers import OPEN_PHONES, ended, logged, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime


def heard_samples(phone: SimulatedPhone):
    """What the caller heard, as samples at the phone's own rate (PCM networks: not via mu-law)."""
    if phone.pcm:
        return samples(bytes(phone.result.heard_pcm)), phone.result.rate
    return ulaw_samples(phone.result.heard), PHONE_RATE


# Barge-in, bad frames and keypad of the WebSocket networks run on the fast-forwarded clock
# (test_networks_unit.py: their fake caller, an in-memory socket, the same stream loop); here only for
# the networks that are not WebSockets.
NOT_WS = [name for name in NETWORKS if BY_NAME[name].fake_caller().transport != "ws"]


async def _profile(name, fake_rest, tmp_path):
    net = profile(name)
    await net.start(tmp_path, fake_rest)
    return net


@pytest.fixture(params=NETWORKS)
async def net(request, fake_rest, tmp_path):
    net = await _profile(request.param, fake_rest, tmp_path)
    yield net
    await net.stop()


@pytest.fixture(params=NOT_WS)
async def socket_net(request, fake_rest, tmp_path):
    net = await _profile(request.param, fake_rest, tmp_path)
    yield net
    await net.stop()


async def test_greeting_heard_first_clean_and_paced(make_gateway, fake_openai, net):
    fake_openai.greeting_tone_hz = 1000
    fake_openai.reply_seconds = 1.5
    gw = await net.gateway(make_gateway, openai=fake_openai)
    phone = await net.dial(gw.url, bot="openai-greeter")
    await phone.silence(2.5)
    await phone.hangup()
    heard, rate = heard_samples(phone)
    runs = voiced_runs(heard, rate)
    assert len(runs) == 1, runs
    start, stop = runs[0]
    assert (stop - start) / rate == pytest.approx(1.5, abs=0.05)
    assert dominant_hz(heard[start:stop], rate) == pytest.approx(1000, rel=0.005)
    assert max_discontinuity(heard[start + rate // 100:stop - rate // 100], rate, 1000) < 0.15
    assert phone.result.first_audio_at - phone.result.start_sent_at < 1.0
    # one mark per chunk: 100 ms (audio.chunk_ms), or the network's minimum chunk; none where the
    # stream emulates them
    if net.has_marks:
        assert phone.result.marks_echoed == phone.result.marks_received >= net.min_marks
    assert not phone.result.violations, phone.result.violations
    summary = await ended(gw, phone)
    assert summary.transcript[0].text == "Hello, thanks for calling Northwind." and not summary.transcript[0].interrupted
    await gw.app[STORE].flush()
    record = await gw.app[STORE].get_call(summary.call_id)
    assert record["network"] == net.name and record["end_reason"] == "caller_hangup"
    assert record["bot"] == "openai-greeter"
    assert record["to_number"] == (phone.dialed if net.knows_dialed else None)  # AudioSocket: a UUID only


async def test_caller_440hz_reaches_the_model_at_440hz(make_gateway, fake_glm, net):
    gw = await net.gateway(make_gateway, glm=fake_glm)
    phone = await net.dial(gw.url, bot="glm-quiet")
    await phone.silence(0.3)
    await phone.say(ulaw_tone(440, 1.0))
    await phone.silence(0.3)
    await phone.hangup()
    s = fake_glm.sessions[0]
    x = samples(bytes(s.audio))
    start, stop = max(voiced_runs(x, s.input_rate), key=lambda r: r[1] - r[0])
    assert (stop - start) / s.input_rate == pytest.approx(1.0, abs=0.05)
    assert dominant_hz(x[start:stop], s.input_rate) == pytest.approx(440, rel=0.02)
    assert max_discontinuity(x[start + s.input_rate // 20:stop - s.input_rate // 20], s.input_rate, 440) < 0.1


@pytest.mark.parametrize("marks_on_clear", [False, True], ids=["clear-drops-marks", "clear-acks-marks"])
async def test_barge_in_clears_within_a_frame_cancels_and_cuts(make_gateway, fake_openai, socket_net, marks_on_clear):
    net = socket_net
    fake_openai.reply_seconds = 4.0
    fake_openai.delta_interval = 0.4
    gw = await net.gateway(make_gateway, openai=fake_openai)
    phone = net.phone(gw.url, bot="openai-greeter")
    phone.marks_on_clear = marks_on_clear
    await phone.dial()
    await phone.connect()
    await phone.silence(1.2)
    await phone.say(ulaw_tone(440, 0.6))
    await phone.silence(0.1)
    s = fake_openai.sessions[0]
    if not net.has_marks:  # no clear on the wire (or one the gateway paces): the paced audio stops within a frame
        assert s.speech_started_at and phone.result.media_times[0] < s.speech_started_at[0]
        clear_at = s.speech_started_at[0] + 0.020
    else:
        assert s.speech_started_at and phone.result.clears, "barge-in should have cleared the phone"
        assert 0 <= phone.result.clears[0] - s.speech_started_at[0] < 0.020
        clear_at = phone.result.clears[0]
    assert s.cancels and s.cancels[0] - s.speech_started_at[0] < 0.05
    assert not [t for t in phone.result.media_times if clear_at < t < clear_at + 0.5]
    await phone.silence(1.5)
    await phone.hangup()
    summary = await ended(gw, phone)
    cut = [e for e in summary.transcript if e.role == "bot"][0]
    assert cut.interrupted and cut.heard and len(cut.heard) < len(cut.text)
    assert 700 <= cut.heard_ms <= 1400  # what was played, whether or not pending marks came back at the clear
    assert summary.barge_ins == 1
    assert not phone.result.violations, phone.result.violations
    assert not s.errors_sent, s.errors_sent


async def test_end_call_hangs_up_through_the_network_after_the_goodbye(make_gateway, fake_openai, net):
    fake_openai.tool_calls = [("end_call", {"reason": "caller is done"})]
    gw = await net.gateway(make_gateway, openai=fake_openai)
    phone = await net.dial(gw.url, bot="openai-agent")
    await phone.say(ulaw_tone(440, 0.5))
    await wait_for(lambda: net.hang_ups(phone), 6, "the hang-up request")
    assert await phone.wait_closed(3)
    summary = await ended(gw, phone)
    (call_id, at), = net.hang_ups(phone)
    assert call_id == phone.call_sid
    if not net.has_marks:  # the goodbye's last 20 ms frame had its time before the hang-up
        assert at >= phone.result.media_times[-1] + 0.015
    else:
        assert at >= phone.result.last_echo_at  # every frame of the goodbye was played first
        assert phone.result.marks_echoed == phone.result.marks_received > 0
    assert summary.end_reason == "bot_hangup"
    assert net.rest is None or not net.rest.rejected


async def test_transfer_through_the_network_or_the_model_is_told(make_gateway, fake_openai, net):
    fake_openai.tool_calls = [("transfer_call", {"target": "billing"})]
    gw = await net.gateway(make_gateway, openai=fake_openai)
    phone = await net.dial(gw.url, bot="openai-agent", dialed="+15005550006")
    await phone.say(ulaw_tone(440, 0.5))
    s = fake_openai.sessions and fake_openai.sessions[0]
    if net.transfer_label:
        await wait_for(lambda: fake_openai.sessions[0].tool_outputs, 6, "the tool's output")
        out = json.loads(fake_openai.sessions[0].tool_outputs[0]["output"])
        assert out["ok"] is False and f"not supported on {net.transfer_label}" in out["error"]
        assert not phone.closed.is_set(), "the call goes on with the bot"
        await phone.hangup()
        assert (await ended(gw, phone)).end_reason == "caller_hangup"
        return
    await wait_for(lambda: net.rest.requests, 6, "the transfer request")
    assert await phone.wait_closed(3)
    net.check_transfer(phone)
    assert (await ended(gw, phone)).end_reason == "transferred"
    assert not s.errors_sent


async def test_bad_frames_are_logged_and_survived(make_gateway, fake_openai, socket_net, caplog):
    net = socket_net
    gw = await net.gateway(make_gateway, openai=fake_openai)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await net.dial(gw.url, bot="openai-quiet")
        await phone.silence(0.2)
        frames = net.bad_frames(phone)
        if net.text_frames:
            frames = [*JSON_JUNK, *frames]
        if not net.sends_binary_audio:  # else binary is audio (an odd-sized frame is bad)
            frames.append(b"\x00\x01binary")
        for raw in frames:
            await phone.send_raw(raw)
        await phone.say(ulaw_tone(440, 0.5))
        await wait_for(lambda: phone.result.first_audio_after(phone.result.speech_ends[0]) is not None,
                       5, "the reply after the bad frames")
        await phone.hangup()
        summary = await ended(gw, phone)
    assert summary.end_reason == "caller_hangup"
    bad = [r.getMessage() for r in caplog.records if "phone_bad_frame" in r.getMessage()]
    assert len(bad) == len(frames) and all(f"call={phone.call_sid}" in line for line in bad)


async def test_keypad_digits_reach_the_model(make_gateway, fake_openai, socket_net):
    net = socket_net
    gw = await net.gateway(make_gateway, openai=fake_openai)
    phone = await net.dial(gw.url, bot="openai-agent")
    await phone.silence(0.3)
    for digit in "12":
        await phone.dtmf(digit)
    s = fake_openai.sessions[0]
    await wait_for(lambda: s.texts, 3, "the digits as text")
    assert s.texts == ["(The caller pressed 1 2 on the phone keypad.)"]
    await phone.hangup()


# ------------------------------------------------------------------ Exotel's own

@pytest.mark.parametrize("rate", [16000, 24000])
async def test_exotel_wideband_reply_clean_at_the_phone_rate(make_gateway, fake_openai, rate):
    fake_openai.reply_tone_hz = 5000  # above what 8 kHz can carry: proves the call is not narrowed to 8 kHz
    fake_openai.reply_seconds = 1.0
    exotel = profile("exotel")
    gw = await exotel.gateway(make_gateway, openai=fake_openai)
    phone = exotel.phone(gw.url, bot="openai-pcm", sample_rate=rate)  # 24 kHz PCM model
    await phone.dial()
    await phone.connect()
    await phone.say(ulaw_tone(440, 0.4))
    await phone.silence(2.0)
    await phone.hangup()
    heard, got_rate = heard_samples(phone)
    assert got_rate == rate
    start, stop = max(voiced_runs(heard, rate), key=lambda r: r[1] - r[0])
    assert (stop - start) / rate == pytest.approx(1.0, abs=0.05)
    assert dominant_hz(heard[start:stop], rate) == pytest.approx(5000, rel=0.005)
    assert max_discontinuity(heard[start + rate // 100:stop - rate // 100], rate, 5000) < 0.15
    assert all(size % 320 == 0 for size in phone.result.media_sizes)
    assert all(size >= 3200 for size in phone.result.media_sizes[:-1]), phone.result.media_sizes
    assert not phone.result.violations, phone.result.violations


@pytest.mark.parametrize("credentials", ["", f"{EXOTEL_KEY}:wrong"], ids=["none", "wrong"])
async def test_exotel_stream_needs_the_basic_auth_when_configured(make_gateway, fake_openai, credentials):
    gw = await profile("exotel").gateway(make_gateway, openai=fake_openai)
    phone = SimulatedPhone(gw.url, bot="openai-greeter", network="exotel", auth_token=credentials)
    OPEN_PHONES.append(phone)
    await phone.dial()
    await phone.connect()
    assert await phone.wait_closed(3)
    assert phone.result.close_code == 1008 and not fake_openai.sessions


# ------------------------------------------------------------------ AudioSocket's own

async def test_audiosocket_serves_only_allowed_peers(make_gateway, fake_openai, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = await make_gateway(openai=fake_openai, env={"GATEWAY_AUDIOSOCKET_PORT": str(port)},
                            extra="audiosocket:\n  allow: [10.0.0.0/8]\n")
    assert gw.config.audiosocket.host == "127.0.0.1"  # loopback unless configured
    phone = SimulatedPhone(f"tcp://127.0.0.1:{port}", bot="openai-greeter", network="audiosocket")
    OPEN_PHONES.append(phone)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        await phone.dial()
        await phone.connect()
        assert await phone.wait_closed(3)
    assert phone.result.closed_by == "gateway" and not fake_openai.sessions
    assert logged(caplog, "stream_rejected", "audiosocket.allow", "remote=127.0.0.1")


def test_audiosocket_bots_must_be_uuids_naming_bots(config_dir):
    from gateway.config import ConfigError, load_config
    from tests.conftest import write_config
    with pytest.raises(ConfigError, match=r"audiosocket.bots: 'sales' is not a UUID"):
        load_config(write_config(config_dir, "audiosocket:\n  bots:\n    sales: support\n"), env={})
    with pytest.raises(ConfigError, match=r"audiosocket.bots.* no bot 'nobody'"):
        load_config(write_config(config_dir, f"audiosocket:\n  bots:\n    {bot_uuid('x')}: nobody\n"), env={})
    config = load_config(write_config(config_dir, f"audiosocket:\n  bots:\n    {str(bot_uuid('x')).upper()}: echo\n"),
                         env={"GATEWAY_AUDIOSOCKET_PORT": "9092"})
    assert config.audiosocket.port == 9092 and config.audiosocket.bots == {str(bot_uuid("x")): "echo"}


# ------------------------------------------------------------------ Vonage's own

async def test_vonage_answer_is_an_ncco_connecting_a_16khz_websocket(make_gateway, fake_openai):
    gw = await make_gateway(openai=fake_openai, env={"VONAGE_SIGNATURE_SECRET": VONAGE_SECRET})
    phone = SimulatedPhone(gw.url, bot="openai-greeter", network="vonage", auth_token=VONAGE_SECRET)
    OPEN_PHONES.append(phone)
    await phone.dial()
    connect, talk = json.loads(phone.result.twiml)  # the fallback: spoken only when we close the socket
    assert talk == {"action": "talk", "text": "Sorry, we are having technical difficulties. Please call again later.",
                    "language": "en-US"}
    endpoint, = connect["endpoint"]
    assert connect["action"] == "connect" and endpoint["type"] == "websocket"
    assert endpoint["content-type"] == "audio/l16;rate=16000" and endpoint["headers"] == {"bot": "openai-greeter"}
    assert endpoint["uri"].startswith(gw.url.replace("http", "ws") + "/vonage/media?bot=openai-greeter&")
    assert phone.result.parameters["uuid"] == phone.call_sid and phone.result.parameters["ticket"]


@pytest.mark.parametrize("secret", ["", "not-the-secret"], ids=["unsigned", "wrong-secret"])
async def test_vonage_answer_needs_the_signed_jwt_when_configured(make_gateway, fake_openai, secret):
    from gateway.phone_sim import DialError
    gw = await make_gateway(openai=fake_openai, env={"VONAGE_SIGNATURE_SECRET": VONAGE_SECRET})
    phone = SimulatedPhone(gw.url, bot="openai-greeter", network="vonage", auth_token=secret)
    OPEN_PHONES.append(phone)
    with pytest.raises(DialError) as e:
        await phone.dial()
    assert e.value.status == 403 and not fake_openai.sessions


async def test_no_task_outlives_a_call_the_caller_hung_up(make_gateway, net):
    """A caller's hang-up does not close() the stream (nothing to send): a network paced on our own
    clock (AudioSocket, jambonz) used to leave its pacer waiting forever ("Task was destroyed but
    it is pending!" at the next garbage collection)."""
    from tests.test_call_matrix import CALL_TASK_PREFIXES
    gw = await net.gateway(make_gateway)
    phone = await net.dial(gw.url, bot="echo")
    await phone.silence(1.5)  # the greeting chime (0.6 s) has played: a pacer is idle, waiting for more
    await phone.hangup()
    await ended(gw, phone)
    await asyncio.sleep(0.05)
    prefixes = CALL_TASK_PREFIXES + ("paced:", "phone-rx:", "audiosocket-")
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(prefixes)]
    assert not left, left
