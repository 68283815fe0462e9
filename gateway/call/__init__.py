"""One phone call, as a coordinator (`Call`) composed of small parts; see coordinator.py."""

from .conversation import BotLine, CallerLine, KeypadLine, TranscriptEntry, entry_json
from .coordinator import Call, CallStatus
from .journal import CallSummary

__all__ = ["BotLine", "Call", "CallStatus", "CallSummary", "CallerLine", "KeypadLine", "TranscriptEntry",
           "entry_json"]
