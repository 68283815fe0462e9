"""Load benchmark: N simulated full-duplex calls through the gateway and, in the same run, through
baseline relays, with the same fake model and the same callers. What the gateway costs on top of
moving the bytes, against the bare relay, Twilio's own Python sample and the floor of the design.

    scripts/python bench/calls.py --n 50,100,200 --seconds 20 --path glm,passthrough --out build/bench/

Processes (all on this machine; CLOCK_MONOTONIC is shared, so times compare across them):
- the target: `python -m gateway serve` on a temporary config (one persona per call, so the fake
  model knows which call a session belongs to), or a baseline (bench/baselines.py, `--baselines`,
  default every one whose libraries are installed): `relay` (aiohttp, stdlib json, no DSP, no
  logic: phone media -> one model append per 20 ms frame; model deltas cut into 20 ms frames of
  the model's own format, sent at once; speech_started -> clear + cancel), `sample` (the way
  Twilio's Python sample for OpenAI Realtime is written: FastAPI + uvicorn, `websockets` to the
  model, each delta one media message and a mark, truncate + clear on barge-in) and `floor` (the
  relay on uvloop and orjson, 100 ms uplink appends). Per path and N, the baselines run first,
  then the gateway, one at a time;
- the fake model (`--role model`): answers session.update, then streams non-stop like the real
  ones, faster than real time up to 3 s ahead (GLM: 1.5 s deltas of 24 kHz PCM16; passthrough =
  OpenAI with audio/pcmu: 1.5 s deltas of mu-law); every 3 s (--barge-every) it sends
  speech_started (a barge-in), and on response.cancel starts a new response at once;
- the callers (this process, uvloop and orjson when installed): one 20 ms clock for all calls
  sends Twilio-faithful media frames (silence, and one loud 1 kHz frame every 500 ms per call),
  plays the received audio at real time like Twilio's buffer and echoes each mark once played.

Figures (over the steady window, after all calls are connected and 2 s of warm-up, --warmup):
- cpu_s_per_call_min: utime+stime of the target's whole process tree / (calls x minutes);
  calls_per_core = 60 / that. The model's and the callers' own CPU are reported too: when they
  near 100 % of a core the figures are bounded by the harness, not the target.
- rss_kib_per_call: (tree RSS at the end of the window - RSS before the first call) / N.
- delivered_pct: 20 ms ticks in which the caller had audio to play / ticks since its first audio,
  not counting the wait for the new reply after a barge-in. longest_gap_ms: the longest run of
  empty ticks (same exclusion).
- p2m_ms (phone -> model): loud frame sent by the caller (every 500 ms once its first audio came)
  -> the model receives the append holding its onset (detected by level, so it survives resampling;
  GLM's 100 ms WAV batching is included); the k-th frame sent is the k-th onset seen.
- m2p_ms (model -> phone): a new reply's first delta sent by the model -> its first media frame at
  the caller (the buffer is empty then, so this is the added latency, not the pacing lead). The
  baselines have no logic to drop a cancelled reply's late delta: when one reaches the caller
  after the clear, that reply's sample is counted as missed.
- bargein_ms: speech_started sent by the model -> `clear` received by the caller.
- cpu_ratio (gateway rows): the gateway's cpu_s_per_call_min / each baseline's, same path and N.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import deque
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
SRC = REPO  # whose gateway is measured (--src)
sys.path.insert(0, str(REPO))

from bench import baselines  # noqa: E402
from bench.baselines import OUT_FRAME_BYTES  # noqa: E402
from gateway.audio import audioop, pcm16_to_ulaw, tone  # noqa: E402

try:
    import orjson

    def loads(s):
        return orjson.loads(s)
except ImportError:  # the bench extra is not installed: still works, a little dearer
    loads = json.loads

FRAME_S = 0.02
DELTA_S = 1.5          # the fake model's delta length
MODEL_LEAD_S = 3.0     # how far ahead of real time the fake model streams
BARGE_EVERY_S = 3.0    # a barge-in per call this often (default of --barge-every)
BURST_EVERY = 25       # a loud caller frame every 25 ticks (500 ms)
ONSET_LEVEL = 8000     # PCM16 peak that counts as the loud frame at the model
MATCH_WINDOW_S = 2.5   # an event not answered within this is counted as missed
PATHS = {"glm": "glm", "passthrough": "openai"}  # --path -> the fake model's protocol
SILENCE_B64 = base64.b64encode(b"\xff" * 160).decode()
BURST_B64 = base64.b64encode(pcm16_to_ulaw(tone(1000, FRAME_S, 8000, 20000))).decode()


# ---------------------------------------------------------------------- /proc: CPU and memory

def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_s(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))] * 1000, 1)


# ---------------------------------------------------------------------- the fake model

def run_model(port: int, proto: str, barge_every: float = BARGE_EVERY_S) -> None:
    """A realtime model that streams non-stop; GET /stats returns what it saw, per call."""
    if proto == "glm":
        audio, delta_type = tone(440, DELTA_S, 24000, 8000), "response.audio.delta"
    else:
        audio, delta_type = pcm16_to_ulaw(tone(440, DELTA_S, 8000, 8000)), "response.output_audio.delta"
    delta_b64 = base64.b64encode(audio).decode()
    stats: dict[str, dict[str, list[float]]] = {}

    async def session(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        mine: dict[str, list[float]] = {"onsets": [], "barge": [], "first_delta": []}
        cancel = asyncio.Event()
        loud = False
        tasks: list[asyncio.Task] = []

        async def stream() -> None:
            k = 0
            while True:
                k += 1
                rid, item = f"resp_{k}", f"item_{k}"
                await ws.send_str(json.dumps({"type": "response.created", "response": {"id": rid}}))
                head = f'{{"type":"{delta_type}","response_id":"{rid}","item_id":"{item}","delta":"'
                t0, sent = time.monotonic(), 0.0
                cancel.clear()
                while not cancel.is_set():
                    if sent == 0:
                        mine["first_delta"].append(time.monotonic())
                    await ws.send_str(head + delta_b64 + '"}')
                    sent += DELTA_S
                    wait = t0 + sent - MODEL_LEAD_S - time.monotonic()
                    if wait > 0:
                        try:
                            await asyncio.wait_for(cancel.wait(), wait)
                        except asyncio.TimeoutError:
                            pass
                await ws.send_str(json.dumps({"type": "response.done", "response": {"id": rid, "status": "cancelled"}}))
                await ws.send_str('{"type":"input_audio_buffer.speech_stopped"}')

        async def barge_ins() -> None:
            await asyncio.sleep(random.uniform(1.0, 1.0 + barge_every))
            while True:
                mine["barge"].append(time.monotonic())
                await ws.send_str('{"type":"input_audio_buffer.speech_started"}')
                await asyncio.sleep(barge_every)

        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                ev = loads(msg.data)
                t = ev.get("type")
                if t == "input_audio_buffer.append":
                    data = base64.b64decode(ev["audio"])
                    pcm = data[44:] if data[:4] == b"RIFF" else audioop.ulaw2lin(data, 2)
                    if audioop.max(pcm, 2) > ONSET_LEVEL:
                        if not loud:
                            mine["onsets"].append(time.monotonic())
                        loud = True
                    else:
                        loud = False
                elif t == "response.cancel":
                    cancel.set()
                elif t == "session.update" and not tasks:
                    m = re.search(r"bench-call-(\d+)", str(ev.get("session", {}).get("instructions", "")))
                    stats[m.group(1) if m else f"?{len(stats)}"] = mine
                    await ws.send_str(json.dumps({"type": "session.updated", "session": {"id": "sess"}}))
                    tasks += [asyncio.create_task(stream()), asyncio.create_task(barge_ins())]
        except (ConnectionError, RuntimeError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return ws

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/{tail:.*}", session)
    _use_uvloop()
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


# ---------------------------------------------------------------------- the callers

class Caller:
    """One call as Twilio runs it: mic frames out, a playback buffer, marks echoed once played."""

    def __init__(self, idx: int, frame_bytes: int):
        self.idx = idx
        self.frame_bytes = frame_bytes  # received audio per 20 ms (8 kHz mu-law, or a baseline's PCM)
        self.call_sid = f"CA{idx:032x}"
        self.stream_sid = f"MZ{idx:032x}"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seq = 0
        self.phase = idx % BURST_EVERY
        self.rx = 0          # bytes of audio received (a position in the bot's audio)
        self.played = 0      # position played up to
        self.marks: deque = deque()  # (position, name) waiting to be played
        self.started = False  # first audio arrived
        self.waiting_reply = False  # cleared, the new reply not here yet
        self.ticks_played = self.ticks_empty = self.gap = self.longest_gap = 0
        self.bursts: list[float] = []
        self.clears: list[float] = []
        self.fresh: list[float] = []  # first audio of the call and first audio after each clear
        self.closed = False
        self.out: asyncio.Queue = asyncio.Queue(maxsize=500)  # 10 s of frames
        self.dropped = 0

    def frame(self, payload: str) -> str:
        self.seq += 1
        n = self.seq
        return (f'{{"event":"media","sequenceNumber":"{n}","streamSid":"{self.stream_sid}","media":{{"track":'
                f'"inbound","chunk":"{n}","timestamp":"{(n - 1) * 20}","payload":"{payload}"}}}}')

    def echo(self, name: str) -> str:
        self.seq += 1
        return f'{{"event":"mark","sequenceNumber":"{self.seq}","streamSid":"{self.stream_sid}","mark":{{"name":{json.dumps(name)}}}}}'

    def send(self, text: str) -> None:
        """Queued for this call's writer: a target that stops reading stalls only its own calls
        (their frames are dropped and counted), never the clock of the others."""
        try:
            self.out.put_nowait(text)
        except asyncio.QueueFull:
            self.dropped += 1

    async def writer(self) -> None:
        assert self.ws is not None
        try:
            while True:
                await self.ws.send_str(await self.out.get())
                self.out.task_done()
        except (ConnectionError, RuntimeError):
            self.closed = True

    def tick(self, tick: int, now: float) -> None:
        """20 ms of playback (echoing the marks it passes), then one mic frame."""
        if self.rx > self.played:
            self.played = min(self.rx, self.played + self.frame_bytes)
            self.ticks_played += 1
            self.gap = 0
        elif self.started and not self.waiting_reply:
            self.ticks_empty += 1
            self.gap += 1
            self.longest_gap = max(self.longest_gap, self.gap)
        while self.marks and self.marks[0][0] <= self.played:
            self.send(self.echo(self.marks.popleft()[1]))
        if self.started and (tick + self.phase) % BURST_EVERY == 0:  # the model session is up: none is lost
            self.bursts.append(now)
            self.send(self.frame(BURST_B64))
        else:
            self.send(self.frame(SILENCE_B64))

    async def receive(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            ev = loads(msg.data)
            e = ev.get("event")
            if e == "media":
                p = ev["media"]["payload"]
                if not self.started or self.waiting_reply:
                    self.fresh.append(time.monotonic())
                    self.started, self.waiting_reply = True, False
                self.rx += len(p) * 3 // 4 - p[-2:].count("=")
            elif e == "mark":
                if self.rx <= self.played:
                    self.send(self.echo(ev["mark"]["name"]))
                else:
                    self.marks.append((self.rx, ev["mark"]["name"]))
            elif e == "clear":
                self.clears.append(time.monotonic())
                self.played = self.rx
                self.waiting_reply = True
                self.gap = 0
                while self.marks:
                    self.send(self.echo(self.marks.popleft()[1]))
        self.closed = True


async def dial(http: aiohttp.ClientSession, base: str, c: Caller, baseline: bool) -> None:
    params = {"call": str(c.idx)}
    if baseline:
        url = base.replace("http://", "ws://") + "/twilio/media"
    else:
        form = {"CallSid": c.call_sid, "AccountSid": "AC" + "0" * 32, "From": f"+1555{c.idx:07d}",
                "To": "+15005550006", "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
        async with http.post(f"{base}/twilio/voice?bot=bench-{c.idx}", data=form) as r:
            twiml = await r.text()
            if r.status != 200:
                raise RuntimeError(f"webhook HTTP {r.status}: {twiml[:200]}")
        stream = ET.fromstring(twiml).find("./Connect/Stream")
        if stream is None:
            raise RuntimeError(f"no stream in TwiML: {twiml[:200]} ({r.headers.get('X-Gateway-Refused')})")
        url = stream.get("url", "")
        params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    c.ws = await http.ws_connect(url, max_msg_size=0)
    await c.ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    c.seq += 1
    await c.ws.send_str(json.dumps({"event": "start", "sequenceNumber": str(c.seq), "streamSid": c.stream_sid, "start": {
        "accountSid": "AC" + "0" * 32, "streamSid": c.stream_sid, "callSid": c.call_sid, "tracks": ["inbound"],
        "customParameters": params, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))


# ---------------------------------------------------------------------- one measurement

async def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} (see its log in the output directory)")
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:g} s")


def gateway_config(work: Path, n: int, proto: str, model_port: int) -> dict[str, str]:
    bots = work / "bots"
    bots.mkdir(parents=True)
    shutil.copy(REPO / "bots" / "echo.yaml", bots)
    for i in range(n):
        (bots / f"bench-{i}.yaml").write_text(f"provider: {proto}\ninstructions: bench-call-{i}\n")
    (work / "config.yaml").write_text(
        "routing: {default_bot: echo, fallback_bot: echo}\n"
        f"limits: {{max_concurrent_calls: {n + 50}, silence_timeout_seconds: 0}}\n"
        "logging: {level: WARNING}\n"
        "server: {drain_seconds: 1}\n")  # calls the harness did not hang up do not hold the exit
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "TWILIO_", "ZHIPU_", "OPENAI_", "GLM_"))}
    return {**keep, "ZHIPU_API_KEY": "benchid.benchsecret0123456789", "OPENAI_API_KEY": "sk-bench-0123456789",
            "GLM_REALTIME_URL": f"ws://127.0.0.1:{model_port}/glm",
            "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{model_port}/openai",
            "GATEWAY_DATABASE_URL": f"sqlite:///{work}/calls.db"}


def match_events(callers: list[Caller], model_stats: dict, w0: float, w1: float,
                 barge_every: float) -> tuple[dict, dict]:
    """The latency samples of the window's events and how many went unanswered: each start in
    [w0, w1] -> the first answer after it within MATCH_WINDOW_S, and within one barge-in period for
    barge-ins and new replies, so that a missed answer is not matched to the next one's (answers are
    appended in time order, so a sample once found never changes)."""
    within = min(MATCH_WINDOW_S, barge_every)
    samples: dict[str, list[float]] = {"p2m": [], "m2p": [], "bargein": []}
    missed = {"p2m": 0, "m2p": 0, "bargein": 0}

    def match(starts: list[float], ends: list[float], key: str) -> None:
        for s in starts:
            if not w0 <= s <= w1:
                continue
            i = bisect.bisect_left(ends, s)
            if i < len(ends) and ends[i] - s <= within:
                samples[key].append(ends[i] - s)
            else:
                missed[key] += 1

    for c in callers:
        seen = model_stats.get(str(c.idx))
        if seen is None:
            continue
        match(seen["barge"], c.clears, "bargein")
        match(seen["first_delta"], c.fresh, "m2p")
        # the k-th loud frame is the k-th onset the model saw: exact even when latency exceeds 500 ms
        for k, sent in enumerate(c.bursts):
            if w0 <= sent <= w1:
                if k < len(seen["onsets"]):
                    samples["p2m"].append(seen["onsets"][k] - sent)
                else:
                    missed["p2m"] += 1
    return samples, missed


async def measure(path: str, target: str, n: int, seconds: float, workers: int, out: Path,
                  warmup: float = 2.0, barge_every: float = BARGE_EVERY_S) -> dict:
    proto = PATHS[path]
    work = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model_port, port = free_port(), free_port()
    me = [sys.executable, str(Path(__file__).resolve())]
    procs: list[subprocess.Popen] = []

    def spawn(cmd: list[str], name: str, env=None) -> subprocess.Popen:
        log = open(logs / f"{path}-{target}-{n}-{name}.log", "w")
        p = subprocess.Popen(cmd, cwd=SRC if cmd[1:3] == ["-m", "gateway"] else REPO, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    callers: list[Caller] = []
    try:
        model = spawn(me + ["--role", "model", "--port", str(model_port), "--proto", proto,
                            "--barge-every", str(barge_every)], "model")
        await wait_http(f"http://127.0.0.1:{model_port}/stats", model, "the fake model")
        if target == "gateway":
            cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(work / "config.yaml"), "--port", str(port)]
            env = gateway_config(work, n, proto, model_port)
            if SRC != REPO:  # another checkout's gateway (before/after in one harness)
                env["PYTHONPATH"] = str(SRC)
            if workers > 1:
                cmd += ["--workers", str(workers)]
            proc = spawn(cmd, "gateway", env)
        else:
            # bench/baselines.py itself, not this file: the baseline's process loads only its own libraries
            proc = spawn([sys.executable, baselines.__file__, "--role", target, "--port", str(port), "--proto", proto,
                          "--model-url", f"ws://127.0.0.1:{model_port}/{target}"], target)
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"{base}/healthz", proc, target)
        await asyncio.sleep(0.5)
        rss_idle = rss_kib(tree(proc.pid))

        frame_bytes = 160 if target == "gateway" else OUT_FRAME_BYTES[proto]
        callers = [Caller(i, frame_bytes) for i in range(n)]
        gate = asyncio.Semaphore(20)
        failed: list[str] = []
        receivers: list[asyncio.Task] = []

        async def connect(c: Caller) -> None:
            async with gate:
                try:
                    await dial(http, base, c, target != "gateway")
                    receivers.extend((asyncio.create_task(c.receive()), asyncio.create_task(c.writer())))
                except (aiohttp.ClientError, RuntimeError, asyncio.TimeoutError, ET.ParseError) as e:
                    failed.append(f"{type(e).__name__}: {e}"[:200])
                    c.closed = True

        running = True
        late = {"max": 0.0}

        async def clock() -> None:
            t0, tick = time.monotonic(), 0
            while running:
                tick += 1
                now = time.monotonic()
                await asyncio.sleep(max(0.0, t0 + tick * FRAME_S - now))
                now = time.monotonic()
                late["max"] = max(late["max"], now - (t0 + tick * FRAME_S))
                for c in callers:
                    if c.ws is not None and not c.closed:
                        c.tick(tick, now)

        ticker = asyncio.create_task(clock())
        await asyncio.gather(*(connect(c) for c in callers))
        await asyncio.sleep(warmup)  # every call's first reply is playing
        pids, me_pid, model_pids = await asyncio.to_thread(tree, proc.pid), os.getpid(), [model.pid]
        late["max"] = 0.0
        for c in callers:
            c.longest_gap = c.ticks_played = c.ticks_empty = 0
        w0 = time.monotonic()
        cpu0, me0, model0 = cpu_s(pids), cpu_s([me_pid]), cpu_s(model_pids)
        await asyncio.sleep(seconds)
        w1 = time.monotonic()
        cpu1, me1, model1 = cpu_s(pids), cpu_s([me_pid]), cpu_s(model_pids)
        alive = sum(not c.closed for c in callers)
        dropped = sum(c.dropped for c in callers)
        played = sum(c.ticks_played for c in callers)
        empty = sum(c.ticks_empty for c in callers)
        longest = max((c.longest_gap for c in callers), default=0)
        late_max = late["max"]
        rss = rss_kib(await asyncio.to_thread(tree, proc.pid))
        # the answers to the window's last events arrive under the same load: up to MATCH_WINDOW_S,
        # or as soon as every event of the window has its answer
        answered_by = time.monotonic() + MATCH_WINDOW_S
        while True:
            async with http.get(f"http://127.0.0.1:{model_port}/stats") as r:
                model_stats = await r.json()
            samples, missed = match_events(callers, model_stats, w0, w1, barge_every)
            if not any(missed.values()) or time.monotonic() >= answered_by:
                break
            await asyncio.sleep(0.1)
        running = False
        await ticker
        for c in callers:
            c.seq += 1
            c.send(json.dumps({"event": "stop", "sequenceNumber": str(c.seq), "streamSid": c.stream_sid,
                               "stop": {"accountSid": "AC" + "0" * 32, "callSid": c.call_sid}}))
        # every call's stop is on the wire before its socket closes (a closed call's writer drains nothing)
        flushing = [asyncio.create_task(c.out.join()) for c in callers if not c.closed]
        if flushing:
            _, stuck = await asyncio.wait(flushing, timeout=2)
            for task in stuck:
                task.cancel()
        for c in callers:
            if c.ws is not None:
                try:
                    await asyncio.wait_for(c.ws.close(), 2)
                except asyncio.TimeoutError:
                    pass
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
    finally:
        await http.close()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    p2m, m2p, barge = samples["p2m"], samples["m2p"], samples["bargein"]
    minutes = (w1 - w0) / 60
    cpu_per_call_min = (cpu1 - cpu0) / (n * minutes)
    return {
        "path": path, "target": target, "n": n, "seconds": round(w1 - w0, 1), "workers": workers,
        "calls_failed": len(failed), "calls_alive_at_end": alive, "errors": failed[:5],
        "cpu_s_per_call_min": round(cpu_per_call_min, 3),
        "calls_per_core": round(60 / cpu_per_call_min) if cpu_per_call_min > 0 else None,
        "target_cpu_pct": round((cpu1 - cpu0) / (w1 - w0) * 100),
        "rss_kib_per_call": round((rss - rss_idle) / n), "rss_mib": round(rss / 1024, 1),
        "delivered_pct": round(100 * played / (played + empty), 2) if played + empty else None,
        "longest_gap_ms": longest * 20,
        **{f"{name}_p{q}_ms": pct(v, q) for name, v in (("p2m", p2m), ("m2p", m2p), ("bargein", barge))
           for q in (50, 95, 99)},
        "samples": {"p2m": len(p2m), "m2p": len(m2p), "bargein": len(barge)}, "missed": missed,
        "loadgen_cpu_pct": round((me1 - me0) / (w1 - w0) * 100), "loadgen_late_max_ms": round(late_max * 1000, 1), "phone_frames_unsent": dropped,
        "model_cpu_pct": round((model1 - model0) / (w1 - w0) * 100),
    }


# ---------------------------------------------------------------------- reports

BASELINES = ("relay", "sample", "floor")  # bench/baselines.py, in the order they run and are shown
COLUMNS = [("path", "path"), ("n", "N"), ("target", "target"), ("cpu_s_per_call_min", "CPU-s/call-min"),
           ("ratios", ""), ("calls_per_core", "calls/core"), ("rss_kib_per_call", "RSS KiB/call"),
           ("delivered_pct", "delivered %"), ("longest_gap_ms", "longest gap ms"),
           ("p2m", "phone→model p50/p95/p99 ms"), ("m2p", "model→phone p50/p95/p99 ms"),
           ("bargein", "barge-in p50/p95/p99 ms"), ("calls_failed", "failed"), ("target_cpu_pct", "target CPU %"),
           ("loadgen_cpu_pct", "loadgen CPU %"), ("model_cpu_pct", "model CPU %"), ("caveat", "caveat")]


def caveat(r: dict) -> str:
    """Why a row's CPU figure may not be comparable: a starved target does (and costs) less work."""
    out = []
    if (r["delivered_pct"] is not None and r["delivered_pct"] < 99) or (r["p2m_p50_ms"] or 0) > 150:
        out.append("target starved")  # a baseline plays out unpaced: its lag shows in phone→model
    if r["loadgen_late_max_ms"] > 100 or r["loadgen_cpu_pct"] > 80:
        out.append("callers late")
    return ", ".join(out)


