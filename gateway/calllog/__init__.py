"""Call logs for operators: durable per-call records written while the call runs.

`open_store(url)` picks the engine from the URL: `sqlite:///relative/or/absolute.db` (default,
embedded) or `postgresql://user:pass@host/db` (several gateway instances sharing one database).
`CallRecorder` is what a call writes through.
"""

from __future__ import annotations

from pathlib import Path

from .recorder import CallRecorder, NullRecorder
from .store import END_REASONS, CallQuery, CallStore, StoreError


def open_store(url: str, base_dir: str | Path = ".") -> CallStore:
    """A store for `url` (not started yet). Relative SQLite paths are relative to `base_dir`."""
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore
        path = Path(url[len("sqlite:///"):])
        return SqliteStore(path if path.is_absolute() else Path(base_dir) / path)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore
        return PostgresStore(url)
    raise ValueError(f"unsupported call-log URL {url.split(':')[0]!r}: use sqlite:///PATH or postgresql://…")


__all__ = ["CallQuery", "CallRecorder", "CallStore", "END_REASONS", "NullRecorder", "StoreError", "open_store"]
