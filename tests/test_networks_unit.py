"""The network matrix's protocol checks on the fast-forwarded clock: for every WebSocket network in
the registry, its fake caller (the simulated phone), an in-memory WebSocket, the shared stream loop
with the network's codec, and the real call core with a scripted model — no socket, no real time, so
every timing is exact (a barge-in's clear in the same instant, not "within 20 ms if the machine is
idle"). What needs a real socket (a model's wire protocol, REST hang-up and transfer, signatures)
stays in test_call_networks.py — on the same fast-forwarded clock — which also runs these checks for
networks that are not WebSockets (AudioSocket's TCP)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest

from gateway.call import BotLine, Call
from gateway.config import Config, LimitsConfig, Persona
from gateway.logs import CallLogger
from gateway.phone_sim import SimulatedPhone
from gateway.providers.base import SpeechStarted
from gateway.telephony.registry import BY_NAME, NAMES
from gateway.telephony.ws_stream import WsPhoneStream
from tests.audio_check import dominant_hz, ulaw_samples, voiced_runs
from tests.call_fakes import MemoryModel
from tests.memory_ws import ws_pair
from tests.networks import JSON_JUNK, profile
from tests.phone_helpers import logged, ulaw_tone

pytestmark = pytest.mark.looptime
WS_NETWORKS = [name for name in NAMES if BY_NAME[name].fake_caller().transport == "ws"]
LOG = logging.getLogger("gateway.unit")


def now() -> float:
    return asyncio.get_running_loop().time()


async def start_call(network: str, model: MemoryModel, marks_on_clear: bool | None = None):
    """The phone connected through an in-memory socket, the stream started, the call running."""
    loop = asyncio.get_running_loop()
    gateway_end, phone_end = ws_pair()
    phone = SimulatedPhone("http://gateway.invalid", bot="unit", network=network, clock=loop.time)
    if marks_on_clear is not None:
        phone.marks_on_clear = marks_on_clear
    phone.result.parameters = {"bot": "unit"}
    query = {"bot": "unit", "uuid": phone.call_sid, "sample-rate": str(phone.rate)}
    stream = WsPhoneStream(gateway_end, BY_NAME[network].codec(query), CallLogger(LOG, conn="unit"), clock=loop.time)
    await phone.connect(ws=phone_end)
    started = await stream.wait_started()
    assert started is not None and BY_NAME[network].start_refused(Config(), started) is None
    stream.log = CallLogger(LOG, call=phone.call_sid)
    call = Call(config=Config(limits=LimitsConfig(silence_timeout_seconds=0)),
                persona=Persona(provider="echo", name="unit"), phone=stream, started=started, session=model,
                log=stream.log, clock=loop.time)
    return phone, stream, asyncio.create_task(call.run())


@pytest.mark.parametrize("marks_on_clear", [False, True], ids=["clear-drops-marks", "clear-acks-marks"])
@pytest.mark.parametrize("network", WS_NETWORKS)
async def test_barge_in_clears_at_once_cancels_and_cuts_to_what_was_heard(network, marks_on_clear):
    model = MemoryModel()
    phone, stream, running = await start_call(network, model, marks_on_clear)
    await asyncio.sleep(0.1)
    rid = model.reply(10000, "One two three four five six seven eight nine ten.")  # streams for 2 s
    await asyncio.sleep(1.0)
    spoke_at = now()
    model.emit(SpeechStarted())
    await asyncio.sleep(0.5)
    assert phone.result.media_times[0] < spoke_at
    assert phone.result.clears and phone.result.clears[0] - spoke_at < 0.001, "the phone is cleared at once"
    assert [r for _, r in model.cancels] == [rid]
    clear_at = phone.result.clears[0]
    assert not [t for t in phone.result.media_times if clear_at < t < clear_at + 0.5], "nothing after the clear"
    await phone.hangup()
    summary = await running
    cut = next(line for line in summary.transcript if isinstance(line, BotLine))
    assert cut.interrupted and cut.heard and len(cut.heard) < len(cut.text)
    assert 800 <= cut.heard_ms <= 1100, cut.heard_ms  # what was played, whether or not pending marks came back
    assert summary.barge_ins == 1 and summary.end_reason == "caller_hangup"
    assert not phone.result.violations, phone.result.violations


@pytest.mark.parametrize("network", WS_NETWORKS)
async def test_the_callers_tone_reaches_the_model_whole(network):
    model = MemoryModel()
    phone, stream, running = await start_call(network, model)
    await phone.silence(0.3)
    await phone.say(ulaw_tone(440, 1.0))
    await phone.silence(0.3)
    await phone.hangup()
    summary = await running
    heard = ulaw_samples(bytes(model.audio))
    start, stop = max(voiced_runs(heard, 8000), key=lambda r: r[1] - r[0])
    assert (stop - start) / 8000 == pytest.approx(1.0, abs=0.05)
    assert dominant_hz(heard[start:stop], 8000) == pytest.approx(440, rel=0.02)
    assert stream.media_frames_in >= 75 and summary.end_reason == "caller_hangup"


@pytest.mark.parametrize("network", WS_NETWORKS)
async def test_bad_frames_are_logged_counted_and_survived(network, caplog):
    model = MemoryModel()
    net = profile(network)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone, stream, running = await start_call(network, model)
        await phone.silence(0.2)
        frames = [*(JSON_JUNK if net.text_frames else []), *net.bad_frames(phone)]
        if not net.sends_binary_audio:  # else binary is audio (an odd-sized frame is bad)
            frames.append(b"\x00\x01binary")
        for raw in frames:
            await phone.send_raw(raw)
        before = len(model.audio)
        await phone.say(ulaw_tone(440, 0.5))
        await phone.hangup()
        summary = await running
    assert summary.end_reason == "caller_hangup" and len(model.audio) - before >= 3500  # the call went on
    assert stream.protocol_errors == len(frames)
    bad = [r.getMessage() for r in caplog.records if "phone_bad_frame" in r.getMessage()]
    assert len(bad) == len(frames) and all(f"call={phone.call_sid}" in line for line in bad)


@pytest.mark.parametrize("network", WS_NETWORKS)
async def test_keypad_digits_reach_the_model(network):
    model = MemoryModel()
    phone, stream, running = await start_call(network, model)
    await phone.silence(0.3)
    for digit in "12":
        await phone.dtmf(digit)
    await asyncio.sleep(2.0)  # the inter-digit pause (1.5 s) ends the sequence
    assert model.texts == ["(The caller pressed 1 2 on the phone keypad.)"]
    await phone.hangup()
    await running


@pytest.mark.parametrize("network", WS_NETWORKS)
async def test_too_many_bad_frames_end_the_call_as_a_protocol_error(network, caplog):
    model = MemoryModel()
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone, stream, running = await start_call(network, model)
        stream.max_protocol_errors = 3
        for _ in range(5):
            await phone.send_raw("garbage")
        summary = await asyncio.wait_for(running, 5)
    assert summary.end_reason == "protocol_error" and logged(caplog, "phone_protocol_errors_exceeded")


def _twilio_media(phone, payload) -> str:
    return json.dumps({"event": "media", "streamSid": phone.stream_sid, "sequenceNumber": "9",
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload}})


TWILIO_BAD_FRAMES = {  # one of each way a Twilio frame can be wrong
    "not_json": lambda p: "this is not json {",
    "json_not_object": lambda p: "[1, 2, 3]",
    "no_event": lambda p: json.dumps({"streamSid": p.stream_sid}),
    "unknown_event": lambda p: json.dumps({"event": "teleport", "streamSid": p.stream_sid}),
    "invalid_base64": lambda p: _twilio_media(p, "!!!not base64!!!"),
    "payload_not_string": lambda p: json.dumps({"event": "media", "streamSid": p.stream_sid, "media": {"payload": 5}}),
    "second_start": lambda p: json.dumps({"event": "start", "streamSid": "MZother", "start": {
        "streamSid": "MZother", "callSid": "CAother", "customParameters": {"bot": "support"}}}),
    "wrong_stream_sid": lambda p: json.dumps({"event": "media", "streamSid": "MZnot-this-one",
                                              "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}),
    "mark_without_name": lambda p: json.dumps({"event": "mark", "streamSid": p.stream_sid, "mark": {}}),
    "dtmf_garbage": lambda p: json.dumps({"event": "dtmf", "streamSid": p.stream_sid, "dtmf": "9"}),
    "binary": lambda p: b"\x00\x01\x02" * 100,
}


@pytest.mark.parametrize("case", sorted(TWILIO_BAD_FRAMES))
async def test_a_bad_twilio_frame_is_logged_once_and_only_that_call_notices(case, caplog):
    """The call goes on both ways (the caller's audio reaches the model, the model's reaches the
    caller) and the call beside it never hears of it."""
    model, other_model = MemoryModel(), MemoryModel()
    with caplog.at_level(logging.INFO, logger="gateway"):
        bystander, bystander_stream, bystander_call = await start_call("twilio", other_model)
        phone, stream, running = await start_call("twilio", model)
        await phone.silence(0.2)
        await phone.send_raw(TWILIO_BAD_FRAMES[case](phone))
        await phone.silence(0.2)
        before = len(model.audio)
        await phone.say(ulaw_tone(440, 0.6))
        assert len(model.audio) - before >= 4000, "the caller's audio still reaches the model"
        model.reply(600, "Still here.")
        await asyncio.sleep(1.0)
        assert phone.result.first_audio_after(phone.result.speech_ends[0]) is not None, "and the reply the caller"
        await phone.hangup()
        assert (await running).end_reason == "caller_hangup"
        assert not bystander.closed.is_set() and bystander_stream.protocol_errors == 0
        await bystander.hangup()
        await bystander_call
    lines = [r.getMessage() for r in caplog.records if "phone_bad_frame" in r.getMessage()]
    assert len(lines) == 1 and f"call={phone.call_sid}" in lines[0], lines
    assert not phone.result.violations
