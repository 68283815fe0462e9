"""Resampling quality on every path a call uses, as figures: passband flatness (300-3400 Hz within
1 dB), alias and image rejection (<= -60 dB), frequency, seamless frame joins, the tail at a
reply's end, barge-in reset, and the latency each path adds.

Phone -> model: 8 kHz up to 16 kHz (GLM wav/pcm16), 24 kHz (GLM pcm24, OpenAI pcm) and 48 kHz
(echo bot at 48 kHz); PCM phones (Vonage 16 kHz, Exotel 16/24 kHz) to the models' rates, by any
ratio, through the same kind of low-latency filter. Model -> phone: 24, 16 and 48 kHz down to 8 kHz.
8 -> 8 is passthrough. All fed in 20 ms frames, as the call does.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from gateway.audio import Resampler, tone
from tests.audio_check import (added_latency_ms, db, dominant_hz, max_discontinuity, rms_as_peak,
                               samples, tone_fit)

INBOUND = [(8000, 16000), (8000, 24000), (8000, 48000)]
PCM_INBOUND = [(16000, 8000), (24000, 8000), (24000, 16000), (16000, 24000)]  # PCM phones -> a model
OUTBOUND = [(24000, 8000), (16000, 8000), (48000, 8000)]
PATHS = INBOUND + PCM_INBOUND + OUTBOUND + [(8000, 8000)]
AMP = 8000  # -12 dBFS: speech level, far from clipping
LATENCY = [(s, d, 2.5) for s, d in INBOUND] + [(s, d, 4) for s, d in PCM_INBOUND] + \
    [(s, d, 70) for s, d in OUTBOUND] + [(8000, 8000, 0)]


def resampler(src: int, dst: int) -> Resampler:
    """The one the call uses on this path: caller -> model low-latency, model -> phone soxr."""
    return Resampler(src, dst, low_latency=(src, dst) in PCM_INBOUND)
BAND = [300, 500, 1000, 2000, 3000, 3400]


def ids(paths) -> list[str]:
    return [f"{p[0] // 1000}k-{p[1] // 1000}k" for p in paths]


def stream(src: int, dst: int, pcm: bytes, block: int | None = None) -> np.ndarray:
    """The whole output of one stream fed in `block`-byte pieces (20 ms by default), tail included."""
    r = resampler(src, dst)
    block = block or 2 * src // 50
    out = b"".join(r.process(pcm[i:i + block]) for i in range(0, len(pcm), block)) + r.flush()
    return samples(out)


def steady(x: np.ndarray, rate: int) -> np.ndarray:
    return x[rate // 10: -rate // 10]  # past the filter's start-up and end


@pytest.mark.parametrize("src,dst", PATHS, ids=ids(PATHS))
def test_passband_is_flat_to_3400_hz(src, dst):
    levels = {hz: db(tone_fit(steady(stream(src, dst, tone(hz, 0.5, src, AMP)), dst), dst, hz)[0], AMP)
              for hz in BAND}
    assert all(abs(level) <= 1.0 for level in levels.values()), levels


TO_8K = OUTBOUND + [p for p in PCM_INBOUND if p[1] == 8000]


@pytest.mark.parametrize("src,dst", TO_8K, ids=ids(TO_8K))
def test_downsampling_rejects_aliases(src, dst):
    """Everything above 4.6 kHz would fold into the phone band (4.6 kHz -> 3.4 kHz); none may
    come out louder than -60 dB. Plain ratecv passes these at about 0 dB."""
    for hz in (4600, 5000, 7000, 0.45 * src):
        out = steady(stream(src, dst, tone(hz, 0.5, src, AMP)), dst)
        assert db(rms_as_peak(out), AMP) <= -60, hz


UP = INBOUND + [p for p in PCM_INBOUND if p[1] > p[0]]


@pytest.mark.parametrize("src,dst", UP, ids=ids(UP))
def test_upsampling_rejects_images(src, dst):
    """Upsampling mirrors the band around 8 kHz (3.4 kHz -> 4.6 kHz, 11.4 kHz, ...): everything
    in the output but the tone itself stays below -60 dB."""
    for hz in BAND:
        _, rest = tone_fit(steady(stream(src, dst, tone(hz, 0.5, src, AMP)), dst), dst, hz)
        assert db(rms_as_peak(rest), AMP) <= -60, hz


@pytest.mark.parametrize("src,dst", PATHS, ids=ids(PATHS))
def test_440_hz_in_is_440_hz_out_and_nothing_is_lost(src, dst):
    out = stream(src, dst, tone(440, 1.0, src, AMP))
    assert dominant_hz(steady(out, dst), dst) == pytest.approx(440, rel=0.001)
    assert abs(len(out) - dst) <= 0.004 * dst  # 1 s in, 1 s out (+ at most a few ms of delay)


@pytest.mark.parametrize("src,dst", PATHS, ids=ids(PATHS))
def test_frame_joins_are_seamless(src, dst):
    """A continuous tone cut in odd-sized pieces (and in random ones) gives the same signal as
    fed whole: the state carried across calls leaves no mark at the joins."""
    pcm = tone(700, 0.5, src, AMP)
    whole = stream(src, dst, pcm, len(pcm))
    rng = random.Random(src + dst)
    for cut in (2 * 37, 2 * 161, None):
        if cut is None:
            r, out, at = resampler(src, dst), [], 0
            while at < len(pcm):
                step = 2 * rng.randint(1, src // 25)
                out.append(r.process(pcm[at:at + step]))
                at += step
            pieces = samples(b"".join(out) + r.flush())
        else:
            pieces = stream(src, dst, pcm, cut)
        assert len(pieces) == len(whole)
        assert np.abs(pieces - whole).max() <= 1, cut


@pytest.mark.parametrize("src,dst", PATHS, ids=ids(PATHS))
def test_no_clicks_in_20_ms_frames(src, dst):
    out = steady(stream(src, dst, tone(1000, 1.0, src, AMP)), dst)
    assert max_discontinuity(out, dst, 1000) < 0.02


@pytest.mark.parametrize("src,dst,most_ms", LATENCY, ids=ids(LATENCY))
def test_added_latency_per_path(src, dst, most_ms):
    """Phone -> model: the caller waits for it on every reply, so (almost) none. Model -> phone:
    hidden behind Playout's pacing (models send faster than real time), so soxr may hold back."""
    ms = added_latency_ms(resampler(src, dst), src, dst)
    assert -0.1 <= ms <= most_ms


