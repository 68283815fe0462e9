"""Model account capacity: each provider's key pool, `max_sessions` per key, and the slots calls hold.

A call takes one slot at the webhook, before it is answered (so a full account means a busy answer
or another bot, never a model error after ringing through); the slot is held for
`limits.stream_wait_seconds` in the call log's `model_slots` table, where every process sharing the
database sees it. When the stream starts, whichever instance gets it claims that slot for as long
as it lives (its lease); the call gives it back when it ends. Session renewals and reconnects are
the same call on the same key, so they never need a second slot. A call whose stream found no hold
(it came too late, or without a webhook) takes a slot then, or is turned away.

Keys are named by `fingerprint` (a short hash), never in full. With `max_sessions: 0` (no cap)
nothing is written: the key with the fewest of this process's calls is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field

from .calllog import CallStore, StoreError
from .config import Config, Persona
from .providers import SPECS

log = logging.getLogger("gateway")


def fingerprint(key: str) -> str:
    """What logs, records and the dashboard show of a key: 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def store_unreachable(e: BaseException) -> bool:
    """The call log cannot be reached or is overloaded (no connection, a timeout, SQLite busy), as
    opposed to a query that failed on its input or a bug: only then may calls go uncapped."""
    if isinstance(e, (OSError, asyncio.TimeoutError, StoreError)):
        return True
    if isinstance(e, sqlite3.OperationalError):
        return True  # locked, busy, disk I/O: the database, not the query
    kind = type(e)
    return kind.__module__.startswith("asyncpg") and any(
        c.__name__ in ("PostgresConnectionError", "InterfaceError", "ConnectionDoesNotExistError",
                       "TooManyConnectionsError", "CannotConnectNowError", "QueryCanceledError",
                       "AdminShutdownError", "CrashShutdownError")
        for c in kind.__mro__)


@dataclass(frozen=True)
class Grant:
    """A call's right to a model session: the key to use (empty for providers without keys)."""
    provider: str
    call_id: str
    key: str = field(default="", repr=False)
    held: str = ""  # "slot": a row in the store (max_sessions > 0); "local": counted in this process

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key) if self.key else ""


class Capacity:
    """One per process: takes, claims and gives back slots in the shared call log."""

    def __init__(self, config: Config, store: CallStore, instance: str):
        self.config = config
        self.store = store
        self.instance = instance
        self._local: Counter[tuple[str, str]] = Counter()  # (provider, fp) -> this process's uncapped calls

    def pool(self, provider: str) -> tuple[list[str], int]:
        """The provider's keys and max_sessions per key (0: no cap)."""
        spec, settings = SPECS.get(provider), self.config.provider_settings(provider)
        if spec is None or settings is None:
            return [], 0
        return spec.keys(settings), getattr(settings, "max_sessions", 0)

    async def reserve(self, persona: Persona, call_id: str) -> Grant | None:
        """At the webhook: a slot held until the stream starts; None when every key is full."""
        return await self._take(persona.provider, call_id,
                                time.time() + self.config.limits.stream_wait_seconds)

    async def claim(self, persona: Persona, call_id: str) -> Grant | None:
        """At stream start: the webhook's hold, now this instance's for the call; or a fresh slot
        if there is none (None when every key is full)."""
        keys, limit = self.pool(persona.provider)
        if keys and limit:
            try:
                fp = await self.store.claim_slot(persona.provider, call_id, self.instance)
                key = next((k for k in keys if fingerprint(k) == fp), None)
                if key is not None:
                    return Grant(persona.provider, call_id, key, held="slot")
                if fp is not None:  # held under a key this config no longer has
                    await self.store.release_slot(persona.provider, call_id)
            except Exception as e:  # noqa: BLE001 - _take tries again, and serves uncapped only if the store is down
                log.error("event=capacity_check_failed provider=%s error=%s", persona.provider,
                          f"{type(e).__name__}: {e}"[:300])
        return await self._take(persona.provider, call_id, None)

    async def release(self, grant: Grant | None) -> None:
        """The call is over: its slot is free for the next."""
        if grant is None:
            return
        if grant.held == "local":
            self._local[(grant.provider, grant.fingerprint)] -= 1
        elif grant.held == "slot":
            try:
                await self.store.release_slot(grant.provider, grant.call_id)
            except Exception as e:  # noqa: BLE001 - then the slot is free when this instance's lease lapses
                log.error("event=capacity_release_failed provider=%s key=%s error=%s", grant.provider,
                          grant.fingerprint, f"{type(e).__name__}: {e}"[:300])

    async def _take(self, provider: str, call_id: str, hold_until: float | None) -> Grant | None:
        keys, limit = self.pool(provider)
        if not keys:
            return Grant(provider, call_id)  # a provider without keys (the echo bot)
        if limit:
            try:
                return await self._take_slot(provider, keys, limit, call_id, hold_until)
            except Exception as e:  # noqa: BLE001 - classified right below
                if not store_unreachable(e):  # a query that failed on what it was given: never "no cap"
                    log.error("event=capacity_check_failed provider=%s error=%s note=\"refusing the call\"",
                              provider, f"{type(e).__name__}: {e}"[:300])
                    return None
                # The call log is down: serve uncapped rather than refuse every call.
                log.error("event=capacity_check_failed provider=%s error=%s note=\"serving without the "
                          "max_sessions cap\"", provider, f"{type(e).__name__}: {e}"[:300])
        # Counted from the stream's start (a webhook's pick is only a forecast).
        key = min(keys, key=lambda k: self._local[(provider, fingerprint(k))])
        if hold_until is None:
            self._local[(provider, fingerprint(key))] += 1
        return Grant(provider, call_id, key, held="local" if hold_until is None else "")

    async def _take_slot(self, provider: str, keys: list[str], limit: int, call_id: str,
                         hold_until: float | None) -> Grant | None:
        held: dict[str, set[int]] = {}
        for row in await self.store.slots_held():
            if row["provider"] == provider:
                held.setdefault(row["key_fp"], set()).add(row["slot"])
        # The least used key first (pool order among equals): load spreads over the pool.
        for key in sorted(keys, key=lambda k: len(held.get(fingerprint(k), ()))):
            taken = held.get(fingerprint(key), set())
            for slot in (n for n in range(limit) if n not in taken):
                if await self.store.take_slot(provider, fingerprint(key), slot, call_id, self.instance, hold_until):
                    return Grant(provider, call_id, key, held="slot")
        return None  # full (or every free slot went to someone faster meanwhile)

    async def report(self) -> list[dict]:
        """Slots used and the limit per provider and key fingerprint (for /api/capacity and /metrics):
        `[{provider, key, used, limit}]`; limit 0 = no cap (used: this process's calls only)."""
        held = Counter((r["provider"], r["key_fp"]) for r in await self.store.slots_held())
        out = []
        for provider in SPECS:
            keys, limit = self.pool(provider)
            for key in keys:
                fp = fingerprint(key)
                out.append({"provider": provider, "key": fp, "limit": limit,
                            "used": held[(provider, fp)] if limit else self._local[(provider, fp)]})
        return out

    def describe(self, provider: str, report: list[dict]) -> str:
        """`glm keys 1a2b3c4d 5/5, 9f8e7d6c 5/5`: how full a provider is, for records and logs."""
        keys = [f"{r['key']} {r['used']}/{r['limit']}" for r in report if r["provider"] == provider]
        return f"{provider} keys {', '.join(keys)}" if keys else f"{provider} has no key"
