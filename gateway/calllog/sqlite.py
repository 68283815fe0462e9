"""SQLite call-log store: one file (default `data/calls.db`), WAL, one worker thread.

sqlite3 is blocking, so every statement runs on a single dedicated thread (never on the event
loop); one thread also means statements are naturally serialised, which SQLite wants anyway.
WAL lets the CLI or a second reader look at the file while the gateway writes; each write is its
own committed transaction, so a killed process keeps everything written before it died.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .store import CallStore, StoreError


class SqliteStore(CallStore):
    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calllog-sqlite")

    def __repr__(self) -> str:
        return f"sqlite:{self.path}"

    async def start(self) -> None:
        """As every store's, with one clean error for a path that cannot be a database (a
        directory, another kind of file, a place this user cannot write) instead of a traceback."""
        try:
            await super().start()
        except (sqlite3.Error, OSError) as e:
            await self._close_db()
            why = getattr(e, "strerror", None) or str(e)
            if self.path.is_dir():
                why = "it is a directory"
            raise StoreError(f"cannot open the call-log database {self.path}: {why} "
                             "(storage.url / GATEWAY_DATABASE_URL)") from None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _connect(self) -> None:
        def open_db() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            db.row_factory = sqlite3.Row
            _journal_mode_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
            db.execute("PRAGMA busy_timeout=10000")
            return db
        self._db = await self._run(open_db)

    async def _close_db(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await self._run(db.close)
        self._pool.shutdown(wait=False)

    async def _execute(self, sql: str, args: tuple = ()) -> int:
        def run() -> int:
            assert self._db is not None
            return self._db.execute(sql, args).rowcount
        return await self._run(run)

    async def _fetch(self, sql: str, args: tuple = ()) -> list[dict]:
        def run() -> list[dict]:
            assert self._db is not None
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]
        return await self._run(run)

    async def _execute_batch(self, statements: list[tuple[str, tuple]]) -> None:
        def run() -> None:
            assert self._db is not None
            self._db.execute("BEGIN")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        await self._run(run)

    async def _migrate_to(self, version: int, statements: list[str]) -> bool:
        def run() -> bool:
            assert self._db is not None
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                    self._db.execute("COMMIT")
                    return False  # another process (a worker starting at the same moment) applied it first
                for stmt in statements:
                    self._db.execute(stmt)
                self._db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                                 (version, time.time()))
                self._db.execute("COMMIT")
                return True
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return await self._run(run)


def _journal_mode_wal(db: sqlite3.Connection, wait_seconds: float = 10.0) -> None:
    """Switch the database to WAL, waiting out another process doing the same. SQLite answers
    "database is locked" at once here instead of waiting its busy timeout, and a worker of
    `serve --workers 2` that lost this race on a new database stopped the whole gateway (1 start
    in 8; two processes opening one new file at the same instant: 21 of 60 opens failed)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # (a thread of the store's executor: the event loop goes on)
