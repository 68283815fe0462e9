"""Call recordings: one stereo WAV per call, caller on the left, bot on the right, aligned in time
the way the caller heard it.

Both tracks are placed on one timeline in 8 kHz samples from the stream's start. The caller's
track is contiguous (Twilio sends a frame every 20 ms). A bot frame is placed where it starts
playing at the phone (after what is already queued there); a barge-in `clear` cuts the bot track
at that moment, so audio that was sent but never played is not in the recording. Samples are
written to disk once they are a second behind "now" (nothing can change them any more), so a
recording costs a small window of memory however long the call, and a crash leaves a file that
holds everything up to the last second (its header sizes are fixed when the call ends).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from pathlib import Path

from .audio import PHONE_RATE, audioop
from .config import Config

log = logging.getLogger("gateway")
COMMIT_LAG_SAMPLES = PHONE_RATE  # keep the last second editable (a clear may still cut the bot track)


def recordings_dir(config: Config) -> Path:
    path = Path(config.recording.dir)
    return path if path.is_absolute() else config.base_dir / path


def purge_recordings(config: Config, now: float | None = None) -> int:
    """Delete recordings older than `recording.retention_days` (0: keep); returns how many."""
    days = config.recording.retention_days
    folder = recordings_dir(config)
    if not days or not folder.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - days * 86400
    removed = 0
    for f in folder.glob("*.wav"):
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
                removed += 1
        except OSError:
            pass
    if removed:
        log.info("event=recordings_purged count=%d", removed)
    return removed


def _wav_header(data_bytes: int) -> bytes:
    channels, width = 2, 2
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, PHONE_RATE, PHONE_RATE * channels * width, channels * width,
                        width * 8) + b"data" + struct.pack("<I", data_bytes))


class AudioRecording:
    """Incremental stereo WAV writer for one call. All inputs are 8 kHz mu-law."""

    def __init__(self, path: Path, clock=time.monotonic):
        self.path = path
        self.clock = clock
        self.t0 = clock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "wb")  # noqa: SIM115 - kept open for the whole call
        self._f.write(_wav_header(0))
        self._committed = 0  # samples written to the file
        self._caller = bytearray()  # PCM16 from `_committed` on
        self._bot = bytearray()
        self.closed = False

    def _pos(self, at: float) -> int:
        return max(0, int((at - self.t0) * PHONE_RATE))

    @staticmethod
    def _put(track: bytearray, offset_samples: int, pcm: bytes) -> None:
        start = offset_samples * 2
        if start < 0:
            pcm, start = pcm[-start:], 0
        if len(track) < start:
            track += bytes(start - len(track))
        track[start:start + len(pcm)] = pcm

    def caller(self, ulaw: bytes) -> None:
        """The next caller frame (contiguous: placed right after the previous one)."""
        if self.closed:
            return
        self._caller += audioop.ulaw2lin(ulaw, 2)
        self._commit()

    def bot(self, ulaw: bytes, starts_at: float) -> None:
        """A bot frame that will play at the phone from `starts_at` (monotonic clock)."""
        if self.closed:
            return
        self._put(self._bot, self._pos(starts_at) - self._committed, audioop.ulaw2lin(ulaw, 2))

    def cut_bot(self, at: float) -> None:
        """A clear: nothing of the bot track from `at` on was heard."""
        keep = max(0, (self._pos(at) - self._committed) * 2)
        del self._bot[keep:]

    def _commit(self, final: bool = False) -> None:
        n = len(self._caller) // 2 if final else len(self._caller) // 2 - COMMIT_LAG_SAMPLES
        if final:
            n = max(n, len(self._bot) // 2)
        if n <= 0:
            return
        left = bytes(self._caller[:n * 2]).ljust(n * 2, b"\0")
        right = bytes(self._bot[:n * 2]).ljust(n * 2, b"\0")
        stereo = audioop.add(audioop.tostereo(left, 2, 1, 0), audioop.tostereo(right, 2, 0, 1), 2)
        self._f.write(stereo)
        del self._caller[:n * 2]
        del self._bot[:n * 2]
        self._committed += n

    def close(self) -> None:
        if self.closed:
            return
        self._commit(final=True)
        size = self._committed * 4
        self._f.seek(0)
        self._f.write(_wav_header(size))
        self._f.close()
        self.closed = True

    def abandon(self) -> None:
        """Close without keeping the file (the call never really started)."""
        self.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
