"""`serve --workers N`: several gateway processes on one port behave as one gateway to callers and
operators — calls spread over the workers, every worker's API lists them all and can hang up any of
them, and SIGTERM drains them all."""

from __future__ import annotations

import asyncio
import os
import signal

from tests.calllog_helpers import TOKEN, api
from tests.phone_helpers import dial, wait_for
from tests.proc import free_port, serve, stop


async def test_two_workers_share_the_port_the_live_calls_and_the_hang_ups(config_dir, store_url):
    from tests.conftest import write_config
    config_path = write_config(config_dir, "storage:\n  lease_seconds: 6\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    env.update(GATEWAY_DATABASE_URL=store_url, GATEWAY_OPERATOR_TOKEN=TOKEN)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(port, env, config_path, args=("--workers", "2"))
    try:
        await asyncio.sleep(1.0)  # both workers up
        phones = [await dial(url, bot="echo") for _ in range(8)]
        await asyncio.sleep(1.5)
        status, live = await api(url, "/api/live")
        assert status == 200
        assert sorted(c["call_id"] for c in live["calls"]) == sorted(p.call_sid for p in phones), live
        owners = {c["call_id"]: c["instance"] for c in live["calls"]}
        assert len(set(owners.values())) == 2, "the kernel spread the calls over both workers"
        for phone in phones:  # each request lands on either worker; remote calls are forwarded
            status, body = await api(url, f"/api/calls/{phone.call_sid}/hangup", method="POST")
            assert status == 202 and body["instance"] == owners[phone.call_sid], body
        await wait_for(lambda: all(p.closed.is_set() for p in phones), 5, "every call to be hung up")
        await asyncio.sleep(0.5)
        for phone in phones:
            status, call = await api(url, f"/api/calls/{phone.call_sid}")
            assert call["end_reason"] == "operator_hangup", call
        status, live = await api(url, "/api/live")
        assert live["calls"] == []
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
        await asyncio.sleep(0.5)
        config_a = config_dir / "config-a.yaml"
        config_a.write_text(config_b.read_text() + f"  public_url: {url_b}\n")  # same instance name too
        a = serve(port_a, env, config_a)
        phone = await dial(url_a, bot="echo")
        assert phone.result.stream_url == f"ws://127.0.0.1:{port_b}/twilio/media"
        await asyncio.sleep(1.0)
        for url in (url_a, url_b):
            status, live = await api(url, "/api/live")
            owners = {c["call_id"]: c["instance"] for c in live["calls"]}
            assert sorted(owners) == sorted([first.call_sid, phone.call_sid]) and len(set(owners.values())) == 1
        status, body = await api(url_a, f"/api/calls/{phone.call_sid}/hangup", method="POST")
        assert status == 202 and body["instance"] == owners[phone.call_sid]
        await wait_for(lambda: phone.closed.is_set(), 5, "the call on B to be hung up via A")
        await first.hangup()
        await asyncio.sleep(0.5)
        reasons = {p.call_sid: (await api(url_a, f"/api/calls/{p.call_sid}"))[1]["end_reason"] for p in (first, phone)}
        assert reasons == {first.call_sid: "caller_hangup", phone.call_sid: "operator_hangup"}
    finally:
        out_a = stop(a, signal.SIGTERM) if a is not None else ""
        out_b = stop(b, signal.SIGTERM)
    assert "crashed_calls_closed=1" not in out_a + out_b
