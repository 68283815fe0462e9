"""Call webhooks: `call.started` and `call.ended` as signed JSON POSTs to the configured receivers.

A call never waits for a receiver: its journal's observer (`CallWebhooks`) builds the event and
puts one row per receiver on the call log's write queue (table `webhook_deliveries`), and that is
all. One delivery task per app drains the table: it claims due rows for a short lease (two
instances sharing a database never deliver the same row together), POSTs each through the app's
shared client session, and records the outcome. A failed attempt (no answer, a timeout, any status
but 2xx) is retried with exponential backoff (the receiver's `first_retry_seconds`, doubling up to
its `max_retry_seconds`: 2 s to hourly by default), for up to `MAX_AGE_SECONDS`; rows survive a
restart or a receiver outage because they are in the database, not in memory, and a starting
instance delivers what is due at once.

Delivery is at least once: a receiver may see an event twice (say, the answer was lost); the
`id` in the body is the same each time, so receivers can drop repeats.

Signature: `X-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`
under the receiver's secret, made at each attempt (receivers should refuse old `t`).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import json
import logging
import random
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from .call import entry_json
from .calllog import CallStore
from .calllog.views import iso
from .config import Config, WebhookConfig
from .metrics import METRICS
from .web_state import CONFIG, HTTP, INSTANCE, STORE

log = logging.getLogger("gateway.webhooks")

SIGNATURE_HEADER = "X-Gateway-Signature"
TIMEOUT_SECONDS = 10.0  # per attempt
LEASE_SECONDS = 3 * TIMEOUT_SECONDS  # a claimed batch is delivered concurrently, well within this
BATCH = 20
POLL_SECONDS = 1.0  # how often the table is looked at (rows other instances wrote, retries due)
MAX_AGE_SECONDS = 3 * 86400  # undelivered after this long: given up (logged, counted)
KEEP_DONE_SECONDS = 7 * 86400  # delivered/abandoned rows are kept this long (for inspection)


def sign(secret: str, body: bytes, t: int) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def delivery_key(event: str, call_id: str, url: str) -> str:
    """A delivery's id: the same for the same event of the same call to the same receiver, so it is
    queued once (the table's key) whoever queues it: the call itself or, after a crash, the sweep
    of another instance. A call's record is closed once, so it gets one `call.ended`."""
    if not call_id:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{event}\n{call_id}\n{url}".encode()).hexdigest()[:32]


def retry_delay(hook: WebhookConfig, attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones (1, 2, ...): the receiver's first
    retry delay, doubling up to its maximum, with a little jitter."""
    base = min(hook.max_retry_seconds, hook.first_retry_seconds * 2 ** min(attempts - 1, 40))
    return base * random.uniform(1.0, 1.1)


class Webhooks:
    """The app's receivers, the enqueue side used by calls, and the delivery task."""

    def __init__(self, config: Config, store: CallStore, http: aiohttp.ClientSession, instance: str,
                 counter=None):
        """`counter`: a prometheus Counter labelled (event, result), or None."""
        self.hooks: list[WebhookConfig] = list(config.webhooks)
        self.public_url = config.server.public_url.rstrip("/")
        self.store = store
        self.http = http
        self.instance = instance
        self.counter = counter
        self._kick = asyncio.Event()
        self._kick.set()  # what is due (queued before a restart, by another instance) goes at once
        self._retries: list[float] = []  # a heap: when the retries this instance scheduled are due

    def call(self) -> "CallWebhooks":
        return CallWebhooks(self)

    def enqueue(self, event: str, call_id: str, payload: dict[str, Any]) -> None:
        """Queue `event` for every receiver that wants it. Never blocks, never raises."""
        now = time.time()
        for hook in self.hooks:
            if event not in hook.events:
                continue
            delivery_id = delivery_key(event, call_id, hook.url)
            body = json.dumps({"id": delivery_id, "type": event, "created_at": iso(now), "call_id": call_id,
                               **payload}, ensure_ascii=False)
            self.store.enqueue("add_webhook", delivery_id, hook.url, event, call_id, body, now)
        self._kick.set()

    # ------------------------------------------------------------------ delivery
    async def run(self) -> None:
        """Deliver until cancelled: right after a call enqueued something, when a retry this
        instance scheduled is due, else every POLL_SECONDS (what other instances queued)."""
        last_purge = 0.0
        while True:
            wait = POLL_SECONDS if not self._retries else max(0.0, min(POLL_SECONDS, self._retries[0] - time.time()))
            try:
                await asyncio.wait_for(self._kick.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()
            while self._retries and self._retries[0] <= time.time():
                heapq.heappop(self._retries)
            try:
                await self.crashed_calls_ended()
                await self.store.flush()  # what calls enqueued is in the table now
                while await self.deliver_due():
                    pass
                if time.time() - last_purge > 3600:
                    last_purge = time.time()
                    await self.store.purge_webhooks(last_purge - KEEP_DONE_SECONDS)
            except Exception as e:  # noqa: BLE001 - the database may be down for a while; keep trying
                log.error("event=webhook_queue_failed error=%s", f"{type(e).__name__}: {e}"[:300])

    async def crashed_calls_ended(self) -> None:
        """`call.ended` (end reason `crashed`) for each call the call log's sweep closed because its
        instance died: that instance can no longer send it. Built from the record, as the call
        would have (its transcript as far as it was written)."""
        while self.store.crashed_calls:
            call_id = self.store.crashed_calls[0]
            row = await self.store.get_call(call_id)
            self.store.crashed_calls.popleft()
            if row is not None:
                self.enqueue("call.ended", call_id, ended_from_record(row, self.public_url))

    async def deliver_due(self) -> int:
        """One claimed batch, delivered concurrently; how many rows it had."""
        claim = f"{self.instance}:{uuid.uuid4().hex[:8]}"
        rows = await self.store.claim_webhooks(claim, LEASE_SECONDS, BATCH)
        await asyncio.gather(*(self._attempt(row, claim) for row in rows))
        return len(rows)

    async def _attempt(self, row: dict, claim: str) -> None:
        hook = next((h for h in self.hooks if h.url == row["url"]), None)
        if hook is None:
            error = "receiver no longer configured"
        else:
            error = await self._post(hook, row["body"].encode())
        attempts = row["attempts"] + 1
        if error is None:
            result, next_at = "delivered", None
        elif hook is None or time.time() - row["created_at"] > MAX_AGE_SECONDS:
            result, next_at = "abandoned", None
        else:
            result, next_at = "failed", time.time() + retry_delay(hook, attempts)
            heapq.heappush(self._retries, next_at)
        level = logging.INFO if error is None else logging.ERROR if next_at is None else logging.WARNING
        log.log(level, "event=webhook_%s type=%s call=%s url=%s attempt=%d%s", result, row["event"], row["call_id"],
                _safe_url(row["url"]), attempts, f" error={error!r}" if error else "")
        if self.counter is not None:
            self.counter.labels(row["event"], result).inc()
        await self.store.webhook_done(row["id"], claim, delivered=error is None, error=error, next_at=next_at)

    async def _post(self, hook: WebhookConfig, body: bytes) -> str | None:
        """None when the receiver took it (2xx), else what went wrong."""
        headers = {"Content-Type": "application/json", "User-Agent": "voicebot-gateway",
                   SIGNATURE_HEADER: sign(hook.secret, body, int(time.time()))}
        try:
            async with self.http.post(hook.url, data=body, headers=headers, allow_redirects=False,
                                      timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as resp:
                await resp.read()
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except asyncio.TimeoutError:
            return f"no answer within {TIMEOUT_SECONDS:g} s"
        except aiohttp.ClientError as e:
            return f"{type(e).__name__}: {e}"[:300]


def _safe_url(url: str) -> str:
    """The receiver's address without a query string (which may carry a token)."""
    return url.split("?", 1)[0]


class CallWebhooks:
    """One call's observer (see call/journal.py): `call.started` when its stream starts, `call.ended`
    with the transcript once its record is complete."""

    def __init__(self, hooks: Webhooks):
        self.hooks = hooks
        self.fields: dict[str, Any] = {}

    def event(self, kind: str, fields: dict[str, Any], summary: Any) -> None:
        pass

    def updated(self, fields: dict[str, Any], summary: Any) -> None:
        self.fields.update(fields)
        if "started_at" in fields:
            self.hooks.enqueue("call.started", summary.call_id, self._common(summary))
        elif "end_reason" in fields:
            self.hooks.enqueue("call.ended", summary.call_id, self._ended(summary))

    def _common(self, summary: Any) -> dict[str, Any]:
        f = self.fields
        return {"network": f.get("network"), "direction": f.get("direction"), "bot": f.get("bot") or summary.bot,
                "from": f.get("from_number"), "to": f.get("to_number"), "started_at": iso(f.get("started_at"))}

    def _ended(self, summary: Any) -> dict[str, Any]:
        f = self.fields
        first = f.get("first_audio_at")
        recording = None
        if f.get("recording"):
            recording = f"{self.hooks.public_url}/api/calls/{summary.call_id}/recording"
        return {**self._common(summary), "ended_at": iso(f.get("ended_at")), "duration_s": f.get("duration_s"),
                "end_reason": f.get("end_reason"), "error": f.get("error"), "barge_ins": f.get("barge_ins", 0),
                "turns": f.get("turns", 0),
                "latencies": {"first_audio_ms": round((first - f["started_at"]) * 1000) if first else None,
                              "turn_ms": [round(ms) for ms in summary.turn_latencies_ms],
                              "model_turn_ms": [round(ms) for ms in summary.model_latencies_ms]},
                "recording_url": recording,
                "transcript": [entry_json(e) for e in summary.transcript]}


def ended_from_record(row: dict, public_url: str) -> dict[str, Any]:
    """`call.ended`'s fields from a call-log record (with its events), for a call no process ended."""
    started, first = row.get("started_at"), row.get("first_audio_at")
    transcript, turn_ms, model_ms = [], [], []
    for e in row.get("events", []):
        if e["kind"] == "caller":
            transcript.append({"role": "caller", "text": e.get("text", ""), "t": e["t"]})
        elif e["kind"] == "dtmf":
            transcript.append({"role": "dtmf", "text": e.get("digit", ""), "t": e["t"]})
        elif e["kind"] == "bot":
            transcript.append({"role": "bot", "text": e.get("text", ""), "heard": e.get("heard", ""),
                               "interrupted": bool(e.get("interrupted")), "t": e["t"]})
        elif e["kind"] == "latency":
            if isinstance(e.get("ms"), (int, float)):
                turn_ms.append(round(e["ms"]))
            if isinstance(e.get("model_ms"), (int, float)):
                model_ms.append(round(e["model_ms"]))
    return {"network": row.get("network"), "direction": row.get("direction"), "bot": row.get("bot"),
            "from": row.get("from_number"), "to": row.get("to_number"), "started_at": iso(started),
            "ended_at": iso(row.get("ended_at")), "duration_s": row.get("duration_s"),
            "end_reason": row.get("end_reason"), "error": row.get("error"), "barge_ins": row.get("barge_ins") or 0,
            "turns": row.get("turns") or 0,
            "latencies": {"first_audio_ms": round((first - started) * 1000) if first and started else None,
                          "turn_ms": turn_ms, "model_turn_ms": model_ms},
            "recording_url": f"{public_url}/api/calls/{row['call_id']}/recording" if row.get("recording") else None,
            "transcript": sorted(transcript, key=lambda line: line["t"])}


WEBHOOKS = web.AppKey("webhooks", Webhooks)


async def webhook_delivery(app: web.Application):
    """cleanup_ctx: the app's Webhooks and its delivery task (only when receivers are configured).
    Runs after the call log is open and stops before it closes; what calls enqueued meanwhile is
    flushed with the call log and delivered by the next instance to run."""
    config = app[CONFIG]
    if not config.webhooks:
        yield
        return
    counter = app[METRICS].webhook_deliveries if METRICS in app else None
    hooks = app[WEBHOOKS] = Webhooks(config, app[STORE], app[HTTP], app[INSTANCE], counter)
    task = asyncio.create_task(hooks.run(), name="webhook-delivery")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
