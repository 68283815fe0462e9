"""What one call writes to the call log, as it happens.

A `Call` reports facts (started, first audio, a transcript line, a barge-in, the end); the
recorder turns them into rows: one `calls` row updated in place, plus numbered events with their
offset from the call's start. Nothing here waits for the database (see `CallStore.enqueue`).
"""

from __future__ import annotations

from typing import Any

from .store import CallStore


class RecordWriter:
    def __init__(self, store: CallStore, call_id: str):
        self.store = store
        self.call_id = call_id
        self._seq = 0

    def update(self, **fields: Any) -> None:
        """Set fields of the call's row (see store.CALL_FIELDS)."""
        self.store.enqueue("upsert_call", self.call_id, fields)

    def event(self, kind: str, t: float, text: str | None = None, **data: Any) -> None:
        """A timeline entry `t` seconds into the call; `text` is what transcript search looks at."""
        self._seq += 1
        data = {k: v for k, v in data.items() if v is not None}
        if text is not None:
            data["text"] = text
        self.store.enqueue("add_event", self.call_id, self._seq, round(t, 3), kind, text, data)


class NullRecordWriter(RecordWriter):
    """For calls run without a store (unit tests, tools)."""

    def __init__(self, call_id: str = ""):
        self.call_id = call_id
        self._seq = 0

    def update(self, **fields: Any) -> None:
        pass

    def event(self, kind: str, t: float, text: str | None = None, **data: Any) -> None:
        pass
