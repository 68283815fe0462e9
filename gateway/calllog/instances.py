"""What gateway instances (and the workers of one) learn about each other through the shared
call-log database: which calls run elsewhere, and commands for them.

Every process holds an instance lease (store.hold_lease). A live call is a `calls` row that started,
has not ended, and whose instance's lease is alive. An operator who asks instance A to hang up a
call running on B gets a `call_commands` row addressed to B, and on PostgreSQL a NOTIFY on
`COMMANDS_CHANNEL` naming B wakes B's command loop at once (operator_api.remote_commands): the hang-up
is carried out within milliseconds. B also polls for its own commands (an indexed query of open
rows): every half second on SQLite (workers on one machine: no notifications), and as a fallback
every few seconds on PostgreSQL, for a notification lost while B's listening connection was down.
The row, not the notification, is the command: a wake-up that finds nothing does nothing. A sends
only to a live B (`open_call`) and waits for B to take the row (`await_taken`); one B has not taken
in time is withdrawn, so A's "it failed" is never followed by a hang-up after all.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from .store import CallStore

COMMANDS_CHANNEL = "gateway_call_commands"  # NOTIFY payload: the instance that has new commands


async def live_calls(store: CallStore, now: float | None = None) -> list[dict]:
    """Calls in progress on any live instance (this one included), newest first."""
    now = time.time() if now is None else now
    return await store.fetch(
        "SELECT * FROM calls WHERE ended_at IS NULL AND started_at IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM instance_leases l WHERE l.instance = calls.instance AND l.expires_at >= ?) "
        "ORDER BY started_at DESC LIMIT 500", (now,))


async def open_call(store: CallStore, call_id: str, now: float | None = None) -> dict | None:
    """The call if it started and has not ended (whether its instance lives or not): its
    `instance` and `alive` (that instance's lease is current)."""
    now = time.time() if now is None else now
    rows = await store.fetch(
        "SELECT call_id, instance, EXISTS (SELECT 1 FROM instance_leases l WHERE l.instance = calls.instance "
        "AND l.expires_at >= ?) AS alive FROM calls WHERE call_id = ? AND ended_at IS NULL AND started_at IS NOT NULL",
        (now, call_id))
    return {**rows[0], "alive": bool(rows[0]["alive"])} if rows else None


async def send(store: CallStore, instance: str, call_id: str, command: str) -> str:
    """Ask `instance` to do `command` ("hang_up") to its call `call_id`; the command's id."""
    command_id = secrets.token_hex(8)
    await store.execute(
        "INSERT INTO call_commands (id, instance, call_id, command, created_at) VALUES (?, ?, ?, ?, ?)",
        (command_id, instance, call_id, command, time.time()))
    await store.notify(COMMANDS_CHANNEL, instance)  # after the commit: the row is there when B looks
    return command_id


async def await_taken(store: CallStore, command_id: str, seconds: float, poll: float = 0.1) -> bool:
    """True once the addressee took the command; after `seconds` without that the command is
    withdrawn (so it cannot be acted on after the sender said it failed) and the answer is False.
    Looks again after 5 ms, then twice as long each time up to `poll`: a notified owner takes
    the command within milliseconds, and the operator's answer should not wait a whole poll."""
    deadline = time.monotonic() + seconds
    wait = min(0.005, poll)
    while True:
        rows = await store.fetch("SELECT taken_at FROM call_commands WHERE id = ?", (command_id,))
        if rows and rows[0]["taken_at"] is not None:
            return True
        if time.monotonic() >= deadline:
            withdrawn = await store.execute("DELETE FROM call_commands WHERE id = ? AND taken_at IS NULL",
                                            (command_id,))
            return not withdrawn  # taken in the last instant after all
        await asyncio.sleep(wait)
        wait = min(wait * 2, poll)


async def take(store: CallStore, instance: str) -> list[dict]:
    """This instance's new commands, marked taken (each is acted on once)."""
    rows = await store.fetch(
        "SELECT id, call_id, command FROM call_commands WHERE instance = ? AND taken_at IS NULL ORDER BY created_at",
        (instance,))
    for row in rows:
        await store.execute("UPDATE call_commands SET taken_at = ? WHERE id = ? AND taken_at IS NULL",
                             (time.time(), row["id"]))
    return rows


async def forget_old(store: CallStore, before: float) -> None:
    await store.execute("DELETE FROM call_commands WHERE created_at < ?", (before,))
