"""Calls and their events: the `calls` row a call updates in place and its numbered timeline
events (both written through the engine's queue: see recorder.py), and one call read back whole.
"""

from __future__ import annotations

import json

from .engine import Engine
from .schema import CALL_FIELDS


class CallRecords(Engine):
    def upsert_call_sql(self, call_id: str, fields: dict) -> tuple[str, tuple]:
        cols = [c for c in CALL_FIELDS if c in fields]
        names = ", ".join(["call_id", *cols])
        marks = ", ".join([self.placeholder] * (len(cols) + 1))
        updates = [f"{c} = excluded.{c}" for c in cols] or ["call_id = excluded.call_id"]
        if "started_at" in fields and "end_reason" not in fields:
            # A stream that starts after the no_stream sweep closed its webhook's record reopens it.
            updates += [f"{c} = CASE WHEN calls.end_reason = 'no_stream' THEN NULL ELSE calls.{c} END"
                        for c in ("ended_at", "duration_s", "end_reason") if c not in cols]
        updates = ", ".join(updates)
        return (self.sql(f"INSERT INTO calls ({names}) VALUES ({marks}) ON CONFLICT (call_id) DO UPDATE SET {updates}"),
                (call_id, *(fields[c] for c in cols)))

    def add_event_sql(self, call_id: str, seq: int, t: float, kind: str, text: str | None,
                       data: dict) -> tuple[str, tuple]:
        return (self.sql("INSERT INTO call_events (call_id, seq, t, kind, text, data) "
                          "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (call_id, seq) DO NOTHING"),
                (call_id, seq, t, kind, text, json.dumps(data, ensure_ascii=False)))

    async def get_call(self, call_id: str) -> dict | None:
        rows = await self.fetch("SELECT * FROM calls WHERE call_id = ?", (call_id,))
        if not rows:
            return None
        call = rows[0]
        events = await self.fetch("SELECT seq, t, kind, text, data FROM call_events "
                                  "WHERE call_id = ? ORDER BY seq", (call_id,))
        call["events"] = [{"seq": e["seq"], "t": e["t"], "kind": e["kind"], **json.loads(e["data"])}
                          for e in events]
        return call
