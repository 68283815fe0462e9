"""Asterisk AudioSocket: a TCP listener, no WebSocket (docs/protocols.md "Asterisk AudioSocket").

Off unless `audiosocket.port` (or GATEWAY_AUDIOSOCKET_PORT) is set; bound to `audiosocket.host`
(127.0.0.1 by default) and serving only peers in `audiosocket.allow`. Every message is
`type(1) length(2, big-endian) payload`: Asterisk sends 0x01 with the call's 16-byte UUID first,
then 0x10 audio (16-bit LE PCM, 8 kHz, 320 bytes = 20 ms), 0x03 a DTMF digit (one ASCII byte),
0x00 hang-up, 0xFF an error. We send 0x10 audio and 0x00 to hang up.

There are no marks and no clear, so the stream emulates them: our audio is paced here in real
time (one 20 ms frame per tick on our clock), a mark counts as played once the audio before it has
been sent and its play time has passed (MarkPlayed then), and `clear` drops what is not yet sent —
a barge-in stops the bot within one frame. The bot: `audiosocket.bots` maps a UUID to a bot (a
dialplan with a fixed UUID per extension chooses the bot that way; such calls get a per-call
suffix on the UUID as their id), else the default bot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
import uuid
from collections import deque
from typing import AsyncIterator, Awaitable, Callable

from . import Audio, Dtmf, MarkPlayed, PhoneControl, PhoneEvent, Started, Stopped
from .network import Network

log = logging.getLogger("gateway")
HANGUP, UUID, DTMF, AUDIO, ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit PCM
FRAME_S = 0.02
L16 = "audio/l16"
DTMF_DIGITS = set("0123456789*#ABCD")
ERRORS = {0x01: "calling party hung up", 0x02: "frame forwarding error", 0x04: "memory allocation error"}


def frame(kind: int, payload: bytes = b"") -> bytes:
    return bytes((kind,)) + len(payload).to_bytes(2, "big") + payload


class AudioSocketStream:
    """One AudioSocket connection: typed events in, paced audio out (marks and clear emulated)."""

    network = "audiosocket"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log, max_protocol_errors: int = 50,
                 bots: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic):
        self.reader, self.writer, self.log = reader, writer, log
        self.max_protocol_errors = max_protocol_errors
        self.bots = bots or {}
        self.clock = clock
        self.stream_sid: str | None = None
        self.protocol_errors = 0
        self.media_frames_in = 0
        self._stop_reason: str | None = None
        self._events: asyncio.Queue[PhoneEvent] = asyncio.Queue()
        self._out: deque[bytes | str] = deque()  # 320-byte frames and mark names, in order
        self._wake = asyncio.Event()
        self._sender: asyncio.Task | None = None
        self._partial = b""  # a chunk's bytes short of a whole frame (never, with 20 ms frames)

    # ---------------------------------------------------------------- inbound
    async def wait_started(self) -> Started | None:
        """Reads messages until the UUID (returned) or the end of the connection (None)."""
        while True:
            msg = await self._read()
            if msg is None:
                return None
            kind, payload = msg
            if kind == UUID and len(payload) == 16:
                sid = str(uuid.UUID(bytes=payload))
                self.stream_sid = sid
                bot = self.bots.get(sid, "")
                # A fixed UUID that picks the bot is shared by every call through that dialplan line.
                call_id = f"{sid}.{secrets.token_hex(4)}" if bot else sid
                self._sender = asyncio.create_task(self._send_loop(), name=f"audiosocket-tx:{sid}")
                return Started(stream_sid=sid, call_sid=call_id, account_sid="", custom_parameters={"bot": bot} if bot
                               else {}, encoding=L16, sample_rate=8000)
            if kind in (HANGUP, ERROR):
                self._stopping(kind, payload)
                return None
            self._bad("message before the UUID" if kind != UUID else "UUID of the wrong length", kind=kind,
                      size=len(payload))
            if self.protocol_errors > self.max_protocol_errors:
                return None

    async def events(self) -> AsyncIterator[PhoneEvent]:
        """Typed events after the UUID, ending with exactly one `Stopped`."""
        reader = asyncio.create_task(self._read_loop(), name=f"audiosocket-rx:{self.stream_sid}")
        try:
            while True:
                ev = await self._events.get()
                yield ev
                if isinstance(ev, Stopped):
                    return
        finally:
            reader.cancel()

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    async def _read(self) -> tuple[int, bytes] | None:
        try:
            head = await self.reader.readexactly(3)
            payload = await self.reader.readexactly(int.from_bytes(head[1:], "big"))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._stop_reason = self._stop_reason or "closed"
            return None
        return head[0], payload

    async def _read_loop(self) -> None:
        while self._stop_reason is None:
            msg = await self._read()
            if msg is None:
                break
            kind, payload = msg
            if kind == AUDIO:
                if not payload or len(payload) % 2:
                    self._bad("audio of an odd or zero length", size=len(payload))
                else:
                    self.media_frames_in += 1
                    self._events.put_nowait(Audio(payload=payload))
            elif kind == DTMF:
                digit = payload.decode("ascii", "replace")
                if len(payload) != 1 or digit not in DTMF_DIGITS:
                    self._bad("DTMF that is not one of 0-9*#A-D", size=len(payload))
                else:
                    self._events.put_nowait(Dtmf(digit=digit))
            elif kind in (HANGUP, ERROR):
                self._stopping(kind, payload)
            elif kind == UUID:
                self._bad("second UUID ignored", size=len(payload))
            else:
                self._bad(f"unknown message type 0x{kind:02x}", size=len(payload))
            if self._stop_reason is None and self.protocol_errors > self.max_protocol_errors:
                self.log.warning("phone_protocol_errors_exceeded", count=self.protocol_errors)
                self._stop_reason = "protocol_errors"
        self._events.put_nowait(Stopped(reason=self._stop_reason or "closed"))

    def _stopping(self, kind: int, payload: bytes) -> None:
        if kind == ERROR:
            code = payload[0] if payload else 0
            self.log.warning("phone_network_error", code=f"0x{code:02x}", detail=ERRORS.get(code, "application error"))
        self._stop_reason = "stop"

    def _bad(self, reason: str, **fields: object) -> None:
        self.protocol_errors += 1
        self.log.warning("phone_bad_frame", reason=reason, count=self.protocol_errors, **fields)

    # ---------------------------------------------------------------- outbound (paced here)
    async def play(self, audio: bytes) -> bool:
        if self._closed():
            return False
        audio, self._partial = self._partial + audio, b""
        whole = len(audio) - len(audio) % FRAME_BYTES
        self._out.extend(audio[i:i + FRAME_BYTES] for i in range(0, whole, FRAME_BYTES))
        self._partial = audio[whole:]
        self._wake.set()
        return True

    async def mark(self, name: str) -> bool:
        if self._closed():
            return False
        self._out.append(name)
        self._wake.set()
        return True

    async def clear(self) -> bool:
        """Drops what is not yet sent; its marks are never reported (the Playout counts them as not heard)."""
        self._out.clear()
        self._partial = b""
        return not self._closed()

    def _closed(self) -> bool:
        return self.writer.is_closing() or self._stop_reason is not None

    async def _send_loop(self) -> None:
        """One frame per 20 ms on an absolute clock while there is audio; a mark at the head is
        played once the frame before it has had its 20 ms."""
        next_at = self.clock()
        while True:
            if not self._out:
                self._wake.clear()
                await self._wake.wait()
                next_at = max(next_at, self.clock())
                continue
            item = self._out[0]
            if isinstance(item, str):
                self._out.popleft()
                self._events.put_nowait(MarkPlayed(name=item))
                continue
            if self.clock() < next_at:
                await asyncio.sleep(next_at - self.clock())
                continue
            self._out.popleft()
            try:
                self.writer.write(frame(AUDIO, item))
                await self.writer.drain()
            except (ConnectionError, OSError):
                return
            next_at += FRAME_S
            # The mark that follows is due when this frame has played: hold it until then.
            if self._out and isinstance(self._out[0], str):
                await asyncio.sleep(max(0.0, next_at - self.clock()))

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        """Hang up: 0x00, then close the connection."""
        if self._sender is not None:
            self._sender.cancel()
        if self.writer.is_closing():
            return
        try:
            self.writer.write(frame(HANGUP))
            await asyncio.wait_for(self.writer.drain(), 2.0)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass


def peer_allowed(host: str, allow: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for entry in allow:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


class AudioSocket(Network):
    name = "audiosocket"
    formats = ((L16, 8000),)
    formats_wanted = "signed linear 8 kHz (AudioSocket 0x10)"

    def startup_warnings(self, config) -> list[str]:
        settings = config.audiosocket
        if settings.port and settings.host not in ("127.0.0.1", "::1", "localhost"):
            return [f"event=audiosocket_exposed note=\"AudioSocket on {settings.host}: only peers in "
                    f"audiosocket.allow ({', '.join(settings.allow) or 'none'}) are served\""]
        return []

    def control(self, config, http, started: Started) -> PhoneControl:
        control = super().control(config, http, started)
        control.network = "AudioSocket"
        return control


async def serve(config, handle: Callable[[AudioSocketStream], Awaitable[None]], make_log) -> asyncio.AbstractServer:
    """The listener: each allowed connection becomes a stream handed to `handle` (the app's call flow)."""
    settings = config.audiosocket

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else ""
        if not peer_allowed(host, settings.allow):
            log.warning("event=stream_rejected network=audiosocket reason=\"peer not in audiosocket.allow\" remote=%s",
                        host)
            writer.close()
            return
        stream = AudioSocketStream(reader, writer, make_log(), config.limits.max_protocol_errors, settings.bots)
        try:
            await handle(stream)
        finally:
            await stream.close()

    return await asyncio.start_server(connected, settings.host, settings.port)
