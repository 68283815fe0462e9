"""Graceful drain (SIGTERM/SIGINT) and the concurrent-call cap: new callers are turned away
politely, live calls finish or are wrapped up with a goodbye, records are flushed, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from gateway.app import drain
from gateway.web_state import CALLS
from gateway.phone_sim import DialError
from tests import proc
from tests.phone_helpers import dial, ended, new_phone, wait_for


async def get(url: str):
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            return r.status, await r.json()


async def test_drain_refuses_new_calls_then_wraps_up_live_ones(make_gateway, fake_glm, fake_rest):
    gw = await make_gateway(glm=fake_glm, rest=fake_rest)
    phone = await dial(gw.url, bot="glm-greeter")
    await phone.silence(2.0)  # the greeting has played
    task = asyncio.create_task(drain(gw.app, 1.0))
    await asyncio.sleep(0.1)
    assert (await get(gw.url + "/readyz")) == (503, {"status": "draining", "live_calls": 1})
    with pytest.raises(DialError, match="call again in a minute"):
        await new_phone(gw.url, bot="glm-greeter").dial()
    await phone.silence(0.5)
    assert not phone.closed.is_set(), "live calls go on during the drain"
    await asyncio.wait_for(task, 8)
    summary = await ended(gw, phone)
    assert summary.end_reason == "shutdown"
    s = fake_glm.sessions[0]
    assert any("restarting" in t for t in s.texts)  # the bot was asked to say goodbye...
    assert s.responses[-1]["status"] == "completed"
    hang = [r for r in fake_rest.requests if r.form.get("Status") == "completed"]
    assert hang and hang[0].at >= phone.result.last_echo_at  # ...and it was heard before the hang-up
    assert not gw.app[CALLS]


async def test_drain_ends_as_soon_as_the_last_call_does(make_gateway, fake_glm):
    gw = await make_gateway(glm=fake_glm)
    phone = await dial(gw.url, bot="glm-quiet")
    task = asyncio.create_task(drain(gw.app, 30.0))
    await phone.silence(0.3)
    t = time.monotonic()
    await phone.hangup()
    await asyncio.wait_for(task, 3)
    assert time.monotonic() - t < 1.0
    assert (await ended(gw, phone)).end_reason == "caller_hangup"


async def test_over_the_concurrent_call_limit_callers_hear_busy(make_gateway, fake_glm):
    gw = await make_gateway(glm=fake_glm, extra="limits:\n  max_concurrent_calls: 1\n")
    first = await dial(gw.url, bot="glm-quiet")
    await wait_for(lambda: gw.app[CALLS], 3, "the first call")
    assert (await get(gw.url + "/readyz"))[0] == 503
    with pytest.raises(DialError, match="lines are busy"):
        await new_phone(gw.url, bot="glm-quiet").dial()
    assert len(fake_glm.sessions) == 1  # the refused caller cost no model session
    await first.hangup()
    await ended(gw, first)
    assert (await get(gw.url + "/readyz"))[0] == 200


def test_sigterm_drains_a_live_call_and_exits_cleanly(config_dir, tmp_path):
    from tests.conftest import write_config
    config_path = write_config(config_dir, "server:\n  drain_seconds: 1\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    port = proc.free_port()
    server = proc.serve(port, env, config_path)

    async def call_then_signal() -> str:
        phone = await dial(f"http://127.0.0.1:{port}", bot="echo")
        await phone.silence(1.0)
        server.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        status, body = await get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and body["status"] == "draining"
        closed = await phone.wait_closed(12)
        await phone.close()
        return "closed" if closed else "open"

    try:
        assert asyncio.run(call_then_signal()) == "closed"
        server.wait(15)
    finally:
        log = proc.stop(server, signal.SIGKILL)
    assert server.returncode == 0, log
    for line in ("event=drain_started live_calls=1", "event=drain_wrapping_up", "reason=shutdown",
                 "event=drain_done left=0"):
        assert line in log, line
