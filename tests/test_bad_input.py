"""Bad input on the media stream never takes the server down or touches another call.

Every case gets a log line with the call (or connection) id and a defined outcome, and a
healthy call running beside the bad one keeps working.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import aiohttp

import pytest

from gateway.web_state import CALLS, STORE
from gateway.phone_sim import SimulatedPhone
from tests.phone_helpers import dial, logged, new_phone, ulaw_tone, wait_for

pytestmark = pytest.mark.looptime


def media(phone: SimulatedPhone, payload: str) -> str:
    return json.dumps({"event": "media", "streamSid": phone.stream_sid, "sequenceNumber": "9",
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload}})


# Each kind of bad Twilio frame, one call at a time beside another: tests/test_networks_unit.py
# (the same checks on the fast-forwarded clock, through the same stream loop and codec).


async def test_media_before_start_is_dropped_then_call_works(make_gateway, caplog):
    gw = await make_gateway(None)
    phone = new_phone(gw.url, bot="echo")
    await phone.dial()
    with caplog.at_level(logging.INFO, logger="gateway"):
        await phone.connect(send_start=False)
        await phone.send_raw(media(phone, base64.b64encode(b"\xff" * 160).decode()))
        await phone.send_start()
        await phone.say(ulaw_tone(440, 0.6))
        await wait_for(lambda: phone.result.first_audio_after(phone.result.speech_ends[0]) is not None, 5, "echo")
        await phone.hangup()
    assert any("media before start dropped" in r.getMessage() and "conn=ws" in r.getMessage()
               for r in caplog.records)


async def test_oversized_frame_closes_only_that_call(make_gateway, caplog):
    gw = await make_gateway(None)
    bystander = await dial(gw.url, bot="echo")
    phone = await dial(gw.url, bot="echo")
    with caplog.at_level(logging.INFO, logger="gateway"):
        await phone.send_raw(media(phone, base64.b64encode(b"\xff" * 70000).decode()))
        assert await phone.wait_closed(3), "the gateway should close a stream that sends > 64 KiB frames"
    assert phone.result.close_code == 1009  # message too big
    # a protocol error of the caller's, not a hang-up (nor aiohttp's 1006)
    await wait_for(lambda: logged(caplog, "call_ended", f"call={phone.call_sid}", "reason=protocol_error"), 3,
                   "call_ended as protocol_error")
    assert logged(caplog, "phone_bad_frame", f"call={phone.call_sid}", "frame over limits.max_message_bytes")
    assert not logged(caplog, "phone_ws_error") and not logged(caplog, f"call={phone.call_sid}", "caller_hangup")
    await gw.app[STORE].flush()
    record = await gw.app[STORE].get_call(phone.call_sid)
    assert record["end_reason"] == "protocol_error"
    await bystander.say(ulaw_tone(440, 0.6))
    await wait_for(lambda: bystander.result.first_audio_after(bystander.result.speech_ends[0]) is not None, 5,
                   "the other call to keep working")
    await bystander.hangup()


async def test_too_many_bad_frames_end_the_call(make_gateway, caplog):
    gw = await make_gateway(None, extra="limits:\n  max_protocol_errors: 5\n")
    phone = await dial(gw.url, bot="echo")
    with caplog.at_level(logging.INFO, logger="gateway"):
        for _ in range(10):
            await phone.send_raw("garbage")
        assert await phone.wait_closed(3)
        await wait_for(lambda: logged(caplog, "call_ended", "reason=protocol_error"), 2, "call_ended line")


async def test_no_start_times_out(make_gateway, caplog):
    gw = await make_gateway(None, extra="limits:\n  start_timeout_seconds: 0.5\n")
    phone = new_phone(gw.url, bot="echo")
    await phone.dial()
    with caplog.at_level(logging.INFO, logger="gateway"):
        await phone.connect(send_start=False)
        assert await phone.wait_closed(3)
    assert phone.result.close_code == 1008
    assert any("no start frame" in r.getMessage() for r in caplog.records)
    await phone.close()


async def test_start_for_unknown_bot_closes_stream(make_gateway, caplog):
    gw = await make_gateway(None)
    phone = new_phone(gw.url, bot="echo")
    await phone.dial()
    with caplog.at_level(logging.INFO, logger="gateway"):
        await phone.connect(send_start=False)
        await phone.send_start({"bot": "nobody"})
        assert await phone.wait_closed(3)
    assert any("stream_rejected" in r.getMessage() for r in caplog.records)
    await phone.close()


async def test_abrupt_socket_close_ends_call(make_gateway, caplog):
    gw = await make_gateway(None)
    phone = await dial(gw.url, bot="echo")
    await phone.silence(0.2)
    with caplog.at_level(logging.INFO, logger="gateway"):
        await phone.close()  # no stop frame
        await wait_for(lambda: not gw.app[CALLS], 2, "call cleanup")
    assert logged(caplog, "call_ended", "reason=caller_hangup", f"call={phone.call_sid}")


async def test_server_survives_raw_garbage_connections(make_gateway):
    gw = await make_gateway(None)
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            ws = await s.ws_connect(gw.url + "/twilio/media")
            await ws.send_bytes(b"\xde\xad" * 1000)
            await ws.close()
        async with s.get(gw.url + "/healthz") as r:
            assert r.status == 200
        await asyncio.sleep(0.1)
