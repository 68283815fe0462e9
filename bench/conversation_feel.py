"""How a call feels at its two key moments, per phone network and model: the caller starting to talk
(over the bot, or to begin a turn) and the caller stopping.

    .venv/py3.11/bin/python bench/conversation_feel.py                      # this tree
    .venv/py3.11/bin/python bench/conversation_feel.py --src /path/to/other/checkout --label before

Runs `python -m gateway serve` from `--src` (default: this repository) as users do, the tests' fake
GLM and OpenAI servers (an energy VAD: speech_started at the first loud 20 ms of what they received,
speech_stopped after their silence setting, then a 3 s reply streamed faster than real time), and a
simulated phone per network (gateway/phone_sim.py: a microphone that sends a 20 ms frame every 20 ms,
a player that plays what it got in real time and echoes marks once played). All in this process but
the gateway, so one monotonic clock times both ends. Each call, with the persona's barge-in policy:
the caller speaks 0.8 s, waits for the reply, talks over it 1 s in, waits for the next reply, ...

Per network x model x policy (p50/p95 over every turn of every call):
- onset_ms / offset_ms: the phone sent the first voiced frame (first quiet frame after speech) ->
  the model received the append that holds it (found by level, in 5 ms windows, in what the
  model received);
- talk_over_ms: the model sent speech_started while the bot was audible -> the bot stopped playing
  at the phone (its own 20 ms playout included);
- first_audio_ms: the model started a reply (response.created, its first delta right after) -> the
  reply began to play at the phone;
- felt_ms: the caller's last voiced frame -> the reply playing (what the caller lived through).
And the gateway's CPU seconds per call-minute over the whole run (few calls: noisy, compare runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.audio import audioop  # noqa: E402
from gateway.phone_sim import SimulatedPhone, bot_uuid  # noqa: E402
from tests.conftest import GLM_KEY, OPENAI_KEY  # noqa: E402
from tests.fakes import glm_server, openai_server  # noqa: E402
from tests.phone_helpers import ulaw_tone  # noqa: E402

NETWORKS = ("twilio", "telnyx", "plivo", "vonage", "exotel", "audiosocket")
MODELS = ("glm", "openai")
POLICIES = ("confirm", "immediate")
LEVEL = 2000  # peak (PCM16) of a 5 ms window the model side calls voiced: the caller's tone peaks at 6000
EAR_MS = 5  # short windows: the resamplers' few ms of delay must not shift an edge by a whole frame
SPEECH_S = 0.8  # each thing the caller says
OVER_AFTER_S = 1.0  # the caller talks over a reply this long after it began to play


@dataclass
class ModelEar:
    """What one model session received, as voicing edges with arrival times."""
    rate: int
    pos: int = 0  # bytes of received PCM already judged
    voiced: bool = False
    edges: list[tuple[float, bool]] = field(default_factory=list)

    def heard(self, at: float, audio: bytearray) -> None:
        win = self.rate * 2 * EAR_MS // 1000
        while len(audio) - self.pos >= win:
            loud = audioop.max(bytes(audio[self.pos:self.pos + win]), 2) >= LEVEL
            self.pos += win
            if loud != self.voiced:
                self.voiced = loud
                self.edges.append((at, loud))


EARS: dict[int, ModelEar] = {}


def instrument(conn_cls) -> None:
    """Wrap a fake's append handler: note when each piece of caller audio arrived."""
    original = conn_cls._append

    async def _append(self, msg):
        at = time.monotonic()
        await original(self, msg)
        ear = EARS.setdefault(id(self.s), ModelEar(self.s.input_rate))
        ear.heard(at, self.s.audio)
    conn_cls._append = _append


def bot_name(model: str, policy: str, network: str) -> str:
    return f"feel-{model}-{policy}-{network}"


