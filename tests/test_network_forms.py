"""Every documented form a network may send is read (docs/protocols.md "Forms the official SDKs and
documents also accept"): Exotel's start frame with `stream_sid`, camelCase `streamSid` or no id at all,
`audio/x-raw` or `linear16`, rates as strings or numbers; Exotel's minimum chunk; Telnyx's timestamp
read with int() as its SDK does. Codec-level (no socket) plus one call per Exotel form through the
gateway."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.telephony import Audio, Started
from gateway.telephony.exotel.codec import ExotelCodec, padded
from gateway.telephony.exotel import SPEC as EXOTEL
from gateway.telephony.telnyx import signature_ok
from tests.phone_helpers import OPEN_PHONES, ended, ulaw_tone, wait_for
from gateway.phone_sim import SimulatedPhone

pytestmark = pytest.mark.looptime

DEVELOPER_SITE = {"event": "start", "sequence_number": "1", "stream_sid": "st1", "start": {
    "stream_sid": "st1", "call_sid": "ca1", "account_sid": "ac1", "from": "+911", "to": "+912",
    "custom_parameters": {}, "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}}}
AGENT_STREAM = {"event": "start", "sequence_number": 1, "start": {  # no stream_sid anywhere, numbers
    "call_sid": "ca2", "account_sid": "ac2", "from": "+911", "to": "+912",
    "media_format": {"encoding": "linear16", "sample_rate": 16000, "bit_rate": 16}}}
CAMEL = {"event": "start", "streamSid": "st3", "start": {
    "streamSid": "st3", "callSid": "ca3", "accountSid": "ac3", "from": "+911", "to": "+912",
    "mediaFormat": {"encoding": "audio/x-raw", "sampleRate": 24000, "bitRate": "16"}}}


class _Config:
    exotel = EXOTEL.settings()


@pytest.mark.parametrize("frame,sid,call,rate", [(DEVELOPER_SITE, "st1", "ca1", 8000), (AGENT_STREAM, None, "ca2", 16000),
                                                (CAMEL, "st3", "ca3", 24000)])
def test_exotel_start_in_every_documented_form(frame, sid, call, rate):
    codec = ExotelCodec({"bot": "echo"})
    started = codec.decode_text(json.dumps(frame))
    assert isinstance(started, Started) and started.call_sid == call and started.sample_rate == rate
    assert started.encoding == "audio/l16" and EXOTEL.start_refused(_Config, started) is None
    assert started.custom_parameters == {"bot": "echo", "from": "+911", "to": "+912"}
    if sid:
        assert started.stream_sid == sid
    else:  # made up, and our frames carry it
        assert started.stream_sid.startswith("gw-")
    sent = json.loads(codec.mark("m1")[0].data)
    assert sent == {"event": "mark", "stream_sid": started.stream_sid, "mark": {"name": "m1"}}
    media = {"event": "media", "media": {"payload": base64.b64encode(b"\0\0" * 160).decode()}}
    if sid:
        media["stream_sid"] = sid
    assert isinstance(codec.decode_text(json.dumps(media)), Audio)


def test_exotel_rejects_what_it_cannot_play():
    frame = json.loads(json.dumps(AGENT_STREAM))
    frame["start"]["media_format"]["bit_rate"] = 8
    started = ExotelCodec().decode_text(json.dumps(frame))
    assert "not supported" in EXOTEL.start_refused(_Config, started)
    frame["start"]["media_format"].update(bit_rate="16", sample_rate="44100")
    assert "not supported" in EXOTEL.start_refused(_Config, ExotelCodec().decode_text(json.dumps(frame)))


@pytest.mark.parametrize("size", [0, 2, 320, 640, 3198, 3200, 3202, 6400, 9600 + 100])
def test_exotel_chunks_are_never_under_3200_bytes_nor_off_320(size):
    audio = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    out = padded(audio)
    assert out[:size] == audio and not out[size:].strip(b"\0")  # the rest is silence
    assert len(out) >= 3200 and len(out) % 320 == 0 and len(out) - max(size, 3200) < 320


@pytest.mark.parametrize("form", ["{now}", " {now}", "+{now}", "{now} ", "0{now}"])
def test_telnyx_timestamp_is_read_with_int_as_the_sdk_does(form):
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    ts, body = form.format(now=int(time.time())), b'{"data": {}}'
    sig = base64.b64encode(key.sign(ts.encode() + b"|" + body)).decode()
    assert signature_ok(public, ts, body, sig)
    assert not signature_ok(public, "x" + ts, body, sig) and not signature_ok(public, "", body, sig)


@pytest.mark.parametrize("frame", [DEVELOPER_SITE, AGENT_STREAM, CAMEL], ids=["developer-site", "agent-stream", "camel"])
async def test_a_call_in_each_exotel_form_is_heard_with_whole_chunks(make_gateway, frame):
    gw = await make_gateway()
    fmt = frame["start"].get("media_format") or frame["start"]["mediaFormat"]
    phone = SimulatedPhone(gw.url, bot="echo", network="exotel", sample_rate=int(fmt.get("sample_rate") or fmt["sampleRate"]))
    OPEN_PHONES.append(phone)
    await phone.dial()
    await phone.connect(send_start=False)
    sid = frame.get("stream_sid") or frame.get("streamSid")
    phone.stream_sid = sid
    seen: set[str] = set()
    read = phone.fake.read

    def learn_the_made_up_id(data, binary):  # no id in the start: take the one our frames carry
        seen.add(json.loads(data).get("stream_sid"))
        phone.stream_sid = phone.stream_sid or next(iter(seen))
        return read(data, binary)

    phone.fake.read = learn_the_made_up_id
    await phone.send_json(frame)
    phone.result.start_sent_at = time.monotonic()
    phone._start_mic()
    await phone.say(ulaw_tone(440, 0.6))
    await wait_for(lambda: phone.result.first_audio_after(phone.result.speech_ends[0]) is not None, 5, "the echo")
    await phone.silence(0.5)
    await phone.hangup()
    summary = await ended(gw, type("P", (), {"call_sid": frame["start"].get("call_sid") or frame["start"]["callSid"]}))
    assert summary.end_reason == "caller_hangup"
    assert min(phone.result.media_sizes) >= 3200 and all(n % 320 == 0 for n in phone.result.media_sizes)
    assert seen == {sid or phone.stream_sid} and (sid or phone.stream_sid.startswith("gw-"))  # one id throughout
    assert not phone.result.violations
