"""The call-level matrix once per phone network (Twilio, Telnyx, Plivo, Exotel, Asterisk AudioSocket,
Vonage), each with its fake caller (gateway.phone_sim speaking the network's frames) and its fake
REST API (none for Exotel and AudioSocket, which are hung up by closing the socket).

Real sockets on 127.0.0.1, real 20 ms timing. The call core does not know which network it
serves; these tests prove each network module turns its frames into the same call: greeting
heard, a caller tone reaching the model at its pitch, the model's tone reaching the caller clean,
barge-in (clear within a frame, cancel, cut to what was heard — whether the network acknowledges
marks pending at a clear or not), hang-up through the network's REST API after the goodbye was
heard, transfer (or a clear refusal told to the model), bad frames survived, keypad.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from gateway.audio import PHONE_RATE
from gateway.web_state import STORE
from tests.audio_check import dominant_hz, max_discontinuity, samples, ulaw_samples, voiced_runs
from tests.conftest import VONAGE_APP, VONAGE_SECRET, EXOTEL_KEY, EXOTEL_TOKEN, PLIVO_ID, PLIVO_TOKEN, TELNYX_KEY, TWILIO_TOKEN
from tests.phone_helpers import OPEN_PHONES, ended, logged, ulaw_tone, wait_for
import socket

from gateway.phone_sim import NETWORKS, SimulatedPhone, bot_uuid


@dataclass
class Net:
    name: str
    rest: object
    signing_key: Ed25519PrivateKey | None = None
    port: int = 0  # AudioSocket: the gateway's TCP listener
    key_path: str = ""  # Vonage: the application's private key file

    def env(self) -> dict:
        if self.name == "telnyx":
            public = self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            return {"TELNYX_API_KEY": TELNYX_KEY, "TELNYX_API_BASE": self.rest.url,
                    "TELNYX_PUBLIC_KEY": base64.b64encode(public).decode()}
        if self.name == "plivo":
            return {"PLIVO_AUTH_ID": PLIVO_ID, "PLIVO_AUTH_TOKEN": PLIVO_TOKEN, "PLIVO_API_BASE": self.rest.url}
        if self.name == "exotel":
            return {"EXOTEL_API_KEY": EXOTEL_KEY, "EXOTEL_API_TOKEN": EXOTEL_TOKEN}
        if self.name == "vonage":
            return {"VONAGE_APPLICATION_ID": VONAGE_APP, "VONAGE_PRIVATE_KEY": self.key_path,
                    "VONAGE_SIGNATURE_SECRET": VONAGE_SECRET, "VONAGE_API_BASE": self.rest.url}
        return {}

    async def gateway(self, make_gateway, **kw):
        if self.name == "twilio":
            return await make_gateway(rest=self.rest, **kw)
        if self.name == "audiosocket":
            with socket.socket() as s:  # a free port for the listener
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            bots = "".join(f"\n    {bot_uuid(b)}: {b}" for b in ("openai-greeter", "openai-quiet", "openai-agent",
                                                                 "openai-pcm", "glm-quiet", "openai-confirm"))
            return await make_gateway(env={"GATEWAY_AUDIOSOCKET_PORT": str(self.port)},
                                      extra=f"audiosocket:\n  bots:{bots}\n", **kw)
        return await make_gateway(env=self.env(), **kw)

    def phone(self, gw_url: str, bot: str | None = None, **kw) -> SimulatedPhone:
        token = {"twilio": TWILIO_TOKEN, "plivo": PLIVO_TOKEN, "exotel": f"{EXOTEL_KEY}:{EXOTEL_TOKEN}",
                 "vonage": VONAGE_SECRET}.get(self.name, "")
        if self.name == "audiosocket":
            gw_url = f"tcp://127.0.0.1:{self.port}"
        phone = SimulatedPhone(gw_url, bot=bot, network=self.name, auth_token=token, signing_key=self.signing_key,
                               **kw)
        OPEN_PHONES.append(phone)
        return phone

    async def dial(self, gw_url: str, bot: str | None = None, **kw) -> SimulatedPhone:
        phone = self.phone(gw_url, bot, **kw)
        await phone.dial()
        await phone.connect()
        return phone

    def hang_ups(self, phone: SimulatedPhone) -> list[tuple[str, float]]:
        """(call id, when) of every hang-up request the network's REST API got; networks without
        one (Exotel): the gateway closing the socket."""
        if self.rest is None:
            closed = phone.result.closed_by == "gateway" and phone.result.closed_at
            return [(phone.call_sid, phone.result.closed_at)] if closed else []
        if self.name == "twilio":
            return [(r.call_sid, r.at) for r in self.rest.requests if r.form.get("Status") == "completed"]
        return [(r.call_id, r.at) for r in self.rest.requests if r.action == "hangup"]


def heard_samples(phone: SimulatedPhone):
    """What the caller heard, as samples at the phone's own rate (PCM networks: not via mu-law)."""
    if phone.pcm:
        return samples(bytes(phone.result.heard_pcm)), phone.result.rate
    return ulaw_samples(phone.result.heard), PHONE_RATE