def cpu_ratios(row: dict, rows: list[dict]) -> dict[str, float]:
    """The gateway row's CPU per call-minute over each baseline's measured at the same path and N
    (none over a baseline run in which calls failed: it carried fewer calls than it is divided by)."""
    return {r["target"]: round(row["cpu_s_per_call_min"] / r["cpu_s_per_call_min"], 2) for r in rows
            if r["target"] in BASELINES and (r["path"], r["n"]) == (row["path"], row["n"])
            and r["cpu_s_per_call_min"] and not r["calls_failed"]}


def table(rows: list[dict]) -> str:
    """The markdown table: one row per run, a gw/<baseline> CPU ratio column per baseline run."""
    ran = [b for b in BASELINES if any(r["target"] == b for r in rows)]
    columns = []
    for key, head in COLUMNS:
        columns += [(f"ratio:{b}", f"gw/{b}") for b in ran] if key == "ratios" else [(key, head)]
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for key, _ in columns:
            if key in ("p2m", "m2p", "bargein"):
                v = "/".join("-" if r[f"{key}_p{q}_ms"] is None else f"{r[f'{key}_p{q}_ms']:g}" for q in (50, 95, 99))
            elif key.startswith("ratio:"):
                ratio = r.get("cpu_ratio", {}).get(key[6:])
                v = "" if ratio is None else f"{ratio:.2f}"
            elif key == "caveat":
                v = caveat(r)
            else:
                v = r.get(key)
            cells.append("-" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], png: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for path in sorted({r["path"] for r in rows}):
        for target, style in (("gateway", "-o"), ("relay", "--s"), ("sample", ":^"), ("floor", "-.v")):
            pts = sorted((r["n"], r) for r in rows if r["path"] == path and r["target"] == target)
            if not pts:
                continue
            a.plot([n for n, _ in pts], [r["cpu_s_per_call_min"] for _, r in pts], style, label=f"{path} {target}")
            b.plot([n for n, _ in pts], [r["m2p_p99_ms"] for _, r in pts], style, label=f"{path} {target} model→phone")
            b.plot([n for n, _ in pts], [r["bargein_p99_ms"] for _, r in pts], style, alpha=0.5,
                   label=f"{path} {target} barge-in")
    a.set(xlabel="concurrent calls", ylabel="CPU-s per call-minute", title="cost")
    b.set(xlabel="concurrent calls", ylabel="p99 ms", title="added latency p99", yscale="log")
    a.legend(fontsize=7)
    b.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return True


