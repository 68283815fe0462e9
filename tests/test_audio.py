"""The audio path's pure parts: codec, WAV, framing, VAD (resampling: tests/test_audio_quality.py)."""

from __future__ import annotations

import io
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from gateway.audio import EnergyVAD, Framer, pcm16_to_ulaw, tone, ulaw_to_pcm16, wav_bytes
from tests.audio_check import samples


def test_mulaw_round_trip_is_close_and_silence_is_0xff():
    pcm = tone(440, 0.1, 8000, 12000)
    back = samples(ulaw_to_pcm16(pcm16_to_ulaw(pcm)))
    err = np.abs(back - samples(pcm))
    assert err.max() <= 12000 * 0.04  # mu-law: ~3 % step at this level
    assert pcm16_to_ulaw(b"\x00\x00" * 4) == b"\xff" * 4


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


def test_soxr_stream_memory_stays_small_after_a_long_delta():
    """libsoxr sizes its buffers to the largest block it is given and keeps them: a 1.5 s model
    delta fed in one piece kept ~320 KiB per call. Measured in a fresh process (RSS)."""
    code = (
        "from gateway.audio import SoxrStream, tone\n"
        "pcm = tone(440, 1.5, 24000)\n"
        "SoxrStream(24000, 8000).process(pcm)\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4\n"
        "r0 = rss(); keep = []\n"
        "for _ in range(200):\n"
        "    s = SoxrStream(24000, 8000)\n"
        "    for _ in range(3): s.process(pcm)\n"
        "    keep.append(s)\n"
        "print((rss() - r0) / 200)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert float(out.stdout) < 120, f"{out.stdout.strip()} KiB per stream"
