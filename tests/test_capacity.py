"""Model account capacity (issue 16): `max_sessions` per key and key pools, slots shared through the
call log by every process on one database, a busy answer or the overflow bot when every key is full
(never a model session that would fail), and slots of a killed instance coming back with its lease."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from gateway.calllog import open_store
from gateway.capacity import fingerprint
from gateway.config import ConfigError, load_config
from gateway.phone_sim import DialError
from gateway.web_state import STORE
from tests.calllog_helpers import TOKEN, api, api_until, lease_end
from tests.conftest import GLM_KEY, OPENAI_KEY, write_config
from tests.phone_helpers import dial, ended, new_phone, ulaw_tone, wait_for
from tests.proc import free_port, serve_all, stop

pytestmark = pytest.mark.looptime

CAP1 = "providers:\n" + "".join(f"  {p}:\n    max_sessions: 1\n" for p in ("glm", "qwen", "gemini", "openai"))  # openai last: tests append to its section


async def test_a_slot_is_taken_atomically_held_until_its_lease_lapses_and_freed(store_url, tmp_path):
    a, b = open_store(store_url, tmp_path), open_store(store_url, tmp_path)
    await a.start()
    await b.start()
    t = 1_800_000_000.0
    await a.acquire_lease("A", 30, now=t)
    await b.acquire_lease("B", 30, now=t)
    # Webhook holds: until their expiry, whoever holds them.
    assert await a.take_slot("glm", "k1", 0, "CA1", "A", t + 5, now=t)
    assert not await b.take_slot("glm", "k1", 0, "CA2", "B", t + 5, now=t + 1)
    assert await b.take_slot("glm", "k1", 0, "CA2", "B", t + 15, now=t + 6)  # A's hold expired: free
    assert await a.claim_slot("glm", "CA1", "A", now=t + 6) is None  # ...so CA1's stream has no hold
    assert await b.claim_slot("glm", "CA2", "B", now=t + 7) == "k1"  # the stream claims it for B
    # Claimed: held while B's lease lives, whatever the clock says about the webhook's hold.
    assert not await a.take_slot("glm", "k1", 0, "CA3", "A", None, now=t + 29)
    assert [r["call_id"] for r in await a.slots_held(now=t + 29)] == ["CA2"]
    assert await a.slots_held(now=t + 31) == []  # B's lease lapsed (B died): the slot is free again
    assert await a.take_slot("glm", "k1", 0, "CA3", "A", None, now=t + 31)
    await a.release_slot("glm", "CA3")
    assert await a.slots_held(now=t + 31) == []
    # Two processes racing for the same free slot: exactly one gets it.
    got = await asyncio.gather(*(s.take_slot("openai", "k2", 0, f"CR{i}", n, None)
                                 for i, (s, n) in enumerate([(a, "A"), (b, "B")] * 4)))
    assert sum(got) == 1
    await a.close()
    await b.close()


def test_key_pools_caps_env_lists_and_overflow_are_configuration(config_dir):
    (config_dir / "bots" / "glm-quiet.yaml").write_text("provider: glm\noverflow: openai-quiet\n")
    env = {"ZHIPU_API_KEYS": f" {GLM_KEY}, id2.secret2 ,", "OPENAI_API_KEY": OPENAI_KEY}
    cfg = load_config(write_config(config_dir, "providers:\n  glm:\n    max_sessions: 5\n"), env=env)
    assert cfg.providers.glm.api_keys == [GLM_KEY, "id2.secret2"] and cfg.providers.glm.max_sessions == 5
    assert {GLM_KEY, "id2.secret2", OPENAI_KEY} <= set(cfg.secrets())  # every key of a pool is redacted
    assert cfg.bots["glm-quiet"].overflow == "openai-quiet" and cfg.bots["support"].overflow == "busy"
    assert cfg.provider_ready(cfg.bots["support"])  # a pool without api_key is a key
    with pytest.raises(ConfigError, match=r"providers.glm.max_sessions: expected >= 0"):
        load_config(write_config(config_dir, "providers:\n  glm:\n    max_sessions: -1\n"), env=env)
    with pytest.raises(ConfigError, match=r"providers.glm.api_keys: expected id.secret keys"):
        load_config(write_config(config_dir), env={"ZHIPU_API_KEYS": "nodot"})
    (config_dir / "bots" / "glm-quiet.yaml").write_text("provider: glm\noverflow: nobody\n")
    with pytest.raises(ConfigError, match=r"glm-quiet.yaml: overflow: expected busy or another bot, got 'nobody'"):
        load_config(write_config(config_dir), env=env)


async def _talk(phone, hz: float = 440) -> None:
    await phone.silence(0.3)
    await phone.say(ulaw_tone(hz, 0.5))
    await wait_for(lambda: phone.result.media_bytes > 10 * 160, 5, "the model's reply")


async def test_max_sessions_1_second_call_busy_third_after_hangup_gets_the_model(make_gateway, model, store_url):
    gw = await make_gateway(env={"GATEWAY_DATABASE_URL": store_url, "GATEWAY_OPERATOR_TOKEN": TOKEN},
                            extra=CAP1, **{model.name: model.fake})
    first = await dial(gw.url, bot=model.quiet)
    await _talk(first)
    assert len(model.fake.sessions) == 1
    second = new_phone(gw.url, bot=model.quiet, caller="+15550002222")
    with pytest.raises(DialError) as busy:
        await second.dial()
    fp = fingerprint(model.key)
    assert str(busy.value) == (f"refused: busy: no model capacity: bot {model.quiet!r} full ({model.name} keys "
                               f"{fp} 1/1) (the caller hears: All our lines are busy right now. Please call again "
                               "in a few minutes. Goodbye.)")
    assert "<Say" in second.result.twiml and "<Stream" not in second.result.twiml
    assert len(model.fake.sessions) == 1  # no model session for the busy call
    status, cap = await api(gw.url, "/api/capacity")
    assert status == 200 and {"provider": model.name, "key": fp, "used": 1, "limit": 1} in cap["slots"]
    async with aiohttp.ClientSession() as http:  # the same on /metrics, read by prometheus-client's parser
        async with http.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            text = await r.text()
    from prometheus_client.parser import text_string_to_metric_families
    samples = {(s.name, s.labels.get("key")): s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name.startswith("gateway_model_slots")}
    assert samples[("gateway_model_slots_used", fp)] == 1 and samples[("gateway_model_slots_limit", fp)] == 1
    await first.hangup()
    await ended(gw, first)
    third = await dial(gw.url, bot=model.quiet, caller="+15550003333")
    await _talk(third, 600)
    assert len(model.fake.sessions) == 2
    await third.hangup()
    await ended(gw, third)
    await gw.app[STORE].flush()
    records = {c["call_id"]: c for c in (await api(gw.url, "/api/calls"))[1]["calls"]}
    assert [(records[p.call_sid]["end_reason"], records[p.call_sid]["model_key"]) for p in (first, second, third)] \
        == [("caller_hangup", fp), ("refused", None), ("caller_hangup", fp)]
    assert records[second.call_sid]["overflow"] == f"bot {model.quiet!r} full ({model.name} keys {fp} 1/1)"
    assert (await api(gw.url, "/api/capacity"))[1] == {"slots": [{"provider": model.name, "key": fp, "used": 0,
                                                                   "limit": 1}]}


async def test_a_full_bot_overflows_to_its_overflow_bot_with_no_session_on_the_full_one(
        make_gateway, config_dir, fake_glm, fake_openai):
    (config_dir / "bots" / "glm-quiet.yaml").write_text("provider: glm\nlanguage: en-US\noverflow: openai-quiet\n")
    (config_dir / "bots" / "openai-quiet.yaml").write_text(
        "provider: openai\nlanguage: en-US\noverflow: glm-quiet\nbusy_message: Everyone is on the phone.\n")
    gw = await make_gateway(glm=fake_glm, openai=fake_openai, extra=CAP1, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    first = await dial(gw.url, bot="glm-quiet")
    await _talk(first)
    second = await dial(gw.url, bot="glm-quiet", caller="+15550002222")  # GLM is full: OpenAI takes it
    await _talk(second)
    assert (len(fake_glm.sessions), len(fake_openai.sessions)) == (1, 1)
    third = new_phone(gw.url, bot="glm-quiet", caller="+15550003333")  # both full: no loop, the busy answer
    with pytest.raises(DialError, match=r"refused: busy: no model capacity: bot 'glm-quiet' full \(glm keys "
                                        r"\w{8} 1/1\); bot 'openai-quiet' full \(openai keys \w{8} 1/1\)"):
        await third.dial()
    assert "All our lines are busy" in third.result.twiml  # the persona the caller dialed speaks
    assert (len(fake_glm.sessions), len(fake_openai.sessions)) == (1, 1)
    await gw.app[STORE].flush()
    record = (await api(gw.url, f"/api/calls/{second.call_sid}"))[1]
    assert (record["bot"], record["provider"], record["model_key"]) == ("openai-quiet", "openai",
                                                                        fingerprint(OPENAI_KEY))
    assert record["overflow"] == f"bot 'glm-quiet' full (glm keys {fingerprint(GLM_KEY)} 1/1)"
    for phone in (first, second):
        await phone.hangup()
        await ended(gw, phone)


async def test_a_key_pool_spreads_calls_over_its_keys_and_each_key_has_its_cap(make_gateway, fake_openai):
    other = "sk-fake-openai-second-key-987654"
    fake_openai.extra_keys = {other}
    gw = await make_gateway(openai=fake_openai, extra=CAP1,
                            env={"OPENAI_API_KEYS": f"{OPENAI_KEY},{other}", "OPENAI_API_KEY": ""})
    phones = [await dial(gw.url, bot="openai-quiet", caller=f"+1555000000{i}") for i in range(2)]
    for phone in phones:
        await _talk(phone)
    assert sorted(s.auth_header for s in fake_openai.sessions) == sorted(f"Bearer {k}" for k in (OPENAI_KEY, other))
    with pytest.raises(DialError, match="refused: busy"):
        await new_phone(gw.url, bot="openai-quiet", caller="+15550000009").dial()
    for phone in phones:
        await phone.hangup()
        await ended(gw, phone)


@pytest.mark.looptime(False)  # leases lapse on the database's wall clock
async def test_two_instances_share_the_cap_and_a_killed_ones_slot_comes_back_with_its_lease(
        config_dir, fake_glm, store_url):
    """Two gateway processes on one database (PostgreSQL: all instances; SQLite: one machine), one
    GLM key with max_sessions 1: a call on A fills it for B too; A is SIGKILLed mid-call and B's
    callers get the model again once A's lease (2 s) lapsed, never before."""
    config_path = write_config(config_dir, CAP1 + "storage:\n  lease_seconds: 2\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY",)}
    env.update(GATEWAY_DATABASE_URL=store_url, GATEWAY_OPERATOR_TOKEN=TOKEN, ZHIPU_API_KEY=GLM_KEY,
               GLM_REALTIME_URL=fake_glm.url)
    port_a, port_b = free_port(), free_port()
    a, b = serve_all([(port_a, env, config_path), (port_b, env, config_path)])
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    try:
        call = await dial(url_a, bot="glm-quiet")
        await _talk(call)
        with pytest.raises(DialError, match="refused: busy: no model capacity"):
            await new_phone(url_b, bot="glm-quiet", caller="+15550002222").dial()
        assert (await api(url_b, "/api/capacity"))[1]["slots"][0]["used"] == 1
        instance_a = (await api_until(url_b, f"/api/calls/{call.call_sid}", lambda c: c["instance"], 5))["instance"]
        a.send_signal(signal.SIGKILL)
        a.wait(5)
        killed = time.monotonic()
        a_lease_ends = await lease_end(store_url, instance_a)
        while True:
            phone = new_phone(url_b, bot="glm-quiet", caller="+15550003333")
            try:
                await phone.dial()
                break
            except DialError:
                assert time.monotonic() - killed < 6, "the killed instance's slot never came back"
                await asyncio.sleep(0.2)
        assert time.time() >= a_lease_ends  # not before A's lease (as last renewed) ran out
        await phone.connect()
        await _talk(phone)
        assert len(fake_glm.sessions) == 2
        await phone.hangup()
    finally:
        stop(a, signal.SIGKILL)
        stop(b, signal.SIGTERM)


