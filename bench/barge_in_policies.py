"""False interruptions and interruption latency per barge-in policy, on a generated test set.

Every case plays a 6 s bot reply and, 1 s in, one caller sound: noise bursts and clicks (a door, a
cough, line noise), a short backchannel ("mm-hm": 250 ms of voiced sound and that transcript) and
real interruptions (0.6-2 s of speech with a transcript of words). The model side behaves like a
server VAD that fires on any energy: speech_started at the sound's onset, speech_stopped 300 ms
after its end, the transcript (speech only) 300 ms after that. Runs the real Call on the in-memory
phone/model of the unit tests, on a fast-forwarded clock: exact, repeatable, a second of runtime.

Per case: CUT with how long the caller still heard the bot after the sound's onset (talk-over), or
kept with what the false alarm cost: the pause in the reply, the audio heard twice (the chunk that
was playing when the phone was cleared) and the audio lost (every 20 ms frame of the reply is
numbered, so the phone's playback says exactly which played).

  .venv/py3.11/bin/python bench/barge_in_policies.py
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import looptime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audio import PHONE_RATE, pcm16_to_ulaw  # noqa: E402
from gateway.call import Call  # noqa: E402
from gateway.config import Config, LimitsConfig, Persona  # noqa: E402
from gateway.logs import CallLogger  # noqa: E402
from gateway.persona import BargeIn  # noqa: E402
from gateway.providers.base import InputTranscript, SpeechStarted, SpeechStopped  # noqa: E402
from tests.call_fakes import MemoryModel, MemoryPhone, frame_number  # noqa: E402


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


REPLY_MS = 6000
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


@dataclass
class Outcome:
    cut: bool
    talk_over_ms: float  # bot audio the caller heard after the sound's onset, when cut
    pause_ms: float  # kept: the longest silence in the reply after the onset
    repeated_ms: float  # kept: reply audio played twice
    lost_ms: float  # kept: reply audio never played


async def run_case(policy: BargeIn, pcm: bytes, transcript: str | None) -> Outcome:
    loop = asyncio.get_running_loop()
    model, phone = MemoryModel(), MemoryPhone()
    call = Call(config=Config(limits=LimitsConfig(silence_timeout_seconds=0)),
                persona=Persona(provider="echo", name="bench", barge_in=policy), phone=phone, started=phone.started,
                session=model, log=CallLogger(logging.getLogger("bench"), call="CAbench"), clock=loop.time)
    running = asyncio.create_task(call.run())
    await asyncio.sleep(0.1)
    model.reply(REPLY_MS, "A long answer. " * 10, numbered=True)
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
    played = phone.played()
    if summary.barge_ins > 0:
        return Outcome(True, max(0.0, max((t for t, _ in played), default=onset) + 0.02 - onset) * 1000, 0, 0, 0)
    starts = [onset] + [t for t, _ in played if t >= onset]
    numbers = [frame_number(frame) for _, frame in played]
    return Outcome(False, 0.0, max(b - a for a, b in zip(starts, starts[1:])) * 1000 - 20,
                   (len(numbers) - len(set(numbers))) * 20, (REPLY_MS // 20 - len(set(numbers))) * 20)


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
                out = loop.run_until_complete(run_case(policy, pcm, transcript))
            finally:
                loop.close()
            results[name].append((real, out))
            row += f"{('CUT, %3.0f ms over' % out.talk_over_ms) if out.cut else 'kept %3.0f/%3.0f/%.0f' % (out.pause_ms, out.repeated_ms, out.lost_ms):>22}"
        print(row)
    print("(CUT: ms of bot audio heard after the sound's onset; kept: pause/repeated/lost ms of the reply)")
    print()
    print(f"{'policy':18}{'false interruptions':>22}{'missed':>8}{'talk-over max':>15}{'pause max':>11}"
          f"{'repeated max':>14}{'lost':>6}")
    for name, rows in results.items():
        false = sum(1 for real, out in rows if out.cut and not real)
        missed = sum(1 for real, out in rows if real and not out.cut)
        over = max((out.talk_over_ms for _, out in rows if out.cut), default=0)
        kept = [out for _, out in rows if not out.cut]
        nreal, nfake = sum(1 for r in rows if r[0]), sum(1 for r in rows if not r[0])
        print(f"{name:18}{f'{false} of {nfake}':>22}{f'{missed}/{nreal}':>8}{over:>13.0f}ms"
              f"{max((k.pause_ms for k in kept), default=0):>9.0f}ms{max((k.repeated_ms for k in kept), default=0):>12.0f}ms"
              f"{sum(k.lost_ms for k in kept):>4.0f}ms")


if __name__ == "__main__":
    main()
