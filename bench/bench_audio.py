"""Audio path cost per 20 ms of call audio, as ratios against a baseline measured in the same run.

    .venv/py3.11/bin/python bench/bench_audio.py

Baseline: the bare minimum a gateway must do per frame (mu-law decode + audioop.ratecv with
state, no filtering). Ours adds anti-aliasing FIR filters and the WAV/base64 wrapping; the
ratio says what that quality costs, and the absolute figure says how many calls one core holds.
The last row compares OpenAI's two audio options against each other (baseline: the 24 kHz PCM
path through our resamplers; ours: audio/pcmu passthrough), both directions per frame.
Machines here are noisy: each figure is the best of several repeats.
"""

from __future__ import annotations

import base64
import json
import time
import timeit

from gateway.audio import (Framer, Resampler, audioop, pcm16_to_ulaw, tone, ulaw_to_pcm16,
                           wav_bytes)

SECONDS = 10
FRAMES = SECONDS * 50


def best(fn, repeat=5) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


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
    main()
    print(f"({time.perf_counter() - t:.1f} s)")
