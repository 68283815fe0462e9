"""The simulated phone: calls the gateway exactly as a phone network would, in real time.

Which network it is comes from that network's fake caller (`telephony/<network>/fake.py`): how it
dials (POSTs the incoming-call webhook, GETs Vonage's answer URL, or nothing when the network is
configured with our address: Exotel, AudioSocket), what it sends (its hello and start, 20 ms of the
caller's audio, keypad, stop) and how it reads and checks what the gateway sends. Everything else
is here, once: the sockets (WebSocket or TCP), a microphone that never stops (20 ms frames on a
real-time clock: queued speech or silence; PCM networks get it converted from the mu-law it is
given to say), the network's playback buffer (one player for all: received audio plays in real
time, a mark is echoed when the audio before it has played, a clear drops the buffer and, where the
network does so, echoes every pending mark), the protocol violations, the heard timeline and the
latencies.

The same class is the tests' fake caller; `python -m gateway call [--network NAME]` (phone_cli.py) wraps it.
"""

from __future__ import annotations

import asyncio
import json
import wave
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from .audio import (MULAW_SILENCE, PHONE_FRAME_BYTES, PHONE_RATE, Resampler, audioop,
                    pcm16_to_ulaw, ulaw_to_pcm16)
from .persona import BargeIn
from .telephony.fake import DialError
from .telephony.registry import BY_NAME, NAMES
from .clock import monotonic

__all__ = ["DialError", "NETWORKS", "PhoneResult", "SimulatedPhone", "read_wav_as_ulaw", "write_ulaw_as_wav"]
FRAME_S = 0.02
NETWORKS = NAMES


@dataclass
class PhoneResult:
    twiml: str = ""
    stream_url: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    heard: bytearray = field(default_factory=bytearray)  # mu-law timeline as the caller heard it
    heard_pcm: bytearray = field(default_factory=bytearray)  # PCM networks: the same at the phone's rate
    rate: int = PHONE_RATE  # the phone's sample rate
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
    speech_ends: list[float] = field(default_factory=list)  # when each spoken segment's last voiced frame left
    last_voiced_at: float | None = None  # when the microphone last sent a voiced frame
    voiced_edges: list[tuple[float, bool]] = field(default_factory=list)  # (when, voiced) each time that changed
    play_times: list[float] = field(default_factory=list)  # ticks at which bot audio began to play after silence
    stop_times: list[float] = field(default_factory=list)  # ticks at which it stopped (silence after it)
    closed_by: str = ""
    closed_at: float | None = None  # when the socket closed (monotonic)
    close_code: int | None = None

    def first_audio_after(self, t: float) -> float | None:
        """When bot audio first played at this phone after `t` (not when it arrived: what the caller heard)."""
        return next((m for m in self.play_times if m >= t), None)

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


VOICED_RMS = BargeIn().threshold  # a frame louder than this is speech (the gateway's own measure)

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


CLOSE_WAIT_S = 2.0  # how long a hanging-up phone waits for the gateway's close reply


