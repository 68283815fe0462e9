"""One AudioSocket TCP connection as a `PhoneStream`: messages read here and decoded by the codec,
our audio paced on our clock with marks and clear emulated (PacedOutput), and the caller's audio
held to real time (InboundBudget): a peer may run a second ahead, what comes faster is dropped and
counted, and one that keeps flooding is cut off as a protocol error."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from .. import Audio, MarkPlayed, PhoneEvent, Started, Stopped
from ..paced import InboundBudget, PacedOutput
from ..wire import FrameError, NetworkNotice
from .codec import AudioSocketCodec
from ...clock import monotonic

BYTES_PER_S = 16000  # 8 kHz 16-bit


class AudioSocketStream:
    network = "audiosocket"
    min_chunk_bytes = 0

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log, max_protocol_errors: int = 50,
                 bots: dict[str, str] | None = None, clock: Callable[[], float] = monotonic):
        self.reader, self.writer, self.log = reader, writer, log
        self.codec = AudioSocketCodec(bots)
        self.max_protocol_errors = max_protocol_errors
        self.protocol_errors = 0
        self.media_frames_in = 0
        self.budget = InboundBudget(BYTES_PER_S, clock)
        self._stop_reason: str | None = None
        self._events: asyncio.Queue[PhoneEvent] = asyncio.Queue()
        self._paced = PacedOutput(self._write_audio, lambda name: self._events.put_nowait(MarkPlayed(name=name)), clock)

    @property
    def stream_sid(self) -> str | None:
        return self.codec.stream_sid

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    # ---------------------------------------------------------------- inbound
    async def wait_started(self) -> Started | None:
        """Reads messages until the UUID (returned) or the end of the connection (None)."""
        while self._stop_reason is None:
            ev = await self._next()
            if isinstance(ev, Started):
                self._paced.start(self.codec.frame_bytes, f"audiosocket-tx:{ev.stream_sid}")
                return ev
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

    async def _read_loop(self) -> None:
        while self._stop_reason is None:
            ev = await self._next()
            if isinstance(ev, Audio) and not self.budget.take(len(ev.payload)):
                if self.budget.dropped_bytes == len(ev.payload):
                    self.log.warning("phone_audio_too_fast", note="caller audio faster than real time dropped")
                if self.budget.flooding:
                    self.protocol_errors += 1
                    self.log.warning("phone_audio_flood", dropped_bytes=self.budget.dropped_bytes)
                    self._stop_reason = "protocol_errors"
                continue
            if isinstance(ev, Audio):
                self.media_frames_in += 1
            if ev is not None:
                self._events.put_nowait(ev)
        self._paced.stop()  # nothing more can be played (a caller hang-up does not close() the stream)
        self._events.put_nowait(Stopped(reason=self._stop_reason or "closed"))

    async def _next(self) -> PhoneEvent | None:
        """The next usable event (None: a message that carried none); sets the stop reason at the end."""
        try:
            head = await self.reader.readexactly(3)
            payload = await self.reader.readexactly(int.from_bytes(head[1:], "big"))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._stop_reason = self._stop_reason or "closed"
            return None
        try:
            ev = self.codec.decode(head[0], payload)
        except FrameError as e:
            self.protocol_errors += 1
            self.log.warning("phone_bad_frame", reason=str(e), count=self.protocol_errors, kind=head[0],
                             size=len(payload))
            if self.protocol_errors > self.max_protocol_errors:
                self.log.warning("phone_protocol_errors_exceeded", count=self.protocol_errors)
                self._stop_reason = "protocol_errors"
            return None
        except NetworkNotice as e:
            self.log.warning("phone_network_error", **e.fields)
            self._stop_reason = "stop"
            return None
        if isinstance(ev, Stopped):
            self._stop_reason = "stop"
            return None
        return ev

    # ---------------------------------------------------------------- outbound (paced here)
    async def _write_audio(self, frame: bytes) -> bool:
        try:
            for out in self.codec.play(frame):
                self.writer.write(out.data)
            await self.writer.drain()
            return True
        except (ConnectionError, OSError):
            return False

    def _closed(self) -> bool:
        """The connection is gone (a stream stopped for bad input still takes audio until the call
        has ended it, so the call ends for that reason and not as a hang-up)."""
        return self.writer.is_closing() or self._stop_reason in ("closed", "stop")

    async def play(self, audio: bytes) -> bool:
        if self._closed():
            return False
        self._paced.play(audio)
        return True

    async def mark(self, name: str) -> bool:
        if self._closed():
            return False
        self._paced.mark(name)
        return True

    async def clear(self) -> bool:
        """Drops what is not yet sent; its marks are never reported (the Playout counts them as not heard)."""
        self._paced.clear()
        return not self._closed()

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        """Hang up: 0x00, then close the connection."""
        self._paced.stop()
        if self.writer.is_closing():
            return
        try:
            for out in self.codec.hang_up():
                self.writer.write(out.data)
            await asyncio.wait_for(self.writer.drain(), 2.0)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
