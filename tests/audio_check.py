"""Signal checks a telephony engineer would do by ear, done with numpy."""

from __future__ import annotations

import numpy as np

from gateway.audio import ulaw_to_pcm16


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def ulaw_samples(ulaw: bytes) -> np.ndarray:
    return samples(ulaw_to_pcm16(bytes(ulaw)))


def dominant_hz(x: np.ndarray, rate: int) -> float:
    """Frequency of the strongest spectral peak (Hann window, zero-padded, parabolic refinement)."""
    x = x - x.mean()
    n = len(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(n), 8 * n))
    k = int(np.argmax(spec[1:])) + 1
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
    k = k + 0.5 * (a - c) / (a - 2 * b + c)
    return k * rate / (8 * n)


def voiced_runs(x: np.ndarray, rate: int, threshold: float = 1000.0, gap_ms: float = 30) -> list[tuple[int, int]]:
    """[start, end) sample ranges where a 5 ms envelope is above threshold, gaps < gap_ms bridged."""
    win = max(1, rate // 200)
    env = np.sqrt(np.convolve(x * x, np.ones(win) / win, mode="same"))
    loud = env > threshold
    runs, start, quiet = [], None, 0
    gap = int(gap_ms * rate / 1000)
    for i, v in enumerate(loud):
        if v:
            if start is None:
                start = i
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet > gap:
                runs.append((start, i - quiet + 1))
                start, quiet = None, 0
    if start is not None:
        runs.append((start, len(x) - quiet))
    return runs


def max_discontinuity(x: np.ndarray, rate: int, hz: float) -> float:
    """Largest deviation from the sine recurrence x[n+1] + x[n-1] = 2 cos(w) x[n], relative to
    the amplitude. A clean tone (even through mu-law) stays within a few %; a click, a dropped
    or repeated sample or a phase jump at a frame edge gives tens of %."""
    w = 2 * np.pi * hz / rate
    r = x[2:] + x[:-2] - 2 * np.cos(w) * x[1:-1]
    amp = np.sqrt(2) * np.sqrt(np.mean(x * x))
    return float(np.max(np.abs(r)) / amp)


def tone_fit(x: np.ndarray, rate: int, hz: float) -> tuple[float, np.ndarray]:
    """Least-squares fit of one sine at `hz`: (its amplitude, what is left of x without it)."""
    t = np.arange(len(x)) * (2 * np.pi * hz / rate)
    basis = np.stack([np.cos(t), np.sin(t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return float(np.hypot(*coef)), x - basis @ coef


def db(amplitude: float, reference: float) -> float:
    return 20 * float(np.log10(max(amplitude, 1e-9) / reference))


def rms_as_peak(x: np.ndarray) -> float:
    """RMS scaled to a sine's peak (sqrt 2 x RMS): comparable with a tone's amplitude."""
    return float(np.sqrt(2 * np.mean(x * x)))


def added_latency_ms(resampler, src: int, dst: int, frame_ms: int = 20) -> float:
    """How late the resampler hands on what it is fed in `frame_ms` frames, in ms: the delay of
    the signal inside the output stream (a click's position out vs in) plus the hold-back
    (input fed minus output emitted after each frame, averaged). A linear-phase FIR has only
    the first, soxr (which trims its delay but waits for whole blocks) only the second."""
    n = src * frame_ms // 1000
    at = src // 2 + 3 * n // 4 + 7  # in the middle of nowhere in particular
    x = np.zeros(src, dtype="<i2")
    x[at] = 16000
    out, held, fed = [], [], 0
    for i in range(0, len(x), n):
        out.append(resampler.process(x[i:i + n].tobytes()))
        fed += n
        emitted = sum(len(o) for o in out) // 2
        if i >= src // 10:  # past the start-up
            held.append(fed / src - emitted / dst)
    y = samples(b"".join(out))
    shift = int(np.argmax(np.abs(y))) / dst - at / src
    return 1000 * (shift + float(np.mean(held)))
