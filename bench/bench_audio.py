"""Audio path cost per 20 ms of call audio, as ratios against a baseline measured in the same run.

    .venv/py3.11/bin/python bench/bench_audio.py

Baseline: the bare minimum a gateway must do per frame (mu-law decode + audioop.ratecv with
state, no filtering). Ours adds anti-aliasing FIR filters and the WAV/base64 wrapping; the
ratio says what that quality costs, and the absolute figure says how many calls one core holds.
The last row compares OpenAI's two audio options against each other (baseline: the 24 kHz PCM
path through our resamplers; ours: audio/pcmu passthrough), both directions per frame.
Machines here are noisy: each figure is the best of several repeats.

The first tables compare the resamplers themselves on every path a call uses, fed 20 ms frames:
"old" is the audioop FIR + ratecv the gateway had before (kept below as the reference), "new"
is gateway.audio.Resampler (a polyphase FIR phone -> model, soxr model -> phone). Latency is
what tests/audio_check.added_latency_ms measures (a click's delay plus the hold-back); "3.4k"
is the level of a 3.4 kHz tone, "alias" what is left of the worst out-of-band tone (down) or
everything but the tone (up), -99 when nothing at all comes out. Then soxr's quality settings,
the measurement behind the choice.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.audio_check

from gateway.audio import (Framer, Resampler, SoxrStream, audioop, pcm16_to_ulaw, tone,  # noqa: E402
                           ulaw_to_pcm16, wav_bytes)
from tests.audio_check import added_latency_ms, db, rms_as_peak, samples, tone_fit  # noqa: E402

SECONDS = 10
FRAMES = SECONDS * 50


def best(fn, repeat=5) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


class OldResampler:
    """The resampler before soxr (reference only): a 31-tap Hamming FIR run through audioop.mul/add
    at the higher rate, around audioop.ratecv's linear interpolation."""

    def __init__(self, src_rate: int, dst_rate: int, ntaps: int = 31):
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self._state = None
        low, high = min(src_rate, dst_rate), max(src_rate, dst_rate)
        fc, mid = 0.45 * low / high, (ntaps - 1) / 2
        taps = [(2 * fc if n == mid else math.sin(2 * math.pi * fc * (n - mid)) / (math.pi * (n - mid)))
                * (0.54 - 0.46 * math.cos(2 * math.pi * n / (ntaps - 1))) for n in range(ntaps)]
        self.taps = [t / sum(taps) for t in taps]
        self._history = bytes(2 * (ntaps - 1))

    def _lowpass(self, pcm: bytes) -> bytes:
        x, n, order = self._history + pcm, len(pcm), len(self.taps) - 1
        acc = None
        for k, c in enumerate(self.taps):
            term = audioop.mul(x[(order - k) * 2:(order - k) * 2 + n], 2, c)
            acc = term if acc is None else audioop.add(acc, term, 2)
        self._history = x[-order * 2:]
        return acc

    def process(self, pcm: bytes) -> bytes:
        if self.src_rate == self.dst_rate or not pcm:
            return pcm
        if self.dst_rate < self.src_rate:
            pcm = self._lowpass(pcm)
        out, self._state = audioop.ratecv(pcm, 2, 1, self.src_rate, self.dst_rate, self._state)
        return self._lowpass(out) if self.dst_rate > self.src_rate else out

    def flush(self) -> bytes:
        n = len(self.taps) // 2
        if self.dst_rate > self.src_rate:
            n = n * self.src_rate // self.dst_rate + 1
        return self.process(bytes(2 * n)) if self.src_rate != self.dst_rate else b""


PATHS = [(8000, 16000), (8000, 24000), (8000, 48000), (24000, 8000), (16000, 8000), (48000, 8000)]


def frames_of(pcm: bytes, rate: int) -> list[bytes]:
    n = 2 * rate // 50
    return [pcm[i:i + n] for i in range(0, len(pcm), n)]


def us_per_frame(make, src: int) -> float:
    frames = frames_of(tone(440, SECONDS, src), src)

    def run():
        r = make()
        for f in frames:
            r.process(f)
    return best(run) / len(frames) * 1e6


