"""The call-webhook outbox: deliveries waiting for (or done with) their receiver. Rows are queued
through the engine's write queue (`add_webhook`) and claimed by one instance at a time
(claimed_by/claimed_until) so two never deliver the same row; gateway/webhooks.py delivers them.
"""

from __future__ import annotations

import time

from .engine import Engine


class WebhookOutbox(Engine):
    def add_webhook_sql(self, delivery_id: str, url: str, event: str, call_id: str, body: str,
                         now: float) -> tuple[str, tuple]:
        return (self.sql("INSERT INTO webhook_deliveries (id, url, event, call_id, body, created_at, next_at) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"),
                (delivery_id, url, event, call_id, body, now, now))

    async def claim_webhooks(self, claim: str, lease_seconds: float, limit: int, now: float | None = None) -> list[dict]:
        """Take up to `limit` due deliveries for `claim` (unique per attempt) until now + lease; a
        call's events reach each receiver in order (a later one waits while an earlier one is pending).
        The outer conditions are checked again on each row as it is updated, so of two instances
        claiming at once only one gets a row (PostgreSQL re-reads a row another transaction just
        changed; SQLite runs one writer at a time)."""
        now = time.time() if now is None else now
        free = "delivered_at IS NULL AND abandoned_at IS NULL AND (claimed_until IS NULL OR claimed_until < ?)"
        await self.execute((
            f"UPDATE webhook_deliveries SET claimed_by = ?, claimed_until = ? WHERE {free} AND id IN "
            f"(SELECT id FROM webhook_deliveries WHERE {free} AND next_at <= ? AND NOT EXISTS "
            # per call and receiver, in order: call.ended waits while its call.started is pending
            "(SELECT 1 FROM webhook_deliveries e WHERE e.url = webhook_deliveries.url "
            "AND e.call_id = webhook_deliveries.call_id AND e.created_at < webhook_deliveries.created_at "
            "AND e.delivered_at IS NULL AND e.abandoned_at IS NULL) ORDER BY next_at LIMIT ?)"),
            (claim, now + lease_seconds, now, now, now, limit))
        return await self.fetch("SELECT id, url, event, call_id, body, created_at, attempts "
                                "FROM webhook_deliveries WHERE claimed_by = ? ORDER BY next_at", (claim,))

    async def webhook_done(self, delivery_id: str, claim: str, *, delivered: bool, error: str | None = None,
                           next_at: float | None = None, now: float | None = None) -> None:
        """Record an attempt: delivered, or failed with a retry at `next_at` (None: abandoned)."""
        now = time.time() if now is None else now
        if delivered:
            sets, args = "delivered_at = ?, last_error = NULL", (now,)
        elif next_at is not None:
            sets, args = "next_at = ?, last_error = ?", (next_at, error)
        else:
            sets, args = "abandoned_at = ?, last_error = ?", (now, error)
        await self.execute(f"UPDATE webhook_deliveries SET {sets}, attempts = attempts + 1, "
                           "claimed_by = NULL, claimed_until = NULL WHERE id = ? AND claimed_by = ?",
                            (*args, delivery_id, claim))

    async def purge_webhooks(self, before: float) -> int:
        """Forget deliveries finished (delivered or abandoned) before `before`."""
        return await self.execute(
            "DELETE FROM webhook_deliveries WHERE COALESCE(delivered_at, abandoned_at) < ?", (before,))