def _use_uvloop() -> None:
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


async def run(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    load = os.getloadavg()[0]
    for n in [int(x) for x in args.n.split(",")]:
        for path in args.path.split(","):
            for target in (*args.baselines, "gateway"):
                print(f"==> {path} {target} N={n} ({args.seconds:g} s, load {os.getloadavg()[0]:.2f})", flush=True)
                row = await measure(path, target, n, args.seconds, args.workers, out, args.warmup, args.barge_every)
                if target == "gateway":
                    row["cpu_ratio"] = cpu_ratios(row, rows)
                row["load_before"] = round(load, 2)
                load = os.getloadavg()[0]
                print("    " + json.dumps({k: v for k, v in row.items() if k not in ("errors",)}), flush=True)
                rows.append(row)
                (out / "results.json").write_text(json.dumps(rows, indent=1))
    md = table(rows)
    (out / "results.md").write_text(md)
    plot(rows, out / "results.png")
    print(md)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
    return rows


def pick_baselines(ap: argparse.ArgumentParser, asked: str | None) -> list[str]:
    """--baselines as a list in BASELINES order; by default those installed, the others named."""
    if asked is None:
        lacking = {b: baselines.missing(b) for b in BASELINES}
        for b, mods in lacking.items():
            if mods:
                print(f"baseline {b} skipped: needs {', '.join(mods)} (pip install -e '.[bench]')", file=sys.stderr)
        return [b for b in BASELINES if not lacking[b]]
    names = [b.strip() for b in asked.split(",") if b.strip()]
    bad = [b for b in names if b not in BASELINES]
    if bad:
        ap.error(f"--baselines: unknown {', '.join(bad)} (choose from {', '.join(BASELINES)})")
    for b in names:
        if baselines.missing(b):
            ap.error(f"--baselines: {b} needs {', '.join(baselines.missing(b))} (pip install -e '.[bench]')")
    return [b for b in BASELINES if b in names]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--n", default="50,100,200", help="concurrent calls, comma-separated (default 50,100,200)")
    ap.add_argument("--seconds", type=float, default=20, help="steady measurement window per run (default 20)")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="seconds between the last call connecting and the window (default 2)")
    ap.add_argument("--barge-every", type=float, default=BARGE_EVERY_S,
                    help="seconds between the fake model's barge-ins per call; the first comes 1 s to 1 s + this "
                         f"after the call starts (default {BARGE_EVERY_S:g})")
    ap.add_argument("--path", default="glm,passthrough", help="glm, passthrough or both (default both)")
    ap.add_argument("--workers", type=int, default=1, help="gateway worker processes (serve --workers)")
    ap.add_argument("--src", type=Path, default=REPO, help="the checkout whose gateway to run (default: this one)")
    ap.add_argument("--out", default="build/bench", help="output directory (results.json/.md/.png, logs/)")
    ap.add_argument("--baselines", help=f"what to measure the gateway against, comma-separated: {', '.join(BASELINES)} "
                    "(bench/baselines.py; default every one whose libraries are installed)")
    ap.add_argument("--role", choices=["bench", "model", *BASELINES], default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--proto", choices=["glm", "openai"], help=argparse.SUPPRESS)
    ap.add_argument("--model-url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "model":
        run_model(args.port, args.proto, args.barge_every)
        return 0
    if args.role in BASELINES:
        baselines.run(args.role, args.port, args.model_url, args.proto)
        return 0
    global SRC
    SRC = args.src.resolve()
    bad = [p for p in args.path.split(",") if p not in PATHS]
    if bad:
        ap.error(f"--path: unknown {', '.join(bad)} (choose from {', '.join(PATHS)})")
    args.baselines = pick_baselines(ap, args.baselines)
    _use_uvloop()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
