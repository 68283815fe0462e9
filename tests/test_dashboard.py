"""The operators' dashboard in a real headless Chromium, after simulated calls: what a person
would see — live calls appearing and going by themselves, history with filters, per-bot figures,
a call page with interrupted turns visibly cut, latencies, events and a playable recording.

Screenshots go to build/test-artifacts/ (kept by CI logs' neighbours, ignored by git)."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone

import pytest

from gateway.app import STORE
from gateway.calllog.recorder import RecordWriter
from gateway.calllog.store import END_REASONS
from gateway.capacity import fingerprint
from tests.calllog_helpers import TOKEN, api, three_calls
from tests.cdp import Browser, chromium_path
from tests.conftest import GLM_KEY, REPO
from tests.phone_helpers import dial, ended

ARTIFACTS = REPO / "build" / "test-artifacts"


@pytest.fixture
async def browser():
    exe = chromium_path()
    if not exe:
        pytest.skip("Chromium not available: " + os.environ.get("GATEWAY_TEST_CHROMIUM_SKIP",
                                                                 "not installed (scripts/test installs it)"))
    b = await Browser.launch(exe)
    yield b
    await b.close()


async def test_dashboard_after_three_calls(make_gateway, fake_glm, fake_openai, store_url, browser):
    gw, normal, cut, broken = await three_calls(make_gateway, fake_glm, fake_openai, store_url,
                                                extra="recording:\n  enabled: true\n")
    fake_glm.fail_after_deltas = None
    live = await dial(gw.url, bot="glm-quiet", caller="+15550000077")
    page = await browser.new_page()
    await page.goto(f"{gw.url}/#token={TOKEN}")
    await page.wait_for("document.querySelectorAll('#history tbody tr').length === 4")  # the live one too
    await page.wait_for("document.querySelector('#live').innerText.includes('+15550000077')")
    assert "token" not in await page.eval("location.href")  # taken out of the address bar

    history = await page.text("#history")
    for phone in (normal, cut, broken):
        assert phone.caller in history
    assert history.count("glm-greeter") == 2 and "openai-greeter" in history
    assert await page.eval("document.querySelector('#history .reason-model_error')?.innerText") == "model_error"
    assert await page.eval("document.querySelectorAll('#history .reason-caller_hangup').length") == 2
    # Model sessions per key, the key only as its fingerprint: the live GLM call holds one.
    await page.wait_for("document.querySelector('#capacity').innerText.includes('glm\\t' + %r + '\\t1\\tno cap')"
                        % fingerprint(GLM_KEY))
    assert GLM_KEY.split(".")[1] not in await page.text("#capacity")
    bots = await page.text("#bots")
    assert "glm-greeter\t2" in bots and "openai-greeter\t1" in bots and "model_error 1" in bots

    # Each history row shows its call id, linking to the call's page.
    links = await page.eval("[...document.querySelectorAll('#history tbody tr td:first-child a')]"
                            ".map(a => [a.innerText, a.getAttribute('href')])")
    assert [cut.call_sid, f"/?call={cut.call_sid}"] in links and len(links) == 4
    assert await page.eval("[...document.querySelectorAll('#history th')].slice(0, 4).map(t => t.innerText)") \
        == ["Call", "Started (UTC)", "Bot", "Network"]
    # The network, in both tables (issue 20): the live row's third cell, each history row's fourth.
    assert await page.eval("[...document.querySelectorAll('#history tbody tr td:nth-child(4)')]"
                           ".map(td => td.innerText)") == ["twilio"] * 4
    assert await page.eval("[...document.querySelectorAll('#live th')].slice(0, 3).map(t => t.innerText)") \
        == ["Call", "Bot", "Network"]
    assert await page.eval("document.querySelector('#live tbody tr td:nth-child(3)').innerText") == "twilio"
    # UTC everywhere: the header's clock says so, like the table's column.
    assert re.fullmatch(r"updated \d\d:\d\d:\d\d UTC", await page.text("#status"))
    # One page of calls: both paging buttons are disabled, and look it.
    assert await page.eval("document.querySelector('#prev').disabled && document.querySelector('#next').disabled")
    assert await page.eval("[...document.querySelectorAll('.pager button')].map(b => getComputedStyle(b).opacity)") \
        == ["0.4", "0.4"]
    assert await page.eval("getComputedStyle(document.querySelector('#filters button')).opacity") == "1"
    # Every filter has a visible label; the date ones say they are UTC days, both included.
    labels = await page.eval("[...document.querySelectorAll('#filters input, #filters select')]"
                             ".map(i => i.closest('label')?.firstChild.textContent.trim())")
    assert labels == ["Bot", "Number", "Started from", "through", "Ended", "Said"]
    assert "UTC days, both included" in await page.text("#filters")
    assert await page.eval("[...document.querySelectorAll('#filters select option')].slice(1).map(o => o.value)") \
        == list(END_REASONS)  # every end reason the API filters on, silence_timeout too
    await page.screenshot(ARTIFACTS / f"dashboard-home-{store_url.split(':')[0]}.png")

    # "through" today includes today's calls (the API's `until` alone would exclude them).
    today = datetime.now(timezone.utc).date().isoformat()
    await page.eval(f"document.querySelector('#filters [name=since]').value = '{today}';"
                    f"document.querySelector('#filters [name=until]').value = '{today}';"
                    "document.querySelector('#filters button').click()")
    await page.wait_for("document.querySelector('#page').innerText === '1–4 of 4'")
    await page.eval("document.querySelector('#filters').reset(); document.querySelector('#filters button').click()")

    # Live calls update by themselves: the caller hangs up, the row goes, nobody reloads.
    await live.hangup()
    await ended(gw, live)
    await page.wait_for("document.querySelector('#live').innerText.includes('No live calls')", 6)
    await page.wait_for("[...document.querySelectorAll('#history tbody tr')].filter("
                        "r => r.innerText.includes('+15550000077') && r.innerText.includes('caller_hangup')).length === 1",
                        12)  # the history refreshes by itself too: that call has ended

    # Filters work like a person uses them.
    await page.eval("document.querySelector('#filters select').value = 'model_error';"
                    "document.querySelector('#filters button').click()")
    await page.wait_for("document.querySelectorAll('#history tbody tr').length === 1")
    assert broken.caller in await page.text("#history")
    await page.eval("document.querySelector('#filters select').value = '';"
                    "document.querySelector('#filters [name=q]').value = 'caller spoke 0.6';"
                    "document.querySelector('#filters button').click()")
    await page.wait_for("document.querySelector('#history').innerText.includes('+15550000002') && "
                        "document.querySelectorAll('#history tbody tr').length === 1")

    # The interrupted call, as a timeline.
    await page.goto(f"{gw.url}/?call={cut.call_sid}")
    await page.wait_for("document.querySelectorAll('#timeline li').length > 3")
    heard = await page.eval("document.querySelector('#timeline li[data-kind=bot] .heard').innerText")
    unheard = await page.eval("document.querySelector('#timeline li[data-kind=bot] .unheard').innerText")
    assert heard and unheard and "Hello, thanks for calling Northwind.".startswith(heard.strip())
    assert await page.eval("getComputedStyle(document.querySelector('.unheard')).textDecorationLine") == "line-through"
    assert "cut after" in await page.eval("document.querySelector('.cut-badge').innerText")
    timeline = await page.text("#timeline")
    assert "caller spoke 0.6 seconds" in timeline and "reply in" in timeline and "barge in" in timeline
    # The barge-in reads as a sentence, not as the record's raw fields.
    barge = await page.text("#timeline li[data-kind=barge_in] .event:not(.who)")
    m = re.fullmatch(r"The caller interrupted the bot (\d+) ms into its line; they had heard \u201c(.+)\u201d\.", barge)
    assert m and int(m.group(1)) > 0 and m.group(2) == heard.strip(), barge
    assert "responses=" not in timeline and "cancelled=" not in timeline
    details = await page.text("#call-details")
    assert "openai-greeter" in details and "caller_hangup" in details and "+15550000002" in details
    assert re.search(r"Network\stwilio", details), details
    assert re.search(r"Started\s\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", details), details
    duration = await page.wait_for("(() => { const a = document.querySelector('#recording');"
                                   " return a && a.readyState >= 1 && a.duration; })()")
    assert 2.0 < duration < 6.0  # a playable WAV of the whole call

    # The same call on a time axis: the caller's speech, the bot's audio (the cut rest dashed), the
    # barge-in where the caller spoke over it, the reply latency.
    axis = "document.querySelector('#call-axis')"
    speech = await page.eval(f"[...{axis}.querySelectorAll('rect.speech')].map(r => r.querySelector('title').textContent)")
    assert speech and all(s.startswith("Caller speaking") for s in speech), speech
    assert await page.eval(f"{axis}.querySelectorAll('rect.bot-audio').length") >= 2  # greeting and reply
    assert await page.eval(f"{axis}.querySelectorAll('rect.unheard-audio').length") == 1
    cut_x, speech_x = await page.eval(f"[+{axis}.querySelector('line.cut').getAttribute('x1'), "
                                      f"+{axis}.querySelector('rect.speech').getAttribute('x')]")
    assert abs(cut_x - speech_x) < 40, (cut_x, speech_x)  # the barge-in is where the caller started speaking
    assert "they had heard" in await page.eval(f"{axis}.querySelector('line.cut title').textContent")
    assert re.fullmatch(r"\d+ ms", await page.eval(f"{axis}.querySelector('text.latency-label').textContent"))
    # The cursor follows the recording as it plays; a click on the axis seeks it.
    await page.eval("document.querySelector('#recording').play()")
    await page.wait_for("+document.querySelector('#cursor').dataset.t > 0.4", 5)
    await page.eval("document.querySelector('#recording').pause()")
    end = await page.eval(f"+{axis}.dataset.end")
    await page.eval(f"(() => {{ const b = {axis}.getBoundingClientRect(), W = {axis}.viewBox.baseVal.width;"
                    f" const px = 64 + 0.75 * (W - 64 - 14);"  # 3/4 along the axis
                    f" {axis}.dispatchEvent(new MouseEvent('click', {{clientX: b.left + px * b.width / W,"
                    f" clientY: b.top + 50, bubbles: true}})); }})()")
    await page.wait_for("document.querySelector('#recording').seeking === false")
    at = await page.eval("document.querySelector('#recording').currentTime")
    assert abs(at - min(0.75 * end, duration)) < 0.1, (at, end)
    assert abs(float(await page.eval("document.querySelector('#cursor').dataset.t")) - at) < 0.05
    await page.screenshot(ARTIFACTS / f"dashboard-call-{store_url.split(':')[0]}.png")

    # The failed call says what went wrong.
    await page.goto(f"{gw.url}/?call={broken.call_sid}")
    await page.wait_for("document.querySelector('#call-details').innerText.includes('upstream_closed')")
    assert "error" in await page.text("#timeline")
    assert not [c for c in page.console if c.startswith("exception")], page.console
    await page.close()


async def test_dashboard_asks_for_the_token_and_refuses_a_wrong_one(make_gateway, fake_glm, browser):
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    page = await browser.new_page()
    await page.goto(f"{gw.url}/")
    await page.wait_for("!document.querySelector('#login').hidden")
    assert await page.eval("document.querySelector('#home').hidden")
    await page.eval("document.querySelector('#token').value = 'wrong'; document.querySelector('#login-form button').click()")
    await page.wait_for("document.querySelector('#status').innerText.includes('refused')")
    await page.eval("document.querySelector('#token').value = %r; document.querySelector('#login-form button').click()"
                    % TOKEN)
    await page.wait_for("!document.querySelector('#home').hidden && document.querySelector('#page').innerText === 'no calls'")
    await page.close()


async def test_dashboard_says_the_api_is_disabled_and_what_to_set(make_gateway, fake_glm, browser):
    gw = await make_gateway(glm=fake_glm)  # no operator token configured
    page = await browser.new_page()
    await page.goto(f"{gw.url}/")
    await page.wait_for("!document.querySelector('#login').hidden")
    await page.wait_for("document.querySelector('#status').innerText === 'operator API disabled'")
    login = await page.text("#login")
    assert "Operator API disabled" in login and "GATEWAY_OPERATOR_TOKEN" in login and "operator.token" in login
    assert "refused" not in login
    assert await page.eval("document.querySelector('#login-form').hidden")  # no token typed here could work
    assert await page.eval("document.querySelector('#home').hidden")
    await page.screenshot(ARTIFACTS / "dashboard-disabled.png")
    # A token in the address bar changes nothing: still the same explanation, not "refused".
    await page.goto(f"{gw.url}/?call=CA0#token=guess")
    await page.wait_for("document.querySelector('#status').innerText === 'operator API disabled'")
    assert await page.eval("document.querySelector('#call').hidden")
    await page.close()


async def test_dashboard_shows_control_characters_in_a_number_escaped(make_gateway, fake_glm, store_url, browser):
    """A caller id with a newline, NUL, ESC sequence, bidi override and markup: the store keeps it as
    received, the dashboard shows it on one line with the invisible characters visible, as text.
    (Written through the store's recorder: TwiML, being XML 1.0, cannot carry NUL or ESC at all.)"""
    # PostgreSQL text cannot hold NUL (the write is refused): there the number carries the rest.
    nul = "" if store_url.startswith("postgresql") else "\x00"
    caller = f"+1555\n01{nul}\x1b[2J\u202e9"
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_DATABASE_URL": store_url, "GATEWAY_OPERATOR_TOKEN": TOKEN})
    now = time.time()
    for sid, number in (("CA" + "0" * 32, "+15550000001"), ("CA" + "1" * 32, caller)):
        rec = RecordWriter(gw.app[STORE], sid)
        rec.update(webhook_at=now - 5, started_at=now - 5, ended_at=now, duration_s=5.0, end_reason="caller_hangup",
                   from_number=number, to_number="<b>+1500</b>", bot="glm-quiet", provider="glm", model="m",
                   turns=1, barge_ins=0)
        rec.event("caller", 1.0, text="press \x1b[2J <i>one</i>")
        now += 1
    await gw.app[STORE].flush()
    page = await browser.new_page()
    await page.goto(f"{gw.url}/#token={TOKEN}")
    await page.wait_for("document.querySelectorAll('#history tbody tr').length === 2")
    shown = "+1555\\n01" + ("\\x00" if nul else "") + "\\x1b[2J\\u202e9"
    cell = "#history tbody tr:first-child td:nth-child(5)"  # (the 4th is the network)
    assert await page.text(cell) == shown
    assert await page.text("#history tbody tr:first-child td:nth-child(6)") == "<b>+1500</b>"
    assert await page.eval(f"[...document.querySelectorAll('{cell} .ctl')].map(s => s.innerText)") \
        == ["\\n", *(["\\x00"] if nul else []), "\\x1b", "\\u202e"]
    assert await page.eval("document.querySelectorAll('#history b').length") == 0  # text, not HTML
    # The row stays one line high, like its neighbour.
    heights = await page.eval("[...document.querySelectorAll('#history tbody tr')].map(r => r.offsetHeight)")
    assert heights[0] == heights[1], heights
    await page.screenshot(ARTIFACTS / f"dashboard-odd-number-{store_url.split(':')[0]}.png")
    await page.goto(f"{gw.url}/?call=CA{'1' * 32}")
    await page.wait_for("document.querySelector('#call-details').innerText.includes('caller_hangup')")
    assert f"{shown} → <b>+1500</b>" in await page.text("#call-details")
    assert "press \\x1b[2J <i>one</i>" in await page.text("#timeline")
    assert await page.eval("document.querySelectorAll('#call b, #call i').length") == 0
    await page.close()


async def test_dashboard_tells_each_kind_of_barge_in_as_a_sentence(make_gateway, fake_glm, tmp_path, browser):
    """Barge-ins by voice or keypad, after part of a line or before any of it was heard."""
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path}/calls.db",
                                               "GATEWAY_OPERATOR_TOKEN": TOKEN})
    sid, now = "CA" + "2" * 32, time.time()
    rec = RecordWriter(gw.app[STORE], sid)
    rec.update(webhook_at=now - 9, started_at=now - 9, ended_at=now, duration_s=9.0, end_reason="caller_hangup",
               from_number="+15550000001", to_number="+15005550006", bot="glm-quiet", turns=2, barge_ins=3)
    rec.event("bot", 0.5, text="Hello there, how can I help?", response="r1", heard="Hello there, how can I help?")
    rec.event("bot_cut", 1.2, response="r1", heard="Hello there,", heard_ms=700)
    rec.event("barge_in", 1.2, by="keypad", responses=["r1"], cancelled="r1", heard_ms=[700])
    rec.event("barge_in", 3.0, by="caller", responses=["r2"], cancelled="r2", heard_ms=[0])
    rec.event("barge_in", 5.0, responses=[], cancelled=None, heard_ms=[])
    await gw.app[STORE].flush()
    page = await browser.new_page()
    await page.goto(f"{gw.url}/?call={sid}#token={TOKEN}")
    await page.wait_for("document.querySelectorAll('#timeline li[data-kind=barge_in]').length === 3")
    said = await page.eval("[...document.querySelectorAll('#timeline li[data-kind=barge_in] .event:not(.who)')]"
                           ".map(s => s.innerText)")
    assert said == ["The caller interrupted the bot with the keypad 700 ms into its line;"
                    " they had heard \u201cHello there,\u201d.",
                    "The caller interrupted before any of the bot's reply was heard.",
                    "The caller interrupted the bot."]
    # The record's own fields stay at hand, as the tooltip.
    assert "heard_ms=[700]" in await page.eval(
        "document.querySelector('#timeline li[data-kind=barge_in] .event:not(.who)').title")
    await page.close()


