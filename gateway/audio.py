"""Audio for the phone <-> model path: pure functions and small stateful objects, no I/O.

The phone side speaks 8 kHz mu-law in 20 ms frames; models want 16/24 kHz PCM16 (GLM wants every
chunk wrapped as a complete WAV file). Everything here keeps state across calls where a stream
has state (resampler phase, filter history, partial frames), because treating each 20 ms frame
as an independent signal is what produces clicks at frame edges.

`audioop` is the stdlib module below Python 3.13 and the `audioop-lts` package from 3.13 on;
both are imported as `audioop`. Resampling uses numpy and soxr (python-soxr needs numpy anyway).
"""

from __future__ import annotations

import math
import struct
import wave
import warnings

with warnings.catch_warnings():  # stdlib audioop warns about its 3.13 removal; audioop-lts replaces it
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

import numpy as np
import soxr

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


class PhoneUpsampler:
    """Phone audio up to a model's rate (an integer factor L): a low-latency polyphase FIR.

    Why not soxr here: libsoxr works in blocks and, fed 20 ms frames, holds back 23-63 ms of the
    caller's audio (LQ..HQ, measured in bench/bench_audio.py) before anything comes out, and
    that wait adds to every reply's latency. This filter emits L output samples for every input
    sample at once; its only delay is the linear-phase group delay, ~1.8 ms.

    Why this filter: phone audio carries 300-3400 Hz, so the band's images after zero-stuffing
    start at src - 3400 Hz (4.6 kHz for 8 kHz). A Kaiser-windowed sinc with its cutoff midway
    (4 kHz) and a 1.2 kHz transition needs ~30 taps per phase for 70 dB of stopband: flat to
    3.4 kHz within 0.01 dB, images at or below -64 dB (tests/test_audio_quality.py measures
    both). Split into its L phases, each output phase is one short dot product, so a whole
    frame is one (n x K) @ (K x L) matrix product whose rows come out already interleaved
    (numpy, which soxr needs anyway): ~9 us per 20 ms frame, against ~35-50 us for the
    audioop FIR it replaces. The last K-1 input samples are carried across calls, so frame
    edges are seamless whatever the block sizes.
    """

    def __init__(self, src_rate: int, factor: int, stopband_db: float = 70.0):
        rate = src_rate * factor
        pass_hz, stop_hz = 0.425 * src_rate, 0.575 * src_rate  # 3400 / 4600 Hz at 8 kHz
        beta = 0.1102 * (stopband_db - 8.7)  # Kaiser's formulas for the window and the length
        ntaps = math.ceil((stopband_db - 7.95) / (2.285 * 2 * math.pi * (stop_hz - pass_hz) / rate)) + 1
        self.taps_per_phase = math.ceil(ntaps / factor)
        ntaps = self.taps_per_phase * factor
        fc = (pass_hz + stop_hz) / 2 / rate
        h = np.sinc(2 * fc * (np.arange(ntaps) - (ntaps - 1) / 2)) * np.kaiser(ntaps, beta)
        h *= factor / h.sum()  # gain L: zero-stuffing leaves 1/L of the energy per output sample
        # bank[k, p] multiplies input x[n - (K-1) + k] for output phase p: oldest sample first
        self._bank = np.ascontiguousarray(h.reshape(self.taps_per_phase, factor)[::-1], dtype=np.float32)
        self.factor = factor
        self.delay_samples = (ntaps - 1) / 2  # group delay, output samples
        self.reset()

    def process(self, pcm: bytes) -> bytes:
        x = np.frombuffer(pcm, dtype="<i2")
        n = len(x)
        if not n:
            return b""
        buf = np.concatenate((self._history, x))  # float32
        # row i is buf[i:i + K], a view: np.ndarray directly costs a tenth of as_strided's checks
        windows = np.ndarray((n, self.taps_per_phase), np.float32, buf, 0, (4, 4))
        y = np.dot(windows, self._bank)
        self._history = buf[n:].copy()
        return _to_pcm16(y)

    def flush(self) -> bytes:
        """The group delay's worth of output still inside the filter, then a clean state."""
        tail = self.process(bytes(2 * math.ceil(self.delay_samples / self.factor)))
        self.reset()
        return tail

    def reset(self) -> None:
        self._history = np.zeros(self.taps_per_phase - 1, dtype=np.float32)


