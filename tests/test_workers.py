"""`serve --workers N`: several gateway processes on one port behave as one gateway to callers and
operators — calls spread over the workers, every worker's API lists them all and can hang up any of
them, and SIGTERM drains them all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from tests.calllog_helpers import TOKEN, api, api_until, until
from tests.phone_helpers import dial, wait_for
from tests.proc import free_port, listeners, serve, serve_all, stop


async def test_two_workers_share_the_port_the_live_calls_and_the_hang_ups(config_dir, store_url):
    from tests.conftest import write_config
    config_path = write_config(config_dir, "storage:\n  lease_seconds: 6\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    env.update(GATEWAY_DATABASE_URL=store_url, GATEWAY_OPERATOR_TOKEN=TOKEN)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(port, env, config_path, args=("--workers", "2"))
    try:
        await wait_for(lambda: listeners(port) == 2, 10, "both workers to listen")
        phones = [await dial(url, bot="echo") for _ in range(8)]
        calls = sorted(p.call_sid for p in phones)
        live = await api_until(url, "/api/live", lambda b: sorted(c["call_id"] for c in b["calls"]) == calls, 5,
                               "every call live in one listing")
        owners = {c["call_id"]: c["instance"] for c in live["calls"]}
        assert len(set(owners.values())) == 2, "the kernel spread the calls over both workers"
        for phone in phones:  # each request lands on either worker; remote calls are forwarded
            status, body = await api(url, f"/api/calls/{phone.call_sid}/hangup", method="POST")
            assert status == 202 and body["instance"] == owners[phone.call_sid], body
        await wait_for(lambda: all(p.closed.is_set() for p in phones), 5, "every call to be hung up")
        await api_until(url, "/api/live", lambda b: b["calls"] == [], 5, "no live calls")
        for phone in phones:
            status, call = await api(url, f"/api/calls/{phone.call_sid}")
            assert call["end_reason"] == "operator_hangup", call
    finally:
        out = stop(proc, signal.SIGTERM, timeout=20)
    assert proc.returncode == 0, out
    assert out.count("event=drain_done") == 2 and "event=workers_running workers=2" in out, out


async def test_workers_on_a_busy_port_say_so_in_one_line(config_dir):
    from tests.conftest import write_config
    write_config(config_dir)
    import subprocess
    import sys

    from tests.conftest import REPO
    port = free_port()
    import socket
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2",
                               "--config", str(config_dir / "config.yaml")], cwd=REPO, capture_output=True,
                              text=True, timeout=30)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == \
        f"error: cannot listen on 127.0.0.1:{port}: address already in use (is another gateway running?)"


async def test_two_instances_on_one_database_webhook_on_one_stream_on_the_other(config_dir, store_url):
    """Instance A answers the webhook (its public URL sends the stream to B); the call runs on B.
    A's API lists it and hangs it up through B; starting A while B has a live call leaves it live."""
    from tests.conftest import write_config
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    env.update(GATEWAY_DATABASE_URL=store_url, GATEWAY_OPERATOR_TOKEN=TOKEN)
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    config_b = write_config(config_dir, "server:\n  instance_id: gw\n")
    b = serve(port_b, env, config_b)
    a = None
    try:
        first = await dial(url_b, bot="echo")  # already live on B when A starts
        await api_until(url_b, f"/api/calls/{first.call_sid}", lambda c: c["live"] and c["started_at"], 5, "the first call live on B")
        config_a = config_dir / "config-a.yaml"
        config_a.write_text(config_b.read_text() + f"  public_url: {url_b}\n")  # same instance name too
        a = serve(port_a, env, config_a)
        phone = await dial(url_a, bot="echo")
        assert phone.result.stream_url == f"ws://127.0.0.1:{port_b}/twilio/media"
        both = sorted([first.call_sid, phone.call_sid])
        for url in (url_a, url_b):
            live = await api_until(url, "/api/live", lambda b: sorted(c["call_id"] for c in b["calls"]) == both, 5,
                                   "both calls live")
            owners = {c["call_id"]: c["instance"] for c in live["calls"]}
            assert sorted(owners) == sorted([first.call_sid, phone.call_sid]) and len(set(owners.values())) == 1
        status, body = await api(url_a, f"/api/calls/{phone.call_sid}/hangup", method="POST")
        assert status == 202 and body["instance"] == owners[phone.call_sid]
        await wait_for(lambda: phone.closed.is_set(), 5, "the call on B to be hung up via A")
        await first.hangup()
        ended = await api_until(url_a, "/api/calls", lambda b: len(b["calls"]) == 2 and all(c["end_reason"] for c in b["calls"]), 5,
                                "both calls ended")
        reasons = {c["call_id"]: c["end_reason"] for c in ended["calls"]}
        assert reasons == {first.call_sid: "caller_hangup", phone.call_sid: "operator_hangup"}
    finally:
        out_a = stop(a, signal.SIGTERM) if a is not None else ""
        out_b = stop(b, signal.SIGTERM)
    assert "crashed_calls_closed=1" not in out_a + out_b


