"""The one WebSocket stream loop every WebSocket network runs: `WsPhoneStream(ws, codec, …)`.

It reads frames, hands each to the network's codec (pure) and turns what comes back into the
`PhoneStream` the call core uses: typed events in, play/mark/clear out through one send lock (a
`clear` can never interleave inside another frame, frames leave in the order the call issued
them). Bad input never raises out of here: each bad frame becomes a log line and a counted
protocol error, and past `max_protocol_errors` — or one frame over `limits.max_message_bytes` —
the stream stops with reason `protocol_errors` (the call ends as `protocol_error`).
Networks without marks (`codec.paced`) get their audio paced here on our clock (PacedOutput).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from aiohttp import WSCloseCode, WSMsgType, web

from . import Audio, MarkPlayed, PhoneEvent, Started, Stopped
from .codec import Codec
from .paced import PacedOutput
from .wire import FrameError, NetworkNotice
from ..clock import monotonic


class WsPhoneStream:
    def __init__(self, ws: web.WebSocketResponse, codec: Codec, log, max_protocol_errors: int = 50,
                 clock: Callable[[], float] = monotonic):
        self.ws, self.codec, self.log = ws, codec, log
        self.network = codec.network
        self.min_chunk_bytes = codec.min_chunk_bytes
        self.max_protocol_errors = max_protocol_errors
        self.protocol_errors = 0
        self.media_frames_in = 0
        self._send_lock = asyncio.Lock()
        self._stop_reason: str | None = None
        self._queue: asyncio.Queue[PhoneEvent] = asyncio.Queue()  # paced networks: frames and emulated marks
        self._paced = PacedOutput(self._send_audio_frame, lambda name: self._queue.put_nowait(MarkPlayed(name=name)),
                                  clock) if codec.paced else None

    @property
    def stream_sid(self) -> str | None:
        return self.codec.stream_sid

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    # ---------------------------------------------------------------- inbound
    async def wait_started(self) -> Started | None:
        """Reads frames until `start` (returned) or the end of the stream (None)."""
        while True:
            ev = await self.next_event()
            if isinstance(ev, Started):
                if self._paced is not None:
                    self._paced.start(getattr(self.codec, "frame_bytes", 320), f"paced:{ev.stream_sid}")
                return ev
            if isinstance(ev, Stopped):
                return None

    async def events(self) -> AsyncIterator[PhoneEvent]:
        """Typed events after `start`, ending with exactly one `Stopped`. Paced networks: a reader
        task and the pacer's marks meet in one queue, so neither waits on the other."""
        if self._paced is None:
            while True:
                ev = await self.next_event()
                yield ev
                if isinstance(ev, Stopped):
                    return
        reader = asyncio.create_task(self._read_into(self._queue), name=f"phone-rx:{self.stream_sid}")
        try:
            while True:
                ev = await self._queue.get()
                yield ev
                if isinstance(ev, Stopped):
                    return
        finally:
            reader.cancel()

    async def _read_into(self, queue: asyncio.Queue) -> None:
        while True:
            ev = await self.next_event()
            queue.put_nowait(ev)
            if isinstance(ev, Stopped):
                return

    async def next_event(self) -> PhoneEvent:
        """The next usable event; bad frames are logged, counted and skipped. After the stream has
        stopped (hang-up, socket closed, too many bad frames) it keeps returning `Stopped`."""
        while self._stop_reason is None:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                ev = self._decode(msg.data, msg.type == WSMsgType.BINARY)
                if isinstance(ev, Stopped):
                    self._stop_reason = "stop"
                elif ev is not None:
                    return ev
            elif msg.type == WSMsgType.ERROR:
                self._ws_error()
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                self._stop_reason = "closed"
            if self._stop_reason is None and self.protocol_errors > self.max_protocol_errors:
                self.log.warning("phone_protocol_errors_exceeded", count=self.protocol_errors)
                self._stop_reason = "protocol_errors"
        if self._paced is not None:
            self._paced.stop()  # nothing more can be played (a caller hang-up does not close() the stream)
        return Stopped(reason=self._stop_reason)

    def _decode(self, data: str | bytes, binary: bool) -> PhoneEvent | None:
        try:
            ev = self.codec.decode_binary(data) if binary else self.codec.decode_text(data)
        except FrameError as e:
            self._bad(str(e), size=len(data))
            return None
        except NetworkNotice as e:
            self.log.warning("phone_network_error", **e.fields)
            return None
        except (TypeError, ValueError, AttributeError, KeyError) as e:  # a field of a type no real frame has
            self._bad(f"malformed frame ({type(e).__name__})", size=len(data))
            return None
        if isinstance(ev, Audio):
            self.media_frames_in += 1
        return ev

    def _ws_error(self) -> None:
        exc = self.ws.exception()
        code = getattr(exc, "code", None)
        if code == WSCloseCode.MESSAGE_TOO_BIG:  # aiohttp refused a frame over max_msg_size
            self.protocol_errors += 1
            self.log.warning("phone_bad_frame", reason="frame over limits.max_message_bytes", count=self.protocol_errors,
                             close_code=int(code))
            self._stop_reason = "protocol_errors"
            return
        self.log.warning("phone_ws_error", error=f"{type(exc).__name__}: {exc}"[:200], close_code=self.ws.close_code)
        self._stop_reason = "ws_error"

    def _bad(self, reason: str, **fields: object) -> None:
        self.protocol_errors += 1
        self.log.warning("phone_bad_frame", reason=reason, count=self.protocol_errors, **fields)

    # ---------------------------------------------------------------- outbound
    async def _send(self, frames) -> bool:
        if self.ws.closed or self.codec.stream_sid is None:
            return False
        async with self._send_lock:
            try:
                for frame in frames:
                    await self.ws.send_frame(frame.data, WSMsgType.BINARY if frame.binary else WSMsgType.TEXT)
                return True
            except (ConnectionError, RuntimeError):
                return False

    async def _send_audio_frame(self, data: bytes) -> bool:
        return await self._send(self.codec.play(data))

    async def play(self, audio: bytes) -> bool:
        if self._paced is not None:
            if self.ws.closed or self._stop_reason is not None:
                return False
            self._paced.play(audio)
            return True
        return await self._send(self.codec.play(audio))

    async def mark(self, name: str) -> bool:
        if self._paced is not None:
            if self.ws.closed or self._stop_reason is not None:
                return False
            self._paced.mark(name)
            return True
        return await self._send(self.codec.mark(name))

    async def clear(self) -> bool:
        if self._paced is not None:
            self._paced.clear()
        return await self._send(self.codec.clear())

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        """Closing ends the call's stream (the network then runs what its answer document says next)."""
        if self._paced is not None:
            self._paced.stop()
        if not self.ws.closed:
            await self._send(self.codec.hang_up())
            try:
                await asyncio.wait_for(self.ws.close(code=code, message=message), 2.0)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                pass

