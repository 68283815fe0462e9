"""The operators' dashboard in a real headless Chromium, after simulated calls: what a person
would see — live calls appearing and going by themselves, history with filters, per-bot figures,
a call page with interrupted turns visibly cut, latencies, events and a playable recording.

Screenshots go to build/test-artifacts/ (kept by CI logs' neighbours, ignored by git)."""

from __future__ import annotations

import os

import pytest

from tests.calllog_helpers import TOKEN, three_calls
from tests.cdp import Browser, chromium_path
from tests.conftest import REPO
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
    bots = await page.text("#bots")
    assert "glm-greeter\t2" in bots and "openai-greeter\t1" in bots and "model_error 1" in bots
    await page.screenshot(ARTIFACTS / f"dashboard-home-{store_url.split(':')[0]}.png")

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
    details = await page.text("#call-details")
    assert "openai-greeter" in details and "caller_hangup" in details and "+15550000002" in details
    duration = await page.wait_for("(() => { const a = document.querySelector('#recording');"
                                   " return a && a.readyState >= 1 && a.duration; })()")
    assert 2.0 < duration < 6.0  # a playable WAV of the whole call
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
