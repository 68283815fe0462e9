"""Micro-benchmark of the gateway's per-frame work, without sockets: what one call costs per
second of audio on each path, split by stage. Complements bench/calls.py (which measures the
whole process under load) when a change is too small to see there.

    .venv/py3.11/bin/python bench/hotpath.py [--seconds 2]

Stages, each run with the real classes on a fake socket that only counts what it is given:
- in.parse: one Twilio media frame text -> Audio event (WsPhoneStream._decode: the Twilio codec)
- in.glm / in.openai: Audio payload -> the model's appends (AudioBridge.to_model + send_audio)
- mark.parse: one echoed mark frame -> MarkPlayed
- out.glm / out.openai: one model delta frame -> phone frames queued (decode + to_phone + enqueue)
- out.send: queued frames -> media + mark messages (Playout._next_chunk + _send)
Printed: microseconds per operation and per second of one call's audio (both directions).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audio import pcm16_to_ulaw, tone  # noqa: E402
from gateway.call.audio_bridge import AudioBridge  # noqa: E402
from gateway.config import Persona, PersonaAudio  # noqa: E402
from gateway.logs import CallLogger  # noqa: E402
from gateway.playout import Playout  # noqa: E402
from gateway.providers.glm import GlmProviderConfig, GlmRealtime  # noqa: E402
from gateway.providers.openai import OpenAIProviderConfig, OpenAIRealtime  # noqa: E402
from gateway.telephony.twilio.codec import TwilioCodec  # noqa: E402
from gateway.telephony.ws_stream import WsPhoneStream  # noqa: E402

LOG = CallLogger(logging.getLogger("bench-hotpath"))
SID = "MZ" + "0" * 32


class CountingWs:
    """Both sockets' send sides (aiohttp's send_frame, the phone's and the model's): counts messages."""
    closed = False

    def __init__(self):
        self.sent = 0

    async def send_frame(self, data, opcode):
        self.sent += 1


def timed(fn, seconds: float) -> float:
    """Microseconds per call of fn() (repeated for about `seconds`)."""
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        n += 200
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return dt / n * 1e6


def timed_async(loop, coro_fn, seconds: float) -> float:
    """Microseconds per await of coro_fn(), all awaited inside one task."""
    async def many() -> float:
        n, t0 = 0, time.perf_counter()
        while True:
            for _ in range(200):
                await coro_fn()
            n += 200
            dt = time.perf_counter() - t0
            if dt >= seconds:
                return dt / n * 1e6
    return loop.run_until_complete(many())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per stage (default 1)")
    args = ap.parse_args()
    s = args.seconds
    rows = []

    phone = WsPhoneStream(CountingWs(), TwilioCodec(), LOG)
    phone._decode(json.dumps({"event": "start", "start": {"streamSid": SID, "callSid": "CA" + "0" * 32,
                                                                "accountSid": "AC" + "0" * 32}}), False)
    ulaw = pcm16_to_ulaw(tone(440, 0.02, 8000))
    media = json.dumps({"event": "media", "sequenceNumber": "3", "streamSid": SID, "media": {
        "track": "inbound", "chunk": "1", "timestamp": "20", "payload": base64.b64encode(ulaw).decode()}})
    mark = json.dumps({"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "1:23"}})
    rows.append(("in.parse (per 20 ms)", timed(lambda: phone._decode(media, False), s), 50))
    rows.append(("mark.parse (per 100 ms)", timed(lambda: phone._decode(mark, False), s), 10))

    loop = asyncio.new_event_loop()
    for name, cls, cfg, audio in (("glm", GlmRealtime, GlmProviderConfig(), PersonaAudio("wav", "pcm")),
                                  ("openai", OpenAIRealtime, OpenAIProviderConfig(), PersonaAudio("pcmu", "pcmu"))):
        p = cls(Persona(provider=name, audio=audio), cfg, LOG)
        p._ws = CountingWs()
        bridge = AudioBridge(p.capabilities)

        async def inbound():
            await p.send_audio(bridge.to_model(ulaw))
        rows.append((f"in.{name} (per 20 ms)", timed_async(loop, inbound, s), 50))

        rate = p.capabilities.output_rate
        pcm = tone(440, 1.5, rate) if p.capabilities.output_format == "pcm16" else pcm16_to_ulaw(tone(440, 1.5, 8000))
        delta = json.dumps({"type": "response.audio.delta", "response_id": "r1", "item_id": "i1",
                            "delta": base64.b64encode(pcm).decode()})
        sink = Playout(phone, 200, chunk_ms=100)

        def outbound():
            for ev in p._decode(delta):
                sink.enqueue(bridge.to_phone(ev.audio), ev.response_id)
            sink._frames.clear()
        rows.append((f"out.{name} (per 1.5 s delta)", timed(outbound, s), 1 / 1.5))

    sink = Playout(phone, 200, chunk_ms=100)
    frame = bytes(160)

    async def send():
        sink._frames.extend([(frame, "r1")] * 5)
        await sink._send(*sink._next_chunk())
        sink._marks.clear()
    rows.append(("out.send (per 100 ms chunk)", timed_async(loop, send, s), 10))

    print(f"{'stage':32} {'us/op':>8} {'us per call-second':>20}")
    for name, us, per_s in rows:
        print(f"{name:32} {us:8.2f} {us * per_s:20.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
