"""Call-log integrity at the gateway: calls refused at the webhook are recorded (and the simulated
phone says why), webhooks never followed by a stream are closed as `no_stream` by any instance,
and a PostgreSQL storage URL without asyncpg installed is a one-line error."""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import pytest

from gateway.__main__ import build_parser, main
from gateway.app import STORE, drain
from gateway.phone_cli import main as phone_main
from gateway.phone_sim import DialError
from tests.calllog_helpers import TOKEN, api
from tests.phone_helpers import ended, new_phone, ulaw_tone


async def test_refused_calls_are_recorded_and_the_phone_says_why(make_gateway, capsys):
    gw = await make_gateway(None, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})  # no API key for any model
    phone = new_phone(gw.url, bot="support")
    with pytest.raises(DialError) as refused:
        await phone.dial()
    assert str(refused.value) == ("refused: bot 'support' (provider glm) has no API key: set ZHIPU_API_KEY or "
                                  "providers.glm.api_key (the caller hears: Sorry, this number is not in service "
                                  "right now. Goodbye.)")
    assert "ZHIPU" not in phone.result.twiml and "support" not in phone.result.twiml  # callers hear no config

    # `python -m gateway call --bot support`, as a user runs it.
    args = build_parser().parse_args(["call", "--url", gw.url, "--bot", "openai-quiet"])
    assert await phone_main(args) == 1
    assert capsys.readouterr().out == (
        "call not connected: refused: bot 'openai-quiet' (provider openai) has no API key: set OPENAI_API_KEY or "
        "providers.openai.api_key (the caller hears: Sorry, this number is not in service right now. Goodbye.)\n")

    async with aiohttp.ClientSession() as s:  # a bot name made to split a header: refused at the edge (issue 20)
        async with s.post(f"{gw.url}/twilio/voice?bot=x%0d%0aSet-Cookie:%20a=b", data={"CallSid": "CAevil"}) as r:
            assert r.status == 400 and "Set-Cookie" not in r.headers and "X-Gateway-Refused" not in r.headers
            assert await r.text() == "bot: control characters (NUL, newline, ...) or invalid Unicode are not allowed\n"
        async with s.post(f"{gw.url}/twilio/voice?bot=x%20Set-Cookie:%20a=b", data={"CallSid": "CAodd"}) as r:
            assert r.status == 200  # a printable name we do not have: refused as an unknown bot, recorded
            listing_header = r.headers["X-Gateway-Refused"]
            assert listing_header.startswith("unknown bot 'x Set-Cookie: a=b' (bots: echo, ")
    outbound = new_phone(gw.url, bot="echo")
    outbound.webhook_url = f"{gw.url}/twilio/voice?bot=echo&outbound=forged.ticket"
    with pytest.raises(DialError, match="refused: invalid or expired outbound ticket"):
        await outbound.dial()
    busy = await make_gateway(None, extra="limits:\n  max_concurrent_calls: 0\n")  # same config dir: same call log
    with pytest.raises(DialError, match=r"refused: busy: 0 live calls \(limits.max_concurrent_calls\) "
                                        r"\(the caller hears: All our lines are busy"):
        await new_phone(busy.url, bot="echo", caller="+15550003333").dial()
    await drain(gw.app, 0)
    with pytest.raises(DialError, match="refused: draining: this instance is shutting down"):
        await new_phone(gw.url, bot="echo", caller="+15550002222").dial()

    await gw.app[STORE].flush()
    await busy.app[STORE].flush()
    status, listing = await api(gw.url, "/api/calls?end_reason=refused")
    assert status == 200 and listing["total"] == 6
    by_id = {c["call_id"]: c for c in listing["calls"]}
    first = by_id[phone.call_sid]
    assert (first["bot"], first["from"], first["to"], first["live"], first["duration_s"]) == \
        ("support", "+15550001111", "+15005550006", False, 0.0)
    assert first["error"].startswith("bot 'support' (provider glm) has no API key: set ZHIPU_API_KEY")
    assert first["webhook_at"] == first["ended_at"] and first["started_at"] is None
    assert by_id["CAodd"]["error"] == listing_header and by_id["CAodd"]["bot"] is None and "CAevil" not in by_id
    assert (by_id[outbound.call_sid]["direction"], by_id[outbound.call_sid]["provider"]) == ("outbound", "echo")
    assert {c["from"]: c["error"] for c in listing["calls"] if c["bot"] == "echo" and c["direction"] == "inbound"} == {
        "+15550002222": "draining: this instance is shutting down",
        "+15550003333": "busy: 0 live calls (limits.max_concurrent_calls)"}


