"""Call recordings: one stereo WAV per call, caller on the left, bot on the right, aligned in time
the way the caller heard it.

Both tracks are placed on one timeline in 8 kHz samples from the stream's start. The caller's
track is contiguous (Twilio sends a frame every 20 ms). A bot frame is placed where it starts
playing at the phone (after what is already queued there); a barge-in `clear` cuts the bot track
at that moment, so audio that was sent but never played is not in the recording. Samples are
written to disk once they are a second behind "now" (nothing can change them any more), so a
recording costs a small window of memory however long the call, and a crash leaves a file that
holds everything up to the last second (its header sizes are fixed when the call ends).

Names: a recording is `<key>.wav` with a random key (`new_recording_key`) that the call's record
keeps (`calls.recording`); the operator API finds it through the record. Nothing in the name comes
from the caller, so no two calls can ever share a file, whatever their ids. While the call runs the
file is `<key>.wav.part`; it is renamed when the call ends, so a finished recording is exactly a
`*.wav` file (what recording_store.py uploads to a bucket). A `.part` file nobody has written to for
`ABANDONED_AFTER_SECONDS` belongs to a process that died: `finish_abandoned` fixes its header and
renames it, so a crashed call's audio is kept like any other.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import time
from pathlib import Path

from .audio import PHONE_RATE, audioop
from .config import Config
from .clock import monotonic

log = logging.getLogger("gateway")
COMMIT_LAG_SAMPLES = PHONE_RATE  # keep the last second editable (a clear may still cut the bot track)
PART_SUFFIX = ".part"  # a recording still being written
ABANDONED_AFTER_SECONDS = 600.0  # a live recording is written every 20 ms; this long untouched: its process died


def new_recording_key() -> str:
    """A recording's file name: random, never derived from the call id (which the caller chose)."""
    return f"{secrets.token_hex(16)}.wav"


def is_recording_key(name: str) -> bool:
    """A name the call log may hold for a recording: a plain file name (older gateways named
    recordings after the call id, sanitised), never a path."""
    return bool(name) and name == Path(name).name and not name.startswith(".") and name.endswith(".wav")


def new_recording(config: Config, clock=monotonic) -> "AudioRecording":
    return AudioRecording(recordings_dir(config) / new_recording_key(), clock)


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
    for f in folder.glob("*.wav"):  # finished ones (`.part`: still being written)
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
                removed += 1
        except OSError:
            pass
    if removed:
        log.info("event=recordings_purged count=%d", removed)
    return removed


def finish_abandoned(folder: Path, now: float | None = None) -> list[str]:
    """Recordings left `.part` by a process that died: header sizes fixed from the file's length,
    renamed to their final name (their call records already name them). Returns their keys."""
    now = time.time() if now is None else now
    done = []
    for part in folder.glob(f"*.wav{PART_SUFFIX}") if folder.is_dir() else ():
        try:
            if part.stat().st_mtime > now - ABANDONED_AFTER_SECONDS:
                continue
            with open(part, "r+b") as f:
                size = f.seek(0, os.SEEK_END) - 44
                if size >= 0:
                    f.seek(0)
                    f.write(_wav_header(size - size % 4))
            final = part.with_name(part.name[:-len(PART_SUFFIX)])
            os.replace(part, final)
            done.append(final.name)
        except FileNotFoundError:
            continue  # another worker on this disk finished it first
        except OSError as e:
            log.error("event=recording_finish_failed file=%s error=%s", part.name, f"{type(e).__name__}: {e}"[:200])
    if done:
        log.warning("event=recordings_recovered count=%d note=\"recordings of calls cut by a crash\"", len(done))
    return done


def _wav_header(data_bytes: int) -> bytes:
    channels, width = 2, 2
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, PHONE_RATE, PHONE_RATE * channels * width, channels * width,
                        width * 8) + b"data" + struct.pack("<I", data_bytes))


class AudioRecording:
    """Incremental stereo WAV writer for one call. All inputs are 8 kHz mu-law."""

    def __init__(self, path: Path, clock=monotonic):
        """`path`: the finished recording's; it is written as `path` + `.part` until `close()`."""
        self.path = path
        self.clock = clock
        self.t0 = clock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._part = path.with_name(path.name + PART_SUFFIX)
        self._f = open(self._part, "wb")  # noqa: SIM115 - kept open for the whole call
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
        os.replace(self._part, self.path)

    def abandon(self) -> None:
        """Close without keeping the file (the call never really started)."""
        self.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
