"""The offline echo bot end to end: the caller hears their own audio back, faithfully."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import wave

import numpy as np
import pytest

from gateway.audio import PHONE_RATE
from gateway.phone_sim import write_ulaw_as_wav
from tests.audio_check import dominant_hz, ulaw_samples, voiced_runs
from tests.conftest import REPO
from tests import proc
from tests.phone_helpers import dial, ulaw_tone, wait_for


async def _played_out(phone, after: float) -> None:
    """Until the bot audio that began after `after` has stopped playing, and 0.3 s more of quiet."""
    await wait_for(lambda: any(t > after for t in phone.result.stop_times), 5, "the echo to play out")
    await phone.silence(0.3)


async def test_echo_plays_the_utterance_back(make_gateway):
    gw = await make_gateway(None)
    phone = await dial(gw.url, bot="echo")
    await phone.silence(1.0)  # the greeting chime plays
    await phone.say(ulaw_tone(440, 1.0))
    end = phone.result.speech_ends[0]
    await wait_for(lambda: phone.result.first_audio_after(end) is not None, 3, "echo to start")
    await _played_out(phone, end)
    await phone.hangup()
    heard = ulaw_samples(phone.result.heard)
    runs = voiced_runs(heard, PHONE_RATE)
    assert len(runs) == 2, runs  # the chime, then the echo
    start, stop = runs[1]
    assert abs((stop - start) / PHONE_RATE - 1.0) < 0.1  # the whole utterance, not more
    assert dominant_hz(heard[start:stop], PHONE_RATE) == pytest.approx(440, rel=0.01)
    assert not phone.result.violations
    assert phone.result.marks_echoed == phone.result.marks_received > 0


async def test_two_calls_to_different_bots_stay_isolated(make_gateway, fake_glm):
    """An echo call and a GLM call at once: each hears only its own bot."""
    fake_glm.greeting_tone_hz = 1000
    gw = await make_gateway(fake_glm)
    echo = await dial(gw.url, bot="echo")
    glm = await dial(gw.url, bot="glm-greeter")
    await glm.silence(0.3)
    await echo.say(ulaw_tone(523, 1.0))
    await wait_for(lambda: echo.result.first_audio_after(echo.result.speech_ends[0]) is not None, 3, "echo")
    await _played_out(echo, echo.result.speech_ends[0])
    await echo.hangup()
    await glm.silence(0.5)
    await glm.hangup()
    e = ulaw_samples(echo.result.heard)
    start, stop = voiced_runs(e, PHONE_RATE)[-1]
    assert dominant_hz(e[start:stop], PHONE_RATE) == pytest.approx(523, rel=0.01)
    g = ulaw_samples(glm.result.heard)
    gs, ge = voiced_runs(g, PHONE_RATE)[0]
    assert dominant_hz(g[gs:ge], PHONE_RATE) == pytest.approx(1000, rel=0.01)
    assert len(fake_glm.sessions) == 1  # the echo call opened no model session
    assert not echo.result.violations and not glm.result.violations


def test_serve_and_call_commands_end_to_end(tmp_path):
    """The newcomer's path: `python -m gateway serve` with no keys, `python -m gateway call` hears itself."""
    port = proc.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    env["GATEWAY_DATABASE_URL"] = f"sqlite:///{tmp_path}/calls.db"  # the repo's config, a throwaway call log
    env["GATEWAY_OPERATOR_TOKEN"] = "t" * 32
    server = proc.serve(port, env)
    try:
        said = tmp_path / "said.wav"
        write_ulaw_as_wav(said, ulaw_tone(440, 1.0) + b"\xff" * 4000)  # speech, then half a second of silence
        out = tmp_path / "heard.wav"
        call = subprocess.run([sys.executable, "-m", "gateway", "call", "--url", f"http://127.0.0.1:{port}",
                               "--to", "+19999999999", "--wav", str(said), "--out", str(out), "--wait", "1",
                               "--hold", "1.8", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=30)
        assert call.returncode == 0, call.stdout + call.stderr
        summary = json.loads(call.stdout)
        assert summary["bot"] == "echo"  # default bot has no key -> fallback
        assert summary["protocol_violations"] == 0 and summary["marks_echoed"] > 0
        assert summary["reply_latency_ms"] and summary["reply_latency_ms"][0] < 1500
        # The latency the caller lived through, three ways, agree within one 100 ms chunk: the phone's
        # own (its last voiced frame -> the reply playing), the record, and the dashboard's API.
        # The echo bot's VAD waits its silence_ms (600) before replaying, so it is at least that.
        (felt,) = summary["reply_latency_ms"]
        assert 600 <= felt < 1000
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/calls/{summary['call_id']}",
                                     headers={"Authorization": "Bearer " + "t" * 32})
        with urllib.request.urlopen(req, timeout=10) as resp:
            timeline = json.loads(resp.read())["timeline"]
        api = [e["latency_ms"] for e in timeline if e["kind"] == "bot" and e.get("latency_ms") is not None]
        assert len(api) == 1 and abs(api[0] - felt) <= 100, (api, felt)
        model = [e["model_latency_ms"] for e in timeline if e["kind"] == "bot" and e.get("model_latency_ms") is not None]
        assert model and model[0] < api[0]  # the model's own figure starts at its VAD's decision
        shown = subprocess.run([sys.executable, "-m", "gateway", "calls", "show", summary["call_id"]], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=30)
        assert f"(reply latency {api[0]} ms; model {model[0]} ms)" in shown.stdout, shown.stdout
        with wave.open(str(out)) as w:
            assert w.getframerate() == 8000
            heard = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float)
        start, stop = voiced_runs(heard, 8000)[-1]
        assert dominant_hz(heard[start:stop], 8000) == pytest.approx(440, rel=0.01)
    finally:
        log = proc.stop(server, signal.SIGINT)
    assert server.returncode == 0, log
    assert "event=call_ended" in log and "reason=caller_hangup" in log
    listed = subprocess.run([sys.executable, "-m", "gateway", "calls", "list"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert "echo" in listed.stdout and "caller_hangup" in listed.stdout and "(1 of 1)" in listed.stdout


async def test_dtmf_reaches_the_call_log(make_gateway, caplog):
    import logging

    from gateway.web_state import RECENT
    from tests.phone_helpers import logged

    gw = await make_gateway(None)
    with caplog.at_level(logging.INFO, logger="gateway"):
        phone = await dial(gw.url, bot="echo")
        await phone.silence(0.1)
        await phone.dtmf("2")
        await phone.dtmf("#")
        await phone.silence(0.1)
        await phone.hangup()
        await wait_for(lambda: len(gw.app[RECENT]) == 1, 3, "call end")
    assert logged(caplog, "event=dtmf", f"call={phone.call_sid}", "digit=2")
    digits = [e.text for e in gw.app[RECENT][0].transcript if e.role == "dtmf"]
    assert digits == ["2", "#"]


async def test_barge_in_truncates_model_memory_to_heard_time(make_gateway, monkeypatch):
    """A provider that declares `truncate` is told exactly what was heard (from marks), capped at
    what it generated; the call code never asks which provider it is."""
    import dataclasses

    import gateway.call.assembly as assembly
    from gateway.providers.echo import EchoProvider

    calls: list[tuple] = []

    class TruncatingEcho(EchoProvider):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.capabilities = dataclasses.replace(self.capabilities, truncate=True)

        async def truncate(self, item_id, audio_end_ms):
            calls.append(("truncate", item_id, audio_end_ms))

        async def delete_item(self, item_id):
            calls.append(("delete", item_id))

    monkeypatch.setattr(assembly, "make_provider", lambda persona, settings, log, context=(), http=None: TruncatingEcho(persona, log))
    gw = await make_gateway(None)
    phone = await dial(gw.url, bot="echo")
    await phone.silence(0.35)  # part of the 0.6 s chime is heard
    await phone.say(ulaw_tone(440, 0.3))
    await phone.silence(0.1)
    await phone.hangup()
    assert phone.result.clears
    kind, item, end_ms = calls[0]
    assert kind == "truncate" and item == "echo_resp_1_item"
    assert 100 <= end_ms < 600, end_ms  # heard part of the chime, never past the 600 ms generated


@pytest.mark.looptime
async def test_echo_answers_an_instruction_with_a_chime_so_a_goodbye_is_heard_not_waited_out():
    """A goodbye at shutdown is text to the model, then "wait until heard": the echo bot used to
    ignore text, and a drained echo call sat 5 s in silence before it was hung up."""
    import logging

    from gateway.config import Persona
    from gateway.logs import CallLogger
    from gateway.providers.base import AudioDelta, OutputTranscript, ResponseDone, ResponseStarted
    from gateway.providers.echo import EchoProvider

    echo = EchoProvider(Persona(provider="echo", name="echo", greeting=""), CallLogger(logging.getLogger("gateway")))
    await echo.connect()
    await echo.send_text("(Say goodbye.)", respond=False)  # told, not asked to answer: nothing
    await echo.send_text("(Say goodbye.)")
    events = []
    async for ev in echo.events():
        events.append(ev)
        if isinstance(ev, ResponseDone):
            break
    await echo.close()
    started = [e for e in events if isinstance(e, ResponseStarted)]
    audio = b"".join(e.audio for e in events if isinstance(e, AudioDelta))
    assert len(started) == 1 and events[-1] == ResponseDone(started[0].response_id, "completed")
    assert len(audio) == echo.rate * 2 // 2  # 0.5 s of PCM16
    assert any(isinstance(e, OutputTranscript) and e.final and e.text == "(chime)" for e in events)
