"""PostgreSQL call-log store, for several gateway instances sharing one database.

Same schema and queries as SQLite (store.py writes SQL both accept; `?` placeholders become
`$1, $2, …` here). asyncpg is natively async, so there is no thread: a small pool serves the
writer task and the API's reads. Migrations run in a transaction under an advisory lock, so two
instances starting at once do not both apply them.

LISTEN/NOTIFY: `listen()` keeps one connection of its own (outside the pool: a pooled connection
goes back after each query) subscribed to a channel, and reconnects after losing it. Instances use
it to wake the one that owns a call at once (calllog/instances.py); their poll stays as the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Callable
from urllib.parse import urlsplit

from .store import CallStore, StoreError

_MIGRATION_LOCK = 0x6761_7465  # any constant shared by every gateway instance
LISTEN_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)  # after the listening connection is lost or refused
log = logging.getLogger("gateway.calllog")


def _storable(value: object) -> object:
    """PostgreSQL text cannot hold NUL (SQLite can): a caller's number or words carrying one would
    lose the whole write. Such a character is stored as U+FFFD, the rest exactly as received."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


class PostgresStore(CallStore):
    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self._pool = None
        self._listeners: list[tuple[str, Callable[[str | None], None]]] = []
        self._listen_task: asyncio.Task | None = None
        self.listening = False  # the listening connection is up (notifications arrive)

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        return f"postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"  # never the password

    def _sql(self, sql: str) -> str:
        return _numbered(sql)

    async def _connect(self) -> None:
        import asyncpg
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4, command_timeout=30)
        except (OSError, asyncpg.PostgresError) as e:
            raise StoreError(f"cannot connect to the call-log database {self!r}: {type(e).__name__}") from None

    async def _close_db(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.gather(self._listen_task, return_exceptions=True)
            self._listen_task = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _execute(self, sql: str, args: tuple = ()) -> int:
        status = await self._pool.execute(sql, *args)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def _fetch(self, sql: str, args: tuple = ()) -> list[dict]:
        return [dict(r) for r in await self._pool.fetch(sql, *args)]

    async def _execute_batch(self, statements: list[tuple[str, tuple]]) -> None:
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                for sql, args in statements:
                    await conn.execute(sql, *map(_storable, args))

    async def _create_migrations_table(self, statement: str) -> None:
        """Under the migration lock: two instances creating it at once would otherwise collide
        (IF NOT EXISTS is not safe against a concurrent CREATE in PostgreSQL)."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(statement)

    async def _migrate_to(self, version: int, statements: list[str]) -> bool:
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                done = await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version)
                if done:
                    return False  # another instance applied it while we waited for the lock
                for stmt in statements:
                    await conn.execute(stmt)
                await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                                   version, time.time())
        return True

    async def notify(self, channel: str, payload: str) -> None:
        await self._pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def listen(self, channel: str, callback: Callable[[str | None], None]) -> bool:
        """Call `callback(payload)` for each NOTIFY on `channel`, and `callback(None)` whenever the
        listening connection (re)connects, since notifications sent while it was down are lost."""
        self._listeners.append((channel, callback))
        if self._listen_task is None:
            self._listen_task = asyncio.create_task(self._listen_loop(), name="calllog-listen")
        return True

    async def _listen_loop(self) -> None:
        import asyncpg
        failures = 0
        while True:
            lost = asyncio.Event()
            conn = None
            try:
                conn = await asyncpg.connect(self.url, timeout=10)
                conn.add_termination_listener(lambda _conn: lost.set())
                for channel, callback in self._listeners:
                    await conn.add_listener(channel, lambda _c, _pid, _ch, payload, cb=callback: cb(payload))
                self.listening, failures = True, 0
                for _, callback in self._listeners:
                    callback(None)
                await lost.wait()
                log.warning("event=calllog_listen_lost note=\"falling back to polling until reconnected\"")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the database may be down for a while; keep trying
                if failures == 0:
                    log.error("event=calllog_listen_failed error=%s", f"{type(e).__name__}: {e}"[:300])
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(LISTEN_RETRY_SECONDS[min(failures, len(LISTEN_RETRY_SECONDS) - 1)])
            failures += 1
