"""The call path's monotonic clock, read in one place.

Everything that times a call — the playout's pacing and marks, the barge-in judge, the uplink, the
limits, the phone streams, the recording, the simulated phone — reads `monotonic()`, which is
`time.monotonic` in production. Tests that run whole calls in one process (the gateway, the fake
model and the simulated phone on one event loop) switch it to that loop's fast-forwarded clock
(looptime) with `use()`, so a call's minutes take milliseconds and every timing is exact.

Why a switch here rather than a parameter threaded through the app: the clock is read by parts built
in a dozen places (routes, listeners, the call assembly, the providers), and all of them must read
the same one. Parts built directly (the call core's unit tests) still take a `clock=` argument.
"""

from __future__ import annotations

import time
from typing import Callable

_source: Callable[[], float] = time.monotonic


def monotonic() -> float:
    """Seconds on the call path's clock (an arbitrary origin, never going back)."""
    return _source()


def use(source: Callable[[], float] | None) -> Callable[[], float]:
    """Read `source` from now on (None: `time.monotonic` again); returns what was read before."""
    global _source
    previous, _source = _source, source or time.monotonic
    return previous