def write_setup(work: Path, audiosocket_port: int) -> None:
    (work / "bots").mkdir()
    shutil.copy(REPO / "bots" / "echo.yaml", work / "bots")
    for model in MODELS:
        for policy in POLICIES:
            for network in NETWORKS:
                name = bot_name(model, policy, network)
                (work / "bots" / f"{name}.yaml").write_text(
                    f"provider: {model}\nlanguage: en-US\ninstructions: {name}\n"
                    f"barge_in: {{policy: {policy}, min_speech_ms: 300, confirm_ms: 700}}\n")
    uuids = "".join(f"\n    {bot_uuid(bot_name(m, p, 'audiosocket'))}: {bot_name(m, p, 'audiosocket')}"
                    for m in MODELS for p in POLICIES)
    (work / "config.yaml").write_text(f"""
routing: {{default_bot: {bot_name('glm', 'confirm', 'twilio')}, fallback_bot: echo}}
limits: {{silence_timeout_seconds: 0, start_timeout_seconds: 10}}
logging: {{level: WARNING}}
audiosocket:
  port: {audiosocket_port}
  bots:{uuids}
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_until(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def converse(phone: SimulatedPhone, turns: int) -> None:
    """Speak, wait for the reply, talk over it, wait for the next, ... then let the last one play."""
    speech = ulaw_tone(300, SPEECH_S, 6000)
    await phone.silence(0.5)
    for turn in range(turns):
        n = len(phone.result.play_times)
        await phone.say(speech)
        if not await wait_until(lambda: len(phone.result.play_times) > n, 5):
            return
        await asyncio.sleep(OVER_AFTER_S)  # the next turn begins talking over this reply
    await phone.silence(4.0)


def pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))], 1)


def measure(phone: SimulatedPhone, session, ear: ModelEar | None) -> dict[str, list[float]]:
    r = phone.result
    out: dict[str, list[float]] = {"onset_ms": [], "offset_ms": [], "talk_over_ms": [], "first_audio_ms": [],
                                   "felt_ms": [float(x) for x in r.summary()["reply_latency_ms"]]}
    model_edges = ear.edges if ear else []
    for kind, voiced in (("onset_ms", True), ("offset_ms", False)):
        sent = [t for t, v in r.voiced_edges if v is voiced]
        got = [t for t, v in model_edges if v is voiced]
        for s in sent:
            arrival = next((g for g in got if g >= s - 0.001), None)
            if arrival is not None and arrival - s < 1.0:
                out[kind].append(round((arrival - s) * 1000, 1))
    for ss in session.speech_started_at if session else ():
        playing = [p for p in r.play_times if p <= ss]
        stops = [t for t in r.stop_times if t >= ss]
        if playing and stops and not [t for t in r.stop_times if playing[-1] <= t < ss]:
            out["talk_over_ms"].append(round((stops[0] - ss) * 1000, 1))  # it was audible when the caller spoke
    for resp in session.responses if session else ():
        start = next((p for p in r.play_times if p >= resp["created_at"]), None)
        if start is not None and start - resp["created_at"] < 2:
            out["first_audio_ms"].append(round((start - resp["created_at"]) * 1000, 1))
    return out


async def run(args) -> dict:
    instrument(glm_server._Conn)
    instrument(openai_server._Conn)
    work = Path(tempfile.mkdtemp(prefix="gw-feel-"))
    asock_port = free_port()
    write_setup(work, asock_port)
    fakes = {"glm": glm_server.FakeGLM(api_key=GLM_KEY, reply_seconds=3.0),
             "openai": openai_server.FakeOpenAI(api_key=OPENAI_KEY, reply_seconds=3.0)}
    for fake in fakes.values():
        await fake.start()
    port = free_port()
    env = {**os.environ, "ZHIPU_API_KEY": GLM_KEY, "GLM_REALTIME_URL": fakes["glm"].url,
           "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_REALTIME_URL": fakes["openai"].url,
           "GATEWAY_DATABASE_URL": f"sqlite:///{work}/calls.db", "PYTHONPATH": str(args.src)}
    for var in ("TWILIO_AUTH_TOKEN", "TELNYX_PUBLIC_KEY", "PLIVO_AUTH_TOKEN", "VONAGE_SIGNATURE_SECRET",
                "EXOTEL_API_KEY", "EXOTEL_API_TOKEN", "GATEWAY_OPERATOR_TOKEN"):
        env.pop(var, None)
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(work / "config.yaml"),
                           "--port", str(port)], cwd=args.src, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        if not await wait_until(lambda: _accepts(port) and _accepts(asock_port), 30):
            raise SystemExit("the gateway did not start:\n" + (gw.communicate(timeout=5)[0] or "")[-3000:])
        cpu0, call_s = cpu_seconds(gw.pid), 0.0
        rows = []
        for model in args.models:
            for policy in args.policies:
                phones = {}
                for network in args.networks:
                    url = f"tcp://127.0.0.1:{asock_port}" if network == "audiosocket" else f"http://127.0.0.1:{port}"
                    phones[network] = SimulatedPhone(url, bot=bot_name(model, policy, network), network=network)
                t0 = time.monotonic()
                for phone in phones.values():
                    await phone.dial()
                    await phone.connect()
                await asyncio.gather(*(converse(p, args.turns) for p in phones.values()))
                for phone in phones.values():
                    await phone.hangup()
                call_s += (time.monotonic() - t0) * len(phones)
                fake = fakes[model]
                for network, phone in phones.items():
                    name = bot_name(model, policy, network)
                    session = next((s for s in fake.sessions if (s.session_config or {}).get("instructions") == name
                                    or ((s.session_config or {}).get("session") or {}).get("instructions") == name),
                                   None)
                    got = measure(phone, session, EARS.get(id(session)) if session else None)
                    row = {"network": network, "model": model, "policy": policy, "violations": len(phone.result.violations)}
                    for key, values in got.items():
                        row[key] = [pct(values, 50), pct(values, 95), len(values)]
                    if args.raw:
                        row["raw"] = got
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        cpu = cpu_seconds(gw.pid) - cpu0
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            gw.kill()
        for fake in fakes.values():
            await fake.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"label": args.label, "src": str(args.src), "cpu_s_per_call_min": round(cpu / (call_s / 60), 4),
            "rows": rows}


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def table(results: list[dict]) -> str:
    """Markdown: one row per network x model x policy, the runs side by side (before / after)."""
    keys = ("onset_ms", "offset_ms", "talk_over_ms", "first_audio_ms", "felt_ms")
    labels = [r["label"] for r in results]
    head = "| network | model | policy | " + " | ".join(f"{k} p50/p95 ({' → '.join(labels)})" for k in keys) + " |"
    lines = [head, "|" + "---|" * (3 + len(keys))]
    index = [{(row["network"], row["model"], row["policy"]): row for row in r["rows"]} for r in results]
    for key in index[0]:
        cells = []
        for k in keys:
            cells.append(" → ".join(
                "/".join("–" if v is None else f"{v:g}" for v in idx[key][k][:2]) if key in idx else "n/a"
                for idx in index))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("CPU-s per call-minute: " + ", ".join(f"{r['label']} {r['cpu_s_per_call_min']}" for r in results))
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=REPO, help="the checkout whose gateway to run (default: this one)")
    ap.add_argument("--label", default="after")
    ap.add_argument("--networks", type=lambda s: s.split(","), default=list(NETWORKS))
    ap.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    ap.add_argument("--policies", type=lambda s: s.split(","), default=list(POLICIES))
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--raw", action="store_true", help="every sample in the JSON rows (stderr), not only p50/p95")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--compare", type=Path, nargs="*", default=[],
                    help="result JSON files of earlier runs to show before this one in the table")
    args = ap.parse_args()
    args.src = args.src.resolve()
    result = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(table([json.loads(p.read_text()) for p in args.compare] + [result]))
