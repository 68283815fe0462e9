"""False interruptions and interruption latency per barge-in policy, on a generated test set.

Every case plays a 6 s bot reply and, 1 s in, one caller sound: noise bursts and clicks (a door, a
cough, line noise), a short backchannel ("mm-hm": 250 ms of voiced sound and that transcript) and
real interruptions (0.6-2 s of speech with a transcript of words). The model side behaves like a
server VAD that fires on any energy: speech_started at the sound's onset, speech_stopped 300 ms
after its end, the transcript (speech only) 300 ms after that. Runs the real Call on the in-memory
phone/model of the unit tests, on a fast-forwarded clock: exact, repeatable, a second of runtime.

  .venv/py3.11/bin/python bench/barge_in_policies.py
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import statistics
import struct
import sys
from pathlib import Path

import looptime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audio import PHONE_RATE, pcm16_to_ulaw  # noqa: E402
from gateway.call import Call  # noqa: E402
from gateway.config import Config, LimitsConfig, Persona  # noqa: E402
from gateway.logs import CallLogger  # noqa: E402
from gateway.persona import BargeIn  # noqa: E402
from gateway.providers.base import InputTranscript, SpeechStarted, SpeechStopped  # noqa: E402
from tests.call_fakes import MemoryModel, MemoryPhone  # noqa: E402


def noise(ms: int, amplitude: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    return struct.pack(f"<{PHONE_RATE * ms // 1000}h", *(rnd.randint(-amplitude, amplitude)
                                                         for _ in range(PHONE_RATE * ms // 1000)))


def voiced(ms: int, hz: float = 140, amplitude: int = 6000) -> bytes:
    """A crude voice: a fundamental and harmonics, with a syllable-rate envelope (4 Hz)."""
    n = PHONE_RATE * ms // 1000
    out = []
    for i in range(n):
        t = i / PHONE_RATE
        env = 0.55 + 0.45 * math.sin(2 * math.pi * 4 * t)
        s = sum(math.sin(2 * math.pi * hz * k * t) / k for k in (1, 2, 3, 4))
        out.append(int(amplitude * env * s / 2))
    return struct.pack(f"<{n}h", *out)


# name, kind (False: not an interruption), PCM, transcript
CASES = [
    *(("noise burst %d ms" % ms, False, noise(ms, 9000, ms), None) for ms in (80, 150, 250)),
    *(("click %d" % i, False, noise(12, 20000, 100 + i), None) for i in range(3)),
    ("cough", False, noise(180, 14000, 7) + b"\x00\x00" * 400 + noise(120, 9000, 8), None),
    ("mm-hm", False, voiced(250, 120), "mm-hm"),
    ("yeah", False, voiced(300, 130), "yeah"),
    ("short speech 'stop'", True, voiced(450, 150), "stop"),
    ("speech 0.6 s", True, voiced(600), "hold on please"),
    ("speech 1 s", True, voiced(1000, 170), "no that is not what I asked"),
    ("speech 2 s", True, voiced(2000, 110), "I want to talk about my bill from last month"),
]


async def run_case(policy: BargeIn, pcm: bytes, transcript: str | None) -> tuple[bool, float | None, float]:
    """(the bot was cut, ms from the sound's onset to the clear, ms of the reply heard in the end)."""
    loop = asyncio.get_running_loop()
    model, phone = MemoryModel(), MemoryPhone()
    call = Call(config=Config(limits=LimitsConfig(silence_timeout_seconds=0)),
                persona=Persona(provider="echo", name="bench", barge_in=policy), phone=phone, started=phone.started,
                session=model, log=CallLogger(logging.getLogger("bench"), call="CAbench"), clock=loop.time)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.reply(6000, "A long answer. " * 10)
    await asyncio.sleep(1.0)
    onset = loop.time()
    model.emit(SpeechStarted())
    ulaw = pcm16_to_ulaw(pcm)
    for i in range(0, len(ulaw), 160):  # the caller's audio in real time
        phone.speak(ulaw[i:i + 160])
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    model.emit(SpeechStopped())
    if transcript:
        await asyncio.sleep(0.3)
        model.emit(InputTranscript(transcript))
    await asyncio.sleep(8)
    phone.hang_up()
    summary = await running
    clears = [t for t, kind, _ in phone.sent if kind == "clear"]
    heard = phone.heard_ms()
    return summary.barge_ins > 0, ((clears[0] - onset) * 1000 if clears else None), heard


def main() -> None:
    logging.disable(logging.CRITICAL)
    policies = {"immediate": BargeIn("immediate"),
                "confirm 300/700": BargeIn("confirm", min_speech_ms=300, confirm_ms=700),
                "confirm 200/600": BargeIn("confirm", min_speech_ms=200, confirm_ms=600)}
    print(f"{'case':24}" + "".join(f"{name:>22}" for name in policies))
    results = {name: [] for name in policies}
    for case, real, pcm, transcript in CASES:
        row = f"{case:24}"
        for name, policy in policies.items():
            loop = looptime.new_event_loop()
            try:
                cut, latency, heard = loop.run_until_complete(run_case(policy, pcm, transcript))
            finally:
                loop.close()
            results[name].append((real, cut, latency, heard))
            row += f"{('CUT %4.0f ms' % latency) if cut else 'kept (%4.0f ms heard)' % heard:>22}"
        print(row)
    print()
    print(f"{'policy':18}{'false interruptions':>22}{'missed':>8}{'latency p50':>13}{'max':>7}")
    for name, rows in results.items():
        false = sum(1 for real, cut, _, _ in rows if cut and not real)
        missed = sum(1 for real, cut, _, _ in rows if real and not cut)
        lat = [latency for real, cut, latency, _ in rows if real and cut]
        nreal, nfake = sum(1 for r in rows if r[0]), sum(1 for r in rows if not r[0])
        print(f"{name:18}{f'{false} of {nfake}':>22}{f'{missed}/{nreal}':>8}"
              f"{statistics.median(lat) if lat else float('nan'):>11.0f}ms{max(lat) if lat else float('nan'):>5.0f}ms")


if __name__ == "__main__":
    main()
