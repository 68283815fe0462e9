"""The call-log store: one async interface, SQLite (default) and PostgreSQL behind it.

`CallStore` is the one object the gateway holds: the engine (engine.py: connection, migrations,
the write queue, notifications) with each concern built on it in a module of its own, using only
the engine's public methods and keeping its own state:

- calls.py    calls and their timeline events (written as the call goes), one call read back
- queries.py  the history and its filters, per-bot figures and trends, retention of records
- leases.py   instance leases (crash sweeps) and model session slots
- outbox.py   the call-webhook outbox

sqlite.py and postgres.py implement the engine's hooks; instances.py (live calls elsewhere,
commands for them) is built on the same public methods.
"""

from __future__ import annotations

from .calls import CallRecords
from .engine import MAX_BATCH, MAX_PENDING_WRITES, Engine, StoreError
from .leases import HEARTBEATS_PER_LEASE, InstanceLeases
from .outbox import WebhookOutbox
from .queries import CallQueries, CallQuery
from .schema import CALL_FIELDS, END_REASONS, MIGRATIONS, SCHEMA_VERSION


class CallStore(CallRecords, CallQueries, InstanceLeases, WebhookOutbox, Engine):
    """Every concern over one engine; sqlite.SqliteStore and postgres.PostgresStore are its two engines."""


__all__ = ["CALL_FIELDS", "END_REASONS", "HEARTBEATS_PER_LEASE", "MAX_BATCH", "MAX_PENDING_WRITES", "MIGRATIONS",
           "SCHEMA_VERSION", "CallQuery", "CallStore", "Engine", "StoreError"]
