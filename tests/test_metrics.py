"""Prometheus /metrics: read by prometheus-client's own parser after real calls on loopback;
guarded by the operator token unless metrics.public."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.fault_proxy import FaultProxy
from tests.calllog_helpers import TOKEN, api
from tests.phone_helpers import dial, ended, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime


async def scrape(gw_url: str, token: str | None = TOKEN) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} as prometheus-client parses the page."""
    status, body = await api(gw_url, "/metrics", token)
    assert status == 200, body
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_a_call_with_a_barge_in_shows_up_in_the_metrics(make_gateway, fake_glm):
    fake_glm.reply_seconds, fake_glm.delta_interval = 4.0, 0.4
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    before = await scrape(gw.url)
    assert value(before, "gateway_calls_ended_total", bot="glm-greeter", end_reason="caller_hangup") is None
    phone = await dial(gw.url, bot="glm-greeter")
    await phone.silence(1.2)  # part of the greeting
    live = await scrape(gw.url)
    assert value(live, "gateway_calls_live", bot="glm-greeter", network="twilio") == 1
    assert value(live, "gateway_calls_started_total", bot="glm-greeter", network="twilio") == 1
    await phone.say(ulaw_tone(440, 0.6))  # over the greeting: a barge-in, then a reply
    await phone.silence(1.5)
    await phone.hangup()
    summary = await ended(gw, phone)
    assert summary.barge_ins == 1 and len(summary.turn_latencies_ms) == 1

    m = await scrape(gw.url)
    assert value(m, "gateway_calls_ended_total", bot="glm-greeter", end_reason="caller_hangup") == 1
    assert value(m, "gateway_calls_live", bot="glm-greeter", network="twilio") == 0  # stays, at 0: no gap in graphs
    assert value(m, "gateway_first_audio_seconds_count", bot="glm-greeter") == 1
    first = value(m, "gateway_first_audio_seconds_sum", bot="glm-greeter")
    assert 0 <= first < 1.0  # on the fast-forwarded clock a fake that answers at once takes 0 s
    assert value(m, "gateway_turn_latency_seconds_count", bot="glm-greeter") == 1
    assert value(m, "gateway_turn_latency_seconds_sum", bot="glm-greeter") == summary.turn_latencies_ms[0] / 1000
    assert value(m, "gateway_barge_ins_total", bot="glm-greeter", by="caller") == 1
    assert value(m, "gateway_call_duration_seconds_count", bot="glm-greeter") == 1
    assert value(m, "gateway_model_errors_total", provider="glm", kind="recoverable") is None
    assert value(m, "gateway_calllog_writes_dropped_total") == 0
    assert value(m, "gateway_calllog_queue_depth") is not None
    # the operator API counts its requests (the scrapes above are not API requests)
    await api(gw.url, "/api/live")
    await api(gw.url, "/api/calls/nope")
    await api(gw.url, "/api/live", token="wrong-token-123")
    m = await scrape(gw.url)
    assert value(m, "gateway_operator_api_requests_total", route="/api/live", method="GET", status="200") == 1
    assert value(m, "gateway_operator_api_requests_total", route="/api/live", method="GET", status="401") == 1
    assert value(m, "gateway_operator_api_requests_total", route="/api/calls/{call_id}", method="GET",
                 status="404") == 1


async def test_a_model_reconnect_is_counted(make_gateway, fake_glm):
    proxy = FaultProxy(fake_glm.url)
    await proxy.start()
    try:
        gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN, "GLM_REALTIME_URL": proxy.url})
        phone = await dial(gw.url, bot="glm-quiet")
        await wait_for(lambda: proxy.connections == 1, 3, "the model session")
        await phone.silence(0.3)
        proxy.drop_all()  # the model's socket drops: the call reconnects
        await wait_for(lambda: proxy.connections == 2, 3, "the reconnection")
        await phone.silence(0.3)
        await phone.hangup()
        assert (await ended(gw, phone)).sessions == 2
    finally:
        await proxy.stop()
    m = await scrape(gw.url)
    assert value(m, "gateway_model_sessions_replaced_total", provider="glm", kind="reconnect") == 1
    assert value(m, "gateway_model_sessions_replaced_total", provider="glm", kind="renewal") is None


async def test_metrics_need_the_operator_token_unless_public(make_gateway):
    gw = await make_gateway(env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    assert (await api(gw.url, "/metrics", token=None))[0] == 401
    assert (await api(gw.url, "/metrics", token="not-the-token-0000"))[0] == 401
    assert "gateway_calls_ended" in (await api(gw.url, "/metrics"))[1].decode()

    closed = await make_gateway()  # no operator token at all: closed, not open
    status, body = await api(closed.url, "/metrics", token=None)
    assert status == 401 and "GATEWAY_OPERATOR_TOKEN" in body["error"]

    public = await make_gateway(extra="metrics:\n  public: true\n")
    async with aiohttp.ClientSession() as s:
        async with s.get(public.url + "/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            families = {f.name for f in text_string_to_metric_families(await r.text())}
    assert {"gateway_calls_ended", "gateway_first_audio_seconds", "gateway_calls_live"} <= families


async def test_two_apps_in_one_process_count_apart(make_gateway):
    a = await make_gateway(extra="metrics:\n  public: true\n")
    b = await make_gateway(extra="metrics:\n  public: true\n")
    phone = await dial(a.url, bot="echo")
    await phone.silence(0.2)
    await phone.hangup()
    await ended(a, phone)
    assert value(await scrape(a.url, None), "gateway_calls_ended_total", bot="echo", end_reason="caller_hangup") == 1
    assert value(await scrape(b.url, None), "gateway_calls_ended_total", bot="echo", end_reason="caller_hangup") is None


async def test_the_grafana_dashboard_uses_only_metrics_that_exist(make_gateway):
    import json
    import re
    from tests.conftest import REPO
    gw = await make_gateway(extra="metrics:\n  public: true\n")
    body = (await api(gw.url, "/metrics", token=None))[1].decode()
    names = {f.name + suffix for f in text_string_to_metric_families(body)
             for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"gateway_\w+", t["expr"])}
    assert len(used) >= 12 and used <= names, used - names


def test_an_observer_that_fails_never_fails_the_call(caplog):
    import logging
    from gateway.call.journal import CallSummary, Journal
    from gateway.calllog import NullRecordWriter
    from gateway.logs import CallLogger

    class Broken:
        def updated(self, fields, summary):
            raise KeyError("boom")

        def event(self, kind, fields, summary):
            raise ValueError("bang")

    seen = []

    class Fine:
        def updated(self, fields, summary):
            seen.append(("updated", fields))

        def event(self, kind, fields, summary):
            seen.append((kind, fields))

    journal = Journal(CallLogger(logging.getLogger("gateway"), call="CA1"), NullRecordWriter("CA1"),
                      CallSummary("CA1", "echo"), lambda: 0.0, [Broken(), Fine()])
    with caplog.at_level(logging.ERROR, logger="gateway"):
        journal.update(started_at=1.0)
        journal.event("barge_in", by="caller")
        journal.error("model_connect_failed", "refused")
    assert seen == [("updated", {"started_at": 1.0}), ("barge_in", {"by": "caller"}),
                    ("error", {"code": "model_connect_failed"})]
    assert sum("call_observer_failed" in r.getMessage() and "Broken" in r.getMessage() for r in caplog.records) == 3
