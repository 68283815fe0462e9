"""Playout bookkeeping without sockets: marks -> heard time, generations, bounded memory."""

from __future__ import annotations

import asyncio

from gateway import playout
from gateway.playout import Playout


class Sink:
    def __init__(self):
        self.sent: list[tuple[str, object]] = []

    async def play(self, audio):
        self.sent.append(("media", len(audio)))
        return True

    async def mark(self, name):
        self.sent.append(("mark", name))
        return True

    async def clear(self):
        self.sent.append(("clear", None))
        return True


async def test_marks_count_as_heard_only_in_their_generation():
    sink = Sink()
    p = Playout(sink, lead_ms=1000)
    p.enqueue([b"\xff" * 160] * 5, "r1")
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.05)
    marks = [n for kind, n in sink.sent if kind == "mark"]
    assert len(marks) == 5 and all(kind in ("media", "mark") for kind, _ in sink.sent)
    p.on_mark(marks[0])
    p.on_mark(marks[1])
    assert p.heard_ms["r1"] == 40
    cut = await p.clear()
    assert cut == {"r1": 40} and sink.sent[-1] == ("clear", None)
    for name in marks[2:]:  # Twilio echoes pending marks after a clear: not heard
        assert not p.on_mark(name)
    assert p.heard_ms["r1"] == 40 and not p.busy()
    task.cancel()


async def test_outstanding_marks_are_bounded(monkeypatch):
    monkeypatch.setattr(playout, "MAX_OUTSTANDING_MARKS", 10)
    sink = Sink()
    p = Playout(sink, lead_ms=2000)
    p.enqueue([b"\xff" * 160] * 50, "r1")
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.1)
    task.cancel()
    assert p.frames_sent == 50 and len(p._marks) == 10


def test_playout_queue_is_bounded_and_counts_what_it_drops():
    from gateway.playout import MAX_QUEUED_FRAMES, Playout

    class NullPhone:
        async def play(self, audio): return True
        async def mark(self, name): return True
        async def clear(self): return True

    p = Playout(NullPhone())
    p.enqueue([b"\xff" * 160] * (MAX_QUEUED_FRAMES + 500), "r1")
    p.enqueue([b"\xff" * 160] * 10, "r2")
    assert p.queued_ms == MAX_QUEUED_FRAMES * 20 and p.frames_dropped == 510
