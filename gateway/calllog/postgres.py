"""PostgreSQL call-log store, for several gateway instances sharing one database.

Same schema and queries as SQLite (store.py writes SQL both accept; `?` placeholders become
`$1, $2, …` here). asyncpg is natively async, so there is no thread: a small pool serves the
writer task and the API's reads. Migrations run in a transaction under an advisory lock, so two
instances starting at once do not both apply them.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

from .store import CallStore, StoreError

_MIGRATION_LOCK = 0x6761_7465  # any constant shared by every gateway instance


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
