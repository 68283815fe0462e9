"""What a call keeps about its conversation: each bot turn (generated vs heard) and the summary."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BotTurn:
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
    done: bool = False
    entry: dict | None = None  # its line in the call's transcript, once finished

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
class CallSummary:
    call_id: str
    bot: str
    end_reason: str = ""
    transcript: list[dict] = field(default_factory=list)
    barge_ins: int = 0
    turn_latencies_ms: list[float] = field(default_factory=list)
    sessions: int = 1  # model sessions used (more than one after a renewal)
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""  # what ended the call, when something went wrong