class SimulatedPhone:
    def __init__(self, base_url: str, *, bot: str | None = None, caller: str = "+15550001111",
                 dialed: str = "+15005550006", call_sid: str | None = None,
                 account_sid: str = "AC00000000000000000000000000000000", extra_form: dict | None = None,
                 auth_token: str = "", public_url: str = "", network: str = "twilio", signing_key=None,
                 sample_rate: int = PHONE_RATE, clock: Callable[[], float] = monotonic):
        """`auth_token`: the network's secret to sign with (Twilio, Plivo V3, Vonage's signature
        secret; Exotel "KEY:TOKEN" for the URL's basic auth); `signing_key`: an Ed25519 private key
        (cryptography) to sign Telnyx webhooks with; `public_url`: what the network dials (the
        gateway's GATEWAY_PUBLIC_URL), hence what is signed ("": base_url); `sample_rate`: the PCM
        rate a network lets the URL choose (Exotel 8000/16000/24000); `clock`: what times the microphone,
        the player and the result (the tests' fast-forwarded loop clock, else real time)."""
        if network not in BY_NAME:
            raise ValueError(f"network: one of {', '.join(NETWORKS)}, got {network!r}")
        self.network = network
        self.clock = clock
        self.base_url = base_url.rstrip("/")  # where this phone reaches the gateway
        self.public_url = public_url.rstrip("/")
        self.bot, self.caller, self.dialed = bot, caller, dialed
        self.account_sid = account_sid
        self.extra_form = extra_form or {}
        self.auth_token = auth_token
        self.signing_key = signing_key
        self.webhook_url: str | None = None  # the full webhook URL, as the network got it (outbound calls)
        self.result = PhoneResult()
        self.fake = BY_NAME[network].fake_caller()(self, sample_rate)
        self.pcm = self.fake.pcm
        self.use_rate(self.fake.rate)
        self.marks_on_clear = self.fake.marks_on_clear
        self.call_sid = call_sid or self.fake.call_id(bot)
        self.stream_sid = self.fake.stream_id(self.call_sid)
        self._session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._tcp: asyncio.StreamWriter | None = None
        self._buffer: deque = deque()  # the network's playback buffer: bytes or ("mark", token)
        self._tasks: list[asyncio.Task] = []
        self._mic = bytearray()
        self._mic_sent = 0
        self._mic_task: asyncio.Task | None = None
        self._chunk = 0
        self._ts_ms = 0
        self._fill_ticks = 0
        self._mic_voiced = False
        self._silent_ticks = 1  # player ticks since bot audio last played (reply latency: when it begins)
        self._starved = True
        self.closed = asyncio.Event()
        # True: audio stays in the playback buffer unplayed (a slow network or jitter buffer), so
        # its marks are not echoed; tests use it to barge in before anything was heard.
        self.hold_playback = False

    def use_rate(self, rate: int) -> None:
        """The phone's audio rate (a network whose answer picks it calls this from its dial)."""
        self.rate = self.result.rate = rate
        self.frame_bytes = rate * 2 // 50 if self.pcm else PHONE_FRAME_BYTES  # 20 ms
        self._mic_up = Resampler(PHONE_RATE, rate) if self.pcm else None  # mu-law speech -> the phone's PCM
        self._ear_down = Resampler(rate, PHONE_RATE) if self.pcm else None  # heard PCM -> the mu-law timeline

    # ------------------------------------------------------------------ set-up
    async def dial(self) -> PhoneResult:
        """Whatever the network does first (its webhook); raise DialError if no stream is offered."""
        self._session = self._session or aiohttp.ClientSession()
        await self.fake.dial()
        return self.result

    def public(self, path: str, bot: bool = False) -> str:
        """The gateway's public URL of `path` (as the network knows it); `bot`: with ?bot= when asked for one."""
        return f"{self.public_url or self.base_url}{path}" + (f"?{urlencode({'bot': self.bot})}" if bot and self.bot else "")

    async def request(self, method: str, url: str, **kw) -> tuple[str, str | None]:
        """An HTTP request as the network makes it; (body, X-Gateway-Refused). DialError unless 200."""
        async with self._session.request(method, self.reach(url), **kw) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise DialError(f"webhook answered HTTP {resp.status}: {text[:200].strip()}", resp.status)
            self.result.twiml = text
            return text, resp.headers.get("X-Gateway-Refused")  # why, for us (networks ignore it)

    async def connect(self, *, send_start: bool = True, ws=None) -> None:
        """Open the stream and send what the network sends when the call connects; `ws`: a socket
        already open (the tests' in-memory one) instead of dialling the stream URL."""
        if ws is not None:
            self.ws = ws
            receiver = self._receiver()
        elif self.fake.transport == "tcp":
            u = urlsplit(self.base_url)
            reader, self._tcp = await asyncio.open_connection(u.hostname, u.port)
            receiver = self._tcp_receiver(reader)
        else:
            self._session = self._session or aiohttp.ClientSession()
            # A phone that hangs up does not wait long for the gateway's close reply (aiohttp's
            # default is 10 s): Ctrl-C on `call` must end the command promptly.
            self.ws = await self._session.ws_connect(self.reach(self.result.stream_url), max_msg_size=0,
                                                     headers=self.fake.connect_headers(),
                                                     protocols=self.fake.ws_protocols,
                                                     timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_WAIT_S))
            if self.fake.ws_protocols and self.ws.protocol not in self.fake.ws_protocols:
                self.violation(f"WebSocket subprotocol {self.ws.protocol!r}: the network asks for "
                               f"{', '.join(self.fake.ws_protocols)}")
            receiver = self._receiver()
        for frame in self.fake.hello():
            await self.send(frame)
        self._tasks = [asyncio.create_task(receiver, name="phone-rx"),
                       asyncio.create_task(self._player(), name="phone-player")]
        if send_start:
            await self.send_start()

    def reach(self, url: str) -> str:
        """Where to send what the network sends to `url` (the public webhook, the answer's wss://
        stream URL): the gateway at base_url, keeping the path below the public URL's own. A URL on
        another host than the public one (a stream sent to another instance) is dialled as it is."""
        u, base = urlsplit(url), urlsplit(self.base_url)
        public = urlsplit(self.public_url or self.base_url)
        if (u.hostname, u.port or _DEFAULT_PORTS.get(u.scheme)) != \
                (public.hostname, public.port or _DEFAULT_PORTS.get(public.scheme)):
            return url
        prefix = urlsplit(self.public_url).path
        path = u.path[len(prefix):] if prefix and u.path.startswith(prefix + "/") else u.path
        scheme = base.scheme if u.scheme in ("http", "https") else ("wss" if base.scheme == "https" else "ws")
        return urlunsplit((scheme, base.netloc, base.path + path, u.query, ""))

    async def send_start(self, parameters: dict[str, str] | None = None) -> None:
        await self.send(self.fake.start(self.result.parameters if parameters is None else parameters))
        self.result.start_sent_at = self.clock()
        self._start_mic()

    async def send_json(self, frame: dict) -> None:
        await self.send_raw(json.dumps(frame))

    async def send(self, frame) -> None:
        await (self.send_json(frame) if isinstance(frame, dict) else self.send_raw(frame))

    async def send_raw(self, data: str | bytes) -> None:
        """Anything at all, for adversarial tests."""
        if self._tcp is not None:
            if not self._tcp.is_closing():
                try:
                    self._tcp.write(data if isinstance(data, bytes) else data.encode())
                    await self._tcp.drain()
                except (ConnectionError, OSError):
                    pass
            return
        if self.ws is None or self.ws.closed:
            return
        try:
            await (self.ws.send_bytes(data) if isinstance(data, bytes) else self.ws.send_str(data))
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
        t0 = self.clock()
        tick = 0
        while self._connected():
            frame = bytes(self._mic[:PHONE_FRAME_BYTES])
            del self._mic[:PHONE_FRAME_BYTES]
            frame += MULAW_SILENCE * (PHONE_FRAME_BYTES - len(frame))
            voiced = audioop.rms(ulaw_to_pcm16(frame), 2) >= VOICED_RMS  # the caller's speech, by the gateway's measure
            if voiced:
                self.result.last_voiced_at = self.clock()
            if voiced != self._mic_voiced:
                self._mic_voiced = voiced
                self.result.voiced_edges.append((self.clock(), voiced))
            if self._mic_up is not None:
                frame = self._mic_up.process(ulaw_to_pcm16(frame))
            self._chunk += 1
            await self.send(self.fake.media(frame, self._chunk, self._ts_ms))
            self._ts_ms += 20
            self._mic_sent += PHONE_FRAME_BYTES
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * FRAME_S - self.clock()))

    async def speak(self, ulaw: bytes) -> None:
        """Queue mu-law audio on the microphone and wait until it has all been sent."""
        self._mic += ulaw
        target = self._mic_sent + len(self._mic)
        while self._mic_sent < target and not self.closed.is_set():
            await asyncio.sleep(FRAME_S / 2)

    async def say(self, ulaw: bytes) -> None:
        """Speak, and remember when the speech ended (for reply latency): its last voiced frame,
        not the end of the file (a WAV's trailing silence is not the caller still talking)."""
        before = self.result.last_voiced_at
        await self.speak(ulaw)
        end = self.result.last_voiced_at
        if end is not None and end != before:
            self.result.speech_ends.append(end)

    async def silence(self, seconds: float) -> None:
        await self.speak(MULAW_SILENCE * int(seconds * PHONE_RATE))

    def _connected(self) -> bool:
        if self._tcp is not None:
            return not self._tcp.is_closing()
        return self.ws is not None and not self.ws.closed

    async def dtmf(self, digit: str) -> None:
        await self.send(self.fake.dtmf(digit))

    async def hangup(self) -> None:
        """The network's goodbye (if it says one) followed by closing the socket."""
        for frame in self.fake.stop():
            await self.send(frame)
        await self.close()

    async def close(self) -> None:
        if self._tcp is not None and not self._tcp.is_closing():
            self.result.closed_by = self.result.closed_by or "phone"
            self._tcp.close()
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

    # ------------------------------------------------------------------ the network's side
    def violation(self, text: str) -> None:
        self.result.violations.append(text[:300])

    _violation = violation

    async def _receiver(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                self._apply(self.fake.read(msg.data, msg.type == aiohttp.WSMsgType.BINARY))
        self._gone()
        self.result.close_code = self.ws.close_code
        self.closed.set()

    async def _tcp_receiver(self, reader: asyncio.StreamReader) -> None:
        while (data := await self.fake.read_tcp(reader)) is not None:
            if not self._apply(self.fake.read(data, True)):
                break
        self._gone()
        if self._tcp is not None:
            self._tcp.close()
        self.closed.set()

    def _gone(self) -> None:
        self.result.closed_by = self.result.closed_by or "gateway"
        self.result.closed_at = self.result.closed_at or self.clock()

    def _apply(self, effects) -> bool:
        """What the gateway's frame means for the player; False once the gateway hung up."""
        for effect in effects:
            kind = effect[0]
            if kind == "audio":
                self._media_in(effect[1])
            elif kind == "mark":
                self.result.marks_received += 1
                self._buffer.append(("mark", effect[1]))
                self._echo_leading_marks()
            elif kind == "clear":
                self.result.clears.append(self.clock())
                pending = [item[1] for item in self._buffer if isinstance(item, tuple)]
                self._buffer.clear()
                for token in pending if self.marks_on_clear else ():
                    self._echo(token)
                if (ack := self.fake.cleared()) is not None:
                    asyncio.ensure_future(self.send(ack))
            elif kind == "hangup":
                self._gone()
                return False
        return True

    def _media_in(self, audio: bytes) -> None:
        now = self.clock()
        if self.result.first_audio_at is None:
            self.result.first_audio_at = now
        self.result.media_times.append(now)
        self.result.media_sizes.append(len(audio))
        self.result.media_frames += 1
        self.result.media_bytes += len(audio)
        self._buffer.append(audio)

    def _echo(self, token) -> None:
        self.result.marks_echoed += 1
        self.result.last_echo_at = self.clock()
        if (frame := self.fake.echo(token)) is not None:
            asyncio.ensure_future(self.send(frame))

    def _echo_leading_marks(self) -> None:
        while self._buffer and isinstance(self._buffer[0], tuple):
            self._echo(self._buffer.popleft()[1])

    async def _player(self) -> None:
        """Plays the buffer in real time; silence when empty (the heard timeline is continuous)."""
        t0 = self.clock()
        tick = 0
        jitter = self.fake.jitter_frames
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * FRAME_S - self.clock()))
            need = self.frame_bytes
            out = bytearray()
            filling = False
            if jitter:  # a jitter buffer: paced audio arrives with jitter
                if not self._buffer:
                    self._starved, self._fill_ticks = True, 0
                elif self._starved:  # wait for more frames, at most `jitter` ticks
                    filling = sum(map(len, self._buffer)) < jitter * self.frame_bytes and self._fill_ticks < jitter
                    self._fill_ticks += 1
                    self._starved = filling
            while need and self._buffer and not self.hold_playback and not filling:
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
            if out and self._silent_ticks:  # bot audio begins to play (after a silence)
                self.result.play_times.append(self.clock())
            elif not out and not self._silent_ticks and self.result.play_times:
                self.result.stop_times.append(self.clock())
            self._silent_ticks = 0 if out else self._silent_ticks + 1
            if self._ear_down is None:
                self.result.heard += out + MULAW_SILENCE * need
            else:
                out += bytes(need)
                self.result.heard_pcm += out
                self.result.heard += pcm16_to_ulaw(self._ear_down.process(bytes(out)))


# ---------------------------------------------------------------------- files

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
        raise ValueError(f"{channels} channels (mono or stereo only)")
    resampler = Resampler(rate, PHONE_RATE)
    return pcm16_to_ulaw(resampler.process(data) + resampler.flush())


def write_ulaw_as_wav(path: str | Path, ulaw: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(PHONE_RATE)
        w.writeframes(ulaw_to_pcm16(ulaw))
