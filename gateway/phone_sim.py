"""The simulated phone: calls the gateway exactly as Twilio, Telnyx, Plivo, Exotel, Vonage or Asterisk
(AudioSocket) would, in real time.

It POSTs the network's incoming-call webhook (Vonage: GETs its answer URL; Exotel and AudioSocket
have none: the applet or dialplan is configured with our address), reads the answer (TwiML, TeXML,
Plivo XML, Vonage NCCO), opens
the stream URL, sends what the network sends first (Twilio and Telnyx: `connected` and `start`,
Twilio with the TwiML's `<Parameter>`s; Plivo: `start`), speaks 20 ms mu-law frames on a
real-time clock (Exotel, Vonage, AudioSocket: 16-bit PCM at the network's rate, converted from
the mu-law it is given to say; Vonage and AudioSocket in binary frames), and emulates the network's playback buffer (one player for all): received audio
plays at 8 kHz real time, a mark (Plivo: checkpoint) is echoed when the audio before it has
played, a clear drops the buffer (Twilio then echoes every pending mark at once; for the others
that is unconfirmed, so `marks_on_clear` chooses). It checks every frame the gateway sends
against the network's documented shapes (`violations`), records what was heard as a timeline,
and reports latencies.

The same class is the tests' fake caller; `python -m gateway call [--network NAME]` wraps it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import sys
import time
import uuid
import wave
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from .ids import non_negative_float
from .telephony import audiosocket as asock
from .telephony.plivo import v3_signature
from .telephony.signature import compute as compute_signature
from .persona import BargeIn
from .audio import (MULAW_SILENCE, PHONE_FRAME_BYTES, PHONE_RATE, Resampler, audioop,
                    pcm16_to_ulaw, tone, ulaw_to_pcm16)

FRAME_S = 0.02
NETWORKS = ("twilio", "telnyx", "plivo", "exotel", "audiosocket", "vonage")
PCM_NETWORKS = ("exotel", "audiosocket", "vonage")
VONAGE_AUDIO = "audio/l16;rate=16000"  # 16-bit LE PCM at the phone rate, not mu-law
# What each network accepts from us: event -> (fields required, fields allowed); where frames name
# the stream; our event names as the player knows them (media, mark, clear).
SHAPES = {
    "twilio": ({"media": ({"event", "streamSid", "media"},) * 2, "mark": ({"event", "streamSid", "mark"},) * 2,
                "clear": ({"event", "streamSid"},) * 2}, "streamSid", {}),
    "telnyx": ({"media": ({"event", "media"}, {"event", "media", "stream_id"}),
                "mark": ({"event", "mark"}, {"event", "mark", "stream_id"}),
                "clear": ({"event"}, {"event", "stream_id"})}, "stream_id", {}),
    "plivo": ({"playAudio": ({"event", "media"}, {"event", "media", "streamId"}),
               "checkpoint": ({"event", "streamId", "name"},) * 2, "clearAudio": ({"event", "streamId"},) * 2},
              "streamId", {"playAudio": "media", "clearAudio": "clear"}),
    "exotel": ({"media": ({"event", "stream_sid", "media"},) * 2, "mark": ({"event", "stream_sid", "mark"},) * 2,
                "clear": ({"event", "stream_sid"},) * 2}, "stream_sid", {}),
}
EXOTEL_CHUNK = 320  # Exotel: our media chunks must be multiples of this many bytes, at most 100 KB
EXOTEL_MAX_CHUNK = 100_000


class DialError(Exception):
    """The webhook did not connect us to a stream (e.g. TwiML that says sorry and hangs up)."""

    def __init__(self, message: str, status: int = 200):
        super().__init__(message)
        self.status = status  # the webhook's HTTP status


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


def bot_uuid(bot: str) -> uuid.UUID:
    """The AudioSocket UUID the simulated dialplan uses for `bot` (map it in audiosocket.bots)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"gateway-bot:{bot}")


