"""Outbound calls: the operator API asks Twilio (fake REST) to dial; when the callee answers, the
webhook takes the signed ticket, and the bot — knowing whom it called and why — speaks first."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import aiohttp

import pytest

from gateway.outbound import SPEAK_FIRST, make_ticket, read_ticket
from gateway.telephony.twilio.signature import compute
from tests.calllog_helpers import TOKEN, api
from gateway.web_state import STORE
from tests.conftest import TWILIO_SID, TWILIO_TOKEN
from tests.phone_helpers import ended, new_phone, ulaw_tone, wait_for
from tests.proc import free_port

pytestmark = pytest.mark.looptime


async def post(url: str, body, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/api/calls", json=body, headers=headers) as r:
            return r.status, await r.json()


async def outbound_gateway(make_gateway, model, fake_rest, **env):
    port = free_port()
    return await model.gateway(make_gateway, rest=fake_rest, port=port, env={
        "GATEWAY_OPERATOR_TOKEN": TOKEN, "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}", **env})


async def test_outbound_call_is_placed_and_the_bot_speaks_first(make_gateway, model, fake_rest):
    gw = await outbound_gateway(make_gateway, model, fake_rest)
    status, placed = await post(gw.url, {"to": "+15551230000", "bot": model.quiet, "from": "+15005550006",
                                         "context": {"customer": "Ada Lovelace", "reason": "router delivery slot"}})
    assert status == 201, placed
    create = fake_rest.requests[0]
    assert create.path.endswith("/Calls.json") and not fake_rest.rejected  # Basic auth, no signature needed
    assert {k: create.form[k] for k in ("To", "From", "Method")} == {"To": "+15551230000", "From": "+15005550006",
                                                                      "Method": "POST"}
    url = urlsplit(create.form["Url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{gw.url}/twilio/voice"
    assert parse_qs(url.query)["bot"] == [model.quiet] and parse_qs(url.query)["outbound"]
    assert placed["call_id"].startswith("CA") and placed["status"] == "queued"

    # The callee answers: Twilio fetches the webhook URL it was given, then opens the stream.
    phone = new_phone(gw.url, caller="+15005550006", dialed="+15551230000", call_sid=placed["call_id"])
    phone.webhook_url = create.form["Url"]
    await phone.dial()
    assert phone.result.parameters["direction"] == "outbound"
    await phone.connect()
    await wait_for(lambda: phone.result.first_audio_at is not None, 4, "the bot speaking first")
    s = model.fake.sessions[0]
    assert s.texts == [SPEAK_FIRST] and s.responses[0]["kind"] in ("reply", "greeting")
    instructions = model.instructions(s)
    assert "OUTBOUND call: you called +15551230000" in instructions and "Ada Lovelace" in instructions
    await phone.silence(0.3)
    await phone.hangup()
    summary = await ended(gw, phone)
    assert summary.end_reason == "caller_hangup"
    record = (await api(gw.url, f"/api/calls/{placed['call_id']}"))[1]
    assert record["direction"] == "outbound" and record["bot"] == model.quiet
    assert not s.errors_sent


async def test_outbound_requests_are_checked(make_gateway, fake_glm, fake_rest):
    port = free_port()
    env = {"GATEWAY_OPERATOR_TOKEN": TOKEN, "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    gw = await make_gateway(glm=fake_glm, rest=fake_rest, port=port, env=env)
    ok = {"to": "+15551230000", "bot": "glm-quiet", "from": "+15005550006"}
    assert (await post(gw.url, ok, token=None))[0] == 401
    for body, status, words in [({**ok, "to": "5551230000"}, 400, "to:"), ({**ok, "bot": "nobody"}, 400, "bot:"),
                                ({**ok, "bot": "openai-quiet"}, 409, "no API key"),
                                ({**ok, "context": {"a": {"nested": 1}}}, 400, "context:"),
                                ({**ok, "context": {"a": "x" * 2000}}, 400, "at most"),
                                ({"to": "+15551230000", "bot": "glm-quiet"}, 400, "from:"), ([], 400, "JSON object")]:
        code, answer = await post(gw.url, body)
        assert code == status and words in answer["error"], (body, answer)
    assert not fake_rest.requests  # nothing invalid reached Twilio
    fake_rest.fail_next = [400]
    code, answer = await post(gw.url, ok)
    assert code == 502 and "Twilio refused" in answer["error"]
    no_rest = await make_gateway(glm=fake_glm, env=env)
    assert (await post(no_rest.url, ok))[0] == 503


async def test_a_forged_or_expired_ticket_gets_no_bot(make_gateway, fake_glm, fake_rest):
    gw = await make_gateway(glm=fake_glm, rest=fake_rest)
    good = make_ticket(TWILIO_TOKEN, "glm-quiet", "+15551230000", {"x": 1})
    assert read_ticket(TWILIO_TOKEN, good, "glm-quiet")["ctx"] == {"x": 1}
    assert read_ticket(TWILIO_TOKEN, good, "glm-greeter") is None  # another bot
    assert read_ticket("other-token", good, "glm-quiet") is None
    assert read_ticket(TWILIO_TOKEN, make_ticket(TWILIO_TOKEN, "glm-quiet", "+1", {}, now=0), "glm-quiet") is None
    assert read_ticket(TWILIO_TOKEN, good.split(".")[0] + ".ü²", "glm-quiet") is None  # not a TypeError
    body, sig = good.split(".")
    forged = body[:-4] + "AAAA." + sig
    url = f"{gw.url}/twilio/voice?bot=glm-quiet&outbound={forged}"
    form = {"CallSid": "CA1", "From": "+15005550006", "To": "+15551230000"}
    async with aiohttp.ClientSession() as s:  # a genuine Twilio request (signed) carrying a forged ticket
        async with s.post(url, data=form, headers={"X-Twilio-Signature": compute(TWILIO_TOKEN, url, form)}) as r:
            twiml = await r.text()
    assert "<Hangup/>" in twiml and "<Stream" not in twiml


VOICEMAIL = "Hi, this is Northwind calling about your router delivery. Please call us back at 555 0100."


async def amd_gateway(make_gateway, fake_glm, fake_rest, config_dir):
    """A gateway placing calls for `glm-caller`, a persona with a voicemail message."""
    (config_dir / "bots" / "glm-caller.yaml").write_text(
        f"provider: glm\nlanguage: en-US\ninstructions: You are a test bot.\nvoicemail_message: {VOICEMAIL}\n")
    port = free_port()
    return await make_gateway(glm=fake_glm, rest=fake_rest, port=port, env={
        "GATEWAY_OPERATOR_TOKEN": TOKEN, "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}"})


async def answered(gw, fake_rest, bot: str):
    """Place a call and let the callee answer: the stream runs, the bot has spoken first."""
    status, placed = await post(gw.url, {"to": "+15551230000", "bot": bot, "from": "+15005550006"})
    assert status == 201, placed
    sid = placed["call_id"]
    phone = new_phone(gw.url, caller="+15005550006", dialed="+15551230000", call_sid=sid)
    phone.webhook_url = fake_rest.created[sid]["Url"]
    await phone.dial()
    await phone.connect()
    await wait_for(lambda: phone.result.first_audio_at is not None, 4, "the bot speaking first")
    return sid, phone


async def test_a_machine_gets_the_voicemail_message_after_the_beep_then_the_call_ends(
        make_gateway, fake_glm, fake_rest, config_dir):
    gw = await amd_gateway(make_gateway, fake_glm, fake_rest, config_dir)
    sid, phone = await answered(gw, fake_rest, "glm-caller")
    create = fake_rest.created[sid]  # accepted by the fake's checks of the AMD parameters, as Twilio's
    assert {k: create[k] for k in ("MachineDetection", "AsyncAmd", "AsyncAmdStatusCallback",
                                   "AsyncAmdStatusCallbackMethod")} == {
        "MachineDetection": "DetectMessageEnd", "AsyncAmd": "true",
        "AsyncAmdStatusCallback": f"{gw.url}/twilio/amd?bot=glm-caller", "AsyncAmdStatusCallbackMethod": "POST"}

    assert await fake_rest.detect(sid, "machine_end_beep", 3100) == 204
    update = fake_rest.requests[-1]
    assert update.call_sid == sid and update.form == {"Twiml": (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Say language="en-US">' + VOICEMAIL + "</Say><Hangup/></Response>")}
    assert await phone.wait_closed(3)  # the stream ends with the redirect
    assert (await ended(gw, phone)).end_reason == "answering_machine"
    await gw.app[STORE].flush()
    record = (await api(gw.url, f"/api/calls/{sid}"))[1]
    assert record["answered_by"] == "machine_end_beep" and record["end_reason"] == "answering_machine"
    kinds = {e["kind"]: e for e in record["timeline"]}
    assert kinds["answered_by"]["detection_ms"] == 3100 and kinds["voicemail_left"]["message"] == VOICEMAIL


async def test_a_machine_without_a_voicemail_message_is_hung_up_on(make_gateway, fake_glm, fake_rest, config_dir):
    gw = await amd_gateway(make_gateway, fake_glm, fake_rest, config_dir)
    sid, phone = await answered(gw, fake_rest, "glm-quiet")
    assert await fake_rest.detect(sid, "machine_end_silence") == 204
    assert fake_rest.requests[-1].form == {"Status": "completed"}
    assert await phone.wait_closed(3)
    assert (await ended(gw, phone)).end_reason == "answering_machine"


async def test_a_person_who_answers_gets_the_bot_as_before(make_gateway, fake_glm, fake_rest, config_dir):
    gw = await amd_gateway(make_gateway, fake_glm, fake_rest, config_dir)
    sid, phone = await answered(gw, fake_rest, "glm-caller")
    before = len(fake_rest.requests)
    assert await fake_rest.detect(sid, "human", 1200) == 204
    await phone.say(ulaw_tone(440, 0.5))  # the conversation goes on: the bot answers
    await wait_for(lambda: len(fake_glm.sessions[0].responses) >= 2, 5, "the bot's reply to the person")
    assert len(fake_rest.requests) == before  # nothing was done to the call
    await phone.hangup()
    assert (await ended(gw, phone)).end_reason == "caller_hangup"
    await gw.app[STORE].flush()
    assert (await api(gw.url, f"/api/calls/{sid}"))[1]["answered_by"] == "human"


async def test_an_unsigned_or_forged_verdict_does_nothing(make_gateway, fake_glm, fake_rest, config_dir):
    gw = await amd_gateway(make_gateway, fake_glm, fake_rest, config_dir)
    sid, phone = await answered(gw, fake_rest, "glm-caller")
    before = len(fake_rest.requests)
    url = f"{gw.url}/twilio/amd?bot=glm-caller"
    form = {"AccountSid": TWILIO_SID, "CallSid": sid, "AnsweredBy": "machine_end_beep"}
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"X-Twilio-Signature": compute("not-the-token", url, form)},
                        {"X-Twilio-Signature": compute(TWILIO_TOKEN, url.replace("glm-caller", "glm-quiet"), form)}):
            async with s.post(url, data=form, headers=headers) as r:
                assert r.status == 403
    assert len(fake_rest.requests) == before and not phone.closed.is_set()
