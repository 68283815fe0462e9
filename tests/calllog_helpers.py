"""Shared by the call-log tests: the operator token, an API client, the three-call scenario."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

import aiohttp

from gateway.calllog import open_store
from gateway.web_state import STORE
from tests.phone_helpers import dial, ended, ulaw_tone

TOKEN = "op-token-0123456789abcdef"


async def api(gw_url: str, path: str, token: str | None = TOKEN, method: str = "GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, gw_url + path, headers=headers) as r:
            body = await r.read()
            ctype = r.headers.get("Content-Type", "")
            return r.status, (json.loads(body) if ctype.startswith("application/json") else body)


async def until(get: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float = 5.0,
                what: str = "condition") -> Any:
    """Await `get()` until `ok` holds for what it returns (every 50 ms); that value."""
    loop = asyncio.get_running_loop()  # its clock, as phone_helpers.wait_for: virtual in looptime tests
    deadline = loop.time() + timeout
    while True:
        got = await get()
        if ok(got):
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {got!r:.500}")
        await asyncio.sleep(0.05)


async def api_until(gw_url: str, path: str, ok: Callable[[Any], bool], timeout: float = 5.0,
                    what: str = "") -> Any:
    """GET `path` until it answers 200 with a body `ok` holds for; that body."""
    got = await until(lambda: api(gw_url, path), lambda r: r[0] == 200 and ok(r[1]), timeout, what or path)
    return got[1]


async def lease_end(store_url: str, instance: str) -> float:
    """When `instance`'s lease in the call log at `store_url` runs out (0: it has run out and been
    swept away). Read after the instance was killed, it is when its slots and calls become free."""
    store = open_store(store_url)
    await store.start()
    try:
        rows = await store.fetch("SELECT expires_at FROM instance_leases WHERE instance = ?", (instance,))
    finally:
        await store.close()
    return rows[0]["expires_at"] if rows else 0.0


async def three_calls(make_gateway, fake_glm, fake_openai, store_url, extra: str = ""):
    """A normal GLM call, an OpenAI call the caller interrupts (started just after the first, the two
    at the same time: each has its own fake model), then a GLM call that ends in a model error."""
    # No reconnection, so that the dropped model socket really ends the third call with a model error.
    gw = await make_gateway(glm=fake_glm, openai=fake_openai, extra="limits:\n  model_reconnect_attempts: 0\n" + extra,
                            env={"GATEWAY_DATABASE_URL": store_url, "GATEWAY_OPERATOR_TOKEN": TOKEN})
    normal = await dial(gw.url, bot="glm-greeter", caller="+15550000001")
    fake_openai.reply_seconds, fake_openai.delta_interval = 4.0, 0.4
    cut = await dial(gw.url, bot="openai-greeter", caller="+15550000002")

    async def talk(phone, wait: float, say: float, listen: float) -> None:
        await phone.silence(wait)
        await phone.say(ulaw_tone(440, say))
        await phone.silence(listen)
        await phone.hangup()
        await ended(gw, phone)

    # the first speaks after the greeting and hears the reply; the second talks over the greeting
    await asyncio.gather(talk(normal, 1.9, 0.5, 2.3), talk(cut, 1.2, 0.6, 1.0))
    fake_glm.fail_after_deltas = 2  # the first GLM call is over: only this one fails
    broken = await dial(gw.url, bot="glm-greeter", caller="+15550000003")
    assert await broken.wait_closed(3)
    await ended(gw, broken)
    await gw.app[STORE].flush()
    return gw, normal, cut, broken
