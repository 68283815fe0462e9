"""Soak / load test (not part of the test suite): many concurrent simulated calls against a real
`python -m gateway serve` process, both models behind fault-injecting proxies.

    .venv/py3.11/bin/python bench/soak.py --calls 200 --seconds 300 --fault-rate 0.03

This process runs the fake GLM and OpenAI servers, a fault proxy in front of each (a share of
model connections gets one random drop, corruption or delay), and the simulated phones; the
gateway is a separate process so its memory is measured alone. Each phone: dial, then talk
(0.5 s) and listen (2.5 s) in turns for 20-60 s, hang up, and dial again until the time is up,
keeping `--calls` calls live. At the end the call log (via the operator API) is checked against
what the phones did. Reports: calls started/completed, end reasons, faults injected vs calls
that survived them (renewed sessions), records complete, protocol violations, the gateway's RSS
over time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.phone_sim import DialError, SimulatedPhone  # noqa: E402
from tests.conftest import GLM_KEY, OPENAI_KEY, TEST_BOTS  # noqa: E402
from tests.fakes.fault_proxy import FaultProxy  # noqa: E402
from tests.fakes.glm_server import FakeGLM  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402
from tests.phone_helpers import ulaw_tone  # noqa: E402

warnings.filterwarnings("ignore", message="The HMAC key is")  # the fake GLM checks short test keys
TOKEN = "soak-operator-token-0123456789"
BOTS = ["glm-quiet", "openai-quiet"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_call(url: str, bot: str, seconds: float, stats: dict) -> None:
    phone = SimulatedPhone(url, bot=bot, caller=f"+1555{random.randint(1000000, 9999999)}")
    stats["started"] += 1
    try:
        await phone.dial()
        await phone.connect()
        t_end = time.monotonic() + seconds
        talk = ulaw_tone(440, 0.5)
        while time.monotonic() < t_end and not phone.closed.is_set():
            await phone.say(talk)
            await phone.silence(2.5)
        if phone.closed.is_set():
            stats["ended_by_gateway"] += 1
        else:
            await phone.hangup()
            stats["completed"] += 1
        stats["violations"] += len(phone.result.violations)
        stats["sids"].append(phone.call_sid)
    except (DialError, aiohttp.ClientError, asyncio.TimeoutError) as e:
        stats["errors"][type(e).__name__] += 1
    finally:
        await phone.close()


async def caller_slot(url: str, deadline: float, stats: dict, i: int) -> None:
    rng = random.Random(i)
    await asyncio.sleep(rng.random() * 5)  # spread the first dials
    while time.monotonic() < deadline - 5:
        await one_call(url, BOTS[i % 2], min(rng.uniform(20, 60), deadline - time.monotonic()), stats)


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    (work / "bots").mkdir()
    shutil.copy(REPO / "bots" / "echo.yaml", work / "bots")
    for name in BOTS:
        (work / "bots" / f"{name}.yaml").write_text("\n".join(line.strip() for line in TEST_BOTS[name].splitlines()))
    (work / "config.yaml").write_text(f"""
routing: {{default_bot: echo, fallback_bot: echo}}
limits: {{max_concurrent_calls: {args.calls + 50}, silence_timeout_seconds: 0, start_timeout_seconds: 10}}
logging: {{level: WARNING}}
operator: {{rate_limit_per_second: 100000, rate_limit_burst: 100000}}  # the final check reads every record
""")
    glm, oai = FakeGLM(api_key=GLM_KEY, heartbeat_interval=5), FakeOpenAI(api_key=OPENAI_KEY)
    await glm.start()
    await oai.start()
    proxies = [FaultProxy(glm.url, seed=1), FaultProxy(oai.url, seed=2)]
    for p in proxies:
        p.fault_rate = args.fault_rate
        await p.start()
    port = free_port()
    env = {**os.environ, "ZHIPU_API_KEY": GLM_KEY, "GLM_REALTIME_URL": proxies[0].url, "OPENAI_API_KEY": OPENAI_KEY,
           "OPENAI_REALTIME_URL": proxies[1].url, "GATEWAY_OPERATOR_TOKEN": TOKEN,
           "GATEWAY_DATABASE_URL": f"sqlite:///{work}/calls.db"}
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(work / "config.yaml"),
                           "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            await asyncio.sleep(0.1)
    stats = {"started": 0, "completed": 0, "ended_by_gateway": 0, "violations": 0, "sids": [],
             "errors": collections.Counter()}
    memory = [(0, rss_kib(gw.pid))]
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    slots = [asyncio.create_task(caller_slot(url, deadline, stats, i)) for i in range(args.calls)]

    async def sample() -> None:
        while True:
            await asyncio.sleep(10)
            memory.append((round(time.monotonic() - t0), rss_kib(gw.pid)))
            print(f"  t={memory[-1][0]:4d}s  gateway RSS {memory[-1][1] / 1024:6.1f} MiB  calls started "
                  f"{stats['started']}  completed {stats['completed']}", flush=True)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*slots)
    sampler.cancel()
    await asyncio.sleep(2)  # the last records land
    memory.append((round(time.monotonic() - t0), rss_kib(gw.pid)))

    reasons: collections.Counter = collections.Counter()
    incomplete, renewed = 0, 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        for sid in stats["sids"]:
            async with s.get(f"{url}/api/calls/{sid}") as r:
                if r.status != 200:
                    incomplete += 1
                    continue
                call = await r.json()
            reasons[call["end_reason"]] += 1
            kinds = {e["kind"] for e in call["timeline"]}
            if not call["ended_at"] or "call_ended" not in kinds or "caller" not in kinds:
                incomplete += 1
            renewed += "session_renewed" in kinds
    gw.send_signal(signal.SIGTERM)
    out, _ = gw.communicate(timeout=60)
    for p in proxies:
        await p.stop()
    await glm.stop()
    await oai.stop()
    injected = collections.Counter()
    for p in proxies:
        injected.update(p.injected)
    report = {
        "calls_concurrent": args.calls, "seconds": args.seconds, "fault_rate": args.fault_rate,
        "calls_started": stats["started"], "calls_completed_by_caller": stats["completed"],
        "calls_ended_by_gateway": stats["ended_by_gateway"], "dial_errors": dict(stats["errors"]),
        "end_reasons_in_log": dict(reasons), "records_checked": len(stats["sids"]), "records_incomplete": incomplete,
        "faults_injected": dict(injected), "calls_that_renewed_a_session": renewed,
        "protocol_violations": stats["violations"],
        "gateway_rss_mib": {"start": round(memory[0][1] / 1024, 1), "end": round(memory[-1][1] / 1024, 1),
                            "max": round(max(m for _, m in memory) / 1024, 1)},
        "gateway_exit_code": gw.returncode,
        "gateway_errors_logged": sum(" ERROR " in line for line in out.splitlines()),
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if gw.returncode == 0 and not incomplete else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200, help="concurrent calls")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--fault-rate", type=float, default=0.03, help="share of model connections given a fault")
    sys.exit(asyncio.run(main(ap.parse_args())))
