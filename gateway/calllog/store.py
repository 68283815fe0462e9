"""The call-log store: one async interface, SQLite (default) and PostgreSQL behind it.

Writes never block a call: `enqueue()` puts the operation on a bounded, ordered queue that one
writer task drains, committing whatever has queued up meanwhile as one transaction (one thread
hop for SQLite, one round trip for PostgreSQL), so a crash (even SIGKILL) loses at most the
writes still queued, i.e. the last few milliseconds. Reads are awaited directly. A write that
fails is logged and skipped; a full queue (the database is down or far too slow) drops the write
with a log line and counts it in `dropped`, rather than growing memory or stalling calls.

Times are UNIX seconds (floats) in the database, which both engines compare and index the same
way; the API renders them as ISO 8601. Event offsets `t` are seconds from the call's start.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass

log = logging.getLogger("gateway.calllog")


class StoreError(RuntimeError):
    """The call log cannot be used (unreachable, or a schema from a newer gateway); the message says which."""

MAX_PENDING_WRITES = 10000
MAX_BATCH = 500  # writes committed together at most

# Migrations: version -> statements. Applied in order at start-up, each version once, recorded in
# schema_migrations. Written in the SQL both engines accept (DOUBLE PRECISION is REAL in SQLite).
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE calls (
            call_id TEXT PRIMARY KEY,
            stream_id TEXT,
            network TEXT NOT NULL DEFAULT 'twilio',
            from_number TEXT,
            to_number TEXT,
            bot TEXT,
            provider TEXT,
            model TEXT,
            instance TEXT,
            webhook_at DOUBLE PRECISION,
            started_at DOUBLE PRECISION,
            first_audio_at DOUBLE PRECISION,
            ended_at DOUBLE PRECISION,
            duration_s DOUBLE PRECISION,
            end_reason TEXT,
            error TEXT,
            barge_ins INTEGER NOT NULL DEFAULT 0,
            turns INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            recording TEXT
        )""",
        "CREATE INDEX calls_started ON calls (started_at)",
        "CREATE INDEX calls_bot_started ON calls (bot, started_at)",
        "CREATE INDEX calls_open ON calls (instance, ended_at)",
        """CREATE TABLE call_events (
            call_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            t DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            text TEXT,
            data TEXT NOT NULL,
            PRIMARY KEY (call_id, seq)
        )""",
    ],
    2: ["ALTER TABLE calls ADD COLUMN direction TEXT NOT NULL DEFAULT 'inbound'"],
    # Instance leases (see `hold_lease`), and an index of the open calls that the periodic sweeps
    # look at, so that they never scan the whole history (partial indexes: both engines have them).
    3: [
        """CREATE TABLE instance_leases (
            instance TEXT PRIMARY KEY,
            acquired_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX calls_unended ON calls (instance) WHERE ended_at IS NULL",
    ],
    # Model session slots (see `take_slot`), and which key served a call / why it overflowed.
    4: [
        """CREATE TABLE model_slots (
            provider TEXT NOT NULL,
            key_fp TEXT NOT NULL,
            slot INTEGER NOT NULL,
            call_id TEXT NOT NULL,
            instance TEXT NOT NULL,
            taken_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            PRIMARY KEY (provider, key_fp, slot)
        )""",
        "CREATE INDEX model_slots_call ON model_slots (call_id)",
        "ALTER TABLE calls ADD COLUMN model_key TEXT",
        "ALTER TABLE calls ADD COLUMN overflow TEXT",
    ],
    # Call webhooks waiting for (or done with) delivery: see gateway/webhooks.py. A row is claimed
    # by one instance at a time (claimed_by/claimed_until) so two never deliver it together.
    5: [
        """CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            event TEXT NOT NULL,
            call_id TEXT,
            body TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            next_at DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            claimed_by TEXT,
            claimed_until DOUBLE PRECISION,
            delivered_at DOUBLE PRECISION,
            abandoned_at DOUBLE PRECISION,
            last_error TEXT
        )""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) "
        "WHERE delivered_at IS NULL AND abandoned_at IS NULL",
    ],
    # Commands for a call that runs on another instance or worker (an operator's hang-up arrived
    # elsewhere): the owner polls for its own (see calllog/instances.py).
    6: [
        """CREATE TABLE call_commands (
            id TEXT PRIMARY KEY,  -- random, made by the sender (portable: no serials)
            instance TEXT NOT NULL,
            call_id TEXT NOT NULL,
            command TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            taken_at DOUBLE PRECISION
        )""",
        "CREATE INDEX call_commands_open ON call_commands (instance) WHERE taken_at IS NULL",
    ],
    # Outbound calls: who answered, as Twilio's answering-machine detection says (human, machine_end_beep, ...).
    7: ["ALTER TABLE calls ADD COLUMN answered_by TEXT"],
}
SCHEMA_VERSION = max(MIGRATIONS)
MIGRATIONS_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")

