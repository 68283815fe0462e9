"""The caller's first key moment on every network, under the shipped barge-in policy (confirm): the
bot is silent within 120 ms of the model's speech_started, its own 20 ms playout included; a
sound that is not an interruption costs a pause and the reply resumes with nothing lost; a real
interruption is cut without the caller hearing the bot again."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.audio import PHONE_RATE
from tests.audio_check import dominant_hz, ulaw_samples
from tests import test_call_networks
from tests.phone_helpers import ended, ulaw_tone

# Every network on the fast-forwarded clock (exact timings); two of them, one per transport (a
# WebSocket with marks, AudioSocket's TCP with our own pacing), on the real clock at the end.
pytestmark = pytest.mark.looptime

net = test_call_networks.net  # the network fixture: every network in turn

SILENT_WITHIN_S = 0.120


def greeting_heard_s(phone) -> float:
    """Seconds of the greeting's 660 Hz tone in what the caller heard (20 ms windows)."""
    heard = ulaw_samples(phone.result.heard)
    win = PHONE_RATE // 50
    n = 0
    for i in range(0, len(heard) - win + 1, win):
        w = heard[i:i + win]
        if np.abs(w).max() > 1000 and abs(dominant_hz(w, PHONE_RATE) - 660) < 60:
            n += 1
    return n * win / PHONE_RATE


def stopped_after(phone, t: float) -> float:
    """How long after `t` the bot audio playing at `t` went on playing."""
    stops = [s for s in phone.result.stop_times if s >= t]
    assert stops, "the bot never stopped"
    return stops[0] - t


async def test_confirm_policy_silences_the_bot_at_once_on_every_network(make_gateway, fake_openai, net):
    fake_openai.reply_seconds = 3.0
    fake_openai.greeting_tone_hz, fake_openai.reply_tone_hz = 660, 1500  # told apart in what was heard
    fake_openai.delta_interval = 0.2
    gw = await net.gateway(make_gateway, openai=fake_openai)
    phone = net.phone(gw.url, bot="openai-confirm")
    await phone.dial()
    await phone.connect()
    await phone.silence(1.0)  # the 3 s greeting is playing
    await phone.say(ulaw_tone(440, 0.1))  # a click: the model's VAD fires, it is not an interruption
    s = fake_openai.sessions[0]
    assert s.speech_started_at and phone.result.play_times[0] < s.speech_started_at[0]
    assert stopped_after(phone, s.speech_started_at[0]) <= SILENT_WITHIN_S
    await phone.silence(3.5)  # the model's speech_stopped (600 ms): the greeting resumes and ends
    assert not s.cancels, "a false alarm must not cancel the reply"
    played = greeting_heard_s(phone)
    assert played >= 3.0 - 0.05, "nothing of the greeting lost"
    # at most one chunk (100 ms) heard twice, + the frame playing at the clear, + partial 20 ms windows
    assert played <= 3.0 + 0.1 + 0.02 + 0.06, "at most a chunk heard twice"
    # The model answered the click when its VAD saw it end: that reply (3 s) follows the greeting
    # and is playing now. The caller really interrupts it.
    await phone.say(ulaw_tone(440, 0.8))
    assert len(s.speech_started_at) == 2
    assert stopped_after(phone, s.speech_started_at[1]) <= SILENT_WITHIN_S
    await phone.silence(0.5)
    await phone.hangup()
    summary = await ended(gw, phone)
    assert not phone.result.violations, phone.result.violations
    bot = [e for e in summary.transcript if e.role == "bot"]
    assert not bot[0].interrupted and bot[1].interrupted and summary.barge_ins == 1


@pytest.mark.looptime(False)
@pytest.mark.parametrize("net", ["twilio", "audiosocket"], indirect=True)
async def test_the_same_on_the_real_clock_over_a_websocket_and_over_tcp(make_gateway, fake_openai, net):
    """Real 20 ms pacing, real scheduling: the 120 ms bound holds outside virtual time too."""
    await test_confirm_policy_silences_the_bot_at_once_on_every_network(make_gateway, fake_openai, net)
