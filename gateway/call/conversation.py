"""The conversation of one call: bot turns (generated vs heard), the active response, and the
typed transcript the operator sees and a fresh model session is given.

Synchronous and socket-free on purpose: everything here is bookkeeping that tests drive directly.
The transcript is what the *caller experienced*: a bot line records what was generated and what
was heard (cut at a barge-in), so a renewed session is told only what the caller really heard.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Literal

from ..providers.base import ContextTurn

MAX_CONTEXT_TURNS = 60  # transcript lines replayed into a renewed session


# ------------------------------------------------------------------ transcript entries
@dataclass
class CallerLine:
    text: str
    t: float  # seconds since the call started
    role: Literal["caller"] = "caller"


@dataclass
class KeypadLine:
    digits: str
    t: float
    role: Literal["dtmf"] = "dtmf"

    @property
    def text(self) -> str:
        return self.digits


@dataclass
class BotLine:
    response_id: str
    text: str  # all the model generated
    heard: str  # what the caller heard of it (== text unless interrupted)
    t: float
    interrupted: bool = False
    heard_ms: float | None = None  # audio confirmed played, when it was cut
    role: Literal["bot"] = "bot"


TranscriptEntry = CallerLine | KeypadLine | BotLine


def entry_json(entry: TranscriptEntry) -> dict:
    """The wire shape of a transcript line (operator API, webhooks)."""
    if isinstance(entry, BotLine):
        out = {"role": "bot", "text": entry.text, "heard": entry.heard, "interrupted": entry.interrupted,
               "t": entry.t}
        if entry.heard_ms is not None:
            out["heard_ms"] = round(entry.heard_ms)
        return out
    return {"role": entry.role, "text": entry.text, "t": entry.t}


# ------------------------------------------------------------------ bot turns
@dataclass
class BotTurn:
    """One model response as it is generated and played."""
    response_id: str
    started_at: float
    item_id: str = ""
    text: str = ""
    final: bool = False
    generated_ms: float = 0.0  # all audio the model produced for it, dropped late deltas included
    item_ms: float = 0.0  # of that, audio of `item_id` (what a truncate may reach at most)
    interrupted: bool = False
    heard_ms: float | None = None
    first_audio_at: float | None = None
    # The turn's latency: where the caller's speech it answers ended (their last voiced frame), and
    # the model's own figure (its speech_stopped -> our first audio sent), set with first_audio_at.
    voice_end_at: float | None = None
    model_latency_ms: float | None = None
    done: bool = False
    line: BotLine | None = None  # its transcript line, once finished

    def heard_text(self) -> str:
        """What the caller heard, estimated from played time.

        Realtime models send no word timings, so the cut is proportional to audio played vs
        generated, moved back to a word boundary (for scripts without spaces, a character).
        """
        if not self.interrupted or self.heard_ms is None:
            return self.text
        if self.generated_ms <= 0 or self.heard_ms <= 0:
            return ""
        n = int(len(self.text) * min(1.0, self.heard_ms / self.generated_ms))
        cut = self.text[:n]
        if n < len(self.text) and " " in cut and not self.text[n].isspace():
            cut = cut[:cut.rfind(" ")]
        return cut.rstrip()


@dataclass
class Conversation:
    """Turns, the active response, "response done" events and the transcript of one call.

    `clock` is the call's monotonic clock; `t0` its start on that clock (transcript times are
    offsets from it)."""
    clock: Callable[[], float]
    t0: float
    transcript: list[TranscriptEntry] = field(default_factory=list)
    caller_speaking: bool = False
    speech_stopped_at: float | None = None  # the model's end of the caller's last utterance (its VAD)
    voice_end_at: float | None = None  # and by our own measure: the caller's last voiced frame
    active_response: str | None = None
    _turns: dict[str, BotTurn] = field(default_factory=dict)
    _cancelled: set[str] = field(default_factory=set)
    _done: dict[str, asyncio.Event] = field(default_factory=dict)

    def offset(self) -> float:
        return round(self.clock() - self.t0, 3)

    # -------------------------------------------------------------- caller side
    def caller_said(self, text: str) -> CallerLine:
        line = CallerLine(text, self.offset())
        self.transcript.append(line)
        return line

    def keypad(self, digits: str) -> KeypadLine:
        line = KeypadLine(digits, self.offset())
        self.transcript.append(line)
        return line

    def speech_started(self) -> None:
        self.caller_speaking = True

    def speech_stopped(self, voice_end_at: float | None = None) -> None:
        self.caller_speaking = False
        self.speech_stopped_at = self.clock()
        self.voice_end_at = voice_end_at

    def reply_started(self, turn: BotTurn, at: float) -> None:
        """A reply's first audio went to the phone: it answers the caller's last utterance, if one
        is still unanswered (a greeting or a second reply in a row answers none)."""
        turn.first_audio_at = at
        if self.speech_stopped_at is not None:
            turn.model_latency_ms = round((at - self.speech_stopped_at) * 1000, 1)
            turn.voice_end_at = self.voice_end_at
            self.speech_stopped_at = self.voice_end_at = None

    # -------------------------------------------------------------- bot side
    def turn(self, response_id: str) -> BotTurn:
        turn = self._turns.get(response_id)
        if turn is None:
            turn = self._turns[response_id] = BotTurn(response_id, self.clock())
        return turn

    def find_turn(self, response_id: str) -> BotTurn | None:
        return self._turns.get(response_id)

    def response_started(self, response_id: str) -> None:
        self.active_response = response_id
        self._done.setdefault(response_id, asyncio.Event())
        self.turn(response_id)

    def output_text(self, response_id: str, text: str, final: bool) -> None:
        turn = self.turn(response_id)
        if final:
            turn.text, turn.final = text, True
        elif not turn.final:
            turn.text += text

    def audio_generated(self, response_id: str, item_id: str, ms: float) -> bool:
        """Counts a reply's generated audio; False when the caller talked over that reply (a late
        delta to drop)."""
        turn = self.turn(response_id)
        turn.item_id = turn.item_id or item_id
        turn.generated_ms += ms
        if item_id == turn.item_id:
            turn.item_ms += ms
        return not (response_id in self._cancelled or turn.interrupted)

    def response_done(self, response_id: str) -> BotTurn | None:
        """The model finished a response; returns its turn when it still needs finishing (its
        transcript line written), None when already finished or unknown."""
        self._done.setdefault(response_id, asyncio.Event()).set()
        if self.active_response == response_id:
            self.active_response = None
        turn = self._turns.get(response_id)
        return None if turn is None or turn.done else turn

    def finish(self, turn: BotTurn) -> BotLine:
        """Writes the turn's transcript line (what was generated and what was heard)."""
        turn.done = True
        turn.line = BotLine(turn.response_id, turn.text, turn.heard_text(), round(turn.started_at - self.t0, 3),
                            interrupted=turn.interrupted, heard_ms=turn.heard_ms)
        self.transcript.append(turn.line)
        return turn.line

    def unfinished(self) -> list[BotTurn]:
        return [t for t in self._turns.values() if not t.done]

    def cancel_active(self) -> str | None:
        """Barge-in: the active response (if any) is cancelled; its late deltas will be dropped."""
        active, self.active_response = self.active_response, None
        if active is not None:
            self._cancelled.add(active)
        return active

    def cut(self, response_id: str, heard_ms: float) -> BotTurn | None:
        """The caller talked over this reply after hearing `heard_ms` of it."""
        turn = self._turns.get(response_id)
        if turn is None:
            return None
        turn.interrupted = True
        turn.heard_ms = heard_ms
        if turn.line is not None:  # already finished but still playing: amend its line
            turn.line.interrupted, turn.line.heard, turn.line.heard_ms = True, turn.heard_text(), heard_ms
        return turn

    def done_event(self, response_id: str | None) -> asyncio.Event | None:
        """Set once that response (None: the active one) is done; None when nothing is pending."""
        rid = response_id or self.active_response
        return self._done.get(rid) if rid else None

    @property
    def responses_seen(self) -> int:
        return len(self._done)

    def bot_turns(self) -> int:
        return sum(1 for e in self.transcript if isinstance(e, BotLine))

    # -------------------------------------------------------------- a fresh session
    def context(self) -> list[ContextTurn]:
        """The conversation so far as the caller experienced it: bot lines are what was heard."""
        turns: list[ContextTurn] = []
        for e in self.transcript:
            if isinstance(e, CallerLine) and e.text:
                turns.append(ContextTurn("caller", e.text))
            elif isinstance(e, BotLine) and e.heard:
                turns.append(ContextTurn("bot", e.heard))
            elif isinstance(e, KeypadLine):
                turns.append(ContextTurn("caller", f"(pressed {e.digits} on the phone keypad)"))
        return turns[-MAX_CONTEXT_TURNS:]