@pytest.mark.parametrize("src,dst", PATHS, ids=ids(PATHS))
def test_flush_delivers_the_last_syllable(src, dst):
    """A 200 ms reply fed in 20 ms frames: flush hands on what the filter still holds, so the
    end of the reply comes out at full level; then the resampler starts from clean state."""
    r = resampler(src, dst)
    reply = tone(1000, 0.2, src, AMP)
    body = b"".join(r.process(reply[i:i + 2 * src // 50]) for i in range(0, len(reply), 2 * src // 50))
    out = samples(body + r.flush())
    assert len(out) >= 0.2 * dst
    last_10_ms = out[int(0.19 * dst):int(0.2 * dst)]
    assert db(rms_as_peak(last_10_ms), AMP) >= -1.0
    assert not samples(r.process(b"\x00\x00" * (src // 10))).any()


@pytest.mark.parametrize("src,dst", PATHS, ids=ids(PATHS))
def test_reset_forgets_the_cut_reply(src, dst):
    """Barge-in: after reset, silence comes out as silence (no ring-out of the cut reply), and
    the next reply comes out exactly as from a fresh resampler."""
    r = resampler(src, dst)
    r.process(tone(1000, 0.1, src, AMP))
    r.reset()
    assert not samples(r.process(b"\x00\x00" * (src // 10))).any()
    r.reset()
    nxt, fresh = tone(500, 0.1, src, AMP), resampler(src, dst)
    assert r.process(nxt) + r.flush() == fresh.process(nxt) + fresh.flush()


@pytest.mark.parametrize("src,dst", PATHS, ids=ids(PATHS))
def test_silence_stays_silent(src, dst):
    assert not samples(resampler(src, dst).process(b"\x00\x00" * (src // 2))).any()


def test_phone_simulator_reads_a_wav_to_its_last_sample(tmp_path):
    """`phone --wav` at any rate: the whole clip reaches the phone, including what the resampler
    holds back at the end."""
    import wave

    from gateway.phone_sim import read_wav_as_ulaw
    from tests.audio_check import ulaw_samples

    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(tone(1000, 0.5, 44100, AMP))
    out = ulaw_samples(read_wav_as_ulaw(path))
    assert abs(len(out) - 4000) <= 2
    assert db(rms_as_peak(out[-160:-8]), AMP) >= -1.0


def test_the_call_bridge_delivers_a_whole_reply_and_drops_a_cut_one():
    """What the call does with a GLM reply (24 kHz deltas): every 20 ms of it reaches the phone
    once the reply ends, the last frame at full level; after a barge-in nothing of it leaks into
    the next reply."""
    from gateway.call.audio_bridge import AudioBridge
    from gateway.providers.base import Capabilities
    from tests.audio_check import ulaw_samples

    bridge = AudioBridge(Capabilities("pcm16", 16000, "pcm16", 24000))
    reply = tone(1000, 0.3, 24000, AMP)
    frames = [f for i in range(0, len(reply), 4800) for f in bridge.to_phone(reply[i:i + 4800])]
    frames += bridge.end_of_reply()
    assert len(frames) == 15 and all(len(f) == 160 for f in frames)
    assert db(rms_as_peak(ulaw_samples(frames[-1])[:-8]), AMP) >= -1.0
    bridge.to_phone(reply)
    bridge.drop_bot_audio()
    assert not ulaw_samples(b"".join(bridge.to_phone(bytes(4800)) + bridge.end_of_reply())).any()


def test_the_call_bridge_converts_any_batch_the_same_as_frame_by_frame():
    """The Uplink hands the bridge batches of any length (100 ms in quiet stretches, one frame
    around speech): the signal the model gets is the same as converting frame by frame (the
    filter's state carries across)."""
    from gateway.audio import pcm16_to_ulaw
    from gateway.call.audio_bridge import AudioBridge
    from gateway.providers.base import Capabilities

    caps = Capabilities("pcm16", 16000, "pcm16", 24000)
    caller = pcm16_to_ulaw(tone(1000, 0.4, 8000, AMP))
    frames = [caller[i:i + 160] for i in range(0, len(caller), 160)]
    batched = AudioBridge(caps)
    sizes = [5, 1, 1, 3, 5, 5]  # frames per batch, 20 frames in all
    out, i = [], 0
    for n in sizes:
        out.append(batched.to_model(b"".join(frames[i:i + n])))
        i += n
    assert [len(o) for o in out] == [n * 640 for n in sizes]
    per_frame = AudioBridge(caps)
    a = np.frombuffer(b"".join(out), "<i2").astype(int)
    b = np.frombuffer(b"".join(per_frame.to_model(f) for f in frames), "<i2").astype(int)
    assert len(a) == len(b) and np.abs(a - b).max() <= 1  # float rounding at most