async def test_renewals_and_reconnects_keep_the_calls_one_slot_and_key(make_gateway, fake_openai):
    other = "sk-fake-openai-second-key-987654"
    fake_openai.extra_keys = {other}
    gw = await make_gateway(openai=fake_openai, env={"OPENAI_API_KEYS": other, "GATEWAY_OPERATOR_TOKEN": TOKEN},
                            extra=CAP1 + "    session_renew_seconds: 1\n")
    phone = await dial(gw.url, bot="openai-quiet")
    await _talk(phone)
    key = fake_openai.sessions[0].auth_header
    await wait_for(lambda: len(fake_openai.sessions) >= 2, 4, "a renewal")  # after 1 s, at a quiet moment
    fake_openai.fail_after_deltas, fake_openai.fail_first_session_only = 1, False
    await phone.say(ulaw_tone(440, 0.5))  # the reply's socket drops: a reconnect
    await wait_for(lambda: len(fake_openai.sessions) >= 3, 5, "a reconnect")
    fake_openai.fail_after_deltas = None
    assert {s.auth_header for s in fake_openai.sessions} == {key}  # the whole call on its one key
    slots = (await api(gw.url, "/api/capacity"))[1]["slots"]
    assert sorted(s["used"] for s in slots) == [0, 1]  # one slot, however many sessions
    await phone.hangup()
    await ended(gw, phone)


