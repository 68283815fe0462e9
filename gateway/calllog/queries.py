"""Looking back over the call log: the history with its filters, per-bot figures and trends, and
retention (purging ended calls with their events).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .engine import Engine


@dataclass(frozen=True)
class CallQuery:
    bot: str | None = None
    number: str | None = None  # matches from or to
    since: float | None = None  # started (or webhook) at or after
    until: float | None = None  # ... before
    end_reason: str | None = None
    text: str | None = None  # substring of any transcript line, case-insensitive
    live: bool | None = None  # True: not ended yet; False: ended
    limit: int = 50
    offset: int = 0


class CallQueries(Engine):
    def _where(self, q: CallQuery) -> tuple[str, list]:
        clauses, args = [], []
        if q.bot:
            clauses.append("bot = ?")
            args.append(q.bot)
        if q.number:
            clauses.append("(from_number = ? OR to_number = ?)")
            args += [q.number, q.number]
        if q.since is not None:
            clauses.append("COALESCE(started_at, webhook_at) >= ?")
            args.append(q.since)
        if q.until is not None:
            clauses.append("COALESCE(started_at, webhook_at) < ?")
            args.append(q.until)
        if q.end_reason:
            clauses.append("end_reason = ?")
            args.append(q.end_reason)
        if q.live is not None:
            clauses.append("ended_at IS NULL" if q.live else "ended_at IS NOT NULL")
        if q.text:
            clauses.append("EXISTS (SELECT 1 FROM call_events e WHERE e.call_id = calls.call_id "
                           "AND LOWER(e.text) LIKE ? ESCAPE '\\')")
            escaped = q.text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args.append(f"%{escaped}%")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    async def list_calls(self, q: CallQuery) -> tuple[list[dict], int]:
        where, args = self._where(q)
        total = (await self.fetch(f"SELECT COUNT(*) AS n FROM calls{where}", tuple(args)))[0]["n"]
        rows = await self.fetch(
            f"SELECT * FROM calls{where} ORDER BY COALESCE(started_at, webhook_at) DESC, call_id "
            f"LIMIT ? OFFSET ?", (*args, q.limit, q.offset))
        return rows, int(total)

    async def bot_latencies(self, since: float | None = None) -> list[dict]:
        """Per ended call: bot, duration, end reason and first-audio latency, for the per-bot summary."""
        where, args = ("WHERE ended_at IS NOT NULL AND started_at >= ?", (since,)) if since is not None \
            else ("WHERE ended_at IS NOT NULL", ())
        return await self.fetch(
            f"SELECT bot, duration_s, end_reason, started_at, first_audio_at FROM calls {where}", args)

    async def activity_since(self, since: float) -> tuple[list[dict], list[dict]]:
        """For the per-hour trend: the calls started since then (bot, started_at) and their turn
        latencies (bot, when, ms). The caller bounds `since` (a window of hours, not all history)."""
        calls = await self.fetch("SELECT bot, started_at FROM calls WHERE started_at >= ?", (since,))
        events = await self.fetch(
            "SELECT c.bot, c.started_at, e.t, e.data FROM calls c JOIN call_events e ON e.call_id = c.call_id "
            "WHERE c.started_at >= ? AND e.kind = 'latency'", (since,))
        latencies = []
        for e in events:
            ms = json.loads(e["data"]).get("ms")
            if isinstance(ms, (int, float)):
                latencies.append({"bot": e["bot"], "at": e["started_at"] + e["t"], "ms": ms})
        return calls, latencies

    async def purge(self, before: float) -> list[str]:
        """Delete calls that ended before `before` with their events; returns their recording paths."""
        rows = await self.fetch("SELECT call_id, recording FROM calls WHERE ended_at IS NOT NULL "
                                "AND ended_at < ?", (before,))
        await self.execute("DELETE FROM call_events WHERE call_id IN "
                           "(SELECT call_id FROM calls WHERE ended_at IS NOT NULL AND ended_at < ?)",
                            (before,))
        await self.execute("DELETE FROM calls WHERE ended_at IS NOT NULL AND ended_at < ?", (before,))
        return [r["recording"] for r in rows if r["recording"]]
