"""Everything a call writes about itself, written once: the log line, the call-log record and the
in-memory summary come from the same call here, so they cannot drift apart.

- `event(kind, ...)`: a moment in the call (barge-in, hang-up, a tool call): one log line and one
  timeline event in the record.
- `line(entry)`: a transcript line (caller, bot, keypad): the same, plus the summary's transcript
  is the conversation's (shared list), so it is already there.
- `update(...)`: fields of the call's record row.

Observers (metrics, call webhooks) see the same stream: `updated(fields, summary)` and
`event(kind, fields, summary)`. They must be quick and must not raise (nothing here waits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from ..calllog import RecordWriter
from ..logs import CallLogger
from .conversation import BotLine, CallerLine, KeypadLine, TranscriptEntry


@dataclass
class CallSummary:
    """What a finished call leaves in memory (the app keeps the last few; tests read them)."""
    call_id: str
    bot: str
    end_reason: str = ""
    transcript: list[TranscriptEntry] = field(default_factory=list)
    barge_ins: int = 0
    # Per answered turn: the caller's last voiced frame -> the reply's first audio played at the phone
    # (what the caller lived through), and the model's own figure (its speech_stopped -> first audio sent).
    turn_latencies_ms: list[float] = field(default_factory=list)
    model_latencies_ms: list[float] = field(default_factory=list)
    sessions: int = 1  # model sessions used (more than one after a renewal)
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""  # what ended the call, when something went wrong


class CallObserver(Protocol):
    """Something outside the call that follows it (metrics, call webhooks)."""

    def updated(self, fields: dict[str, Any], summary: CallSummary) -> None: ...

    def event(self, kind: str, fields: dict[str, Any], summary: CallSummary) -> None: ...


class Journal:
    def __init__(self, log: CallLogger, record: RecordWriter, summary: CallSummary, offset: Callable[[], float],
                 observers: Sequence[CallObserver] = ()):
        """`offset()`: seconds since the call started, the time of every timeline event."""
        self.log = log
        self.record = record
        self.summary = summary
        self.offset = offset
        self.observers = tuple(observers)

    def event(self, kind: str, *, level: str = "info", log_as: str | None = None, at: float | None = None,
              **fields: Any) -> None:
        """One moment of the call: a log line (`log_as` or `kind`) and a timeline event (at offset
        `at`, default now)."""
        getattr(self.log, level)(log_as or kind, **fields)
        self.record.event(kind, self.offset() if at is None else round(at, 3), **fields)
        self._tell("event", kind, fields)

    def line(self, entry: TranscriptEntry, *, status: str = "", generated_ms: float | None = None) -> None:
        """A transcript line was added (by the conversation): log it and record it."""
        if isinstance(entry, CallerLine):
            self.log.info("caller_said", text=entry.text[:500])
            self.record.event("caller", entry.t, text=entry.text)
        elif isinstance(entry, KeypadLine):
            self.log.info("dtmf", digit=entry.digits)
            self.record.event("dtmf", entry.t, digit=entry.digits)
        elif isinstance(entry, BotLine):
            gen = round(generated_ms) if generated_ms is not None else None
            self.log.info("bot_said", response=entry.response_id, status=status or None, text=entry.text[:500],
                          interrupted=entry.interrupted, heard=entry.heard[:500] if entry.interrupted else None,
                          generated_ms=gen)
            self.record.event("bot", entry.t, text=entry.text, response=entry.response_id, heard=entry.heard,
                              interrupted=entry.interrupted,
                              heard_ms=round(entry.heard_ms) if entry.heard_ms is not None else None,
                              status=status or None, generated_ms=gen)

    def bot_line_cut(self, entry: BotLine) -> None:
        """A finished line that was still playing got cut by a barge-in."""
        self.record.event("bot_cut", self.offset(), response=entry.response_id, heard=entry.heard,
                          heard_ms=round(entry.heard_ms or 0))

    def error(self, code: str, message: str) -> None:
        """What went wrong, for the record and the summary (the caller's log line is separate:
        it says where it happened)."""
        self.summary.error = f"{code}: {message}"[:500]
        self.record.event("error", self.offset(), code=code, message=message[:500])
        self._tell("event", "error", {"code": code})

    def update(self, **fields: Any) -> None:
        self.record.update(**fields)
        self._tell("updated", fields)

    def _tell(self, method: str, *args: Any) -> None:
        """Pass it on to each observer; one that fails is logged, never the call's problem."""
        for observer in self.observers:
            try:
                getattr(observer, method)(*args, self.summary)
            except Exception as e:  # noqa: BLE001 - metrics or webhooks must not end a call
                self.log.error("call_observer_failed", observer=type(observer).__name__,
                               error=f"{type(e).__name__}: {e}"[:300])
