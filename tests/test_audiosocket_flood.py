"""Issue 20 item 7: AudioSocket audio is held to real time. A peer may run a second ahead (jitter,
a burst after a stall); what comes faster is dropped and counted, and a peer that keeps pushing
(an allowed peer once pushed 290 MB in 6 s, all forwarded) is cut off as a protocol error."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid

import pytest

from gateway.telephony.audiosocket.codec import AUDIO, UUID, message
from gateway.telephony.paced import InboundBudget
from tests.phone_helpers import logged, wait_for

pytestmark = pytest.mark.looptime

FRAME = b"\x01\x00" * 160  # 20 ms of 8 kHz PCM16


def test_budget_allows_a_burst_then_real_time_and_counts_the_rest():
    now = [0.0]
    budget = InboundBudget(16000, clock=lambda: now[0], burst_s=1.0, give_up_s=5.0)
    assert all(budget.take(320) for _ in range(50))  # one second ahead: fine
    assert not budget.take(320) and budget.dropped_bytes == 320
    now[0] += 0.02
    assert budget.take(320)  # real time again: every frame passes
    for _ in range(50 * 5):  # five more seconds pushed at once: all dropped, then flooding
        budget.take(320)
    assert budget.flooding and budget.dropped_bytes == 320 * 251


async def test_a_peer_pushing_audio_faster_than_real_time_is_cut_off(make_gateway, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await make_gateway(env={"GATEWAY_AUDIOSOCKET_PORT": str(port)})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    call = uuid.uuid4()
    with caplog.at_level(logging.INFO, logger="gateway"):
        writer.write(message(UUID, call.bytes))
        burst = message(AUDIO, FRAME) * 500  # 10 s of audio in one go, then 10 s more
        for _ in range(2):
            writer.write(burst)
            await writer.drain()
        await wait_for(lambda: logged(caplog, "call_ended", str(call), "reason=protocol_error"), 5, "the call cut off")
    assert logged(caplog, "phone_audio_too_fast", str(call))
    assert logged(caplog, "phone_audio_flood", str(call))
    ended = next(r.getMessage() for r in caplog.records if "call_ended" in r.getMessage())
    frames_in = int(ended.split("frames_in=")[1].split()[0])
    assert frames_in <= 60, ended  # about a second's burst passed on, not 20 s
    writer.close()