@pytest.fixture(params=NETWORKS)
async def net(request, fake_rest, tmp_path):
    from tests.fakes.network_rest import FakePlivoRest, FakeTelnyxRest, FakeVonageRest

    if request.param in ("twilio", "exotel", "audiosocket"):
        yield Net(request.param, fake_rest if request.param == "twilio" else None)
        return
    if request.param == "vonage":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (tmp_path / "private.key").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        fake = FakeVonageRest(VONAGE_APP, key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        await fake.start()
        yield Net("vonage", fake, key_path=str(tmp_path / "private.key"))
        await fake.stop()
        return
    fake = FakeTelnyxRest(TELNYX_KEY) if request.param == "telnyx" else FakePlivoRest(PLIVO_ID, PLIVO_TOKEN)
    await fake.start()
    yield Net(request.param, fake, Ed25519PrivateKey.generate() if request.param == "telnyx" else None)
    await fake.stop()


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
    # one mark per chunk: 100 ms (audio.chunk_ms), Exotel's at least 3.2 KB (200 ms of 8 kHz PCM16);
    # AudioSocket has none (the stream emulates them)
    if net.name != "audiosocket":
        assert phone.result.marks_echoed == phone.result.marks_received >= (7 if net.name == "exotel" else 15)
    if net.name == "exotel":
        assert all(size >= 3200 for size in phone.result.media_sizes[:-1]), phone.result.media_sizes
    assert not phone.result.violations, phone.result.violations
    summary = await ended(gw, phone)
    assert summary.transcript[0].text == "Hello, thanks for calling Northwind." and not summary.transcript[0].interrupted
    await gw.app[STORE].flush()
    record = await gw.app[STORE].get_call(summary.call_id)
    assert record["network"] == net.name and record["end_reason"] == "caller_hangup"
    assert record["bot"] == "openai-greeter"
    assert record["to_number"] == (phone.dialed if net.name != "audiosocket" else None)  # AudioSocket: a UUID only


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
async def test_barge_in_clears_within_a_frame_cancels_and_cuts(make_gateway, fake_openai, net, marks_on_clear):
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
    if net.name == "audiosocket":  # no clear message: the paced audio stops within a frame
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
    if net.name == "audiosocket":  # the goodbye's last 20 ms frame had its time before the hang-up
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
    if net.name in ("plivo", "exotel", "audiosocket", "vonage"):
        await wait_for(lambda: fake_openai.sessions[0].tool_outputs, 6, "the tool's output")
        out = json.loads(fake_openai.sessions[0].tool_outputs[0]["output"])
        shown = {"plivo": "Plivo", "exotel": "Exotel", "audiosocket": "AudioSocket", "vonage": "Vonage"}[net.name]
        assert out["ok"] is False and f"not supported on {shown}" in out["error"]
        assert not phone.closed.is_set(), "the call goes on with the bot"
        await phone.hangup()
        assert (await ended(gw, phone)).end_reason == "caller_hangup"
        return
    await wait_for(lambda: net.rest.requests, 6, "the transfer request")
    assert await phone.wait_closed(3)
    if net.name == "telnyx":
        r = net.rest.requests[0]
        assert (r.action, r.call_id) == ("transfer", phone.call_sid)
        assert r.body == {"to": "+15550008888", "from": "+15005550006", "timeout_secs": 30}
    else:
        assert "<Number>+15550008888</Number>" in net.rest.requests[0].form["Twiml"]
    assert (await ended(gw, phone)).end_reason == "transferred"
    assert not s.errors_sent


BAD = {  # the same faults in each network's spelling
    "twilio": lambda p: ['{"event": "media", "streamSid": "%s", "media": {"payload": "!!"}}' % p.stream_sid,
                         '{"event": "mark", "streamSid": "%s", "mark": {}}' % p.stream_sid],
    "telnyx": lambda p: ['{"event": "media", "stream_id": "%s", "media": {"payload": "!!"}}' % p.stream_sid,
                         '{"event": "mark", "stream_id": "%s", "mark": {}}' % p.stream_sid,
                         '{"event": "media", "stream_id": "other", "media": {"payload": "AAAA"}}'],
    "plivo": lambda p: ['{"event": "media", "streamId": "%s", "media": {"payload": "!!"}}' % p.stream_sid,
                        '{"event": "playedStream", "streamId": "%s"}' % p.stream_sid,
                        '{"event": "media", "streamId": "other", "media": {"payload": "AAAA"}}'],
    "exotel": lambda p: ['{"event": "media", "stream_sid": "%s", "media": {"payload": "!!"}}' % p.stream_sid,
                         '{"event": "mark", "stream_sid": "%s", "mark": {}}' % p.stream_sid,
                         '{"event": "media", "stream_sid": "other", "media": {"payload": "AAAA"}}'],
    "vonage": lambda p: ['{"event": "websocket:notify", "payload": {}}', '{"event": "websocket:dtmf"}',
                         b"odd", b""],
    # AudioSocket: TCP, so only well-framed faults (a broken length would swallow the stream)
    "audiosocket": lambda p: [b"\x42\x00\x02hi", b"\x10\x00\x03abc", b"\x10\x00\x00", b"\x03\x00\x01x",
                              b"\x03\x00\x02" + b"12", b"\x01\x00\x10" + bytes(16)],
}


async def test_bad_frames_are_logged_and_survived(make_gateway, fake_openai, net, caplog):
    gw = await net.gateway(make_gateway, openai=fake_openai)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await net.dial(gw.url, bot="openai-quiet")
        await phone.silence(0.2)
        frames = BAD[net.name](phone)
        if net.name != "audiosocket":
            frames = ["not json", "[1]", '{"event": "teleport"}', *frames]
        if net.name not in ("audiosocket", "vonage"):  # Vonage: binary is audio (the odd-sized is bad)
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


async def test_keypad_digits_reach_the_model(make_gateway, fake_openai, net):
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
    gw = await make_gateway(openai=fake_openai, env=Net("exotel", None).env())
    phone = Net("exotel", None).phone(gw.url, bot="openai-pcm", sample_rate=rate)  # 24 kHz PCM model
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
    gw = await make_gateway(openai=fake_openai, env=Net("exotel", None).env())
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
