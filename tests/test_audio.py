"""The audio path's pure parts: codec, resampling (frequency, continuity, aliasing), WAV, framing, VAD."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from gateway.audio import (EnergyVAD, Framer, Resampler, pcm16_to_ulaw, tone, ulaw_to_pcm16,
                           wav_bytes)
from tests.audio_check import dominant_hz, max_discontinuity, samples


def feed(resampler: Resampler, pcm: bytes, block: int) -> bytes:
    return b"".join(resampler.process(pcm[i:i + block]) for i in range(0, len(pcm), block))


def test_mulaw_round_trip_is_close_and_silence_is_0xff():
    pcm = tone(440, 0.1, 8000, 12000)
    back = samples(ulaw_to_pcm16(pcm16_to_ulaw(pcm)))
    err = np.abs(back - samples(pcm))
    assert err.max() <= 12000 * 0.04  # mu-law: ~3 % step at this level
    assert pcm16_to_ulaw(b"\x00\x00" * 4) == b"\xff" * 4


@pytest.mark.parametrize("src,dst,hz", [(8000, 16000, 440), (8000, 24000, 440), (24000, 8000, 1000),
                                        (16000, 8000, 1000), (8000, 16000, 3000)])
def test_resampler_keeps_frequency_and_length(src, dst, hz):
    out = feed(Resampler(src, dst), tone(hz, 1.0, src), 2 * src // 50)  # 20 ms blocks
    assert abs(len(out) / 2 - dst) <= 2
    assert dominant_hz(samples(out), dst) == pytest.approx(hz, rel=0.002)


@pytest.mark.parametrize("src,dst", [(8000, 16000), (24000, 8000)])
def test_resampler_state_makes_block_size_irrelevant(src, dst):
    """Carried state: 20 ms blocks, odd blocks and one big block give the same signal."""
    pcm = tone(700, 0.5, src)
    whole = Resampler(src, dst).process(pcm)
    framed = feed(Resampler(src, dst), pcm, 2 * src // 50)
    odd = feed(Resampler(src, dst), pcm, 2 * 37)
    n = min(len(whole), len(framed), len(odd))
    assert np.abs(samples(whole[:n]) - samples(framed[:n])).max() <= 1
    assert np.abs(samples(whole[:n]) - samples(odd[:n])).max() <= 1


@pytest.mark.parametrize("src,dst,hz", [(8000, 16000, 440), (24000, 8000, 1000)])
def test_no_clicks_at_frame_edges(src, dst, hz):
    out = samples(feed(Resampler(src, dst), tone(hz, 1.0, src), 2 * src // 50))
    steady = out[dst // 10: -dst // 10]  # skip the filter's start-up
    assert max_discontinuity(steady, dst, hz) < 0.02


def test_downsampling_filters_what_would_alias():
    """5 kHz at 24 kHz has no place at 8 kHz: plain ratecv folds it to 3 kHz, we remove it."""
    out = samples(feed(Resampler(24000, 8000), tone(5000, 1.0, 24000, 8000), 960))[400:]
    assert np.sqrt(np.mean(out ** 2)) < 8000 / 100  # at least -37 dB
    passband = samples(feed(Resampler(24000, 8000), tone(3000, 1.0, 24000, 8000), 960))[400:]
    assert np.sqrt(np.mean(passband ** 2)) > 8000 / np.sqrt(2) * 0.7


def test_silence_stays_silent():
    assert set(Resampler(24000, 8000).process(b"\x00\x00" * 4800)) == {0}
    assert set(Resampler(8000, 16000).process(b"\x00\x00" * 1600)) == {0}


def test_wav_bytes_is_a_complete_wav_file():
    pcm = tone(440, 0.1, 16000)
    with wave.open(io.BytesIO(wav_bytes(pcm, 16000)), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.readframes(w.getnframes()) == pcm


def test_framer_cuts_exact_frames_and_pads_the_tail():
    f = Framer(160)
    assert f.push(b"\x01" * 100) == []
    frames = f.push(b"\x02" * 300)
    assert [len(x) for x in frames] == [160, 160]
    assert f.pending == 80
    tail = f.flush()
    assert tail == b"\x02" * 80 + b"\xff" * 80
    assert f.flush() is None


def test_energy_vad_hysteresis():
    vad = EnergyVAD(8000, threshold=400, start_ms=60, stop_ms=200)
    loud, quiet = tone(300, 0.02, 8000, 5000), b"\x00\x00" * 160
    edges = [vad.process(loud) for _ in range(10)] + [vad.process(quiet) for _ in range(5)] + \
            [vad.process(loud) for _ in range(3)] + [vad.process(quiet) for _ in range(15)]
    assert [e for e in edges if e] == ["start", "stop"]


@pytest.mark.parametrize("src,dst", [(24000, 8000), (16000, 8000), (8000, 16000)])
def test_flush_ends_one_stream_without_leaking_into_the_next(src, dst):
    r = Resampler(src, dst)
    body = r.process(tone(880, 0.2, src, 8000))
    tail = r.flush()
    assert 0 < len(tail) // 2 <= 40  # the filter delay's worth of samples
    extra = len(body + tail) // 2 - 0.2 * dst  # nothing lost; only the filter's delay is added
    assert -2 <= extra <= 20
    assert set(r.process(b"\x00\x00" * 400)) == {0}  # the next stream starts from clean state