class SimulatedPhone:
    def __init__(self, base_url: str, *, bot: str | None = None, caller: str = "+15550001111",
                 dialed: str = "+15005550006", call_sid: str | None = None,
                 account_sid: str = "AC00000000000000000000000000000000", extra_form: dict | None = None,
                 auth_token: str = "", public_url: str = "", network: str = "twilio", signing_key=None,
                 sample_rate: int = PHONE_RATE):
        """`auth_token`: sign like Twilio (network twilio) or Plivo (signature V3); `signing_key`: an
        Ed25519 private key (cryptography) to sign Telnyx webhooks with; `public_url`: what the
        network dials (the gateway's GATEWAY_PUBLIC_URL), hence what is signed ("": base_url).
        Exotel: `auth_token` is "KEY:TOKEN" for the URL's basic auth, `sample_rate` 8000/16000/24000."""
        if network not in NETWORKS:
            raise ValueError(f"network: one of {', '.join(NETWORKS)}, got {network!r}")
        self.network = network
        self.pcm = network in PCM_NETWORKS
        self.rate = {"exotel": sample_rate, "vonage": 16000}.get(network, PHONE_RATE)
        self.frame_bytes = self.rate * 2 // 50 if self.pcm else PHONE_FRAME_BYTES  # 20 ms
        self._mic_up = Resampler(PHONE_RATE, self.rate) if self.pcm else None  # mu-law speech -> the phone's PCM
        self._ear_down = Resampler(self.rate, PHONE_RATE) if self.pcm else None  # heard PCM -> the mu-law timeline
        self.signing_key = signing_key
        self.marks_on_clear = network == "twilio"  # pending marks echoed at a clear (unconfirmed but Twilio)
        self.base_url = base_url.rstrip("/")  # where this phone reaches the gateway
        self.public_url = public_url.rstrip("/")
        self.bot = bot
        self.caller = caller
        self.dialed = dialed
        self.call_sid = call_sid or {"twilio": "CA" + uuid.uuid4().hex, "telnyx": "v3:" + uuid.uuid4().hex,
                                     "plivo": str(uuid.uuid4()), "exotel": uuid.uuid4().hex,
                                     "audiosocket": str(bot_uuid(bot) if bot else uuid.uuid4()),
                                     "vonage": str(uuid.uuid4())}[network]
        self.account_sid = account_sid
        self.stream_sid = "MZ" + uuid.uuid4().hex if network == "twilio" else str(uuid.uuid4())
        if network in ("audiosocket", "vonage"):  # one UUID names the call (and, mapped in audiosocket.bots, its bot)
            self.stream_sid = self.call_sid
        self._tcp: asyncio.StreamWriter | None = None  # AudioSocket: no WebSocket
        self._vonage_headers: dict = {}  # Vonage: the NCCO endpoint's headers, echoed in websocket:connected
        self._fill_ticks = 0
        self._mic_voiced = False
        self._silent_ticks = 1  # player ticks since bot audio last played (reply latency: when it begins)
        self._starved = True  # AudioSocket's player waits for a little audio before it plays (jitter)
        self.extra_form = extra_form or {}
        self.result = PhoneResult(rate=self.rate)
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
        if self.network == "audiosocket":  # no webhook: the dialplan's AudioSocket(uuid,host:port)
            self.result.stream_url = self.base_url
            self.result.parameters = {"bot": self.bot} if self.bot else {}
            return self.result
        if self.network == "vonage":
            return await self._vonage_answer()
        if self.network == "exotel":  # no webhook: the Voicebot applet is configured with the media URL
            query = {k: v for k, v in (("bot", self.bot), ("sample-rate", str(self.rate))) if v}
            self.result.stream_url = f"{self.public_url or self.base_url}/exotel/media?{urlencode(query)}"
            self.result.stream_url = "ws" + self.result.stream_url.removeprefix("http")
            self.result.parameters = dict(query)
            return self.result
        form = {"CallSid": self.call_sid, "AccountSid": self.account_sid, "From": self.caller,
                "To": self.dialed, "CallStatus": "ringing", "Direction": "inbound",
                "ApiVersion": "2010-04-01", "Caller": self.caller, "Called": self.dialed, **self.extra_form}
        if self.network == "plivo":
            form = {"CallUUID": self.call_sid, "From": self.caller, "To": self.dialed, "Direction": "inbound",
                    "CallStatus": "ringing", "Event": "StartApp", **self.extra_form}
        url = self.webhook_url or f"{self.public_url or self.base_url}/{self.network}/voice" + \
            (f"?bot={self.bot}" if self.bot else "")
        body = urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **self._webhook_signature(url, form, body)}
        async with self._session.post(self.reach(url), data=body, headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise DialError(f"webhook answered HTTP {resp.status}: {text[:200].strip()}", resp.status)
            refused = resp.headers.get("X-Gateway-Refused")  # why, for us (Twilio ignores it)
        self.result.twiml = text
        root = ET.fromstring(text)
        stream = root.find("./Stream" if self.network == "plivo" else "./Connect/Stream")
        if stream is None:
            say = root.find("./Speak" if self.network == "plivo" else "./Say")
            says = f"the caller hears: {say.text if say is not None else '-'}"
            raise DialError(f"refused: {refused} ({says})" if refused else f"no stream in the answer ({says})")
        if self.network == "plivo":  # the URL is the element's text
            self.result.stream_url = (stream.text or "").strip()
            if stream.get("bidirectional") != "true" or stream.get("contentType") != "audio/x-mulaw;rate=8000":
                self._violation(f"Stream attributes {dict(stream.attrib)}: audio sent back would not play")
        else:
            self.result.stream_url = stream.get("url", "")
        if self.network == "telnyx" and stream.get("bidirectionalMode") != "rtp":
            self._violation("Stream without bidirectionalMode=\"rtp\": Telnyx drops the audio we send back")
        self.result.parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        self.result.parameters.update(parse_qsl(urlsplit(self.result.stream_url).query))
        return self.result

    async def _vonage_answer(self) -> PhoneResult:
        """GET the answer URL like Vonage (query to, from, uuid); the NCCO must connect a websocket."""
        query = {"to": self.dialed, "from": self.caller, "uuid": self.call_sid,
                 "conversation_uuid": "CON-" + str(uuid.uuid4()), **({"bot": self.bot} if self.bot else {})}
        url = f"{self.public_url or self.base_url}/vonage/answer?{urlencode(query)}"
        headers = {}
        if self.auth_token:  # signed webhooks: a JWT HS256 with the signature secret
            import jwt
            headers["Authorization"] = "Bearer " + jwt.encode(
                {"iat": int(time.time()), "jti": str(uuid.uuid4()), "iss": "Vonage"}, self.auth_token, algorithm="HS256")
        async with self._session.get(self.reach(url), headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise DialError(f"answer URL answered HTTP {resp.status}: {text[:200].strip()}", resp.status)
            refused = resp.headers.get("X-Gateway-Refused")
        self.result.twiml = text
        ncco = json.loads(text)
        connect = next((a for a in ncco if isinstance(a, dict) and a.get("action") == "connect"), None)
        if connect is None:
            talk = next((a.get("text") for a in ncco if isinstance(a, dict) and a.get("action") == "talk"), "-")
            raise DialError(f"refused: {refused} (the caller hears: {talk})" if refused else
                            f"no connect in the NCCO (the caller hears: {talk})")
        endpoint = connect["endpoint"][0]
        if endpoint.get("type") != "websocket" or endpoint.get("content-type") != VONAGE_AUDIO:
            self._violation(f"NCCO endpoint {endpoint!r:.120}: want a websocket with {VONAGE_AUDIO}")
        self.result.stream_url = endpoint.get("uri", "")
        self.result.parameters = {**endpoint.get("headers", {}), **dict(parse_qsl(urlsplit(self.result.stream_url).query))}
        self._vonage_headers = endpoint.get("headers", {})
        return self.result

    def _webhook_signature(self, url: str, form: dict, body: bytes) -> dict:
        """The network's authentication headers on its webhook, when we hold its secret."""
        if self.network == "twilio" and self.auth_token:
            return {"X-Twilio-Signature": compute_signature(self.auth_token, url, form)}
        if self.network == "plivo" and self.auth_token:
            nonce = uuid.uuid4().hex[:20]
            return {"X-Plivo-Signature-V3": v3_signature(self.auth_token, "POST", url, list(form.items()), nonce),
                    "X-Plivo-Signature-V3-Nonce": nonce}
        if self.network == "telnyx" and self.signing_key is not None:
            ts = str(int(time.time()))
            sig = self.signing_key.sign(ts.encode() + b"|" + body)
            return {"telnyx-timestamp": ts, "telnyx-signature-ed25519": base64.b64encode(sig).decode()}
        return {}

    async def connect(self, *, send_start: bool = True) -> None:
        """Open the stream and send `connected` and `start`, as Twilio does when the call connects."""
        if self.network == "audiosocket":
            u = urlsplit(self.base_url)
            reader, self._tcp = await asyncio.open_connection(u.hostname, u.port)
            self._tasks = [asyncio.create_task(self._tcp_receiver(reader), name="phone-rx"),
                           asyncio.create_task(self._player(), name="phone-player")]
            if send_start:
                await self.send_start()
            return
        self._session = self._session or aiohttp.ClientSession()
        headers = {"X-Twilio-Signature": compute_signature(self.auth_token, self.result.stream_url)} \
            if self.auth_token and self.network == "twilio" else {}
        if self.auth_token and self.network == "exotel":  # wss://KEY:TOKEN@host/...: basic auth
            headers = {"Authorization": "Basic " + base64.b64encode(self.auth_token.encode()).decode("ascii")}
        self.ws = await self._session.ws_connect(self.reach(self.result.stream_url), max_msg_size=0, headers=headers)
        if self.network == "twilio":
            await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        elif self.network in ("telnyx", "exotel"):
            await self.send_json({"event": "connected", "version": "1.0.0"} if self.network == "telnyx"
                                 else {"event": "connected"})

        self._tasks = [asyncio.create_task(self._receiver(), name="phone-rx"),
                       asyncio.create_task(self._player(), name="phone-player")]
        if send_start:
            await self.send_start()

    def reach(self, url: str) -> str:
        """Where to send what Twilio sends to `url` (the public webhook, the TwiML's wss:// stream URL):
        the gateway at base_url, keeping the path below the public URL's own. A URL on another host
        than the public one (a stream sent to another instance) is dialled as it is, like Twilio."""
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
        params = self.result.parameters if parameters is None else parameters
        if self.network == "vonage":  # the first message; the endpoint's headers at the top level
            await self.send_json({"event": "websocket:connected", "content-type": VONAGE_AUDIO, **self._vonage_headers})
            self.result.start_sent_at = time.monotonic()
            self._start_mic()
            return
        if self.network == "audiosocket":  # the UUID is the start
            await self.send_raw(asock.frame(asock.UUID, uuid.UUID(self.call_sid).bytes))
            self.result.start_sent_at = time.monotonic()
            self._start_mic()
            return
        await self.send_json(self._start_frame() if self.network != "twilio" else {
            "event": "start", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
                      "tracks": ["inbound"], "customParameters": params,
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        self.result.start_sent_at = time.monotonic()
        self._start_mic()

    def _start_frame(self) -> dict:
        if self.network == "exotel":  # snake_case, every value a string
            return {"event": "start", "sequence_number": self._next_seq(), "stream_sid": self.stream_sid,
                    "start": {"stream_sid": self.stream_sid, "call_sid": self.call_sid, "account_sid": "exotel-sim",
                              "from": self.caller, "to": self.dialed, "custom_parameters": self.result.parameters,
                              "media_format": {"encoding": "audio/x-raw", "sample_rate": str(self.rate),
                                               "bit_rate": "16"}}}
        if self.network == "telnyx":  # stream_id top-level only; counters as strings
            return {"event": "start", "sequence_number": self._next_seq(), "stream_id": self.stream_sid,
                    "start": {"user_id": str(uuid.uuid4()), "call_control_id": self.call_sid,
                              "call_session_id": str(uuid.uuid4()), "client_state": None, "from": self.caller,
                              "to": self.dialed, "media_format": {"encoding": "PCMU", "sample_rate": 8000,
                                                                  "channels": 1}}}
        return {"event": "start", "sequenceNumber": int(self._next_seq()),  # Plivo: numbers
                "start": {"callId": self.call_sid, "streamId": self.stream_sid, "accountId": "MA" + "X" * 18,
                          "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
                "extra_headers": ""}

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def send_json(self, frame: dict) -> None:
        await self.send_raw(json.dumps(frame))

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
        while self._connected():
            frame = bytes(self._mic[:PHONE_FRAME_BYTES])
            del self._mic[:PHONE_FRAME_BYTES]
            frame += MULAW_SILENCE * (PHONE_FRAME_BYTES - len(frame))
            voiced = audioop.rms(ulaw_to_pcm16(frame), 2) >= VOICED_RMS  # the caller's speech, by the gateway's measure
            if voiced:
                self.result.last_voiced_at = time.monotonic()
            if voiced != self._mic_voiced:
                self._mic_voiced = voiced
                self.result.voiced_edges.append((time.monotonic(), voiced))
            if self._mic_up is not None:
                frame = self._mic_up.process(ulaw_to_pcm16(frame))
            self._chunk += 1
            if self._tcp is not None:
                await self.send_raw(asock.frame(asock.AUDIO, frame))
            elif self.network == "vonage":
                await self.send_raw(frame)
            else:
                await self.send_json(self._frame("media", {"track": "inbound", "chunk": str(self._chunk),
                                                           "timestamp": str(self._ts_ms),
                                                           "payload": base64.b64encode(frame).decode("ascii")}))
            self._ts_ms += 20
            self._mic_sent += PHONE_FRAME_BYTES
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * FRAME_S - time.monotonic()))

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
        if self._tcp is not None:
            await self.send_raw(asock.frame(asock.DTMF, digit.encode("ascii")))
            return
        if self.network == "vonage":
            await self.send_json({"event": "websocket:dtmf", "digit": digit, "duration": 260})
            return
        await self.send_json(self._frame("dtmf", {"track": "inbound_track", "digit": digit}))

    async def hangup(self) -> None:
        """The network's `stop` followed by closing the socket (Plivo: closing only)."""
        if self.network == "twilio":
            await self.send_json({"event": "stop", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                                  "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
        elif self.network == "telnyx":
            await self.send_json(self._frame("stop", {"user_id": "", "call_control_id": self.call_sid}))
        elif self.network == "audiosocket":
            await self.send_raw(asock.frame(asock.HANGUP))
        elif self.network == "exotel":
            await self.send_json(self._frame("stop", {"call_sid": self.call_sid, "account_sid": "exotel-sim",
                                                      "reason": "caller_hangup"}))
        await self.close()

    def _frame(self, event: str, body: dict) -> dict:
        """One of our frames (media, dtmf, stop) in the network's spelling."""
        if self.network == "telnyx":
            return {"event": event, "sequence_number": self._next_seq(), event: body, "stream_id": self.stream_sid}
        if self.network == "exotel":
            return {"event": event, "sequence_number": self._next_seq(), "stream_sid": self.stream_sid, event: body}
        if self.network == "plivo":
            if event == "media":
                body = {**body, "chunk": int(body["chunk"])}
            return {"event": event, "sequenceNumber": int(self._next_seq()), "streamId": self.stream_sid, event: body}
        return {"event": event, "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid, event: body}

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

    # ------------------------------------------------------------------ Twilio emulation
    def _violation(self, text: str) -> None:
        self.result.violations.append(text[:300])

    async def _receiver(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if self.network == "vonage":
                self._vonage_apply(msg)
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self._violation("31950 binary frame from the gateway")
                continue
            self._check_and_apply(msg.data)
        self.result.closed_by = self.result.closed_by or "gateway"
        self.result.closed_at = self.result.closed_at or time.monotonic()
        self.result.close_code = self.ws.close_code
        self.closed.set()

    async def _tcp_receiver(self, reader: asyncio.StreamReader) -> None:
        """AudioSocket from the gateway: 0x10 audio (20 ms of 8 kHz PCM16 each) and 0x00 to hang up."""
        while True:
            try:
                head = await reader.readexactly(3)
                payload = await reader.readexactly(int.from_bytes(head[1:], "big"))
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                break
            if head[0] == asock.HANGUP:
                self.result.closed_by = self.result.closed_by or "gateway"
                self.result.closed_at = self.result.closed_at or time.monotonic()
                break
            if head[0] != asock.AUDIO:
                self._violation(f"AudioSocket message type 0x{head[0]:02x} from the gateway (Asterisk takes audio and hang-up)")
                continue
            if len(payload) != asock.FRAME_BYTES:
                self._violation(f"AudioSocket audio of {len(payload)} bytes (20 ms is {asock.FRAME_BYTES})")
            self._media_in(payload)
        self.result.closed_by = self.result.closed_by or "gateway"
        self.result.closed_at = self.result.closed_at or time.monotonic()
        if self._tcp is not None:
            self._tcp.close()
        self.closed.set()

    def _media_in(self, audio: bytes) -> None:
        now = time.monotonic()
        if self.result.first_audio_at is None:
            self.result.first_audio_at = now
        self.result.media_times.append(now)
        self.result.media_sizes.append(len(audio))
        self.result.media_frames += 1
        self.result.media_bytes += len(audio)
        self._buffer.append(audio)

    def _vonage_apply(self, msg) -> None:
        """Vonage: binary frames of exactly 640 bytes are audio; text is `clear` or `notify`."""
        if msg.type == aiohttp.WSMsgType.BINARY:
            if len(msg.data) != self.frame_bytes:
                self._violation(f"binary frame of {len(msg.data)} bytes: Vonage wants exactly {self.frame_bytes}")
            self._media_in(msg.data)
            return
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        try:
            frame = json.loads(msg.data)
        except ValueError:
            self._violation(f"not JSON: {msg.data[:60]}")
            return
        action = frame.get("action") if isinstance(frame, dict) else None
        if action == "clear" and set(frame) == {"action"}:
            self.result.clears.append(time.monotonic())
            pending = [item[1] for item in self._buffer if isinstance(item, tuple)]
            self._buffer.clear()
            for payload in pending if self.marks_on_clear else ():
                self._echo(payload)
            asyncio.ensure_future(self.send_json({"event": "websocket:cleared"}))
        elif action == "notify" and set(frame) == {"action", "payload"} and isinstance(frame["payload"], dict):
            self.result.marks_received += 1
            self._buffer.append(("mark", frame["payload"]))
            self._echo_leading_marks()
        else:
            self._violation(f"unknown Vonage action {msg.data[:80]}")

    def _check_and_apply(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            self._violation(f"not JSON: {text[:60]}")
            return
        event = frame.get("event") if isinstance(frame, dict) else None
        shapes, sid_field, kinds = SHAPES[self.network]
        if event not in shapes:
            self._violation(f"31951 unknown event {event!r}")
            return
        if not shapes[event][0] <= set(frame) <= shapes[event][1]:
            self._violation(f"31951 {event} fields {sorted(frame)}")
        if sid_field in shapes[event][0] | (set(frame) & shapes[event][1]) and frame.get(sid_field) != self.stream_sid:
            self._violation(f"31951 {event} with {sid_field} {frame.get(sid_field)!r}")
        event = kinds.get(event, event)
        if event == "checkpoint":  # Plivo's mark: the name at the top
            frame = {"mark": {"name": frame.get("name")}}
            event = "mark"
        if event == "media":
            media = frame.get("media")
            if self.network == "plivo" and isinstance(media, dict):
                if (media.get("contentType"), media.get("sampleRate")) != ("audio/x-mulaw", 8000):
                    self._violation(f"playAudio format {media.get('contentType')!r} {media.get('sampleRate')!r}")
                media = {k: v for k, v in media.items() if k == "payload"}
            if not isinstance(media, dict) or set(media) != {"payload"}:
                self._violation(f"31951 media.media {media!r:.80}")
                return
            try:
                audio = base64.b64decode(media["payload"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                self._violation("media payload not base64")
                return
            if self.network == "exotel" and (len(audio) % EXOTEL_CHUNK or len(audio) > EXOTEL_MAX_CHUNK):
                self._violation(f"media chunk of {len(audio)} bytes: Exotel wants multiples of 320 up to 100 KB")
            self._media_in(audio)
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
            for name in pending if self.marks_on_clear else ():
                self._echo(name)
            if self.network == "plivo":
                asyncio.ensure_future(self.send_json({"event": "clearedAudio", "sequenceNumber": int(self._next_seq()),
                                                      "streamId": self.stream_sid}))

    def _echo(self, name: str) -> None:
        self.result.marks_echoed += 1
        self.result.last_echo_at = time.monotonic()
        if self.network == "plivo":
            frame = {"event": "playedStream", "sequenceNumber": int(self._next_seq()), "streamId": self.stream_sid,
                     "name": name}
        elif self.network == "vonage":
            frame = {"event": "websocket:notify", "payload": name}
        elif self.network in ("telnyx", "exotel"):
            frame = {"event": "mark", "sequence_number": self._next_seq(), "mark": {"name": name},
                     ("stream_id" if self.network == "telnyx" else "stream_sid"): self.stream_sid}
        else:
            frame = {"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                     "mark": {"name": name}}
        asyncio.ensure_future(self.send_json(frame))

    def _echo_leading_marks(self) -> None:
        while self._buffer and isinstance(self._buffer[0], tuple):
            self._echo(self._buffer.popleft()[1])

    async def _player(self) -> None:
        """Plays the buffer in real time; silence when empty (the heard timeline is continuous)."""
        t0 = time.monotonic()
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * FRAME_S - time.monotonic()))
            need = self.frame_bytes
            out = bytearray()
            filling = False
            if self._tcp is not None:  # a 2-frame jitter buffer: AudioSocket audio arrives paced, with jitter
                if not self._buffer:
                    self._starved, self._fill_ticks = True, 0
                elif self._starved:  # wait for a second frame, at most two ticks
                    filling = sum(map(len, self._buffer)) < 2 * self.frame_bytes and self._fill_ticks < 2
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
                self.result.play_times.append(time.monotonic())
            elif not out and not self._silent_ticks and self.result.play_times:
                self.result.stop_times.append(time.monotonic())
            self._silent_ticks = 0 if out else self._silent_ticks + 1
            if self._ear_down is None:
                self.result.heard += out + MULAW_SILENCE * need
            else:
                out += bytes(need)
                self.result.heard_pcm += out
                self.result.heard += pcm16_to_ulaw(self._ear_down.process(bytes(out)))


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
        raise ValueError(f"{channels} channels (mono or stereo only)")
    resampler = Resampler(rate, PHONE_RATE)
    return pcm16_to_ulaw(resampler.process(data) + resampler.flush())


def write_ulaw_as_wav(path: str | Path, ulaw: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(PHONE_RATE)
        w.writeframes(ulaw_to_pcm16(ulaw))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8080",
                   help="where to reach the gateway (default: %(default)s; --network audiosocket: tcp://HOST:PORT)")
    p.add_argument("--public-url", default=os.environ.get("GATEWAY_PUBLIC_URL", ""), metavar="URL",
                   help="the gateway's public URL: what the network would dial, hence what is signed "
                        "(default: $GATEWAY_PUBLIC_URL, else --url)")
    p.add_argument("--network", choices=NETWORKS, default="twilio", help="which network's phone to be (default: %(default)s)")
    p.add_argument("--bot", help="persona to ask for (?bot=); default: routing by --to")
    p.add_argument("--from", dest="caller", default="+15550001111", help="caller's number (default: %(default)s)")
    p.add_argument("--to", dest="dialed", default="+15005550007",
                   help="number dialed, routed to a bot by routing.numbers (default: %(default)s)")
    p.add_argument("--wav", help="what the caller says (any PCM WAV); default: a 1.2 s 440 Hz tone")
    p.add_argument("--out", default="heard.wav", help="where to write what the caller heard (default: %(default)s)")
    p.add_argument("--wait", type=non_negative_float, default=2.0,
                   help="seconds of silence before speaking, to hear the greeting (default: %(default)s)")
    p.add_argument("--hold", type=non_negative_float, default=None,
                   help="seconds to keep listening after speaking (default: speech length + 3)")
    p.add_argument("--json", action="store_true", help="print the summary, with the call id, as JSON")
    p.add_argument("--sample-rate", type=int, choices=(8000, 16000, 24000), default=8000,
                   help="--network exotel: the PCM rate the Voicebot URL asks for (default: %(default)s)")
    p.add_argument("--auth-token", default=None,
                   help="sign requests like Twilio or Plivo (default: $TWILIO_AUTH_TOKEN, or $PLIVO_AUTH_TOKEN with "
                        "--network plivo; with --network exotel KEY:TOKEN, default $EXOTEL_API_KEY:$EXOTEL_API_TOKEN; "
                        "--network vonage: the signature secret, default $VONAGE_SIGNATURE_SECRET; "
                        "needed when the gateway checks)")


async def main(args: argparse.Namespace) -> int:
    try:
        speech = read_wav_as_ulaw(args.wav) if args.wav else pcm16_to_ulaw(tone(440, 1.2, PHONE_RATE, 8000))
    except FileNotFoundError:
        print(f"error: --wav {args.wav}: no such file", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: --wav {args.wav}: {e.strerror or e}", file=sys.stderr)
        return 2
    except (wave.Error, EOFError) as e:  # not RIFF/WAVE, cut short, or not integer PCM
        print(f"error: --wav {args.wav}: not a PCM WAV file ({str(e) or 'cut short'})", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: --wav {args.wav}: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out).resolve().parent
    if Path(args.out).is_dir() or not out_dir.is_dir() or not os.access(out_dir, os.W_OK):
        print(f"error: --out {args.out}: cannot write a file there", file=sys.stderr)
        return 2
    hold = args.hold if args.hold is not None else len(speech) / PHONE_RATE + 3
    if args.network == "audiosocket" and not args.url.startswith("tcp://"):
        port = os.environ.get("GATEWAY_AUDIOSOCKET_PORT", "")
        if not port.isdigit():
            print("error: --network audiosocket needs --url tcp://HOST:PORT (the gateway's GATEWAY_AUDIOSOCKET_PORT)",
                  file=sys.stderr)
            return 2
        args.url = f"tcp://127.0.0.1:{port}"
    token = args.auth_token if args.auth_token is not None else \
        os.environ.get({"plivo": "PLIVO_AUTH_TOKEN", "vonage": "VONAGE_SIGNATURE_SECRET"}.get(
            args.network, "TWILIO_AUTH_TOKEN"), "")
    if args.network == "exotel" and args.auth_token is None:
        key, secret = os.environ.get("EXOTEL_API_KEY", ""), os.environ.get("EXOTEL_API_TOKEN", "")
        token = f"{key}:{secret}" if key and secret else ""
    phone = SimulatedPhone(args.url, bot=args.bot, caller=args.caller, dialed=args.dialed,
                           auth_token=token if args.network != "telnyx" else "", network=args.network,
                           public_url=args.public_url, sample_rate=args.sample_rate)
    try:
        await phone.dial()
    except DialError as e:
        hint = "" if e.status != 403 else (
            " (the gateway checks Twilio signatures: pass --auth-token, its TWILIO_AUTH_TOKEN)" if not token
            else f" (signed for {args.public_url or args.url}: --public-url must be the gateway's GATEWAY_PUBLIC_URL "
                 "and --auth-token its TWILIO_AUTH_TOKEN)")
        print(f"call not connected: {e}{hint}")
        return 1
    except aiohttp.ClientError as e:
        print(f"cannot reach the gateway at {args.url}: {e}")
        return 1
    finally:
        if phone.result.stream_url == "" and phone._session is not None:
            await phone._session.close()
    try:
        try:
            await phone.connect()
        except (aiohttp.ClientError, OSError) as e:
            print(f"call not connected: cannot open the stream {phone.result.stream_url}: {e}")
            return 1
        await phone.silence(args.wait)
        await phone.say(speech)
        await phone.silence(hold)
        if not phone.closed.is_set():
            await phone.hangup()
    finally:
        await phone.close()
    if phone.pcm:  # as heard: 16-bit PCM at the network's rate
        with wave.open(str(args.out), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(phone.rate)
            w.writeframes(bytes(phone.result.heard_pcm))
    else:
        write_ulaw_as_wav(args.out, bytes(phone.result.heard))
    summary = {"call_id": phone.call_sid, **phone.result.summary()}
    summary["heard_wav"] = args.out
    summary["spoke_seconds"] = round(len(speech) / PHONE_RATE, 2)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"call {phone.call_sid} -> bot {summary['bot']} via {summary['stream_url']}")
        for k, v in summary.items():
            if k not in ("call_id", "stream_url", "bot"):
                print(f"  {k:24} {v}")
        for v in phone.result.violations[:10]:
            print(f"  VIOLATION {v}")
    if phone.result.close_code == 1008:  # WSCloseCode.POLICY_VIOLATION
        print("the gateway refused the stream (close code 1008: signature, call token or no start; see its log)",
              file=sys.stderr)
        return 1
    return 0 if not phone.result.violations else 1
