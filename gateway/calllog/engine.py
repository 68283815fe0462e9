"""The call log's engine: one database connection (SQLite or PostgreSQL behind the same hooks),
its migrations, the queue every write goes through, and notifications. The concerns built on it
(calls.py, queries.py, leases.py, outbox.py) use only its public methods: `sql`, `execute`,
`fetch`, `enqueue`, `flush`, `notify`, `listen`.

Writes never block a call: `enqueue()` puts the operation on a bounded, ordered queue that one
writer task drains, committing whatever has queued up meanwhile as one transaction (one thread
hop for SQLite, one round trip for PostgreSQL), so a crash (even SIGKILL) loses at most the
writes still queued, i.e. the last few milliseconds. Reads are awaited directly. A write that
fails is logged and skipped; a full queue (the database is down or far too slow) drops the write
with a log line and counts it in `dropped`, rather than growing memory or stalling calls. A queued
operation `op` is built by the store's `<op>_sql(*args)` method (e.g. `upsert_call_sql`).

Times are UNIX seconds (floats) in the database, which both engines compare and index the same
way; the API renders them as ISO 8601. Event offsets `t` are seconds from the call's start.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import Callable

from .schema import MIGRATIONS, MIGRATIONS_TABLE, SCHEMA_VERSION

log = logging.getLogger("gateway.calllog")

MAX_PENDING_WRITES = 10000
MAX_BATCH = 500  # writes committed together at most


class StoreError(RuntimeError):
    """The call log cannot be used (unreachable, or a schema from a newer gateway); the message says which."""


class Engine(abc.ABC):
    """Subclasses (sqlite.py, postgres.py) implement the hooks: `_connect`, `_close_db`, `_execute`,
    `_fetch`, `_execute_batch`, `_migrate_to`, and `_sql` where placeholders differ
    (`_create_migrations_table` where creating that table needs a lock)."""

    placeholder = "?"
    listening = False  # notifications arrive (PostgreSQL LISTEN); SQLite has none: readers poll

    def __init__(self) -> None:
        self._queue: asyncio.Queue | None = None
        self._writer: asyncio.Task | None = None
        self.dropped = 0
        self.failed = 0

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

    # ------------------------------------------------------------------ what the concerns use
    def sql(self, sql: str) -> str:
        """`sql` written with `?` placeholders, in this engine's dialect."""
        return self._sql(sql)

    async def execute(self, sql: str, args: tuple = ()) -> int:
        """One statement (`?` placeholders) in its own transaction, now; rows affected."""
        return await self._execute(self._sql(sql), args)

    async def fetch(self, sql: str, args: tuple = ()) -> list[dict]:
        """Rows of one query (`?` placeholders), now."""
        return await self._fetch(self._sql(sql), args)

    async def notify(self, channel: str, payload: str) -> None:
        """Wake the listeners of `channel` on every instance (PostgreSQL NOTIFY); a no-op elsewhere."""

    async def listen(self, channel: str, callback: Callable[[str | None], None]) -> bool:
        """Subscribe `callback(payload)` to `channel`; False where the engine has no notifications."""
        return False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._connect()
        await self.migrate()
        self._queue = asyncio.Queue(maxsize=MAX_PENDING_WRITES)
        self._writer = asyncio.create_task(self._write_loop(), name="calllog-writer")

    async def close(self, timeout: float = 5.0) -> None:
        """Commit what is queued (for up to `timeout`), let the concerns finish (`before_close`),
        close the database."""
        if self._writer is not None:
            try:
                await asyncio.wait_for(self.flush(), timeout)
            except asyncio.TimeoutError:
                log.error("event=calllog_close_unflushed pending=%d", self._queue.qsize() if self._queue else 0)
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self.before_close()
        await self._close_db()

    async def before_close(self) -> None:
        """After the last writes were committed, before the database closes (leases.py releases
        this process's lease here)."""

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
        """Queue a write (`upsert_call`, `add_event`, `add_webhook`); never blocks, never raises."""
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
                await self._execute_batch([getattr(self, f"{op}_sql")(*args) for op, args in batch])
            except Exception:  # noqa: BLE001 - find the bad write; the others must still land
                for op, args in batch:
                    try:
                        await self._execute(*getattr(self, f"{op}_sql")(*args))
                    except Exception as e:  # noqa: BLE001
                        self.failed += 1
                        log.error("event=calllog_write_failed op=%s error=%s", op, f"{type(e).__name__}: {e}"[:300])
            finally:
                for _ in batch:
                    self._queue.task_done()