@pytest.mark.looptime(False)  # a slot's hold lapses on the database's wall clock
async def test_a_stream_after_its_hold_lapsed_takes_a_free_slot_or_is_closed_without_a_model_session(
        make_gateway, fake_glm):
    gw = await make_gateway(glm=fake_glm, extra=CAP1 + "limits:\n  stream_wait_seconds: 1\n")
    late = new_phone(gw.url, bot="glm-quiet")
    await late.dial()  # Twilio is slow to open the stream: the hold lapses after 1 s
    await asyncio.sleep(1.2)
    on_time = await dial(gw.url, bot="glm-quiet", caller="+15550002222")  # takes the only slot
    await _talk(on_time)
    await late.connect()
    await asyncio.wait_for(late.closed.wait(), 3)  # the gateway closes the late stream
    assert len(fake_glm.sessions) == 1  # no session for it: Twilio speaks the TwiML's fallback instead
    await on_time.hangup()
    await ended(gw, on_time)
    again = new_phone(gw.url, bot="glm-quiet", caller="+15550003333")
    await again.dial()
    await asyncio.sleep(1.2)
    await again.connect()  # its hold lapsed too, but a slot is free: it takes one at the stream's start
    await _talk(again)
    assert len(fake_glm.sessions) == 2
    await again.hangup()
    await ended(gw, again)
