"""Phone actions through function calling, against both models' fakes and the fake Twilio REST
API: hang up after the goodbye is heard, transfer with <Dial>, a failed transfer told to the
model, HTTP tools (schema-checked), and the keypad (digits to the model, shortcuts without it). On the fast-forwarded clock
(looptime; gateway/clock.py): silence timers and reprompts of many seconds take milliseconds."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tests.audio_check import ulaw_samples, voiced_runs
from tests.conftest import TWILIO_SID
from tests.phone_helpers import dial, ended, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime
from tests.models import CORE_ONLY


@pytest.fixture
async def order_api():
    """A business system the HTTP tool calls; records what reached it."""
    seen: list[dict] = []

    async def orders(request: web.Request) -> web.Response:
        seen.append({"headers": dict(request.headers), "body": await request.json(),
                     "peer": request.transport.get_extra_info("peername")})
        return web.json_response({"order_id": seen[-1]["body"].get("order_id"), "status": "shipped",
                                  "eta": "2026-11-27"})

    app = web.Application()
    app.router.add_post("/orders", orders)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/orders", seen
    await runner.cleanup()


async def test_end_call_hangs_up_only_after_the_goodbye_was_heard(make_gateway, model, fake_rest):
    model.fake.tool_calls = [("end_call", {"reason": "caller is done"})]
    gw = await model.gateway(make_gateway, rest=fake_rest)
    phone = await dial(gw.url, bot=model.agent)
    await phone.say(ulaw_tone(440, 0.5))
    await wait_for(lambda: fake_rest.requests, 6, "the hang-up request")
    assert await phone.wait_closed(3)
    summary = await ended(gw, phone)
    hang = fake_rest.requests[0]
    assert hang.form == {"Status": "completed"} and hang.call_sid == phone.call_sid
    assert hang.path.startswith(f"/2010-04-01/Accounts/{TWILIO_SID}/Calls/")
    # The whole 1.5 s goodbye was played (every mark echoed) before the hang-up went out.
    heard = ulaw_samples(phone.result.heard)
    runs = voiced_runs(heard, 8000)
    assert runs and (runs[-1][1] - runs[-1][0]) / 8000 == pytest.approx(1.5, abs=0.05)
    assert phone.result.marks_echoed == phone.result.marks_received > 0
    assert hang.at >= phone.result.last_echo_at
    s = model.fake.sessions[0]
    assert len(s.tool_outputs) == 1 and json.loads(s.tool_outputs[0]["output"])["ok"] is True
    assert len(s.responses) == 1, "end_call asks for no further speech"
    assert summary.end_reason == "bot_hangup"
    assert not s.errors_sent, s.errors_sent


async def test_transfer_dials_the_named_target_and_ends_as_transferred(make_gateway, model, fake_rest):
    model.fake.tool_calls = [("transfer_call", {"target": "billing", "reason": "refund request"})]
    gw = await model.gateway(make_gateway, rest=fake_rest)
    phone = await dial(gw.url, bot=model.agent, dialed="+15005550006")
    await phone.say(ulaw_tone(440, 0.5))
    await wait_for(lambda: fake_rest.requests, 6, "the transfer request")
    assert await phone.wait_closed(3)
    summary = await ended(gw, phone)
    twiml = fake_rest.requests[0].form["Twiml"]
    assert '<Dial callerId="+15005550006" timeout="30"><Number>+15550008888</Number></Dial>' in twiml
    assert fake_rest.requests[0].at >= phone.result.last_echo_at  # "transferring you" was heard first
    assert summary.end_reason == "transferred"
    assert not model.fake.sessions[0].errors_sent


async def test_a_failed_transfer_is_told_to_the_model_and_the_call_goes_on(make_gateway, model, fake_rest):
    model.fake.tool_calls = [("transfer_call", {})]
    fake_rest.fail_next = [400]  # e.g. Twilio refuses the number
    gw = await model.gateway(make_gateway, rest=fake_rest)
    phone = await dial(gw.url, bot=model.agent)
    await phone.say(ulaw_tone(440, 0.5))
    s = model.fake.sessions[0]
    await wait_for(lambda: s.tool_outputs, 6, "the tool's output")
    out = json.loads(s.tool_outputs[0]["output"])
    assert out["ok"] is False and "transfer failed" in out["error"]
    await wait_for(lambda: len(s.responses) == 2 and s.responses[1]["status"] == "completed", 4,
                   "the model's follow-up (telling the caller)")
    assert not phone.closed.is_set()
    await phone.hangup()
    assert (await ended(gw, phone)).end_reason == "caller_hangup"
    assert not s.errors_sent


async def agent_call(make_gateway, model, tool_calls: list, env: dict):
    """A call to the agent persona whose model will make `tool_calls`: (gateway, phone, model session)."""
    model.fake.tool_calls = tool_calls
    gw = await model.gateway(make_gateway, env=env)
    phone = await dial(gw.url, bot=model.agent)
    await wait_for(lambda: model.fake.sessions, 3, "the model session")
    return gw, phone, model.fake.sessions[0]


async def test_http_tool_checks_arguments_calls_the_system_and_the_model_continues(make_gateway, model, order_api,
                                                                                  gateway_log):
    url, seen = order_api
    gw, phone, s = await agent_call(make_gateway, model, [
        ("lookup_order", {"order_id": 5}),  # wrong type: must never reach the URL
        ("lookup_order", {"order_id": "A123"})], {"ORDER_API_URL": url, "ORDER_API_TOKEN": "order-secret-xyz"})
    await phone.say(ulaw_tone(440, 0.5))
    await wait_for(lambda: s.tool_outputs, 6, "the first tool output")
    bad = json.loads(s.tool_outputs[0]["output"])
    assert bad["ok"] is False and "invalid arguments" in bad["error"] and "order_id" in bad["error"]
    assert not seen
    await wait_for(lambda: len(s.responses) >= 2 and s.responses[1]["status"] == "completed", 4, "follow-up")
    await phone.silence(1.8)
    await phone.say(ulaw_tone(440, 0.5))
    await wait_for(lambda: len(s.tool_outputs) == 2, 6, "the second tool output")
    good = json.loads(s.tool_outputs[1]["output"])
    assert good == {"ok": True, "status": 200, "result": {"order_id": "A123", "status": "shipped", "eta": "2026-11-27"}}
    assert seen == [{"headers": seen[0]["headers"], "body": {"order_id": "A123"}, "peer": seen[0]["peer"]}]
    assert seen[0]["headers"]["Authorization"] == "Bearer order-secret-xyz"
    await wait_for(lambda: len(s.responses) >= 4, 4, "the model continues after the result")
    await phone.hangup()
    await ended(gw, phone)
    assert not s.errors_sent
    assert "order-secret-xyz" not in gateway_log.getvalue()  # tool header secrets are redacted


@pytest.mark.parametrize(**CORE_ONLY)
async def test_http_tool_calls_share_the_apps_pooled_connection(make_gateway, model, order_api):
    url, seen = order_api
    gw, phone, s = await agent_call(make_gateway, model, [
        ("lookup_order", {"order_id": "A123"}), ("lookup_order", {"order_id": "B456"})], {"ORDER_API_URL": url})
    for n in (1, 2):
        await phone.say(ulaw_tone(440, 0.5))
        await wait_for(lambda: len(s.tool_outputs) == n, 6, f"tool output {n}")
        await phone.silence(1.8)
    assert [json.loads(o["output"])["ok"] for o in s.tool_outputs] == [True, True]
    assert [x["body"]["order_id"] for x in seen] == ["A123", "B456"]
    assert seen[0]["peer"] == seen[1]["peer"], "the second tool call reused the first one's connection"
    await phone.hangup()
    await ended(gw, phone)


async def test_a_tool_that_fails_inside_the_gateway_still_answers_the_model(make_gateway, model, order_api):
    """A header value with a line break (a secret read from a file, newline and all) makes the HTTP
    client raise before sending: the model is told, and the conversation goes on."""
    url, seen = order_api
    gw, phone, s = await agent_call(make_gateway, model, [("lookup_order", {"order_id": "A123"})],
                                    {"ORDER_API_URL": url, "ORDER_API_TOKEN": "order-secret-xyz\n"})
    await phone.say(ulaw_tone(440, 0.5))
    await wait_for(lambda: s.tool_outputs, 6, "the tool's output")
    out = json.loads(s.tool_outputs[0]["output"])
    assert out == {"ok": False, "error": "the lookup_order tool failed inside the gateway (ValueError); "
                                         "tell the caller it is not available right now"}
    assert not seen
    await wait_for(lambda: len(s.responses) >= 2 and s.responses[1]["status"] == "completed", 4,
                   "the model's follow-up (telling the caller)")
    await phone.hangup()
    await ended(gw, phone)
    assert not s.errors_sent


async def test_keypad_digits_reach_the_model_as_text(make_gateway, model):
    gw = await model.gateway(make_gateway)
    phone = await dial(gw.url, bot=model.agent)
    await phone.silence(0.3)
    for digit in "12":
        await phone.dtmf(digit)
        await asyncio.sleep(0.1)
    s = model.fake.sessions[0]
    await wait_for(lambda: s.texts, 3, "the digits as text")
    assert s.texts == ["(The caller pressed 1 2 on the phone keypad.)"]
    await wait_for(lambda: s.responses, 3, "a response to the keys")
    await phone.hangup()
    assert not s.errors_sent


@pytest.mark.parametrize("digit,number", [("0", "+15550009999"), ("9", "+15550008888")])
async def test_keypad_shortcut_transfers_without_the_model(make_gateway, fake_openai, fake_rest, digit, number):
    fake_openai.reply_seconds = 3.0
    gw = await make_gateway(openai=fake_openai, rest=fake_rest)
    phone = await dial(gw.url, bot="openai-agent")
    await phone.say(ulaw_tone(440, 0.4))
    await wait_for(lambda: phone.result.media_bytes > 10 * 160, 4, "the bot talking")
    await phone.dtmf(digit)  # mid-reply: the bot is cut off, the caller goes to a person
    await wait_for(lambda: fake_rest.requests, 3, "the transfer")
    assert f"<Number>{number}</Number>" in fake_rest.requests[0].form["Twiml"]
    assert phone.result.clears, "the bot's reply is cleared at once"
    summary = await ended(gw, phone)
    assert summary.end_reason == "transferred"
    s = fake_openai.sessions[0]
    assert not s.texts and not s.tool_outputs  # the model was not involved
    assert not s.errors_sent


@pytest.mark.parametrize(**CORE_ONLY)
async def test_time_limit_wraps_up_politely_then_hangs_up(make_gateway, model, fake_rest):
    gw = await model.gateway(make_gateway, rest=fake_rest, extra=(
        "limits:\n  max_call_seconds: 6\n  wrap_up_seconds: 4\n  silence_timeout_seconds: 0\n"))
    phone = await dial(gw.url, bot=model.quiet)
    await wait_for(lambda: fake_rest.requests, 6, "the hang-up")
    s = model.fake.sessions[0]
    assert s.texts == ["(The call has reached its time limit. Thank the caller and say a short, polite goodbye now.)"]
    assert s.responses[0]["status"] == "completed"  # the goodbye was spoken...
    assert fake_rest.requests[0].at >= phone.result.last_echo_at  # ...and heard, before the hang-up
    summary = await ended(gw, phone)
    assert summary.end_reason == "max_duration"
    assert fake_rest.requests[0].form == {"Status": "completed"}


@pytest.mark.parametrize(**CORE_ONLY)
async def test_silent_caller_is_reprompted_once_then_bot_says_goodbye(make_gateway, model, fake_rest):
    gw = await model.gateway(make_gateway, rest=fake_rest, extra="limits:\n  silence_timeout_seconds: 1\n")
    phone = await dial(gw.url, bot=model.quiet)
    await wait_for(lambda: fake_rest.requests, 10, "the hang-up")
    s = model.fake.sessions[0]
    assert s.texts[0].startswith("(The caller has said nothing for 1 seconds.")
    assert s.texts[1] == "(The caller is still silent. Say a short, polite goodbye now.)" and len(s.texts) == 2
    assert len(s.responses) == 2 and all(r["status"] == "completed" for r in s.responses)
    summary = await ended(gw, phone)
    assert summary.end_reason == "silence_timeout"


async def test_speaking_resets_the_silence_reprompt(make_gateway, fake_openai, fake_rest):
    gw = await make_gateway(openai=fake_openai, rest=fake_rest, extra="limits:\n  silence_timeout_seconds: 1.5\n")
    phone = await dial(gw.url, bot="openai-quiet")
    s = None
    for _ in range(3):  # the caller keeps the conversation going: never reprompted twice in a row
        await phone.say(ulaw_tone(440, 0.4))
        await phone.silence(2.6)  # the 1.5 s reply plays, then under 1.5 s of quiet... plus the reprompt's turn
        s = fake_openai.sessions[0]
    assert not fake_rest.requests, "the caller talks: no goodbye"
    assert all("still silent" not in t for t in s.texts)
    await phone.hangup()


async def test_too_many_model_errors_in_a_row_end_the_call(make_gateway, fake_openai, caplog):
    gw = await make_gateway(openai=fake_openai, extra="limits:\n  max_model_errors: 3\n")
    phone = await dial(gw.url, bot="openai-quiet")
    await wait_for(lambda: fake_openai.sessions and fake_openai.sessions[0].session_config, 3, "session")
    for _ in range(3):
        await fake_openai.broadcast(json.dumps({"type": "error", "error": {
            "type": "server_error", "code": "server_error", "message": "The server had an error"}}))
    assert await phone.wait_closed(3)
    summary = await ended(gw, phone)
    assert summary.end_reason == "model_error" and "3 model errors in a row" in summary.error
