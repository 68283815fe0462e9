"""Audio for the phone <-> model path: pure functions and small stateful objects, no I/O.

The phone side speaks 8 kHz mu-law in 20 ms frames; models want 16/24 kHz PCM16 (GLM wants every
chunk wrapped as a complete WAV file). Everything here keeps state across calls where a stream
has state (resampler phase, filter history, partial frames), because treating each 20 ms frame
as an independent signal is what produces clicks at frame edges.

`audioop` is the stdlib module below Python 3.13 and the `audioop-lts` package from 3.13 on;
both are imported as `audioop`.
"""

from __future__ import annotations

import math
import struct
import wave
import warnings

with warnings.catch_warnings():  # stdlib audioop warns about its 3.13 removal; audioop-lts replaces it
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

PHONE_RATE = 8000
FRAME_MS = 20
PHONE_FRAME_BYTES = PHONE_RATE * FRAME_MS // 1000  # 160 bytes of mu-law = 20 ms
MULAW_SILENCE = b"\xff"  # mu-law code for 0 (0x7f is -0); Twilio pads with 0xff


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode G.711 mu-law to little-endian signed 16-bit PCM."""
    return audioop.ulaw2lin(ulaw, 2)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Encode little-endian signed 16-bit PCM to G.711 mu-law (odd trailing byte dropped)."""
    if len(pcm) % 2:
        pcm = pcm[:-1]
    return audioop.lin2ulaw(pcm, 2)


def pcm_ms(nbytes: int, rate: int) -> float:
    """Duration in milliseconds of `nbytes` of mono PCM16 at `rate`."""
    return nbytes * 1000.0 / (2 * rate)


def wav_bytes(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    """A complete RIFF/WAVE file (PCM16) around `pcm`: GLM's "wav" input format wants one per chunk."""
    byte_rate = rate * channels * 2
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(pcm), b"WAVE",
        b"fmt ", 16, 1, channels, rate, byte_rate, channels * 2, 16,
        b"data", len(pcm),
    )
    return header + pcm


def lowpass_taps(cutoff_hz: float, rate: int, ntaps: int) -> list[float]:
    """Windowed-sinc (Hamming) low-pass FIR taps, normalised to unity gain at DC."""
    if ntaps % 2 == 0:
        ntaps += 1
    fc = cutoff_hz / rate
    mid = (ntaps - 1) / 2
    taps = []
    for n in range(ntaps):
        x = n - mid
        sinc = 2 * fc if x == 0 else math.sin(2 * math.pi * fc * x) / (math.pi * x)
        window = 0.54 - 0.46 * math.cos(2 * math.pi * n / (ntaps - 1))
        taps.append(sinc * window)
    total = sum(taps)
    return [t / total for t in taps]