class PhoneResampler:
    """Phone audio to a model's rate by any rational factor L/M (16 kHz -> 8 kHz, 24 kHz -> 16 kHz,
    16 kHz -> 24 kHz): a low-latency polyphase FIR, for the caller -> model direction.

    Why not soxr: as for PhoneUpsampler, soxr holds back 40-60 ms of a 20 ms-framed stream, and in
    this direction that wait delays every onset and end of the caller's speech at the model's VAD
    (measured by bench/conversation_feel.py: Vonage's 16 kHz to OpenAI's 8 kHz mu-law, 80-120 ms).
    This filter emits every output sample as soon as the input it needs is there; its delay is the
    linear-phase group delay (1.5-4 ms here). Integer up-sampling keeps PhoneUpsampler (one matrix
    product per block); this general form gathers one window per output sample.

    The filter: a Kaiser-windowed sinc at the upsampled rate src*L, flat over the phone band
    (0.425 of the lower rate: 3.4 kHz at 8 kHz) and down by `stopband_db` from the lower rate's
    Nyquist (down-sampling: nothing aliases back into the band) or from where the first image
    begins (up-sampling, as PhoneUpsampler). Output j is upsampled index u = j*M; its phase
    u mod L picks the sub-filter, and the K inputs before u // L are its window.
    """

    def __init__(self, src_rate: int, dst_rate: int, stopband_db: float = 70.0):
        g = math.gcd(src_rate, dst_rate)
        self.up, self.down = dst_rate // g, src_rate // g
        rate = src_rate * self.up
        low = min(src_rate, dst_rate)
        pass_hz = 0.425 * low
        stop_hz = 0.5 * dst_rate if dst_rate < src_rate else 0.575 * src_rate
        beta = 0.1102 * (stopband_db - 8.7)
        ntaps = math.ceil((stopband_db - 7.95) / (2.285 * 2 * math.pi * (stop_hz - pass_hz) / rate)) + 1
        self.taps_per_phase = k = math.ceil(ntaps / self.up)
        ntaps = k * self.up
        fc = (pass_hz + stop_hz) / 2 / rate
        h = np.sinc(2 * fc * (np.arange(ntaps) - (ntaps - 1) / 2)) * np.kaiser(ntaps, beta)
        h *= self.up / h.sum()
        # bank[p] pairs with a window of K inputs, oldest first: h[p + (K-1)L], ..., h[p]
        self._bank = np.ascontiguousarray(h.reshape(k, self.up).T[:, ::-1], dtype=np.float32)
        self.delay_samples = (ntaps - 1) / 2 / self.down  # group delay, output samples
        self.reset()

    def process(self, pcm: bytes) -> bytes:
        x = np.frombuffer(pcm, dtype="<i2")
        n = len(x)
        if not n:
            return b""
        k, up = self.taps_per_phase, self.up
        buf = np.concatenate((self._history, x))  # float32; input i of this block is buf[k - 1 + i]
        end = (k - 1 + n) * up
        count = max(0, -(-(end - self._u) // self.down))
        y = np.empty(count, dtype=np.float32)
        windows = np.ndarray((n, k), np.float32, buf, 0, (4, 4))  # row i is buf[i:i + k], a view
        # Outputs j, j+L, j+2L, ... share a phase, and their windows start M inputs apart: one
        # strided view and one matrix-vector product per phase (L of them), no gathering.
        for j in range(min(up, count)):
            u = self._u + j * self.down
            first = u // up - (k - 1)
            m = len(range(j, count, up))
            y[j::up] = np.dot(windows[first:first + (m - 1) * self.down + 1:self.down], self._bank[u % up])
        self._u += count * self.down - n * up
        self._history = buf[n:].copy()
        return _to_pcm16(y)

    def flush(self) -> bytes:
        """The group delay's worth of output still inside the filter, then a clean state."""
        tail = self.process(bytes(2 * math.ceil(self.taps_per_phase / 2)))
        self.reset()
        return tail

    def reset(self) -> None:
        self._history = np.zeros(self.taps_per_phase - 1, dtype=np.float32)
        self._u = (self.taps_per_phase - 1) * self.up  # the first output waits for the first new input


class SoxrStream:
    """Any rate pair through libsoxr (python-soxr's ResampleStream), 16-bit in and out.

    The model -> phone direction: soxr costs ~3 us per 20 ms frame and is flat to 3.4 kHz
    with aliases below -80 dB. It holds back ~40-60 ms of audio, which is harmless here:
    models send audio faster than real time in large deltas and Playout paces it anyway;
    `flush` delivers the held-back tail at the end of a reply. "MQ" is the lowest quality
    that is flat to 3.4 kHz (LQ is -7.8 dB there) and holds back the least at 48 kHz.
    """

    def __init__(self, src_rate: int, dst_rate: int, quality: str = "MQ"):
        # float32 inside, rounded here: soxr's own 16-bit output is dithered (silence in, +-1 out)
        self._stream = soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality=quality)

    # libsoxr keeps buffers as large as the largest block it was ever given, for the stream's life:
    # a model's 1.5 s delta in one piece kept ~320 KiB per call. Blocks of 50 ms at 24 kHz keep
    # it near 70 KiB (bench/hotpath.py: a 1.5 s delta costs the same either way).
    MAX_BLOCK = 1200

    def process(self, pcm: bytes) -> bytes:
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        step = self.MAX_BLOCK
        if len(x) <= step:
            return _to_pcm16(self._stream.resample_chunk(x))
        resample = self._stream.resample_chunk
        return _to_pcm16(np.concatenate([resample(x[i:i + step]) for i in range(0, len(x), step)]))

    def flush(self) -> bytes:
        tail = _to_pcm16(self._stream.resample_chunk(_NO_SAMPLES, last=True))
        self._stream.clear()
        return tail

    def reset(self) -> None:
        self._stream.clear()


_NO_SAMPLES = np.zeros(0, dtype=np.float32)


def _to_pcm16(y: np.ndarray) -> bytes:
    """Float samples (PCM16 scale) -> PCM16 bytes, rounded and clipped (y is overwritten)."""
    np.rint(y, out=y)
    np.maximum(y, -32768, out=y)  # the ufuncs: np.clip's wrapper costs more than the filter
    np.minimum(y, 32767, out=y)
    return y.astype("<i2").tobytes()


class Resampler:
    """Stateful PCM16 mono rate converter: feed a stream in any block sizes, get one continuous
    signal. Phone -> model (`low_latency`) uses PhoneUpsampler (up by an integer factor) or
    PhoneResampler (any other ratio): no hold-back, the caller waits for nothing; everything
    else, above all model -> phone, uses SoxrStream."""

    def __init__(self, src_rate: int, dst_rate: int, low_latency: bool = False):
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        if src_rate == dst_rate:
            self._engine = None
        elif dst_rate > src_rate and dst_rate % src_rate == 0:
            self._engine = PhoneUpsampler(src_rate, dst_rate // src_rate)
        elif low_latency:
            self._engine = PhoneResampler(src_rate, dst_rate)
        else:
            self._engine = SoxrStream(src_rate, dst_rate)

    def process(self, pcm: bytes) -> bytes:
        if len(pcm) % 2:
            pcm = pcm[:-1]
        return pcm if self._engine is None else self._engine.process(pcm)

    def flush(self) -> bytes:
        """End of a stream (e.g. one bot reply): what the filter still holds, then a clean state.

        Without this the last ms of one reply (soxr: tens of ms) would be lost or come out at the
        start of the next one.
        """
        return b"" if self._engine is None else self._engine.flush()

    def reset(self) -> None:
        """Forget all state (after a barge-in, the next reply must not inherit the cut one)."""
        if self._engine is not None:
            self._engine.reset()


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
    """Soft hold tones (mu-law, 8 kHz): a three-note rising chime, then a short pause, 0.8 s a
    cycle (pauses under 0.4 s: never a silence the caller takes for a dropped line). Quiet (about
    -24 dBFS) and clearly a machine's "please wait", not speech or a ringback tone."""
    notes = b"".join(fade(tone(hz, 0.14, PHONE_RATE, 2000), PHONE_RATE, 20) for hz in (523.25, 659.25, 783.99))
    return pcm16_to_ulaw(notes + b"\x00\x00" * int(PHONE_RATE * 0.38))


def load_phone_sound(path) -> bytes:
    """A WAV file (8 kHz mono 16-bit PCM) as phone audio (mu-law). Raises ValueError if it is not one."""
    try:
        with wave.open(str(path), "rb") as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (PHONE_RATE, 1, 2):
                raise ValueError(f"{path}: expected an 8 kHz mono 16-bit WAV")
            return pcm16_to_ulaw(w.readframes(w.getnframes()))
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{path}: not a WAV file ({e})") from None
