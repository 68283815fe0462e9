"""The simulated phone: calls the gateway exactly as Twilio would, in real time.

It POSTs the incoming-call webhook, reads the TwiML, opens the `<Stream>` URL, sends
`connected` and `start` (with the TwiML's `<Parameter>`s), speaks 20 ms mu-law frames on a
real-time clock, and emulates Twilio's playback buffer: received audio plays at 8 kHz real time,
a mark is echoed when the audio before it has played, `clear` drops the buffer and echoes every
pending mark at once. It checks every frame the gateway sends against Twilio's documented shapes
(`violations`), records what was heard as a timeline, and reports latencies.

The same class is the tests' fake Twilio caller; `python -m gateway call` wraps it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import time
import uuid
import wave
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .telephony.signature import compute as compute_signature
from .audio import (MULAW_SILENCE, PHONE_FRAME_BYTES, PHONE_RATE, Resampler, audioop,
                    pcm16_to_ulaw, tone, ulaw_to_pcm16)

FRAME_S = 0.02


class DialError(Exception):
    """The webhook did not connect us to a stream (e.g. TwiML that says sorry and hangs up)."""


@dataclass
class PhoneResult:
    twiml: str = ""
    stream_url: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    heard: bytearray = field(default_factory=bytearray)  # mu-law timeline as the caller heard it
    media_frames: int = 0
    media_bytes: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    last_echo_at: float | None = None  # when the last mark was echoed (its audio had played)
    clears: list[float] = field(default_factory=list)
    media_times: list[float] = field(default_factory=list)  # arrival time of each media message
    media_sizes: list[int] = field(default_factory=list)  # its audio bytes (8 per ms)
    violations: list[str] = field(default_factory=list)
    start_sent_at: float | None = None
    first_audio_at: float | None = None
    speech_ends: list[float] = field(default_factory=list)  # when each spoken segment ended
    closed_by: str = ""
    close_code: int | None = None

    def first_audio_after(self, t: float) -> float | None:
        return next((m for m in self.media_times if m >= t), None)

    def summary(self) -> dict:
        greeting = (self.first_audio_at - self.start_sent_at) * 1000 \
            if self.first_audio_at and self.start_sent_at else None
        replies = []
        for end in self.speech_ends:
            first = self.first_audio_after(end)
            if first is not None:
                replies.append(round((first - end) * 1000))
        return {
            "stream_url": self.stream_url, "bot": self.parameters.get("bot"),
            "first_audio_ms": round(greeting) if greeting is not None else None,
            "reply_latency_ms": replies,
            "heard_seconds": round(len(self.heard) / PHONE_RATE, 2),
            "media_frames_received": self.media_frames, "media_bytes_received": self.media_bytes,
            "marks_received": self.marks_received, "marks_echoed": self.marks_echoed,
            "clears": len(self.clears), "protocol_violations": len(self.violations),
            "closed_by": self.closed_by, "close_code": self.close_code,
        }


class SimulatedPhone:
    def __init__(self, base_url: str, *, bot: str | None = None, caller: str = "+15550001111",
                 dialed: str = "+15005550006", call_sid: str | None = None,
                 account_sid: str = "AC00000000000000000000000000000000", extra_form: dict | None = None,
                 auth_token: str = ""):
        self.base_url = base_url.rstrip("/")
        self.bot = bot
        self.caller = caller
        self.dialed = dialed
        self.call_sid = call_sid or "CA" + uuid.uuid4().hex
        self.account_sid = account_sid
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.extra_form = extra_form or {}
        self.result = PhoneResult()
        self._session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._buffer: deque = deque()  # Twilio's playback buffer: bytes or ("mark", name)
        self._tasks: list[asyncio.Task] = []
        self._seq = 0
        self._mic = bytearray()
        self._mic_sent = 0
        self._mic_task: asyncio.Task | None = None
        self._chunk = 0
        self._ts_ms = 0
        self.closed = asyncio.Event()
        # True: audio stays in the playback buffer unplayed (a slow network or jitter buffer), so
        # its marks are not echoed; tests use it to barge in before anything was heard.
        self.hold_playback = False
        self.webhook_url: str | None = None  # the full webhook URL, as Twilio got it (outbound calls)
        self.auth_token = auth_token  # sign requests like Twilio (X-Twilio-Signature) when set

    # ------------------------------------------------------------------ set-up
    async def dial(self) -> PhoneResult:
        """POST the webhook like Twilio; parse the TwiML; raise DialError if there is no Stream."""
        self._session = self._session or aiohttp.ClientSession()
        form = {"CallSid": self.call_sid, "AccountSid": self.account_sid, "From": self.caller,
                "To": self.dialed, "CallStatus": "ringing", "Direction": "inbound",
                "ApiVersion": "2010-04-01", "Caller": self.caller, "Called": self.dialed, **self.extra_form}
        url = self.webhook_url or f"{self.base_url}/twilio/voice" + (f"?bot={self.bot}" if self.bot else "")
        headers = {"X-Twilio-Signature": compute_signature(self.auth_token, url, form)} if self.auth_token else {}
        async with self._session.post(url, data=form, headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise DialError(f"webhook answered HTTP {resp.status}: {text[:200]}")
            refused = resp.headers.get("X-Gateway-Refused")  # why, for us (Twilio ignores it)
        self.result.twiml = text
        root = ET.fromstring(text)
        stream = root.find("./Connect/Stream")
        if stream is None:
            say = root.find("./Say")
            says = f"the caller hears: {say.text if say is not None else '-'}"
            raise DialError(f"refused: {refused} ({says})" if refused else f"no <Connect><Stream> in TwiML ({says})")
        self.result.stream_url = stream.get("url", "")
        self.result.parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        return self.result

    async def connect(self, *, send_start: bool = True) -> None:
        """Open the stream and send `connected` and `start`, as Twilio does when the call connects."""
        self._session = self._session or aiohttp.ClientSession()
        headers = {"X-Twilio-Signature": compute_signature(self.auth_token, self.result.stream_url)} \
            if self.auth_token else {}
        self.ws = await self._session.ws_connect(self.result.stream_url, max_msg_size=0, headers=headers)
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._tasks = [asyncio.create_task(self._receiver(), name="phone-rx"),
                       asyncio.create_task(self._player(), name="phone-player")]
        if send_start:
            await self.send_start()

    async def send_start(self, parameters: dict[str, str] | None = None) -> None:
        params = self.result.parameters if parameters is None else parameters
        await self.send_json({
            "event": "start", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
                      "tracks": ["inbound"], "customParameters": params,
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        self.result.start_sent_at = time.monotonic()
        self._start_mic()

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def send_json(self, frame: dict) -> None:
        await self.send_raw(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        """Anything at all, for adversarial tests."""
        if self.ws is None or self.ws.closed:
            return
        try:
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(data)
        except (ConnectionError, RuntimeError):
            pass

    # ------------------------------------------------------------------ speaking
    # Like a real phone, the microphone never stops: once `start` is sent a media frame leaves
    # every 20 ms on an absolute clock, carrying queued speech or silence.
    def _start_mic(self) -> None:
        if self._mic_task is None:
            self._mic_task = asyncio.create_task(self._mic_loop(), name="phone-mic")
            self._tasks.append(self._mic_task)

    async def _mic_loop(self) -> None:
        t0 = time.monotonic()
        tick = 0
        while self.ws is not None and not self.ws.closed:
            frame = bytes(self._mic[:PHONE_FRAME_BYTES])
            del self._mic[:PHONE_FRAME_BYTES]
            frame += MULAW_SILENCE * (PHONE_FRAME_BYTES - len(frame))
            self._chunk += 1
            await self.send_json({"event": "media", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                                  "media": {"track": "inbound", "chunk": str(self._chunk),
                                            "timestamp": str(self._ts_ms),
                                            "payload": base64.b64encode(frame).decode("ascii")}})
            self._ts_ms += 20
            self._mic_sent += len(frame)
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * FRAME_S - time.monotonic()))

    async def speak(self, ulaw: bytes) -> None:
        """Queue mu-law audio on the microphone and wait until it has all been sent."""
        self._mic += ulaw
        target = self._mic_sent + len(self._mic)
        while self._mic_sent < target and not self.closed.is_set():
            await asyncio.sleep(FRAME_S / 2)

    async def say(self, ulaw: bytes) -> None:
        """Speak, and remember when the speech ended (for reply latency)."""
        await self.speak(ulaw)
        self.result.speech_ends.append(time.monotonic())

    async def silence(self, seconds: float) -> None:
        await self.speak(MULAW_SILENCE * int(seconds * PHONE_RATE))

    async def dtmf(self, digit: str) -> None:
        await self.send_json({"event": "dtmf", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                              "dtmf": {"track": "inbound_track", "digit": digit}})

    async def hangup(self) -> None:
        """Twilio's `stop` followed by closing the socket."""
        await self.send_json({"event": "stop", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                              "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
        await self.close()

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            self.result.closed_by = self.result.closed_by or "phone"
            await self.ws.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.closed.set()

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # ------------------------------------------------------------------ Twilio emulation
    def _violation(self, text: str) -> None:
        self.result.violations.append(text[:300])

    async def _receiver(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self._violation("31950 binary frame from the gateway")
                continue
            self._check_and_apply(msg.data)
        self.result.closed_by = self.result.closed_by or "gateway"
        self.result.close_code = self.ws.close_code
        self.closed.set()

    def _check_and_apply(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            self._violation(f"not JSON: {text[:60]}")
            return
        event = frame.get("event") if isinstance(frame, dict) else None
        shapes = {"media": {"event", "streamSid", "media"}, "mark": {"event", "streamSid", "mark"},
                  "clear": {"event", "streamSid"}}
        if event not in shapes:
            self._violation(f"31951 unknown event {event!r}")
            return
        if set(frame) != shapes[event]:
            self._violation(f"31951 {event} fields {sorted(frame)}")
        if frame.get("streamSid") != self.stream_sid:
            self._violation(f"31951 {event} with streamSid {frame.get('streamSid')!r}")
        if event == "media":
            media = frame.get("media")
            if not isinstance(media, dict) or set(media) != {"payload"}:
                self._violation(f"31951 media.media {media!r:.80}")
                return
            try:
                audio = base64.b64decode(media["payload"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                self._violation("media payload not base64")
                return
            now = time.monotonic()
            if self.result.first_audio_at is None:
                self.result.first_audio_at = now
            self.result.media_times.append(now)
            self.result.media_sizes.append(len(audio))
            self.result.media_frames += 1
            self.result.media_bytes += len(audio)
            self._buffer.append(audio)
        elif event == "mark":
            mark = frame.get("mark")
            if not isinstance(mark, dict) or set(mark) != {"name"} or not isinstance(mark.get("name"), str):
                self._violation(f"31951 mark.mark {mark!r:.80}")
                return
            self.result.marks_received += 1
            self._buffer.append(("mark", mark["name"]))
            self._echo_leading_marks()
        elif event == "clear":
            self.result.clears.append(time.monotonic())
            pending = [item[1] for item in self._buffer if isinstance(item, tuple)]
            self._buffer.clear()
            for name in pending:
                self._echo(name)

    def _echo(self, name: str) -> None:
        self.result.marks_echoed += 1
        self.result.last_echo_at = time.monotonic()
        asyncio.ensure_future(self.send_json({"event": "mark", "sequenceNumber": self._next_seq(),
                                              "streamSid": self.stream_sid, "mark": {"name": name}}))

    def _echo_leading_marks(self) -> None:
        while self._buffer and isinstance(self._buffer[0], tuple):
            self._echo(self._buffer.popleft()[1])

    async def _player(self) -> None:
        """Plays the buffer at 8 kHz real time; silence when empty (the heard timeline is continuous)."""
        t0 = time.monotonic()
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * FRAME_S - time.monotonic()))
            need = PHONE_FRAME_BYTES
            out = bytearray()
            while need and self._buffer and not self.hold_playback:
                self._echo_leading_marks()
                if not self._buffer:
                    break
                chunk = self._buffer[0]
                take = chunk[:need]
                out += take
                need -= len(take)
                if len(take) == len(chunk):
                    self._buffer.popleft()
                else:
                    self._buffer[0] = chunk[len(take):]
            if not self.hold_playback:
                self._echo_leading_marks()
            self.result.heard += out + MULAW_SILENCE * need


# ---------------------------------------------------------------------- files and CLI

def read_wav_as_ulaw(path: str | Path) -> bytes:
    """Any PCM WAV (mono/stereo, 8/16/24-bit, any rate) -> 8 kHz mu-law."""
    with wave.open(str(path), "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        data = w.readframes(w.getnframes())
    if width != 2:
        if width == 1:
            data = audioop.bias(data, 1, -128)  # 8-bit WAV is unsigned
        data = audioop.lin2lin(data, width, 2)
    if channels == 2:
        data = audioop.tomono(data, 2, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{path}: {channels} channels not supported")
    return pcm16_to_ulaw(Resampler(rate, PHONE_RATE).process(data))


def write_ulaw_as_wav(path: str | Path, ulaw: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(PHONE_RATE)
        w.writeframes(ulaw_to_pcm16(ulaw))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    p.add_argument("--bot", help="persona to ask for (?bot=); default: routing by --to")
    p.add_argument("--from", dest="caller", default="+15550001111")
    p.add_argument("--to", dest="dialed", default="+15005550007")
    p.add_argument("--wav", help="what the caller says (any PCM WAV); default: a 1.2 s 440 Hz tone")
    p.add_argument("--out", default="heard.wav", help="where to write what the caller heard")
    p.add_argument("--wait", type=float, default=2.0, help="seconds of silence before speaking (greeting)")
    p.add_argument("--hold", type=float, default=None,
                   help="seconds to keep listening after speaking (default: speech length + 3)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN", ""),
                   help="sign requests like Twilio (default: $TWILIO_AUTH_TOKEN; needed when the gateway checks)")


async def main(args: argparse.Namespace) -> int:
    speech = read_wav_as_ulaw(args.wav) if args.wav else pcm16_to_ulaw(tone(440, 1.2, PHONE_RATE, 8000))
    hold = args.hold if args.hold is not None else len(speech) / PHONE_RATE + 3
    phone = SimulatedPhone(args.url, bot=args.bot, caller=args.caller, dialed=args.dialed,
                           auth_token=args.auth_token)
    try:
        await phone.dial()
    except DialError as e:
        print(f"call not connected: {e}")
        return 1
    except aiohttp.ClientError as e:
        print(f"cannot reach the gateway at {args.url}: {e}")
        return 1
    finally:
        if phone.result.stream_url == "" and phone._session is not None:
            await phone._session.close()
    try:
        await phone.connect()
        await phone.silence(args.wait)
        await phone.say(speech)
        await phone.silence(hold)
        if not phone.closed.is_set():
            await phone.hangup()
    finally:
        await phone.close()
    write_ulaw_as_wav(args.out, bytes(phone.result.heard))
    summary = phone.result.summary()
    summary["heard_wav"] = args.out
    summary["spoke_seconds"] = round(len(speech) / PHONE_RATE, 2)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"call {phone.call_sid} -> bot {summary['bot']} via {summary['stream_url']}")
        for k, v in summary.items():
            if k not in ("stream_url", "bot"):
                print(f"  {k:24} {v}")
        for v in phone.result.violations[:10]:
            print(f"  VIOLATION {v}")
    return 0 if not phone.result.violations else 1
