"""Call webhooks: signed `call.started` / `call.ended` JSON, queued in the call log, delivered by
whichever gateway runs, after receiver outages and restarts; never twice by two instances."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import time

import pytest
from aiohttp import web

from gateway.config import ConfigError, load_config
from gateway.web_state import STORE
from gateway.webhooks import WEBHOOKS
from tests import proc
from tests.conftest import write_config
from tests.phone_helpers import dial, ended, ulaw_tone, wait_for

SECRET = "whsec-test-0123456789abcdef"


class Receiver:
    """A CRM's webhook endpoint on loopback: checks each signature the way docs/operations.md tells receivers to."""

    def __init__(self, secret: str = SECRET, status: int = 200):
        self.secret, self.status = secret, status
        self.events: list[dict] = []
        self.bad: list[str] = []
        self.hits = 0
        self.hit_times: list[float] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.hit_times.append(time.monotonic())
        body = await request.read()
        header = request.headers.get("X-Gateway-Signature", "")
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        expected = hmac.new(self.secret.encode(), f"{parts.get('t')}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, parts.get("v1", "")) or abs(time.time() - int(parts["t"])) > 300:
            self.bad.append(header)
            return web.Response(status=400)
        if self.status == 200:
            self.events.append(json.loads(body))
        return web.Response(status=self.status)

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receiver():
    r = Receiver()
    yield r
    await r.stop()


async def test_a_call_is_posted_signed_with_its_transcript(make_gateway, fake_glm, receiver, store_url):
    url = await receiver.start()
    fake_glm.reply_seconds, fake_glm.delta_interval = 4.0, 0.4
    gw = await make_gateway(glm=fake_glm, extra="recording:\n  enabled: true\n",
                            env={"GATEWAY_DATABASE_URL": store_url, "GATEWAY_WEBHOOK_URL": url,
                                 "GATEWAY_WEBHOOK_SECRET": SECRET})
    phone = await dial(gw.url, bot="glm-greeter", caller="+15550001234")
    await wait_for(lambda: receiver.events, 3, "call.started while the call runs")
    started = receiver.events[0]
    assert started["type"] == "call.started" and started["call_id"] == phone.call_sid
    assert (started["bot"], started["from"], started["to"], started["network"], started["direction"]) == \
        ("glm-greeter", "+15550001234", "+15005550006", "twilio", "inbound")
    await phone.silence(1.0)
    await phone.say(ulaw_tone(440, 0.6))  # over the greeting
    await phone.silence(1.5)
    await phone.hangup()
    summary = await ended(gw, phone)
    await wait_for(lambda: len(receiver.events) == 2, 5, "call.ended")
    done = receiver.events[1]
    assert done["type"] == "call.ended" and done["call_id"] == phone.call_sid and done["id"] != started["id"]
    assert done["end_reason"] == "caller_hangup" and done["barge_ins"] == 1 and done["started_at"] == started["started_at"]
    assert done["duration_s"] == pytest.approx(summary_duration(done), abs=0.01)
    greeting, caller, reply = done["transcript"]
    assert greeting["role"] == "bot" and greeting["interrupted"] and greeting["text"].startswith(greeting["heard"])
    assert len(greeting["heard"]) < len(greeting["text"]) and greeting["heard_ms"] > 0
    assert caller["role"] == "caller" and reply == {"role": "bot", "text": reply["text"], "heard": reply["text"],
                                                    "interrupted": False, "t": reply["t"]}
    assert 0 < done["latencies"]["first_audio_ms"] < 1000
    assert done["latencies"]["turn_ms"] == [round(ms) for ms in summary.turn_latencies_ms]
    assert done["recording_url"] == f"/api/calls/{phone.call_sid}/recording"
    assert not receiver.bad
    rows = await gw.app[STORE].fetch("SELECT delivered_at, attempts FROM webhook_deliveries")
    assert len(rows) == 2 and all(r["delivered_at"] and r["attempts"] == 1 for r in rows)


def summary_duration(event: dict) -> float:
    from gateway.calllog.views import parse_time
    return parse_time(event["ended_at"]) - parse_time(event["started_at"])


async def test_a_refusing_receiver_gets_retries_and_events_filter(make_gateway, receiver):
    """Non-2xx answers are retried with backoff; a receiver subscribed to call.ended gets only that."""
    receiver.status = 503
    url = await receiver.start()
    gw = await make_gateway(extra=f"""
        webhooks:
          - url: {url}
            secret: {SECRET}
            events: [call.ended]
            first_retry_seconds: 0.2
        """)
    phone = await dial(gw.url, bot="echo")
    await phone.silence(0.2)
    await phone.hangup()
    await ended(gw, phone)
    await wait_for(lambda: receiver.hits >= 3, 8, "three attempts")
    first, second, third = receiver.hit_times[:3]
    # after 0.2 s, then twice that (plus up to 10 % jitter): each when due, not at the next 1 s poll
    assert 0.2 <= second - first < 0.9 and 0.4 <= third - second < 1.1, receiver.hit_times
    receiver.status = 200
    await wait_for(lambda: receiver.events, 8, "the delivery once the receiver answers 200")
    assert [e["type"] for e in receiver.events] == ["call.ended"]
    # nothing more comes: the one row is recorded as delivered and unclaimed (none claims it again)
    deadline = time.monotonic() + 5
    while (rows := await gw.app[STORE].fetch("SELECT event, delivered_at, claimed_by FROM webhook_deliveries")) \
            and not rows[0]["delivered_at"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert [(r["event"], bool(r["delivered_at"]), r["claimed_by"]) for r in rows] == [("call.ended", True, None)]
    assert len(receiver.events) == 1 and not receiver.bad


async def test_two_instances_on_one_database_deliver_each_event_once(make_gateway, receiver, store_url):
    url = await receiver.start()
    env = {"GATEWAY_DATABASE_URL": store_url, "GATEWAY_WEBHOOK_URL": url, "GATEWAY_WEBHOOK_SECRET": SECRET}
    a = await make_gateway(env=env)
    b = await make_gateway(env=env)
    for i in range(5):  # both instances enqueue; both delivery tasks poll the same table
        phone = await dial((a if i % 2 else b).url, bot="echo")
        await phone.silence(0.1)
        await phone.hangup()
    await wait_for(lambda: len(receiver.events) == 10, 8, "ten events")
    await asyncio.gather(*(gw.app[WEBHOOKS].deliver_due() for gw in (a, b) for _ in range(3)))
    await asyncio.sleep(1.2)
    ids = [e["id"] for e in receiver.events]
    assert len(ids) == len(set(ids)) == 10


async def test_nothing_is_lost_when_the_receiver_is_down_across_a_gateway_restart(config_dir, receiver):
    """Gateway 1 takes a call while the receiver is down and stops; the receiver comes up; gateway 2
    (another process, same SQLite file) delivers both events."""
    port = proc.free_port()
    # retries at most a second apart: however long the first gateway runs on a loaded machine, the
    # second finds both rows due about when it starts (the backoff is kept across the restart)
    config_path = write_config(config_dir, f"""
        storage:
          url: sqlite:///data/restart.db
        webhooks:
          - url: http://127.0.0.1:{port}/hook
            secret: {SECRET}
            first_retry_seconds: 0.2
            max_retry_seconds: 1
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZHIPU", "OPENAI", "GATEWAY_"))}
    gw_port = proc.free_port()
    first = proc.serve(gw_port, env, config_path)
    try:
        phone = await dial(f"http://127.0.0.1:{gw_port}", bot="echo")
        call_id = phone.call_sid
        await phone.say(ulaw_tone(440, 0.4))
        await phone.silence(0.8)
        await phone.hangup()
        # both events are queued; call.started was tried (connection refused) and waits for its retry,
        # call.ended waits behind it (a call's events go in order)
        await wait_for(lambda: outbox(config_dir / "data" / "restart.db") == [("call.ended", 0), ("call.started", 1)],
                       10, "call.started tried once, call.ended queued")
    finally:
        log1 = proc.stop(first)
    assert "event=webhook_failed type=call.started" in log1 and "event=webhook_delivered" not in log1, log1
    await receiver.start(port)
    second = proc.serve(gw_port, env, config_path)
    try:
        await wait_for(lambda: len(receiver.events) == 2, 15, "both events from the second gateway")
    finally:
        log2 = proc.stop(second)
    assert [e["type"] for e in receiver.events] == ["call.started", "call.ended"], log2
    assert all(e["call_id"] == call_id for e in receiver.events)
    assert receiver.events[1]["end_reason"] == "caller_hangup" and receiver.events[1]["transcript"]
    assert not receiver.bad


def outbox(db) -> list[tuple[str, int]]:
    """(event, tried at all) of each delivery in the SQLite call log at `db`, by event name."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as conn:
        try:
            return conn.execute("SELECT event, min(attempts, 1) FROM webhook_deliveries ORDER BY event").fetchall()
        except sqlite3.OperationalError:  # the table is not there yet
            return []


def test_webhook_config_is_checked(config_dir):
    path = write_config(config_dir, "webhooks:\n  - url: ftp://x\n    secret: " + SECRET + "\n")
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.url: expected an http\(s\):// URL"):
        load_config(path, env={})
    path = write_config(config_dir)
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.secret: expected a secret of at least 16"):
        load_config(path, env={"GATEWAY_WEBHOOK_URL": "https://crm.example.com/hook"})
    path = write_config(config_dir, "webhooks:\n  - url: https://a.example.com\n    secret: " + SECRET +
                        "\n    first_retry_seconds: 10\n    max_retry_seconds: 5\n")
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.max_retry_seconds: expected first_retry_seconds \(10\)\.\.86400"):
        load_config(path, env={})
    path = write_config(config_dir, "webhooks:\n  - url: https://a.example.com\n    secret: " + SECRET +
                        "\n    events: [call.ringing]\n")
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.events\[0\]: expected call\.started or call\.ended"):
        load_config(path, env={})
    cfg = load_config(write_config(config_dir), env={"GATEWAY_WEBHOOK_URL": "https://crm.example.com/hook",
                                                     "GATEWAY_WEBHOOK_SECRET": SECRET})
    assert [(w.url, w.events, w.first_retry_seconds, w.max_retry_seconds) for w in cfg.webhooks] == [
        ("https://crm.example.com/hook", ["call.started", "call.ended"], 2.0, 3600.0)]
    assert SECRET in cfg.secrets()
