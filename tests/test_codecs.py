"""Every network's codec, the same way and without a socket: the frames its fake caller writes (the
network's documented shapes) decode to the events they mean, our intents encode to frames the fake
caller reads back as the same audio, marks and clear, and whatever arrives — random text, random
bytes, real frames with one value replaced or dropped — gives an event, nothing, or the defined
error (FrameError, NetworkNotice), never another exception. Hypothesis drives all of it, both
directions, for every network in the registry (a new network is in here by its registration line).
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.telephony import Audio, Dtmf, MarkPlayed, Started, Stopped
from gateway.telephony.registry import BY_NAME, NAMES
from gateway.telephony.wire import FrameError, NetworkNotice

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
FUZZ = settings(max_examples=int(120 * SCALE), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


class StubPhone:
    """What a fake caller reads of the simulated phone, without sockets."""

    def __init__(self, network: str):
        self.bot, self.caller, self.dialed = "echo", "+15550001111", "+15005550006"
        self.account_sid, self.auth_token, self.extra_form = "AC" + "0" * 32, "", {}
        self.violations: list[str] = []
        self.fake = BY_NAME[network].fake_caller()(self, 16000)
        self.call_sid = self.fake.call_id(self.bot)
        self.stream_sid = self.fake.stream_id(self.call_sid)
        self.result = SimpleNamespace(parameters={"bot": "echo"})

    def violation(self, text: str) -> None:
        self.violations.append(text)


def pair(network: str):
    phone = StubPhone(network)
    query = {"bot": "echo", "uuid": phone.call_sid, "sample-rate": str(phone.fake.rate)}
    return phone, phone.fake, BY_NAME[network].codec(query)


def wire(out) -> tuple[str | bytes, bool]:
    """A fake caller's frame as it travels: (text or bytes, binary)."""
    if isinstance(out, dict):
        return json.dumps(out), False
    return out, isinstance(out, bytes)


def decode(codec, out):
    data, binary = wire(out)
    return codec.decode_binary(data) if binary else codec.decode_text(data)


def started(network: str):
    phone, fake, codec = pair(network)
    for hello in fake.hello():
        assert decode(codec, hello) is None
    ev = decode(codec, fake.start({"bot": "echo"}))
    assert isinstance(ev, Started) and codec.stream_sid == ev.stream_sid
    return phone, fake, codec, ev