def fade(pcm: bytes, rate: int, ms: float = 5.0) -> bytes:
    """Linear fade-in and fade-out, so a generated sound starts and ends without a click."""
    n = min(len(pcm) // 4, int(rate * ms / 1000))
    if n <= 0:
        return pcm
    samples = list(struct.unpack(f"<{len(pcm) // 2}h", pcm[:len(pcm) // 2 * 2]))
    for i in range(n):
        g = i / n
        samples[i] = int(samples[i] * g)
        samples[-1 - i] = int(samples[-1 - i] * g)
    return struct.pack(f"<{len(samples)}h", *samples)


class LowPass:
    """Streaming FIR low-pass over PCM16, run in C through audioop (one mul+add per tap per block).

    Carries the last ntaps-1 samples between blocks so block edges are seamless. audioop.mul
    floors each product, so a signal picks up a DC offset of about -ntaps/2 LSB (-67 dBFS for 31
    taps: inaudible, and below mu-law's resolution near zero); digital silence stays exactly 0.
    """

    def __init__(self, cutoff_hz: float, rate: int, ntaps: int = 31):
        self.taps = lowpass_taps(cutoff_hz, rate, ntaps)
        self._history = b"\x00\x00" * (len(self.taps) - 1)

    def process(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        x = self._history + pcm
        n = len(pcm)
        order = len(self.taps) - 1
        acc = None
        for k, c in enumerate(self.taps):
            start = (order - k) * 2
            term = audioop.mul(x[start:start + n], 2, c)
            acc = term if acc is None else audioop.add(acc, term, 2)
        self._history = x[-order * 2:]
        return acc

    @property
    def delay_samples(self) -> int:
        return len(self.taps) // 2

    def reset(self) -> None:
        self._history = b"\x00\x00" * (len(self.taps) - 1)


class Resampler:
    """Stateful PCM16 mono rate converter with anti-aliasing.

    audioop.ratecv interpolates linearly and filters nothing, so on its own 24 kHz -> 8 kHz folds
    everything above 4 kHz back into the phone band (harsh, lispy speech). We low-pass below the
    lower Nyquist before decimating and after interpolating. The ratecv state and the filter
    history are carried across calls: feed it a stream in any block sizes and the output is the
    same continuous signal.
    """

    def __init__(self, src_rate: int, dst_rate: int, ntaps: int = 31):
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._state = None
        self._pre = self._post = None
        if dst_rate < src_rate:
            self._pre = LowPass(0.45 * dst_rate, src_rate, ntaps)
        elif dst_rate > src_rate:
            self._post = LowPass(0.45 * src_rate, dst_rate, ntaps)

    def process(self, pcm: bytes) -> bytes:
        if len(pcm) % 2:
            pcm = pcm[:-1]
        if self.src_rate == self.dst_rate or not pcm:
            return pcm
        if self._pre is not None:
            pcm = self._pre.process(pcm)
        out, self._state = audioop.ratecv(pcm, 2, 1, self.src_rate, self.dst_rate, self._state)
        if self._post is not None:
            out = self._post.process(out)
        return out

    def flush(self) -> bytes:
        """End of a stream (e.g. one bot reply): push out what the filters still hold, then reset.

        Without this the last few ms of one reply would come out at the start of the next one
        (a click), because the filters delay the signal by half their length.
        """
        tail = b""
        if self._pre is not None or self._post is not None:
            n = (self._pre or self._post).delay_samples  # type: ignore[union-attr]
            if self._pre is not None:
                tail = self.process(b"\x00\x00" * n)
            else:
                tail = self.process(b"\x00\x00" * max(1, n * self.src_rate // self.dst_rate + 1))
        self.reset()
        return tail

    def reset(self) -> None:
        """Forget all state (after a barge-in, the next reply must not inherit the cut one)."""
        self._state = None
        for f in (self._pre, self._post):
            if f is not None:
                f.reset()


class Framer:
    """Cuts a byte stream into fixed-size frames, keeping the remainder for the next push."""

    def __init__(self, frame_bytes: int = PHONE_FRAME_BYTES, pad: bytes = MULAW_SILENCE):
        self.frame_bytes = frame_bytes
        self.pad = pad
        self._buf = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        self._buf += data
        n = len(self._buf) // self.frame_bytes * self.frame_bytes
        if not n:
            return []
        chunk, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return [chunk[i:i + self.frame_bytes] for i in range(0, n, self.frame_bytes)]

    def flush(self) -> bytes | None:
        """The partial last frame padded with silence, or None when nothing is pending."""
        if not self._buf:
            return None
        frame = bytes(self._buf) + self.pad * (self.frame_bytes - len(self._buf))
        self._buf.clear()
        return frame

    def reset(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)


class EnergyVAD:
    """Minimal energy voice-activity detector over PCM16 frames (for the offline echo bot).

    Speech starts after `start_ms` of frames above `threshold` RMS and stops after `stop_ms`
    below it: the hysteresis keeps a word's quiet middle from splitting the utterance.
    """

    def __init__(self, rate: int, threshold: int = 400, start_ms: int = 60, stop_ms: int = 600):
        self.rate = rate
        self.threshold = threshold
        self.start_ms = start_ms
        self.stop_ms = stop_ms
        self.speaking = False
        self._loud_ms = 0.0
        self._quiet_ms = 0.0

    def process(self, pcm: bytes) -> str | None:
        """Feed one frame; returns "start", "stop" or None."""
        if not pcm:
            return None
        ms = pcm_ms(len(pcm), self.rate)
        loud = audioop.rms(pcm, 2) >= self.threshold
        if loud:
            self._loud_ms += ms
            self._quiet_ms = 0.0
        else:
            self._quiet_ms += ms
            self._loud_ms = 0.0
        if not self.speaking and self._loud_ms >= self.start_ms:
            self.speaking = True
            return "start"
        if self.speaking and self._quiet_ms >= self.stop_ms:
            self.speaking = False
            return "stop"
        return None


def tone(hz: float, seconds: float, rate: int, amplitude: int = 8000, phase: float = 0.0) -> bytes:
    """A PCM16 sine tone: the test bots' and the benchmark's signal source."""
    n = int(seconds * rate)
    w = 2 * math.pi * hz / rate
    return struct.pack(f"<{n}h", *(int(amplitude * math.sin(phase + w * i)) for i in range(n)))


def hold_tones() -> bytes:
    """Soft hold tones (mu-law, 8 kHz): a three-note rising chime, then a pause, 1.6 s a cycle.
    Quiet (about -24 dBFS) and clearly a machine's "please wait", not speech or a ringback tone."""
    notes = b"".join(fade(tone(hz, 0.14, PHONE_RATE, 2000), PHONE_RATE, 20) for hz in (523.25, 659.25, 783.99))
    return pcm16_to_ulaw(notes + b"\x00\x00" * int(PHONE_RATE * 1.18))


def load_phone_sound(path) -> bytes:
    """A WAV file (8 kHz mono 16-bit PCM) as phone audio (mu-law). Raises ValueError if it is not one."""
    try:
        with wave.open(str(path), "rb") as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (PHONE_RATE, 1, 2):
                raise ValueError(f"{path}: expected an 8 kHz mono 16-bit WAV")
            return pcm16_to_ulaw(w.readframes(w.getnframes()))
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{path}: not a WAV file ({e})") from None