CALL_FIELDS = ("stream_id", "network", "direction", "from_number", "to_number", "bot", "provider", "model", "instance",
               "webhook_at", "started_at", "first_audio_at", "ended_at", "duration_s", "end_reason", "error",
               "barge_ins", "turns", "input_tokens", "output_tokens", "recording", "model_key", "overflow",
               "answered_by")
END_REASONS = ("caller_hangup", "bot_hangup", "transferred", "operator_hangup", "model_error", "model_closed",
               "max_duration", "silence_timeout", "protocol_error", "internal_error", "shutdown", "crashed", "no_stream",
               "refused", "answering_machine")
# A held lease is renewed this many times per lease period: two heartbeats in a row may fail (a
# database hiccup, a stalled event loop) before the lease lapses and other instances take this
# one's calls for crashed.
HEARTBEATS_PER_LEASE = 3


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


class CallStore(abc.ABC):
    """Subclasses implement the SQL engine: `_connect`, `_close_db`, `_execute`, `_fetch`, `_script`."""

    placeholder = "?"

    def __init__(self) -> None:
        self._queue: asyncio.Queue | None = None
        self._writer: asyncio.Task | None = None
        self.dropped = 0
        self.failed = 0
        self._lease: tuple[str, float, float] | None = None  # (instance, seconds, stream_wait_seconds)
        # Calls this process's sweeps closed as crashed, until the call webhooks take them.
        self.crashed_calls: collections.deque[str] = collections.deque(maxlen=MAX_PENDING_WRITES)
        self._heartbeat: asyncio.Task | None = None

    # ------------------------------------------------------------------ engine hooks
    @abc.abstractmethod
    async def _connect(self) -> None: ...

    @abc.abstractmethod
    async def _close_db(self) -> None: ...

    @abc.abstractmethod
    async def _execute(self, sql: str, args: tuple = ()) -> int:
        """Run one statement in its own transaction; rows affected."""

    @abc.abstractmethod
    async def _fetch(self, sql: str, args: tuple = ()) -> list[dict]: ...

    @abc.abstractmethod
    async def _execute_batch(self, statements: list[tuple[str, tuple]]) -> None:
        """Run statements in one transaction (all or nothing)."""

    @abc.abstractmethod
    async def _migrate_to(self, version: int, statements: list[str]) -> bool:
        """Apply one migration and record it, atomically; False if another process applied it first."""

    def _sql(self, sql: str) -> str:
        return sql

    async def _create_migrations_table(self, statement: str) -> None:
        await self._execute(statement)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._connect()
        await self.migrate()
        self._queue = asyncio.Queue(maxsize=MAX_PENDING_WRITES)
        self._writer = asyncio.create_task(self._write_loop(), name="calllog-writer")

    async def close(self, timeout: float = 5.0) -> None:
        if self._writer is not None:
            try:
                await asyncio.wait_for(self.flush(), timeout)
            except asyncio.TimeoutError:
                log.error("event=calllog_close_unflushed pending=%d", self._queue.qsize() if self._queue else 0)
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._lease is not None:  # after the flush: this process's last writes closed its calls
            try:
                await self.release_lease(self._lease[0])
            except Exception as e:  # noqa: BLE001 - the lease then simply expires
                log.error("event=calllog_lease_release_failed error=%s", f"{type(e).__name__}: {e}"[:300])
            self._lease = None
        await self._close_db()

    async def migrate(self) -> int:
        await self._create_migrations_table(MIGRATIONS_TABLE)
        rows = await self._fetch("SELECT version FROM schema_migrations")
        have = {r["version"] for r in rows}
        if have and max(have) > SCHEMA_VERSION:
            raise StoreError(f"call-log database is at schema version {max(have)}, newer than this "
                               f"gateway ({SCHEMA_VERSION}); upgrade the gateway")
        for version in sorted(MIGRATIONS):
            if version not in have and await self._migrate_to(version, MIGRATIONS[version]):
                log.info("event=calllog_migrated version=%d", version)  # once: by the process that applied it
        return SCHEMA_VERSION

    # ------------------------------------------------------------------ writes (queued)
    def enqueue(self, op: str, *args) -> None:
        """Queue a write (`upsert_call`, `add_event`); never blocks, never raises."""
        if self._queue is None:
            return
        try:
            self._queue.put_nowait((op, args))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("event=calllog_write_dropped dropped=%d reason=queue_full", self.dropped)

    @property
    def pending(self) -> int:
        """Writes queued and not yet committed."""
        return self._queue.qsize() if self._queue is not None else 0

    async def flush(self) -> None:
        if self._queue is not None:
            await self._queue.join()

    async def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._execute_batch([getattr(self, f"_{op}_sql")(*args) for op, args in batch])
            except Exception:  # noqa: BLE001 - find the bad write; the others must still land
                for op, args in batch:
                    try:
                        await self._execute(*getattr(self, f"_{op}_sql")(*args))
                    except Exception as e:  # noqa: BLE001
                        self.failed += 1
                        log.error("event=calllog_write_failed op=%s error=%s", op, f"{type(e).__name__}: {e}"[:300])
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _upsert_call_sql(self, call_id: str, fields: dict) -> tuple[str, tuple]:
        cols = [c for c in CALL_FIELDS if c in fields]
        names = ", ".join(["call_id", *cols])
        marks = ", ".join([self.placeholder] * (len(cols) + 1))
        updates = [f"{c} = excluded.{c}" for c in cols] or ["call_id = excluded.call_id"]
        if "started_at" in fields and "end_reason" not in fields:
            # A stream that starts after the no_stream sweep closed its webhook's record reopens it.
            updates += [f"{c} = CASE WHEN calls.end_reason = 'no_stream' THEN NULL ELSE calls.{c} END"
                        for c in ("ended_at", "duration_s", "end_reason") if c not in cols]
        updates = ", ".join(updates)
        return (self._sql(f"INSERT INTO calls ({names}) VALUES ({marks}) ON CONFLICT (call_id) DO UPDATE SET {updates}"),
                (call_id, *(fields[c] for c in cols)))

    def _add_event_sql(self, call_id: str, seq: int, t: float, kind: str, text: str | None,
                       data: dict) -> tuple[str, tuple]:
        return (self._sql("INSERT INTO call_events (call_id, seq, t, kind, text, data) "
                          "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (call_id, seq) DO NOTHING"),
                (call_id, seq, t, kind, text, json.dumps(data, ensure_ascii=False)))

    def _add_webhook_sql(self, delivery_id: str, url: str, event: str, call_id: str, body: str,
                         now: float) -> tuple[str, tuple]:
        return (self._sql("INSERT INTO webhook_deliveries (id, url, event, call_id, body, created_at, next_at) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"),
                (delivery_id, url, event, call_id, body, now, now))

    # ------------------------------------------------------------------ webhook deliveries
    async def claim_webhooks(self, claim: str, lease_seconds: float, limit: int, now: float | None = None) -> list[dict]:
        """Take up to `limit` due deliveries for `claim` (unique per attempt) until now + lease; a
        call's events reach each receiver in order (a later one waits while an earlier one is pending).
        The outer conditions are checked again on each row as it is updated, so of two instances
        claiming at once only one gets a row (PostgreSQL re-reads a row another transaction just
        changed; SQLite runs one writer at a time)."""
        now = time.time() if now is None else now
        free = "delivered_at IS NULL AND abandoned_at IS NULL AND (claimed_until IS NULL OR claimed_until < ?)"
        await self._execute(self._sql(
            f"UPDATE webhook_deliveries SET claimed_by = ?, claimed_until = ? WHERE {free} AND id IN "
            f"(SELECT id FROM webhook_deliveries WHERE {free} AND next_at <= ? AND NOT EXISTS "
            # per call and receiver, in order: call.ended waits while its call.started is pending
            "(SELECT 1 FROM webhook_deliveries e WHERE e.url = webhook_deliveries.url "
            "AND e.call_id = webhook_deliveries.call_id AND e.created_at < webhook_deliveries.created_at "
            "AND e.delivered_at IS NULL AND e.abandoned_at IS NULL) ORDER BY next_at LIMIT ?)"),
            (claim, now + lease_seconds, now, now, now, limit))
        return await self._fetch(self._sql("SELECT id, url, event, call_id, body, created_at, attempts "
                                           "FROM webhook_deliveries WHERE claimed_by = ? ORDER BY next_at"), (claim,))

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
        await self._execute(self._sql(f"UPDATE webhook_deliveries SET {sets}, attempts = attempts + 1, "
                                      "claimed_by = NULL, claimed_until = NULL WHERE id = ? AND claimed_by = ?"),
                            (*args, delivery_id, claim))

    async def purge_webhooks(self, before: float) -> int:
        """Forget deliveries finished (delivered or abandoned) before `before`."""
        return await self._execute(self._sql(
            "DELETE FROM webhook_deliveries WHERE COALESCE(delivered_at, abandoned_at) < ?"), (before,))

    # ------------------------------------------------------------------ instance leases
    # Each running gateway process holds a lease row under its own instance id (the one its call
    # rows carry) and renews it from a heartbeat task; a clean shutdown deletes it. A process that
    # dies (SIGKILL, power loss) stops renewing, so its lease expires and any live instance's
    # sweep closes its open calls as `crashed`, while the calls of every live process, on this
    # machine or another sharing the database, are left alone. Times are each host's clock: hosts
    # sharing a PostgreSQL database need synchronised clocks (NTP), skew eats into the lease.
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
        await self._execute(self._sql(
            "INSERT INTO instance_leases (instance, acquired_at, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (instance) DO UPDATE SET expires_at = excluded.expires_at"), (instance, now, now + seconds))

    async def renew_lease(self, instance: str, seconds: float, now: float | None = None) -> bool:
        """Extend the lease; False (and a new lease) if it had lapsed: meanwhile other instances may
        have closed this one's live calls as crashed (each record is put right when its call ends)."""
        now = time.time() if now is None else now
        if await self._execute(self._sql("UPDATE instance_leases SET expires_at = ? WHERE instance = ? "
                                         "AND expires_at >= ?"), (now + seconds, instance, now)):
            return True
        await self.acquire_lease(instance, seconds, now)
        return False

    async def release_lease(self, instance: str) -> None:
        await self._execute(self._sql("DELETE FROM instance_leases WHERE instance = ?"), (instance,))

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
        closed = await self._fetch(self._sql(
            f"UPDATE calls SET end_reason = 'crashed', ended_at = started_at + COALESCE({last_event}, 0), "
            f"duration_s = COALESCE({last_event}, 0) "
            "WHERE ended_at IS NULL AND started_at IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM instance_leases l WHERE l.instance = calls.instance AND l.expires_at >= ?) "
            "RETURNING call_id"), (now,))
        self.crashed_calls.extend(r["call_id"] for r in closed)
        crashed = len(closed)
        no_stream = await self._execute(self._sql(
            "UPDATE calls SET end_reason = 'no_stream', ended_at = webhook_at, duration_s = 0 "
            "WHERE ended_at IS NULL AND started_at IS NULL AND webhook_at < ?"), (now - stream_wait_seconds,))
        await self._execute(self._sql(f"DELETE FROM model_slots WHERE NOT {self._SLOT_HELD}"), (now, now))
        await self._execute(self._sql("DELETE FROM instance_leases WHERE expires_at < ?"), (now,))
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

    # ------------------------------------------------------------------ model session slots
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
        return await self._fetch(self._sql(f"SELECT provider, key_fp, slot, call_id, instance FROM model_slots "
                                           f"WHERE {self._SLOT_HELD} ORDER BY provider, key_fp, slot"), (now, now))

    async def take_slot(self, provider: str, key_fp: str, slot: int, call_id: str, instance: str,
                        hold_until: float | None, now: float | None = None) -> bool:
        """Take slot number `slot` of a key for `call_id` unless someone holds it; True if taken.
        `hold_until`: held until then (a webhook waiting for its stream); None: while `instance` lives."""
        now = time.time() if now is None else now
        return bool(await self._execute(self._sql(
            "INSERT INTO model_slots (provider, key_fp, slot, call_id, instance, taken_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (provider, key_fp, slot) DO UPDATE SET "
            "call_id = excluded.call_id, instance = excluded.instance, taken_at = excluded.taken_at, "
            f"expires_at = excluded.expires_at WHERE NOT {self._SLOT_HELD}"),
            (provider, key_fp, slot, call_id, instance, now, hold_until, now, now)))

    async def claim_slot(self, provider: str, call_id: str, instance: str, now: float | None = None) -> str | None:
        """The stream of `call_id` started here: its webhook's hold (if still held) becomes this
        instance's for as long as it lives. The key fingerprint, or None if there is no such hold."""
        now = time.time() if now is None else now
        if not await self._execute(self._sql(
                "UPDATE model_slots SET instance = ?, expires_at = NULL WHERE provider = ? AND call_id = ? "
                f"AND {self._SLOT_HELD}"), (instance, provider, call_id, now, now)):
            return None
        rows = await self._fetch(self._sql("SELECT key_fp FROM model_slots WHERE provider = ? AND call_id = ?"),
                                 (provider, call_id))
        return rows[0]["key_fp"] if rows else None

    async def release_slot(self, provider: str, call_id: str) -> None:
        await self._execute(self._sql("DELETE FROM model_slots WHERE provider = ? AND call_id = ?"), (provider, call_id))

    async def purge(self, before: float) -> list[str]:
        """Delete calls that ended before `before` with their events; returns their recording paths."""
        rows = await self._fetch(self._sql("SELECT call_id, recording FROM calls WHERE ended_at IS NOT NULL "
                                           "AND ended_at < ?"), (before,))
        await self._execute(self._sql("DELETE FROM call_events WHERE call_id IN "
                                      "(SELECT call_id FROM calls WHERE ended_at IS NOT NULL AND ended_at < ?)"),
                            (before,))
        await self._execute(self._sql("DELETE FROM calls WHERE ended_at IS NOT NULL AND ended_at < ?"), (before,))
        return [r["recording"] for r in rows if r["recording"]]

    # ------------------------------------------------------------------ reads
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
        total = (await self._fetch(self._sql(f"SELECT COUNT(*) AS n FROM calls{where}"), tuple(args)))[0]["n"]
        rows = await self._fetch(self._sql(
            f"SELECT * FROM calls{where} ORDER BY COALESCE(started_at, webhook_at) DESC, call_id "
            f"LIMIT ? OFFSET ?"), (*args, q.limit, q.offset))
        return rows, int(total)

    async def get_call(self, call_id: str) -> dict | None:
        rows = await self._fetch(self._sql("SELECT * FROM calls WHERE call_id = ?"), (call_id,))
        if not rows:
            return None
        call = rows[0]
        events = await self._fetch(self._sql("SELECT seq, t, kind, text, data FROM call_events "
                                             "WHERE call_id = ? ORDER BY seq"), (call_id,))
        call["events"] = [{"seq": e["seq"], "t": e["t"], "kind": e["kind"], **json.loads(e["data"])}
                          for e in events]
        return call

    async def bot_latencies(self, since: float | None = None) -> list[dict]:
        """Per ended call: bot, duration, end reason and first-audio latency, for the per-bot summary."""
        where, args = ("WHERE ended_at IS NOT NULL AND started_at >= ?", (since,)) if since is not None \
            else ("WHERE ended_at IS NOT NULL", ())
        return await self._fetch(self._sql(
            f"SELECT bot, duration_s, end_reason, started_at, first_audio_at FROM calls {where}"), args)

    async def activity_since(self, since: float) -> tuple[list[dict], list[dict]]:
        """For the per-hour trend: the calls started since then (bot, started_at) and their turn
        latencies (bot, when, ms). The caller bounds `since` (a window of hours, not all history)."""
        calls = await self._fetch(self._sql("SELECT bot, started_at FROM calls WHERE started_at >= ?"), (since,))
        events = await self._fetch(self._sql(
            "SELECT c.bot, c.started_at, e.t, e.data FROM calls c JOIN call_events e ON e.call_id = c.call_id "
            "WHERE c.started_at >= ? AND e.kind = 'latency'"), (since,))
        latencies = []
        for e in events:
            ms = json.loads(e["data"]).get("ms")
            if isinstance(ms, (int, float)):
                latencies.append({"bot": e["bot"], "at": e["started_at"] + e["t"], "ms": ms})
        return calls, latencies