def _record(store, sid: str, started: float, duration: float, events: list[tuple], **fields) -> None:
    rec = RecordWriter(store, sid)
    rec.update(webhook_at=started, started_at=started, ended_at=started + duration, duration_s=duration,
               end_reason="caller_hangup", from_number="+15550000001", to_number="+15005550006", **fields)
    for kind, t, data in events:
        rec.event(kind, t, **data)


async def test_call_axis_draws_every_kind_of_moment_and_the_bots_view_plots_the_last_hours(
        make_gateway, fake_glm, tmp_path, browser):
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path}/calls.db",
                                               "GATEWAY_OPERATOR_TOKEN": TOKEN})
    store, now = gw.app[STORE], time.time()
    hour = int(now) // 3600 * 3600
    sid = "CA" + "3" * 32
    _record(store, sid, hour - 2 * 3600 + 60, 14.0, [
        ("bot", 0.2, dict(text="Hi, this is Northwind. How can I help?", response="r1", heard="Hi, this is Northwind. How can I help?",
                          generated_ms=2100)),
        ("speech", 2.6, dict(ms=1800)),
        ("caller", 4.5, dict(text="Where is my order A123?")),
        ("tool_call", 4.8, dict(name="lookup_order", arguments={"order_id": "A123"}, call_id="c1")),
        ("tool_result", 6.0, dict(name="lookup_order", call_id="c1", ok=True)),
        ("latency", 5.1, dict(response="r2", ms=700)),
        ("bot", 4.6, dict(text="Your order A123 left our warehouse this morning and arrives tomorrow before noon.",
                          response="r2", heard="Your order A123 left our warehouse this morning and arrives tomorrow before noon.",
                          generated_ms=4800)),
        ("speech", 7.9, dict(ms=1400)),
        ("bot_cut", 8.1, dict(response="r2", heard="Your order A123 left our warehouse", heard_ms=3000)),
        ("barge_in", 8.1, dict(by="caller", responses=["r2"], cancelled="r2", heard_ms=[3000])),
        ("caller", 9.4, dict(text="Can I change the delivery slot?")),
        ("latency", 10.0, dict(response="r3", ms=600)),
        ("bot", 9.5, dict(text="Press 5 to pick a new slot.", response="r3", heard="Press 5 to pick a new slot.",
                          generated_ms=1600)),
        ("dtmf", 12.2, dict(digit="5")),
        ("hang_up", 13.9, dict(reason="caller_hangup")),
    ], bot="glm-agent", provider="glm", model="glm-realtime-flash", direction="outbound", answered_by="human",
       turns=3, barge_ins=1)
    _record(store, "CA" + "4" * 32, hour - 2 * 3600 + 120, 5.0, [("latency", 2.0, dict(response="a", ms=400)),
                                                                 ("latency", 4.0, dict(response="b", ms=900))],
            bot="glm-quiet")
    _record(store, "CA" + "5" * 32, hour + min(60, int(now - hour)), 3.0,
            [("latency", 1.0, dict(response="a", ms=1500))], bot="glm-quiet")
    await store.flush()

    # The API: per hour, calls started and turn latency p50/p95 (nearest rank), for all and per bot.
    status, body = await api(gw.url, "/api/bots?hours=3")
    trend = body["trend"]
    assert status == 200 and trend["hours"] == 3 and len(trend["all"]) == 3
    assert [(b["calls"], b["turns"], b["turn_latency_ms_p50"], b["turn_latency_ms_p95"]) for b in trend["all"]] == \
        [(2, 4, 600, 900), (0, 0, None, None), (1, 1, 1500, 1500)]
    assert [b["calls"] for b in trend["by_bot"]["glm-quiet"]] == [1, 0, 1]
    assert trend["all"][-1]["start"].startswith(time.strftime("%Y-%m-%dT%H:00:00", time.gmtime(hour)))
    for bad in ("0", "169", "x"):
        assert (await api(gw.url, f"/api/bots?hours={bad}"))[0] == 400

    # The bots view: the last 24 hours as bars (calls) and lines (p50, p95).
    page = await browser.new_page()
    await page.goto(f"{gw.url}/#token={TOKEN}")
    await page.wait_for("document.querySelectorAll('#trend-chart rect.calls-bar').length === 2")
    assert await page.eval("document.querySelectorAll('#trend-chart circle.p50-dot').length") == 2
    tips = await page.eval("[...document.querySelectorAll('#trend-chart circle.p95-dot title')].map(t => t.textContent)")
    assert [t.split(": ", 1)[1] for t in tips] == ["turn latency p95 900 ms over 4 turns",
                                                   "turn latency p95 1500 ms over 1 turn"]
    await page.eval("{ const s = document.querySelector('#trend-bot'); s.value = 'glm-agent'; s.onchange(); }")
    await page.wait_for("document.querySelectorAll('#trend-chart rect.calls-bar').length === 1")
    assert await page.eval("document.querySelectorAll('#trend-chart circle.p50-dot').length") == 1
    await page.eval("{ const s = document.querySelector('#trend-bot'); s.value = ''; s.onchange(); }")
    await page.screenshot(ARTIFACTS / "dashboard-bots-trend.png")

    # The call page: lanes, the cut, latencies, the tool call as long as it ran, the key pressed.
    await page.goto(f"{gw.url}/?call={sid}")
    await page.wait_for("document.querySelector('#call-axis') !== null")
    axis = "document.querySelector('#call-axis')"
    W = await page.eval(f"{axis}.viewBox.baseVal.width")

    def x(t: float) -> float:
        return 64 + t / 14.0 * (W - 64 - 14)

    speech = await page.eval(f"[...{axis}.querySelectorAll('rect.speech')].map(r => [+r.getAttribute('x'), "
                             "+r.getAttribute('width'), r.querySelector('title').textContent])")
    assert [(round(a), round(w)) for a, w, _ in speech] == [(round(x(2.6)), round(x(4.4) - x(2.6))),
                                                           (round(x(7.9)), round(x(9.3) - x(7.9)))]
    assert speech[0][2] == "Caller speaking 2.60–4.40 s: \u201cWhere is my order A123?\u201d"
    bots = await page.eval(f"[...{axis}.querySelectorAll('rect.bot-audio')].map(r => [+r.getAttribute('x'), "
                           "+r.getAttribute('width')])")
    # r2's audio starts at its first frame (5.1 s, 700 ms after the caller stopped), 3 s of it heard.
    assert [round(v) for v in bots[1]] == [round(x(5.1)), round(x(8.1) - x(5.1))]
    unheard = await page.eval(f"{axis}.querySelector('rect.unheard-audio title').textContent")
    assert unheard == "Generated but never heard: \u201cthis morning and arrives tomorrow before noon.\u201d"
    assert await page.eval(f"[...{axis}.querySelectorAll('text.latency-label')].map(t => t.textContent)") \
        == ["700 ms", "600 ms"]
    tool = await page.eval(f"(r => [+r.getAttribute('x'), +r.getAttribute('width'), r.querySelector('title').textContent])"
                           f"({axis}.querySelector('rect.tool'))")
    assert round(tool[0]) == round(x(4.8)) and round(tool[1]) == round(x(6.0) - x(4.8))
    assert tool[2] == 'Tool lookup_order {"order_id":"A123"} — 1200 ms'
    assert await page.eval(f"{axis}.querySelector('text.key-label').textContent") == "5"
    assert round(await page.eval(f"+{axis}.querySelector('line.cut').getAttribute('x1')")) == round(x(8.1))
    assert "Answered by\nhuman" in await page.text("#call-details")
    assert await page.eval("document.querySelectorAll('#timeline li[data-kind=speech]').length") == 0
    await page.screenshot(ARTIFACTS / "dashboard-call-axis.png")
    assert not [c for c in page.console if c.startswith("exception")], page.console
    await page.close()
