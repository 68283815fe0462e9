"""Quick, repeatable load probe for the gateway's per-message cost (not the official benchmark).

    .venv/py3.11/bin/python bench/wire_probe.py --path passthrough --calls 50 --seconds 15
    .venv/py3.11/bin/python bench/wire_probe.py --path glm --calls 50 --seconds 15 --py-spy out.svg

Runs `python -m gateway serve` as users do, the tests' fake model (GLM: 24 kHz PCM deltas, WAV
appends; OpenAI: pcmu passthrough) streaming one endless reply at a little faster than real time,
and N simulated Twilio phones (20 ms frames up, marks echoed when played). After a warm-up it
reads the gateway's CPU time over the window and prints CPU-s per call-minute, messages per
call-second both ways, and what the phones heard. The load runs in this process; only the
gateway's own CPU is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.phone_sim import SimulatedPhone  # noqa: E402
from tests.conftest import GLM_KEY, OPENAI_KEY, TEST_BOTS  # noqa: E402
from tests.fakes import glm_server, openai_server  # noqa: E402

# The fakes build each reply's tone sample by sample; every call gets the same one here.
glm_server.make_tone = openai_server.make_tone = functools.lru_cache(maxsize=8)(glm_server.make_tone)

BOT = {"glm": "glm-greeter", "passthrough": "openai-greeter"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="gw-probe-"))
    (work / "bots").mkdir()
    shutil.copy(REPO / "bots" / "echo.yaml", work / "bots")
    bot = BOT[args.path]
    (work / "bots" / f"{bot}.yaml").write_text("\n".join(line.strip() for line in TEST_BOTS[bot].splitlines()))
    audio = f"audio: {{chunk_ms: {args.chunk_ms}}}" if args.chunk_ms else ""
    (work / "config.yaml").write_text(f"""
routing: {{default_bot: {bot}, fallback_bot: echo}}
limits: {{max_concurrent_calls: {args.calls + 10}, silence_timeout_seconds: 0, start_timeout_seconds: 10}}
logging: {{level: WARNING}}
{audio}
""")
    reply = args.seconds + args.warmup + 30
    kw = dict(reply_seconds=reply, delta_seconds=0.2, delta_interval=0.18)
    fake = glm_server.FakeGLM(api_key=GLM_KEY, **kw) if args.path == "glm" else \
        openai_server.FakeOpenAI(api_key=OPENAI_KEY, **kw)
    await fake.start()
    port = free_port()
    env = {**os.environ, "ZHIPU_API_KEY": GLM_KEY, "GLM_REALTIME_URL": fake.url, "OPENAI_API_KEY": OPENAI_KEY,
           "OPENAI_REALTIME_URL": fake.url, "GATEWAY_DATABASE_URL": f"sqlite:///{work}/calls.db"}
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(work / "config.yaml"),
                           "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            await asyncio.sleep(0.1)
    phones = [SimulatedPhone(f"http://127.0.0.1:{port}") for _ in range(args.calls)]
    for i, p in enumerate(phones):
        await p.dial()
        await p.connect()
        if i % 10 == 9:
            await asyncio.sleep(0.05)
    await asyncio.sleep(args.warmup)
    spy = None
    if args.py_spy:
        spy = subprocess.Popen(["py-spy", "record", "-p", str(gw.pid), "-o", args.py_spy, "-d", str(int(args.seconds)),
                                "-r", "50", "--nonblocking"] + (["-f", "raw"] if args.py_spy.endswith(".txt") else []),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c0, t0 = cpu_seconds(gw.pid), time.monotonic()
    before = [(p.result.media_frames, p.result.media_bytes, p.result.marks_received, p._chunk + p.result.marks_echoed) for p in phones]
    await asyncio.sleep(args.seconds)
    c1, t1 = cpu_seconds(gw.pid), time.monotonic()
    after = [(p.result.media_frames, p.result.media_bytes, p.result.marks_received, p._chunk + p.result.marks_echoed) for p in phones]
    if spy is not None:
        spy.wait(timeout=60)
    for p in phones:
        await p.hangup()
    gw.send_signal(signal.SIGTERM)
    gw.communicate(timeout=60)
    await fake.stop()
    shutil.rmtree(work, ignore_errors=True)
    window = t1 - t0
    call_s = args.calls * window
    diff = [tuple(a - b for a, b in zip(x, y)) for x, y in zip(after, before)]
    return {
        "path": args.path, "calls": args.calls, "window_s": round(window, 1), "chunk_ms": args.chunk_ms or "default",
        "cpu_s_per_call_min": round((c1 - c0) / (call_s / 60), 4),
        "to_phone_msgs_per_call_s": round(sum(d[0] + d[2] for d in diff) / call_s, 1),
        "from_phone_msgs_per_call_s": round(sum(d[3] for d in diff) / call_s, 1),
        "audio_delivered": round(sum(d[1] for d in diff) / (call_s * 8000), 3),
        "violations": sum(len(p.result.violations) for p in phones),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", choices=sorted(BOT), default="passthrough")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--chunk-ms", type=int, default=0, help="audio.chunk_ms for the gateway (0: its default)")
    ap.add_argument("--py-spy", default="", help="record the gateway with py-spy to this file (.svg, or .txt raw)")
    print(json.dumps(asyncio.run(main(ap.parse_args()))))
