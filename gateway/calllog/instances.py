"""What gateway instances (and the workers of one) learn about each other through the shared
call-log database: which calls run elsewhere, and commands for them.

Every process holds an instance lease (store.hold_lease). A live call is a `calls` row that started,
has not ended, and whose instance's lease is alive. An operator who asks instance A to hang up a
call running on B gets a `call_commands` row addressed to B; B polls for its own commands (an
indexed query of open rows, twice a second) and acts on the call it owns. Polling rather than
PostgreSQL LISTEN/NOTIFY: the same code works on SQLite (workers on one machine), and half a second
is quick enough for an operator's click.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from .store import CallStore


async def live_calls(store: CallStore, now: float | None = None) -> list[dict]:
    """Calls in progress on any live instance (this one included), newest first."""
    now = time.time() if now is None else now
    return await store._fetch(store._sql(
        "SELECT * FROM calls WHERE ended_at IS NULL AND started_at IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM instance_leases l WHERE l.instance = calls.instance AND l.expires_at >= ?) "
        "ORDER BY started_at DESC LIMIT 500"), (now,))


async def open_call(store: CallStore, call_id: str, now: float | None = None) -> dict | None:
    """The call if it started and has not ended (whether its instance lives or not): its
    `instance` and `alive` (that instance's lease is current)."""
    now = time.time() if now is None else now
    rows = await store._fetch(store._sql(
        "SELECT call_id, instance, EXISTS (SELECT 1 FROM instance_leases l WHERE l.instance = calls.instance "
        "AND l.expires_at >= ?) AS alive FROM calls WHERE call_id = ? AND ended_at IS NULL AND started_at IS NOT NULL"),
        (now, call_id))
    return {**rows[0], "alive": bool(rows[0]["alive"])} if rows else None


async def send(store: CallStore, instance: str, call_id: str, command: str) -> str:
    """Ask `instance` to do `command` ("hang_up") to its call `call_id`; the command's id."""
    command_id = secrets.token_hex(8)
    await store._execute(store._sql(
        "INSERT INTO call_commands (id, instance, call_id, command, created_at) VALUES (?, ?, ?, ?, ?)"),
        (command_id, instance, call_id, command, time.time()))
    return command_id


async def await_taken(store: CallStore, command_id: str, seconds: float, poll: float = 0.1) -> bool:
    """True once the addressee took the command; after `seconds` without that the command is
    withdrawn (so it cannot be acted on after the sender said it failed) and the answer is False."""
    deadline = time.monotonic() + seconds
    while True:
        rows = await store._fetch(store._sql("SELECT taken_at FROM call_commands WHERE id = ?"), (command_id,))
        if rows and rows[0]["taken_at"] is not None:
            return True
        if time.monotonic() >= deadline:
            withdrawn = await store._execute(store._sql(
                "DELETE FROM call_commands WHERE id = ? AND taken_at IS NULL"), (command_id,))
            return not withdrawn  # taken in the last instant after all
        await asyncio.sleep(poll)


async def take(store: CallStore, instance: str) -> list[dict]:
    """This instance's new commands, marked taken (each is acted on once)."""
    rows = await store._fetch(store._sql(
        "SELECT id, call_id, command FROM call_commands WHERE instance = ? AND taken_at IS NULL ORDER BY created_at"),
        (instance,))
    for row in rows:
        await store._execute(store._sql("UPDATE call_commands SET taken_at = ? WHERE id = ? AND taken_at IS NULL"),
                             (time.time(), row["id"]))
    return rows


async def forget_old(store: CallStore, before: float) -> None:
    await store._execute(store._sql("DELETE FROM call_commands WHERE created_at < ?"), (before,))
