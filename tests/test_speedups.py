"""orjson and uvloop when installed, json and asyncio when not: same frames, same calls."""

from __future__ import annotations

import asyncio
import base64
import importlib
import logging
import json
import os
import signal
import sys

import pytest

from gateway import speedups
from gateway.logs import CallLogger
from gateway.telephony.twilio.codec import TwilioCodec
from gateway.telephony.ws_stream import WsPhoneStream
from tests import proc
from tests.phone_helpers import dial, ulaw_tone, wait_for

SAMPLES = [{"event": "media", "streamSid": "MZ1", "media": {"payload": "/w=="}},
           {"type": "session.update", "session": {"instructions": "Grüß Gott, 你好 \"quoted\" \\ \n", "n": [1, 2.5, None,
                                                                                                    True]}}]


@pytest.fixture
def stdlib_speedups(monkeypatch):
    """gateway.speedups as it loads on a platform without orjson and uvloop."""
    monkeypatch.setitem(sys.modules, "orjson", None)  # `import orjson` now raises ImportError
    monkeypatch.setitem(sys.modules, "uvloop", None)
    yield importlib.reload(speedups)
    monkeypatch.undo()
    importlib.reload(speedups)


def test_without_orjson_and_uvloop_the_stdlib_does_the_same_work(stdlib_speedups):
    assert stdlib_speedups.JSON_LIBRARY == "json" and stdlib_speedups.loop_factory() is None
    for obj in SAMPLES:
        assert stdlib_speedups.dumps(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        assert stdlib_speedups.loads(stdlib_speedups.dumps(obj)) == obj
    with pytest.raises(ValueError):
        stdlib_speedups.loads("{not json")
    assert stdlib_speedups.run(asyncio.sleep(0, "done")) == "done"


def test_with_orjson_installed_it_is_used_and_agrees_with_json():
    pytest.importorskip("orjson")
    assert speedups.JSON_LIBRARY == "orjson"
    for obj in SAMPLES:
        assert speedups.dumps(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    with pytest.raises(ValueError):
        speedups.loads("{not json")


class _Ws:
    closed = False

    def __init__(self):
        self.frames: list[bytes] = []

    async def send_frame(self, data: bytes, opcode) -> None:
        self.frames.append(data)


async def test_twilio_frames_built_from_parts_are_the_documented_json():
    ws = _Ws()
    stream = WsPhoneStream(ws, TwilioCodec(), CallLogger(logging.getLogger("gateway"), call="t"))  # type: ignore[arg-type]
    sid = 'MZ"odd\\sid é'
    stream._decode(json.dumps({"event": "start", "streamSid": sid, "start": {"streamSid": sid, "callSid": "CA1"}}), False)
    assert await stream.play(b"\xff\x7f" * 80)
    assert await stream.mark('3:7 "x"')
    assert await stream.clear()
    frames = [json.loads(f) for f in ws.frames]
    assert frames == [{"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(b"\xff\x7f" * 80).decode()}},
                      {"event": "mark", "streamSid": sid, "mark": {"name": '3:7 "x"'}},
                      {"event": "clear", "streamSid": sid}]


def test_gateway_serves_calls_without_orjson_and_uvloop(config_dir, tmp_path):
    """A platform where neither installs: the gateway says so, and a call works end to end."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for name in ("orjson", "uvloop"):
        (hidden / f"{name}.py").write_text(f"raise ImportError('no {name} here')\n")
    from tests.conftest import write_config
    config_path = write_config(config_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    env["PYTHONPATH"] = os.pathsep.join([str(hidden), env.get("PYTHONPATH", "")])
    port = proc.free_port()
    server = proc.serve(port, env, config_path)

    async def call() -> dict:
        phone = await dial(f"http://127.0.0.1:{port}", bot="echo")
        await phone.silence(0.5)
        await phone.say(ulaw_tone(440, 0.5))
        await wait_for(lambda: phone.result.media_bytes > 8000 and phone.result.marks_echoed >= 3, 5, "audio back")
        await phone.hangup()
        return phone.result.summary()

    try:
        summary = asyncio.run(call())
    finally:
        log = proc.stop(server, signal.SIGTERM)
    assert "event loop: asyncio, JSON: json" in log, log
    assert summary["protocol_violations"] == 0 and 3 <= summary["marks_echoed"] <= summary["marks_received"]
