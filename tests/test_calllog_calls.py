"""Call logs end to end: simulated calls through the gateway, then what the operator API, the CLI
and the recordings say about them — on SQLite and on PostgreSQL — and what survives a SIGKILL."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
import wave

import numpy as np
import pytest

from gateway.web_state import CALLS
from tests.audio_check import dominant_hz, voiced_runs
from tests.phone_helpers import dial, ended, ulaw_tone, wait_for
from tests.calllog_helpers import TOKEN, api, lease_end, three_calls
from tests.proc import free_port, run, serve_all, stop

async def test_three_calls_in_the_api_and_the_cli(make_gateway, fake_glm, fake_openai, store_url):
    gw, normal, cut, broken = await three_calls(make_gateway, fake_glm, fake_openai, store_url)

    status, listing = await api(gw.url, "/api/calls")
    assert status == 200 and listing["total"] == 3
    assert [c["call_id"] for c in listing["calls"]] == [broken.call_sid, cut.call_sid, normal.call_sid]
    by_id = {c["call_id"]: c for c in listing["calls"]}
    n = by_id[normal.call_sid]
    assert (n["bot"], n["provider"], n["from"], n["to"], n["end_reason"]) == \
        ("glm-greeter", "glm", "+15550000001", "+15005550006", "caller_hangup")
    assert n["first_audio_ms"] is not None and n["first_audio_ms"] < 1000 and n["turns"] == 2
    assert n["usage"] == {"input_tokens": 160, "output_tokens": 80} and n["duration_s"] > 4
    assert by_id[cut.call_sid]["barge_ins"] == 1 and by_id[cut.call_sid]["provider"] == "openai"
    b = by_id[broken.call_sid]
    assert b["end_reason"] == "model_error" and "upstream_closed" in b["error"]

    # filters
    assert [c["call_id"] for c in (await api(gw.url, "/api/calls?end_reason=model_error"))[1]["calls"]] == \
        [broken.call_sid]
    assert (await api(gw.url, "/api/calls?bot=glm-greeter"))[1]["total"] == 2
    assert (await api(gw.url, "/api/calls?number=%2B15550000002"))[1]["calls"][0]["call_id"] == cut.call_sid
    found = (await api(gw.url, "/api/calls?q=CALLER%20SPOKE"))[1]
    assert {c["call_id"] for c in found["calls"]} == {normal.call_sid, cut.call_sid}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert (await api(gw.url, f"/api/calls?since={today}&limit=2"))[1]["total"] == 3
    assert (await api(gw.url, "/api/calls?until=2000-01-01"))[1]["total"] == 0
    page = (await api(gw.url, "/api/calls?limit=1&offset=1"))[1]
    assert [c["call_id"] for c in page["calls"]] == [cut.call_sid] and page["total"] == 3
    assert (await api(gw.url, "/api/calls?since=yesterday"))[0] == 400
    assert (await api(gw.url, "/api/calls?end_reason=bored"))[0] == 400
    assert (await api(gw.url, "/api/calls?limit=100000"))[0] == 400

    # one call in full: the interrupted one
    status, call = await api(gw.url, f"/api/calls/{cut.call_sid}")
    assert status == 200
    lines = [e for e in call["timeline"] if e["kind"] in ("bot", "caller")]
    assert [e["kind"] for e in lines] == ["bot", "caller", "bot"]
    greeting, caller, reply = lines
    assert greeting["interrupted"] and greeting["text"] == "Hello, thanks for calling Northwind."
    assert greeting["heard"] and greeting["text"].startswith(greeting["heard"]) and greeting["heard"] != greeting["text"]
    assert 500 <= greeting["heard_ms"] <= 1400
    assert caller["text"] == "caller spoke 0.6 seconds" and caller["t"] > greeting["t"]
    assert not reply["interrupted"] and reply["latency_ms"] is not None
    assert any(e["kind"] == "barge_in" for e in call["timeline"])
    assert call["timeline"][-1]["kind"] == "call_ended"
    status, call = await api(gw.url, f"/api/calls/{broken.call_sid}")
    assert any(e["kind"] == "error" and e["code"] == "upstream_closed" for e in call["timeline"])
    assert (await api(gw.url, "/api/calls/CAnosuchcall"))[0] == 404

    # per-bot summary
    bots = {b["bot"]: b for b in (await api(gw.url, "/api/bots"))[1]["bots"]}
    assert bots["glm-greeter"]["calls"] == 2 and bots["openai-greeter"]["calls"] == 1
    assert bots["glm-greeter"]["end_reasons"] == {"caller_hangup": 1, "model_error": 1}
    assert 0 <= bots["glm-greeter"]["first_audio_ms_p50"] <= bots["glm-greeter"]["first_audio_ms_p95"] < 1000

    # the CLI reads the same store (four commands, run side by side)
    env = {**os.environ, "GATEWAY_DATABASE_URL": store_url}

    def cli(*args: str):
        return run([sys.executable, "-m", "gateway", "calls", "--config", gw.config.path, *args], env)

    listed, shown, exported, csv_out = await asyncio.gather(
        cli("list"), cli("show", cut.call_sid), cli("export", "--format", "jsonl", "--end-reason", "model_error"),
        cli("export", "--format", "csv"))
    assert listed[0] == 0, listed[2]
    assert all(p.call_sid in listed[1] for p in (normal, cut, broken)) and "(3 of 3)" in listed[1]
    header, *lines = listed[1].splitlines()
    assert header.split()[:6] == ["started", "(UTC)", "dur", "s", "bot", "network"]
    assert all(line.split()[4] == "twilio" for line in lines[:3]), listed[1]  # date, time, dur, bot, network
    assert shown[0] == 0 and "cut after" in shown[1] and "caller: caller spoke 0.6 seconds" in shown[1]
    rows = [json.loads(line) for line in exported[1].splitlines()]
    assert [r["call_id"] for r in rows] == [broken.call_sid] and rows[0]["timeline"]
    assert csv_out[1].startswith("call_id,network,started_at") and csv_out[1].count("\nCA") == 3


async def test_operator_api_needs_the_token(make_gateway, fake_glm):
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    for token in (None, "wrong-token", TOKEN + "x"):
        for path in ("/api/calls", "/api/live", "/api/bots", "/api/calls/CA1"):
            status, body = await api(gw.url, path, token)
            assert status == 401 and set(body) == {"error"}, (path, token, body)
    assert (await api(gw.url, "/api/calls/CA1/hangup", None, "POST"))[0] == 401
    closed = await make_gateway(glm=fake_glm)  # no token configured: closed, not open
    status, body = await api(closed.url, "/api/calls", token="")
    assert status == 401 and "disabled" in body["error"]
    assert (await api(closed.url, "/api/calls", token="anything"))[0] == 401


async def test_live_calls_and_operator_hangup(make_gateway, fake_glm):
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    phone = await dial(gw.url, bot="glm-greeter", caller="+15550000009")
    await phone.silence(0.5)
    status, live = await api(gw.url, "/api/live")
    assert status == 200 and [c["call_id"] for c in live["calls"]] == [phone.call_sid]
    assert live["calls"][0]["bot"] == "glm-greeter" and live["calls"][0]["from"] == "+15550000009"
    listed = (await api(gw.url, "/api/calls?live=true"))[1]
    assert [c["call_id"] for c in listed["calls"]] == [phone.call_sid] and listed["calls"][0]["live"]
    status, body = await api(gw.url, f"/api/calls/{phone.call_sid}/hangup", method="POST")
    assert status == 202
    assert await phone.wait_closed(3)
    summary = await ended(gw, phone)
    assert summary.end_reason == "operator_hangup" and not gw.app[CALLS]
    await asyncio.sleep(0.1)
    assert (await api(gw.url, f"/api/calls/{phone.call_sid}"))[1]["end_reason"] == "operator_hangup"
    assert (await api(gw.url, f"/api/calls/{phone.call_sid}/hangup", method="POST"))[0] == 404


async def test_recording_is_stereo_and_aligned_as_heard(make_gateway, fake_glm):
    fake_glm.greeting_tone_hz, fake_glm.reply_seconds = 1000, 1.0
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN},
                            extra="recording:\n  enabled: true\n")
    phone = await dial(gw.url, bot="glm-greeter")
    await phone.silence(1.4)  # the 1 s greeting plays
    await phone.say(ulaw_tone(440, 0.5))
    await phone.silence(1.9)  # the fake's 1 s, 600 Hz reply, 0.6 s after the caller stopped
    await phone.hangup()
    await ended(gw, phone)
    status, wav_bytes = await api(gw.url, f"/api/calls/{phone.call_sid}/recording")
    assert status == 200
    with wave.open(io.BytesIO(wav_bytes)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float).reshape(-1, 2)
    caller, bot = x[:, 0], x[:, 1]
    assert len(x) / 8000 == pytest.approx(3.8, abs=0.3)  # the whole call: 1.4 + 0.5 + 1.9 s
    c_runs, b_runs = voiced_runs(caller, 8000), voiced_runs(bot, 8000)
    assert len(c_runs) == 1 and len(b_runs) == 2, (c_runs, b_runs)
    (cs, ce), (g_s, g_e), (r_s, r_e) = c_runs[0], b_runs[0], b_runs[1]
    assert dominant_hz(caller[cs:ce], 8000) == pytest.approx(440, rel=0.02)
    assert dominant_hz(bot[g_s:g_e], 8000) == pytest.approx(1000, rel=0.02)
    assert dominant_hz(bot[r_s:r_e], 8000) == pytest.approx(600, rel=0.02)
    assert g_s / 8000 < 0.5 and (g_e - g_s) / 8000 == pytest.approx(1.0, abs=0.1)  # greeting first, whole
    assert (r_e - r_s) / 8000 == pytest.approx(1.0, abs=0.1)  # the reply, whole
    assert g_e < cs < ce < r_s  # greeting, then the caller, then the reply: never overlapping
    # The reply starts ~ the fake's 500 ms end-of-speech silence after the caller stops, as heard.
    assert (r_s - ce) / 8000 == pytest.approx(0.6, abs=0.25)
    assert (await api(gw.url, f"/api/calls/{phone.call_sid}"))[1]["has_recording"]


async def test_sigkill_mid_call_keeps_the_record_and_another_instance_closes_it_once_the_lease_expires(
        config_dir, store_url):
    """Two gateway processes on one machine, one database, the same instance name: the one that
    is SIGKILLed mid-call has its call closed as `crashed` by the other, and only after its lease
    (2 s here) expired, never while it was alive."""
    from tests.conftest import write_config
    config_path = write_config(config_dir, "storage:\n  lease_seconds: 2\nserver:\n  instance_id: gw\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    env.update(GATEWAY_DATABASE_URL=store_url, GATEWAY_OPERATOR_TOKEN=TOKEN)
    port, other_port = free_port(), free_port()
    url, other_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{other_port}"
    other, server = serve_all([(other_port, env, config_path), (port, env, config_path)])
    try:
        phone = await dial(url, bot="echo")
        dialed_at = time.monotonic()
        await phone.silence(1.2)  # the chime greeting
        await phone.say(ulaw_tone(440, 0.8))
        await wait_for(lambda: phone.result.media_bytes >= 70 * 160, 5, "the echo of what was said")  # 30 greeting + 40
        await phone.silence(0.7)  # one more sweep of the other instance (every 0.67 s)
        assert time.monotonic() - dialed_at > 2.0  # a whole lease period with both alive: the sweeps left it
        status, call = await api(other_url, f"/api/calls/{phone.call_sid}")
        assert status == 200 and call["live"] and call["instance"].startswith("gw:"), call
        server.send_signal(signal.SIGKILL)
        server.wait(5)
        killed_at = time.monotonic()
        lease_ends = await lease_end(store_url, call["instance"])  # it renewed it for the last time before the kill

        async def closed() -> bool:
            return (await api(other_url, f"/api/calls/{phone.call_sid}"))[1]["end_reason"] == "crashed"
        while not await closed():
            assert time.monotonic() - killed_at < 10, "the other instance never closed the dead one's call"
            await asyncio.sleep(0.1)
        assert time.time() >= lease_ends  # not before its lease ran out (seen within 0.1 s)
        status, call = await api(other_url, f"/api/calls/{phone.call_sid}")
        assert call["bot"] == "echo" and call["from"] == "+15550001111"
        assert any(e["kind"] == "speech" and e["ms"] > 0 for e in call["timeline"])  # the caller's speech segment
        timeline = [e for e in call["timeline"] if e["kind"] != "speech"]
        kinds = [e["kind"] for e in timeline]
        assert kinds[:3] == ["bot", "caller", "bot"], kinds  # everything up to the kill is there
        assert timeline[1]["text"].endswith("s of audio]")
        last_t = max(e["t"] for e in call["timeline"])
        assert call["duration_s"] == pytest.approx(last_t, abs=0.01) and 2.0 < last_t < 9.0  # the last thing recorded
    finally:
        stop(server, signal.SIGKILL)
        log = stop(other, signal.SIGTERM)
    assert "event=calllog_swept crashed_calls_closed=1" in log


async def test_operator_api_is_rate_limited_per_client(make_gateway, fake_glm):
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN},
                            extra="operator:\n  rate_limit_per_second: 2\n  rate_limit_burst: 5\n")
    statuses = [(await api(gw.url, "/api/live", token="guessing"))[0] for _ in range(8)]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}  # guessing tokens is throttled too
    await asyncio.sleep(0.6)
    assert (await api(gw.url, "/api/live"))[0] == 200  # the bucket refills
