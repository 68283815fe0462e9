"""Instance leases and model session slots: what lets many processes (workers, instances on one
PostgreSQL) share the call log safely.

Each running gateway process holds a lease row under its own instance id (the one its call rows
carry) and renews it from a heartbeat task; a clean shutdown deletes it. A process that dies
(SIGKILL, power loss) stops renewing, so its lease expires and any live instance's sweep closes
its open calls as `crashed`, while the calls of every live process, on this machine or another
sharing the database, are left alone. The sweep that closes a call keeps its id in `crashed_calls`
until gateway/webhooks.py sends the call's `call.ended` (the dead process cannot). Times are each
host's clock: hosts sharing a PostgreSQL database need synchronised clocks (NTP), skew eats into
the lease.

Model session slots (capacity.py) are held by a live lease too, which is why they live here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from .engine import MAX_PENDING_WRITES, Engine

log = logging.getLogger("gateway.calllog")

# A held lease is renewed this many times per lease period: two heartbeats in a row may fail (a
# database hiccup, a stalled event loop) before the lease lapses and other instances take this
# one's calls for crashed.
HEARTBEATS_PER_LEASE = 3


class InstanceLeases(Engine):
    _lease: tuple[str, float, float] | None = None  # (instance, seconds, stream_wait_seconds)
    _heartbeat: asyncio.Task | None = None

    def __init__(self) -> None:
        super().__init__()
        # Calls this process's sweeps closed as crashed, until the call webhooks take them.
        self.crashed_calls: collections.deque[str] = collections.deque(maxlen=MAX_PENDING_WRITES)

    async def hold_lease(self, instance: str, seconds: float, stream_wait_seconds: float) -> tuple[int, int]:
        """Take this process's lease, sweep once, and keep renewing and sweeping in the background
        until `close()`. Returns the first sweep's (crashed, no_stream) counts."""
        await self.acquire_lease(instance, seconds)
        self._lease = (instance, seconds, stream_wait_seconds)
        closed = await self.sweep(stream_wait_seconds)
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="calllog-lease")
        return closed

    async def acquire_lease(self, instance: str, seconds: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        await self.execute(
            "INSERT INTO instance_leases (instance, acquired_at, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (instance) DO UPDATE SET expires_at = excluded.expires_at", (instance, now, now + seconds))

    async def renew_lease(self, instance: str, seconds: float, now: float | None = None) -> bool:
        """Extend the lease; False (and a new lease) if it had lapsed: meanwhile other instances may
        have closed this one's live calls as crashed (each record is put right when its call ends)."""
        now = time.time() if now is None else now
        if await self.execute("UPDATE instance_leases SET expires_at = ? WHERE instance = ? "
                              "AND expires_at >= ?", (now + seconds, instance, now)):
            return True
        await self.acquire_lease(instance, seconds, now)
        return False

    async def release_lease(self, instance: str) -> None:
        await self.execute("DELETE FROM instance_leases WHERE instance = ?", (instance,))

    async def sweep(self, stream_wait_seconds: float, now: float | None = None) -> tuple[int, int]:
        """Close what nobody will close: calls whose instance holds no live lease (`crashed`; the
        end time is the last thing recorded) and webhooks no stream followed within
        `stream_wait_seconds` (`no_stream`; a stream that starts later reopens the record).
        Returns the two counts."""
        now = time.time() if now is None else now
        last_event = "(SELECT MAX(e.t) FROM call_events e WHERE e.call_id = calls.call_id)"
        # RETURNING: the calls this statement closed, and no other instance's (PostgreSQL re-checks
        # `ended_at IS NULL` on a row another sweep just closed; SQLite has one writer at a time), so
        # each crashed call is reported once: its `call.ended` webhook (gateway/webhooks.py).
        closed = await self.fetch(
            f"UPDATE calls SET end_reason = 'crashed', ended_at = started_at + COALESCE({last_event}, 0), "
            f"duration_s = COALESCE({last_event}, 0) "
            "WHERE ended_at IS NULL AND started_at IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM instance_leases l WHERE l.instance = calls.instance AND l.expires_at >= ?) "
            "RETURNING call_id", (now,))
        self.crashed_calls.extend(r["call_id"] for r in closed)
        crashed = len(closed)
        no_stream = await self.execute(
            "UPDATE calls SET end_reason = 'no_stream', ended_at = webhook_at, duration_s = 0 "
            "WHERE ended_at IS NULL AND started_at IS NULL AND webhook_at < ?", (now - stream_wait_seconds,))
        await self.execute(f"DELETE FROM model_slots WHERE NOT {self._SLOT_HELD}", (now, now))
        await self.execute("DELETE FROM instance_leases WHERE expires_at < ?", (now,))
        return crashed, no_stream

    async def _heartbeat_loop(self) -> None:
        assert self._lease is not None
        instance, seconds, stream_wait = self._lease
        while True:
            await asyncio.sleep(seconds / HEARTBEATS_PER_LEASE)
            try:
                if not await self.renew_lease(instance, seconds):
                    log.warning("event=calllog_lease_lapsed instance=%s note=\"other instances may have closed "
                                "this one's live calls as crashed; each record is corrected when its call ends\"",
                                instance)
                crashed, no_stream = await self.sweep(stream_wait)
                if crashed or no_stream:
                    log.warning("event=calllog_swept crashed_calls_closed=%d no_stream_closed=%d", crashed, no_stream)
            except Exception as e:  # noqa: BLE001 - the database may be down for a while; keep trying
                log.error("event=calllog_lease_failed error=%s", f"{type(e).__name__}: {e}"[:300])

    # A key with `max_sessions` N has slot rows 0..N-1 per (provider, key fingerprint); a call holds
    # at most one. A row is taken by one atomic upsert that only overwrites a row nobody holds, so
    # two processes (or instances on one PostgreSQL) can never hold the same slot. A row is held
    # while `expires_at` is ahead (a webhook's hold until the stream starts) or, once a stream
    # claimed it (`expires_at` NULL), while its instance's lease is live: a killed instance's
    # slots are free again as soon as its lease lapsed.
    _SLOT_HELD = ("(COALESCE(model_slots.expires_at >= ?, FALSE) OR (model_slots.expires_at IS NULL AND EXISTS (SELECT 1 FROM "
                  "instance_leases l WHERE l.instance = model_slots.instance AND l.expires_at >= ?)))")

    async def slots_held(self, now: float | None = None) -> list[dict]:
        """Held slots: provider, key_fp, slot, call_id, instance."""
        now = time.time() if now is None else now
        return await self.fetch(f"SELECT provider, key_fp, slot, call_id, instance FROM model_slots "
                                f"WHERE {self._SLOT_HELD} ORDER BY provider, key_fp, slot", (now, now))

    async def take_slot(self, provider: str, key_fp: str, slot: int, call_id: str, instance: str,
                        hold_until: float | None, now: float | None = None) -> bool:
        """Take slot number `slot` of a key for `call_id` unless someone holds it; True if taken.
        `hold_until`: held until then (a webhook waiting for its stream); None: while `instance` lives."""
        now = time.time() if now is None else now
        return bool(await self.execute(
            "INSERT INTO model_slots (provider, key_fp, slot, call_id, instance, taken_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (provider, key_fp, slot) DO UPDATE SET "
            "call_id = excluded.call_id, instance = excluded.instance, taken_at = excluded.taken_at, "
            f"expires_at = excluded.expires_at WHERE NOT {self._SLOT_HELD}",
            (provider, key_fp, slot, call_id, instance, now, hold_until, now, now)))

    async def claim_slot(self, provider: str, call_id: str, instance: str, now: float | None = None) -> str | None:
        """The stream of `call_id` started here: its webhook's hold (if still held) becomes this
        instance's for as long as it lives. The key fingerprint, or None if there is no such hold."""
        now = time.time() if now is None else now
        if not await self.execute(
                "UPDATE model_slots SET instance = ?, expires_at = NULL WHERE provider = ? AND call_id = ? "
                f"AND {self._SLOT_HELD}", (instance, provider, call_id, now, now)):
            return None
        rows = await self.fetch("SELECT key_fp FROM model_slots WHERE provider = ? AND call_id = ?",
                                 (provider, call_id))
        return rows[0]["key_fp"] if rows else None

    async def release_slot(self, provider: str, call_id: str) -> None:
        await self.execute("DELETE FROM model_slots WHERE provider = ? AND call_id = ?", (provider, call_id))

    async def before_close(self) -> None:
        """After the last writes (this process's last writes closed its calls): stop renewing and
        give the lease back, so nobody takes those calls for crashed."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._lease is not None:
            try:
                await self.release_lease(self._lease[0])
            except Exception as e:  # noqa: BLE001 - the lease then simply expires
                log.error("event=calllog_lease_release_failed error=%s", f"{type(e).__name__}: {e}"[:300])
            self._lease = None
        await super().before_close()
