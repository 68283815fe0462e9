"""Operations figures of issue 22, measured on real `serve` processes on loopback:

  scrape:  `serve --workers 2`, N calls, then M scrapes of /metrics: what each scrape says about
           the calls (ended, live). Every scrape must say the same, and never less than before.
  hangup:  two instances on one PostgreSQL; a call runs on B, the operator asks A to hang it up:
           milliseconds from A's 202 to the phone seeing the stream close, per try.

  .venv/bin/python bench/ops_probe.py scrape [--repo DIR]
  .venv/bin/python bench/ops_probe.py hangup --db postgresql://… [--repo DIR] [--tries 10]

`--repo` runs another checkout's gateway (e.g. main's, for the "before" figure) with this
checkout's simulated phone and personas.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.conftest import REPO, TEST_BOTS, write_config  # noqa: E402
from tests.proc import free_port, serve, stop  # noqa: E402

TOKEN = "op-token-0123456789abcdef"


def _config_dir(extra: str) -> Path:
    import shutil
    import textwrap
    base = Path(tempfile.mkdtemp(prefix="ops-probe-"))
    shutil.copytree(REPO / "bots", base / "bots")
    for name, text in TEST_BOTS.items():
        (base / "bots" / f"{name}.yaml").write_text(textwrap.dedent(text))
    write_config(base, extra)
    return base


def _env(db: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    env.update(GATEWAY_DATABASE_URL=db, GATEWAY_OPERATOR_TOKEN=TOKEN)
    return env


def _serve(repo: Path, port: int, env: dict, config: Path, args: tuple = ()):
    import tests.proc as proc
    proc.REPO = repo  # the checkout whose gateway runs (cwd of `python -m gateway`)
    return serve(port, env, config, args=args)


async def _metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/metrics") as r:
            text = await r.text()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


async def scrape(args) -> None:
    from tests.phone_helpers import dial
    base = _config_dir("metrics:\n  public: true\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(args.repo, port, _env(f"sqlite:///{base}/calls.db"), base / "config.yaml", ("--workers", "2"))
    try:
        await asyncio.sleep(1.5)
        phones = [await dial(url, bot="echo") for _ in range(args.calls)]
        await asyncio.sleep(1.5)
        live = [(await _metrics(url)).get("gateway_calls_live", 0.0) for _ in range(args.scrapes)]
        for phone in phones:
            await phone.hangup()
        await asyncio.sleep(1.5)
        ended = [(await _metrics(url)).get("gateway_calls_ended_total", 0.0) for _ in range(args.scrapes)]
    finally:
        stop(proc, signal.SIGTERM, timeout=20)
    print(f"{args.calls} calls on serve --workers 2 ({args.repo}), {args.scrapes} scrapes each")
    print("  gateway_calls_live while they ran:   ", " ".join(f"{v:g}" for v in live))
    print("  gateway_calls_ended_total after:     ", " ".join(f"{v:g}" for v in ended))
    backwards = sum(1 for a, b in zip(ended, ended[1:]) if b < a)
    print(f"  scrapes that went backwards: {backwards}")


async def hangup(args) -> None:
    from tests.phone_helpers import dial
    base = _config_dir("")
    env = _env(args.db)
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    b = _serve(args.repo, port_b, env, base / "config.yaml")
    a = _serve(args.repo, port_a, env, base / "config.yaml")
    times = []
    try:
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            for _ in range(args.tries):
                phone = await dial(url_b, bot="echo")
                await asyncio.sleep(0.7 + (len(times) % 5) * 0.113)  # spread over the poll phase
                t0 = time.monotonic()
                async with s.post(f"{url_a}/api/calls/{phone.call_sid}/hangup") as r:
                    assert r.status == 202, (r.status, await r.text())
                if not await phone.wait_closed(5):
                    raise SystemExit("the call was not hung up within 5 s")
                times.append((time.monotonic() - t0) * 1000)
                await phone.close()
    finally:
        stop(a, signal.SIGTERM)
        stop(b, signal.SIGTERM)
    print(f"cross-instance hang-up ({args.repo}), {len(times)} tries, ms: " + " ".join(f"{t:.0f}" for t in times))
    print(f"  min {min(times):.0f}  median {statistics.median(times):.0f}  max {max(times):.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scrape")
    s.add_argument("--calls", type=int, default=6)
    s.add_argument("--scrapes", type=int, default=6)
    h = sub.add_parser("hangup")
    h.add_argument("--db", required=True, help="postgresql://… (a database both instances share)")
    h.add_argument("--tries", type=int, default=10)
    for q in (s, h):
        q.add_argument("--repo", type=Path, default=REPO, help="the checkout whose gateway runs")
    args = p.parse_args()
    args.repo = args.repo.resolve()
    asyncio.run(scrape(args) if args.what == "scrape" else hangup(args))


if __name__ == "__main__":
    main()