def quality(make, src: int, dst: int) -> tuple[float, float]:
    """(worst passband level 300-3400 Hz in dB, worst alias/image in dB), tones at -12 dBFS."""
    def through(hz):
        r = make()
        out = samples(b"".join(r.process(f) for f in frames_of(tone(hz, 0.5, src), src)) + r.flush())
        return out[dst // 10:-dst // 10]
    band = min(db(tone_fit(through(hz), dst, hz)[0], 8000) for hz in (300, 1000, 2000, 3000, 3400))
    if dst < src:
        alias = max(db(rms_as_peak(through(hz)), 8000) for hz in (4600, 5000, 7000, 0.45 * src))
    else:
        alias = max(db(rms_as_peak(tone_fit(through(hz), dst, hz)[1]), 8000) for hz in (300, 1000, 3400))
    return band, max(alias, -99.0)  # -99: every output sample rounded to 0


def resampler_tables() -> None:
    print(f"resamplers per path, fed 20 ms frames ({SECONDS} s, best of 5); old = audioop FIR, new = ours")
    print("  path       us/frame old   new  ratio   latency ms old   new   passband dB old   new   alias dB old   new")
    for src, dst in PATHS:
        old_us, new_us = us_per_frame(lambda: OldResampler(src, dst), src), us_per_frame(lambda: Resampler(src, dst), src)
        old_ms = added_latency_ms(OldResampler(src, dst), src, dst)
        new_ms = added_latency_ms(Resampler(src, dst), src, dst)
        (ob, oa), (nb, na) = quality(lambda: OldResampler(src, dst), src, dst), quality(lambda: Resampler(src, dst), src, dst)
        print(f"  {src // 1000:2}k->{dst // 1000:2}k        {old_us:6.1f} {new_us:5.1f}  {new_us / old_us:5.2f}x"
              f"          {old_ms:5.1f} {new_ms:5.1f}            {ob:6.2f} {nb:5.2f}         {oa:6.1f} {na:5.1f}")
    print("soxr quality settings (the measurement behind the choice: inbound hold-back, outbound MQ)")
    print("  path       quality  us/frame  latency ms  passband dB  alias dB")
    for src, dst in PATHS:
        for q in ("LQ", "MQ", "HQ", "VHQ"):
            us = us_per_frame(lambda: SoxrStream(src, dst, q), src)
            ms = added_latency_ms(SoxrStream(src, dst, q), src, dst)
            band, alias = quality(lambda: SoxrStream(src, dst, q), src, dst)
            print(f"  {src // 1000:2}k->{dst // 1000:2}k   {q:>7}  {us:8.1f}  {ms:10.1f}  {band:11.2f}  {alias:8.1f}")


def main() -> None:
    caller = pcm16_to_ulaw(tone(440, SECONDS, 8000))
    frames = [caller[i:i + 160] for i in range(0, len(caller), 160)]
    model = tone(1000, SECONDS, 24000)
    deltas = [model[i:i + 24000 * 2 // 2] for i in range(0, len(model), 24000)]  # 0.5 s deltas

    def inbound_baseline():
        state = None
        for f in frames:
            _, state = audioop.ratecv(ulaw_to_pcm16(f), 2, 1, 8000, 16000, state)

    def inbound_ours():
        r = Resampler(8000, 16000)
        pending = bytearray()
        for f in frames:
            pending += r.process(ulaw_to_pcm16(f))
            if len(pending) >= 3200:  # 100 ms -> one WAV append, as the GLM provider does
                json.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(wav_bytes(bytes(pending[:3200]), 16000)).decode()})
                del pending[:3200]

    def outbound_baseline():
        state = None
        for d in deltas:
            out, state = audioop.ratecv(d, 2, 1, 24000, 8000, state)
            audioop.lin2ulaw(out, 2)

    def outbound_ours():
        r = Resampler(24000, 8000)
        framer = Framer()
        for d in deltas:
            for frame in framer.push(pcm16_to_ulaw(r.process(d))):
                json.dumps({"event": "media", "streamSid": "MZ", "media": {"payload": base64.b64encode(frame).decode()}})
                json.dumps({"event": "mark", "streamSid": "MZ", "mark": {"name": "0:1"}})

    def openai_pcmu():
        """OpenAI with audio/pcmu, both directions: the bytes pass through, only wrapping is left."""
        for f in frames:
            json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(f).decode()})
        framer = Framer()
        for d in ulaw_deltas:
            for frame in framer.push(base64.b64decode(base64.b64encode(d))):
                json.dumps({"event": "media", "streamSid": "MZ", "media": {"payload": base64.b64encode(frame).decode()}})
                json.dumps({"event": "mark", "streamSid": "MZ", "mark": {"name": "0:1"}})

    def openai_pcm24():
        """OpenAI with audio/pcm (24 kHz), both directions: decode, resample, filter, encode."""
        r_in = Resampler(8000, 24000)
        for f in frames:
            json.dumps({"type": "input_audio_buffer.append",
                        "audio": base64.b64encode(r_in.process(ulaw_to_pcm16(f))).decode()})
        outbound_ours()

    ulaw_deltas = [caller[i:i + 4000] for i in range(0, len(caller), 4000)]  # 0.5 s mu-law deltas
    print(f"per 20 ms frame of call audio ({SECONDS} s of audio, best of 5):")
    for name, base, ours in [("inbound  8k mu-law -> 16k WAV", inbound_baseline, inbound_ours),
                             ("outbound 24k PCM -> 8k frames", outbound_baseline, outbound_ours),
                             ("OpenAI both ways: pcmu vs pcm24", openai_pcm24, openai_pcmu)]:
        b, o = best(base), best(ours)
        print(f"  {name}: baseline {b / FRAMES * 1e6:6.1f} us  ours {o / FRAMES * 1e6:6.1f} us  "
              f"ratio {o / b:5.2f}x  -> one core carries ~{int(0.02 / (o / FRAMES))} such streams")


if __name__ == "__main__":
    t = time.perf_counter()
    resampler_tables()
    main()
    print(f"({time.perf_counter() - t:.1f} s)")
