"""Faster JSON (orjson) and event loop (uvloop) where they are installed; the stdlib otherwise.

Both are default dependencies on the platforms they support (pyproject.toml's markers); code
uses this module and never imports them itself, so a platform without them runs the same, slower.
`dumps` returns UTF-8 bytes of compact JSON (the wire's form), `loads` takes str or bytes and
raises ValueError on anything that is not JSON.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Coroutine, TypeVar

try:
    import orjson
except ImportError:  # pragma: no cover - exercised by a test that hides the module
    orjson = None  # type: ignore[assignment]

try:
    import uvloop
except ImportError:  # pragma: no cover - exercised by a test that hides the module
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")

if orjson is not None:
    _OPTIONS = orjson.OPT_NON_STR_KEYS

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=_OPTIONS)

    loads: Callable[[str | bytes], Any] = orjson.loads
    JSON_LIBRARY = "orjson"
else:
    _encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def dumps(obj: Any) -> bytes:
        return _encode(obj).encode("utf-8", "surrogatepass")

    loads = json.loads
    JSON_LIBRARY = "json"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed, else None (asyncio's default)."""
    return uvloop.new_event_loop if uvloop is not None else None


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the fastest loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
