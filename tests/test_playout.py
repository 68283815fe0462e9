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


async def test_chunks_join_frames_of_one_response_with_one_mark_each():
    sink = Sink()
    p = Playout(sink, lead_ms=1000, chunk_ms=100)
    p.enqueue([bytes([i]) * 160 for i in range(12)], "r1")  # 240 ms
    p.enqueue([b"\x7f" * 160] * 2, "r2")
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.05)
    task.cancel()
    # media, mark, media, mark...: 100 + 100 + 40 ms of r1 (never mixed with r2), then 40 ms of r2
    assert [kind for kind, _ in sink.sent] == ["media", "mark"] * 4
    assert [n for kind, n in sink.sent if kind == "media"] == [800, 800, 320, 320]
    assert p.frames_sent == 14 and p.chunks_sent == 4 and p.marks_sent == 4
    marks = [n for kind, n in sink.sent if kind == "mark"]
    p.on_mark(marks[0])
    assert p.heard_ms == {"r1": 100}  # heard time to within one chunk
    p.on_mark(marks[2])
    p.on_mark(marks[3])
    assert p.heard_ms == {"r1": 240, "r2": 40}


class RecordingSink(Sink):
    def __init__(self):
        super().__init__()
        self.times: list[tuple[float, int]] = []

    async def play(self, audio):
        self.times.append((asyncio.get_running_loop().time(), len(audio)))
        return await super().play(audio)


async def test_chunked_pacing_keeps_at_most_one_chunk_beyond_the_lead_and_clear_is_immediate():
    sink = RecordingSink()
    p = Playout(sink, lead_ms=200, chunk_ms=100)
    p.enqueue([b"\xff" * 160] * 50, "r1")  # 1 s, all at once (a model ahead of real time)
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.5)
    t0 = sink.times[0][0]
    sent = 0.0
    for t, size in sink.times:
        sent += size / 8000
        assert sent - (t - t0) <= 0.2 + 0.1 + 0.03  # never more than lead + one chunk at the phone
    assert all(size == 800 for _, size in sink.times)
    assert 0.55 <= sent <= 0.85  # ~0.5 s played plus the lead and at most one chunk
    before = len(sink.sent)
    cut = await p.clear()  # barge-in: `clear` goes out at once, nothing of the queue after it
    assert sink.sent[before:] == [("clear", None)] and set(cut) == {"r1"}
    await asyncio.sleep(0.1)
    assert sink.sent[-1] == ("clear", None) and not p.busy()
    task.cancel()


async def test_a_reply_after_a_clear_goes_out_at_once_not_after_the_cut_replys_lead():
    """The pacing loop waits while the lead is full; a clear empties the phone, so the next
    reply's first chunk must not wait for that wait to end (it was up to a chunk of latency)."""
    sink = Sink()
    p = Playout(sink, lead_ms=200, chunk_ms=100)
    p.enqueue([b"\xff" * 160] * 50, "r1")
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.05)  # the lead is full: the loop waits for it to drain
    await p.clear()
    p.enqueue([b"\xff" * 160] * 5, "r2")
    before = len(sink.sent)
    for _ in range(5):  # a few turns of the loop, no time passing worth a frame
        await asyncio.sleep(0)
    assert sink.sent[before:before + 1] == [("media", 800)]
    task.cancel()


class KeepingSink(Sink):
    """Keeps the audio too, and can hold a write open (a chunk being written when a hold comes)."""

    def __init__(self):
        super().__init__()
        self.audio: list[bytes] = []
        self.gate: asyncio.Event | None = None

    async def play(self, audio):
        if self.gate is not None:
            await self.gate.wait()
        self.audio.append(audio)
        return await super().play(audio)


def numbered(n: int) -> list[bytes]:
    return [bytes([k]) * 160 for k in range(n)]


async def test_hold_clears_now_and_resume_plays_on_from_the_last_heard_mark():
    sink = KeepingSink()
    p = Playout(sink, lead_ms=1000, chunk_ms=40)
    p.enqueue(numbered(10), "r1")
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.05)
    marks = [n for kind, n in sink.sent if kind == "mark"]
    assert len(marks) == 5  # chunks of two frames
    p.on_mark(marks[0])  # the first chunk played; the rest is at the phone, unheard
    await p.hold()
    assert sink.sent[-1] == ("clear", None) and p.paused and p.sent_ms["r1"] == 40
    assert p.queued_ms == 160  # frames 2..9 back in the queue, in order
    for name in marks[1:]:  # echoed by the clear: not heard
        assert not p.on_mark(name)
    sent = len(sink.audio)
    await asyncio.sleep(0.05)
    assert len(sink.audio) == sent, "nothing goes out while held"
    p.resume()
    await asyncio.sleep(0.05)
    again = b"".join(sink.audio[sent:])
    assert again == b"".join(numbered(10)[2:]) and p.sent_ms["r1"] == 200
    assert p.holds == 1 and p.clears == 1
    task.cancel()


async def test_a_chunk_being_written_when_the_hold_comes_is_kept_not_lost():
    sink = KeepingSink()
    p = Playout(sink, lead_ms=1000, chunk_ms=20)
    p.enqueue(numbered(3), "r1")
    sink.gate = asyncio.Event()
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.01)  # frame 0 is being written
    await p.hold()
    assert ("clear", None) in sink.sent  # the phone may be getting it: cleared
    sink.gate.set()
    await asyncio.sleep(0.01)
    p.resume()
    await asyncio.sleep(0.05)
    assert [a[0] for a in sink.audio] == [0, 0, 1, 2]  # written once into the clear, then again in order
    task.cancel()


async def test_a_confirmed_interruption_after_a_hold_needs_no_second_clear():
    sink = KeepingSink()
    p = Playout(sink, lead_ms=1000, chunk_ms=20)
    p.enqueue(numbered(5), "r1")
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.05)
    await p.hold()
    cut = await p.clear()
    assert cut == {"r1": 0.0} and [k for k, _ in sink.sent].count("clear") == 1
    assert not p.busy() and not p.paused
    task.cancel()