async def test_a_webhook_with_no_stream_is_closed_by_another_instance_and_reopened_by_a_late_stream(
        make_gateway, store_url):
    env = {"GATEWAY_DATABASE_URL": store_url}
    # A would wait an hour; B sweeps after 1 s: the record is closed by B, which never saw the webhook.
    a = await make_gateway(None, env=env, extra="limits:\n  stream_wait_seconds: 3600\nstorage:\n  lease_seconds: 1\n")
    b = await make_gateway(None, env=env, extra="limits:\n  stream_wait_seconds: 1\nstorage:\n  lease_seconds: 1\n")
    phone = new_phone(a.url, bot="echo")
    await phone.dial()  # Twilio got <Connect><Stream> ... and does not open it yet
    await a.app[STORE].flush()
    store = b.app[STORE]
    assert (await store.get_call(phone.call_sid))["ended_at"] is None
    deadline = time.monotonic() + 5
    while (record := await store.get_call(phone.call_sid))["end_reason"] != "no_stream":
        assert time.monotonic() < deadline, f"never closed as no_stream: {record}"
        await asyncio.sleep(0.1)
    assert record["ended_at"] == record["webhook_at"] and record["duration_s"] == 0

    await phone.connect()  # the stream arrives late, at A
    await phone.silence(1.2)
    record = await store.get_call(phone.call_sid)
    assert (record["end_reason"], record["ended_at"]) == (None, None) and record["started_at"] > record["webhook_at"]
    await phone.say(ulaw_tone(440, 0.5))
    await phone.hangup()
    await ended(a, phone)
    await a.app[STORE].flush()
    await asyncio.sleep(0.5)  # B sweeps meanwhile: it must leave the finished record alone
    record = await store.get_call(phone.call_sid)
    assert record["end_reason"] == "caller_hangup" and record["duration_s"] > 1.5


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_postgresql_without_asyncpg_is_a_one_line_error(config_dir, monkeypatch, capsys, command):
    from tests.conftest import write_config
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://gw:secret@127.0.0.1:5432/calls")
    assert main([command, "--config", str(write_config(config_dir))]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == (f"config error: {config_dir / 'config.yaml'}: storage.url: PostgreSQL needs "
                                         "asyncpg, which is not installed: pip install 'voicebot-gateway[postgres]'\n")


def test_the_dashboard_offers_every_end_reason():
    import json
    import re

    from gateway.calllog import END_REASONS
    from tests.conftest import REPO
    html = (REPO / "gateway" / "static" / "dashboard.html").read_text()
    listed = re.search(r"const END_REASONS = (\[[^\]]*\]);", html).group(1)
    assert json.loads(listed) == list(END_REASONS)


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["calls", "list"]])
def test_an_unreachable_postgresql_is_a_one_line_error(config_dir, command):
    import os
    import subprocess

    from tests.conftest import REPO, write_config
    from tests.proc import free_port
    env = {**os.environ, "GATEWAY_DATABASE_URL": f"postgresql://gw:secret@127.0.0.1:{free_port()}/calls"}
    run = subprocess.run([sys.executable, "-m", "gateway", command[0], "--config", str(write_config(config_dir)),
                          *command[1:]],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines()[-1].startswith("error: cannot connect to the call-log database "
                                                  "postgresql://127.0.0.1:"), run.stderr
    assert "secret" not in run.stderr