def audio_for(fake, data: bytes) -> bytes:
    return data[:len(data) // 2 * 2] if fake.pcm else data  # PCM: whole samples


def read_back(fake, frames) -> list:
    effects = []
    for frame in frames:
        effects += fake.read(frame.data if frame.binary else frame.data.decode(), frame.binary)
    return effects


# ------------------------------------------------------------------ the network's frames -> events

@pytest.mark.parametrize("network", NAMES)
@FUZZ
@given(data=st.binary(min_size=2, max_size=1200), digit=st.sampled_from("0123456789*#"))
def test_the_networks_frames_decode_to_what_they_mean(network, data, digit):
    phone, fake, codec, ev = started(network)
    assert ev.stream_sid and (ev.call_sid or network in ("exotel",))
    assert BY_NAME[network].start_refused.__func__ is not None
    audio = audio_for(fake, data)
    got = decode(codec, fake.media(audio, 1, 20))
    assert isinstance(got, Audio) and got.payload == audio
    assert decode(codec, fake.dtmf(digit)) == Dtmf(digit=digit)
    for stop in fake.stop():
        assert isinstance(decode(codec, stop), Stopped)


@pytest.mark.parametrize("network", NAMES)
def test_nothing_but_start_comes_first_and_start_comes_once(network):
    phone, fake, codec = pair(network)
    with pytest.raises(FrameError):
        decode(codec, fake.media(b"\0\0" * 80, 1, 20))
    decode(codec, fake.start({}))
    with pytest.raises(FrameError, match="second"):
        decode(codec, fake.start({}))


# ------------------------------------------------------------------ our intents -> the network's frames

@pytest.mark.parametrize("network", NAMES)
@FUZZ
@given(data=st.binary(min_size=2, max_size=4000), name=st.text(min_size=1, max_size=40))
def test_our_intents_reach_the_network_as_sent(network, data, name):
    phone, fake, codec, ev = started(network)
    audio = audio_for(fake, data)
    frame = getattr(codec, "frame_bytes", 0)
    if frame:  # whole 20 ms frames, as the Playout sends them (paced networks: one, from the pacer)
        frames = 1 if codec.paced else max(1, len(audio) // frame)
        audio = (audio * (frames * frame // len(audio) + 1))[:frames * frame]
    heard = b"".join(e[1] for e in read_back(fake, codec.play(audio)) if e[0] == "audio")
    if codec.min_chunk_bytes:  # Exotel: never a short chunk, padded with silence
        assert heard[:len(audio)] == audio and not heard[len(audio):].strip(b"\0")
        assert len(heard) >= codec.min_chunk_bytes and len(heard) % 320 == 0
    else:
        assert heard == audio
    if not codec.paced:
        marks = [e for e in read_back(fake, codec.mark(name)) if e[0] == "mark"]
        assert len(marks) == 1
        echoed = decode(codec, fake.echo(marks[0][1]))  # played: the network says so
        assert echoed == MarkPlayed(name=name)
        assert read_back(fake, codec.clear()) == [("clear",)]
    else:  # marks emulated by the stream; a clear is the network's own flush, or nothing on the wire
        assert codec.mark(name) == () and read_back(fake, codec.clear()) in ([], [("clear",)])
    assert phone.violations == []


# ------------------------------------------------------------------ anything at all

def _decode_anything(codec, data, binary) -> None:
    try:
        ev = codec.decode_binary(data) if binary else codec.decode_text(data)
    except (FrameError, NetworkNotice):
        return  # the defined errors: logged, counted, dropped by the stream
    assert ev is None or isinstance(ev, (Started, Audio, Dtmf, MarkPlayed, Stopped))


@pytest.mark.parametrize("network", NAMES)
@FUZZ
@given(before_start=st.booleans(), data=st.text(max_size=200) | st.binary(max_size=200) | json_value.map(json.dumps))
def test_random_frames_give_an_event_nothing_or_the_defined_error(network, before_start, data):
    phone, fake, codec = pair(network)
    if not before_start:
        decode(codec, fake.start({"bot": "echo"}))
    _decode_anything(codec, data, isinstance(data, bytes))


def _mutate(frame: dict, where: int, value, drop: bool) -> dict:
    frame = json.loads(json.dumps(frame))
    node, keys = frame, list(frame)
    key = keys[where % len(keys)]
    if isinstance(node[key], dict) and node[key]:
        node = node[key]
        key = list(node)[where // 7 % len(node)]
    if drop:
        del node[key]
    else:
        node[key] = value
    return frame


@pytest.mark.parametrize("network", NAMES)
@FUZZ
@given(which=st.integers(0, 4), where=st.integers(0, 1000), value=json_value, drop=st.booleans())
def test_real_frames_with_one_value_replaced_or_dropped(network, which, where, value, drop):
    phone, fake, codec = pair(network)
    frames = [fake.start({"bot": "echo"}), fake.media(b"\xff\x7f" * 80, 1, 20), fake.dtmf("5"), *fake.stop()]
    echo = fake.echo("m1")
    frames += [echo] if echo is not None else []
    frame = frames[which % len(frames)]
    if not isinstance(frame, dict):  # a binary frame: cut or flip a byte instead
        data = bytearray(frame)
        if drop:
            del data[where % len(data):]
        else:
            data[where % len(data)] ^= 0xFF
        _decode_anything(codec, bytes(data), True)
        return
    if frame is not frames[0]:
        decode(codec, frames[0])
    _decode_anything(codec, json.dumps(_mutate(frame, where, value, drop)), False)