def _children(pid: int) -> list[int]:
    """Worker pids of a supervisor (from /proc: no extra package)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return kids


async def _scrape(url: str) -> dict[str, float]:
    """Sample name -> the sum over its label sets, as prometheus-client parses the page."""
    from prometheus_client.parser import text_string_to_metric_families
    status, body = await api(url, "/metrics")
    assert status == 200, (status, body[:300])
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


async def test_one_scrape_sees_every_worker_and_counters_never_go_backwards(config_dir, tmp_path):
    """Whichever worker answers, /metrics sums every worker: live calls while they run, ended
    calls after; a worker killed mid-call takes its live calls out of the gauge, not its counts."""
    from tests.conftest import write_config
    config_path = write_config(config_dir, "storage:\n  lease_seconds: 6\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    env.update(GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/calls.db", GATEWAY_OPERATOR_TOKEN=TOKEN,
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path))  # the supervisor makes its fresh directory in here
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(port, env, config_path, args=("--workers", "2"))
    phones = []
    try:
        await wait_for(lambda: listeners(port) == 2, 10, "both workers to listen")
        run_dirs = [p for p in tmp_path.iterdir() if p.name.startswith("gateway-metrics-")]
        assert len(run_dirs) == 1, list(tmp_path.iterdir())
        # The kernel spreads connections over the workers' SO_REUSEPORT sockets by a hash of the
        # addresses: six calls all land on one worker once in 32 runs. Dial until both have calls.
        owners = {}
        while len(phones) < 6 or len(set(owners.values())) < 2:
            assert len(phones) < 24, owners
            phones.append(await dial(url, bot="echo"))
            n = len(phones)
            live = await api_until(url, "/api/live", lambda b: len(b["calls"]) == n, 5, f"{n} live calls")
            owners = {c["call_id"]: c["instance"] for c in live["calls"]}
        n = len(phones)
        await until(lambda: _scrape(url), lambda m: m["gateway_calls_live"] == n, 5, f"{n} live calls in the gauge")
        for _ in range(6):
            assert (await _scrape(url))["gateway_calls_live"] == n
        for phone in phones[:3]:
            await phone.hangup()
        await wait_for(lambda: all(p.closed.is_set() for p in phones[:3]), 5, "three calls to end")
        await until(lambda: _scrape(url), lambda m: m["gateway_calls_ended_total"] == 3, 5, "three ended calls counted")
        seen = []
        for _ in range(6):
            m = await _scrape(url)
            seen.append(m["gateway_calls_ended_total"])
            assert m["gateway_calls_live"] == n - 3 and m["gateway_calls_started_total"] == n, m
        assert seen == [3] * 6, seen
        # SIGKILL the worker of a call still up: its live calls leave the gauge once the supervisor
        # has noticed (and marked it dead); what it counted stays in the sums.
        left = phones[3:]
        worker_pids = _children(proc.pid)
        assert len(worker_pids) == 2
        victim = int(owners[left[0].call_sid].split(":")[1])  # instance: name:pid:random
        assert victim in worker_pids, (victim, worker_pids)
        os.kill(victim, signal.SIGKILL)
        killed_calls = sum(f":{victim}:" in owners[p.call_sid] for p in left)
        await wait_for(lambda: len(_children(proc.pid)) == 2 and victim not in _children(proc.pid), 10,
                       "the supervisor to restart the worker")
        await until(lambda: _scrape(url), lambda m: m["gateway_calls_live"] == n - 3 - killed_calls, 5,
                    "the killed worker's calls out of the gauge")
        for _ in range(6):
            m = await _scrape(url)
            assert m["gateway_calls_started_total"] == n and m["gateway_calls_ended_total"] >= 3, m
            assert m["gateway_calls_live"] == n - 3 - killed_calls, (m, killed_calls)
    finally:
        for phone in phones:  # also when an assertion failed: a live call would hold the drain open
            if not phone.closed.is_set():
                with contextlib.suppress(Exception):
                    await phone.hangup()
        out = stop(proc, signal.SIGTERM, timeout=20)
    assert "event=worker_died" in out, out
    assert not any(p.name.startswith("gateway-metrics-") for p in tmp_path.iterdir()), "the run's directory is removed"


async def test_a_hang_up_across_instances_on_postgresql_is_carried_out_at_once(config_dir):
    """PostgreSQL NOTIFY wakes the owner: every hang-up asked of A for a call on B ends it within
    300 ms (polling alone took up to 500 ms), also after B's listening connection was cut."""
    from tests.conftest import write_config
    from tests.pg import fresh_database
    import time

    import aiohttp
    import asyncpg

    async with fresh_database() as db:
        env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
        env.update(GATEWAY_DATABASE_URL=db, GATEWAY_OPERATOR_TOKEN=TOKEN)
        config_path = write_config(config_dir)
        port_a, port_b = free_port(), free_port()
        url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        b, a = serve_all([(port_b, env, config_path), (port_a, env, config_path)])
        out_b = ""
        admin = await asyncpg.connect(db)
        try:
            # this database's listening connections (other tests' databases share the server)
            listening = "FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = current_database()"

            async def backends() -> list:
                return await admin.fetch(f"SELECT pid {listening}")
            await until(backends, lambda rows: len(rows) == 2, 10, "both instances listening")
            times = []
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
                for attempt in range(6):
                    if attempt == 3:  # cut every listening connection: they reconnect, the poll covers the gap
                        cut = {r["pid"] for r in await admin.fetch(f"SELECT pid, pg_terminate_backend(pid) {listening}")}
                        await until(backends, lambda rows: len(rows) == 2 and not {r["pid"] for r in rows} & cut, 10,
                                    "both listening again (the first retry is after 0.5 s)")
                    phone = await dial(url_b, bot="echo")
                    await api_until(url_a, f"/api/calls/{phone.call_sid}", lambda c: c["live"] and c["started_at"], 5, "the call live on B")
                    await asyncio.sleep(attempt * 0.07)  # at various points of B's fallback poll
                    t0 = time.monotonic()
                    async with s.post(f"{url_a}/api/calls/{phone.call_sid}/hangup") as r:
                        assert r.status == 202, await r.text()
                    assert await phone.wait_closed(5)
                    times.append((time.monotonic() - t0) * 1000)
            assert max(times) <= 300, times
        finally:
            await admin.close()
            stop(a, signal.SIGTERM)
            out_b = stop(b, signal.SIGTERM)
        assert "event=calllog_listen_lost" in out_b, out_b
