"""The speech-aware uplink (gateway/call/uplink.py): caller audio batched in quiet stretches, sent
at once around speech, on the fast-forwarded clock. What the model gets, and when."""

from __future__ import annotations

import asyncio

import pytest

from gateway.audio import MULAW_SILENCE
from gateway.call.audio_bridge import AudioBridge, PhoneFormat
from gateway.call.uplink import Uplink
from gateway.providers.base import Capabilities
from tests.phone_helpers import ulaw_tone

pytestmark = pytest.mark.looptime

QUIET = MULAW_SILENCE * 160
LOUD = ulaw_tone(300, 0.02, 6000)


class Sink:
    """Stands in for the ModelLink: what was sent, and when (loop time)."""

    def __init__(self):
        self.sent: list[tuple[float, bytes]] = []

    async def send_audio(self, audio: bytes) -> None:
        self.sent.append((asyncio.get_running_loop().time(), audio))


def make(block_ms=100, vad_silence_ms=800, caps=Capabilities("mulaw", 8000, "mulaw", 8000)):
    sink = Sink()
    up = Uplink(AudioBridge(caps, PhoneFormat()), sink, threshold=500, block_ms=block_ms,
                vad_silence_ms=vad_silence_ms, clock=asyncio.get_running_loop().time)
    return up, sink


async def play(up: Uplink, frames: list[bytes]) -> list[float]:
    """Frames in real time, as a phone sends them; returns when each was sent."""
    times = []
    for f in frames:
        times.append(asyncio.get_running_loop().time())
        await up.frame(f)
        await asyncio.sleep(0.02)
    return times


async def test_quiet_stretches_go_in_whole_batches():
    up, sink = make()
    await play(up, [QUIET] * 50)
    assert [len(a) for _, a in sink.sent] == [800] * 10 and up.appends == 10


async def test_the_onset_and_the_first_silence_go_at_once_and_the_turn_end_runs_in_real_time():
    up, sink = make(vad_silence_ms=800)
    frames = [QUIET] * 13 + [LOUD] * 30 + [QUIET] * 100
    sent_at = await play(up, frames)
    received = b""
    arrival = []  # when each phone frame reached the model
    for t, audio in sink.sent:
        received += audio
        arrival += [t] * (len(audio) // 160)
    assert received == b"".join(frames)  # nothing lost, nothing reordered
    delay = [a - s for a, s in zip(arrival, sent_at)]
    assert delay[13] == 0, "the onset goes at once"
    assert delay[43] == 0, "so does the first silence after speech"
    assert all(d == 0 for d in delay[13:43]), "speech goes frame by frame (the model's VAD decides on it)"
    trailing = (800 + 100) // 20
    assert all(d == 0 for d in delay[43:43 + trailing]), "the model's end-of-turn silence, in real time"
    assert max(delay[43 + trailing + 10:]) > 0, "then batched again"
    assert max(delay) <= 0.08 + 1e-9  # and never more than a batch late


async def test_a_click_is_not_speech_it_costs_one_early_send_and_no_live_stretch():
    up, sink = make()
    sent_at = await play(up, [QUIET] * 7 + [LOUD] + [QUIET] * 42)
    assert sink.sent[1] == (sent_at[7], b"".join([QUIET] * 2 + [LOUD]))  # the click at once, what waited with it
    assert [len(a) // 160 for _, a in sink.sent[2:]] == [5] * 8  # then batches again


async def test_a_burst_of_late_frames_is_merged_not_sent_faster_than_50_a_second():
    up, sink = make()
    for _ in range(3):  # the onset and two more, arriving together
        await up.frame(LOUD)
    assert len(sink.sent) == 1
    await asyncio.sleep(0.02)
    await up.frame(LOUD)
    assert len(sink.sent) == 2 and len(sink.sent[1][1]) == 3 * 160


async def test_a_pcm_phone_and_a_pcm_model_get_the_same_decisions():
    """A 16 kHz L16 phone (Vonage) to GLM's 16 kHz PCM: the energy is measured on PCM."""
    import struct

    from gateway.audio import tone
    sink = Sink()
    up = Uplink(AudioBridge(Capabilities("pcm16", 16000, "pcm16", 24000), PhoneFormat("audio/l16", 16000)), sink,
                threshold=500, block_ms=100, vad_silence_ms=800, clock=asyncio.get_running_loop().time)
    quiet, loud = bytes(640), tone(300, 0.02, 16000, 6000)
    assert not await up.frame(quiet) and await up.frame(loud)
    assert len(sink.sent) == 1 and len(sink.sent[0][1]) == 1280  # the onset flushed the quiet frame with it
    assert struct.unpack("<h", sink.sent[0][1][:2])[0] == 0
