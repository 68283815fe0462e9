"""Prometheus metrics at `GET /metrics` (prometheus-client's text format).

One registry per app (tests run several apps in one process; nothing goes to the global default
registry). Calls are counted where everything a call says about itself already goes, its Journal:
each call gets a `CallMetrics` observer (see call/journal.py). Nothing is counted per audio frame:
frame and protocol-error counts are read from the call's own counters when it ends
(`call_ended`). Live calls are counted as they start and end.

`serve --workers N` (gateway/workers.py): every worker is its own process with its own counters,
and the kernel hands each scrape to one of them. So the supervisor gives the workers one fresh
directory in `PROMETHEUS_MULTIPROC_DIR`, prometheus-client's multiprocess mode: each process
writes its values to memory-mapped files there, and whichever worker answers a scrape adds up
everyone's files (`MultiProcessCollector`). Counters of a worker that died stay in its files, so a
sum never goes backwards; live-call gauges are `livesum` (the supervisor removes a dead worker's
with `mark_process_dead`, as the library documents). One process (`serve`) keeps the plain
in-memory registry. The per-process figures of the call log (queue depth, writes dropped or
failed) and of recording uploads are copied into real metrics at each scrape and, under workers,
once a second by each worker.

Guarded by the operator token (Bearer, like /api/) unless `metrics.public: true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .operator_api import require_operator
from .recording_store import RECORDINGS, S3Recordings
from .web_state import CAPACITY, CONFIG, STORE

log = logging.getLogger("gateway")

FIRST_AUDIO_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
TURN_LATENCY_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
PROCESS_STATS_EVERY_SECONDS = 1.0  # under workers: how stale another worker's call-log figures may be


def multiprocess_dir() -> str | None:
    """The shared directory when this process is a worker of `serve --workers` (set by the
    supervisor before the worker started, so prometheus-client chose its file-backed values)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None


class GatewayMetrics:
    """The app's collectors. `call()` makes the observer one call's journal reports to."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.shared_dir = multiprocess_dir()
        self.calls_started = Counter("gateway_calls_started", "Calls whose media stream started.",
                                     ["bot", "network"], registry=r)
        self.calls_ended = Counter("gateway_calls_ended", "Calls that ended, by why.", ["bot", "end_reason"],
                                   registry=r)
        self.call_duration = Histogram("gateway_call_duration_seconds", "Call length, stream start to end.",
                                       ["bot"], buckets=DURATION_BUCKETS, registry=r)
        self.first_audio = Histogram("gateway_first_audio_seconds", "Stream start to the first bot audio sent "
                                     "to the phone (usually the greeting).", ["bot"], buckets=FIRST_AUDIO_BUCKETS,
                                     registry=r)
        self.turn_latency = Histogram("gateway_turn_latency_seconds", "What the caller lived through: their "
                                      "last voiced frame to the bot's reply playing at the phone (by its mark).",
                                      ["bot"], buckets=TURN_LATENCY_BUCKETS, registry=r)
        self.model_latency = Histogram("gateway_model_turn_latency_seconds", "The model's own figure: its "
                                       "speech_stopped to the reply's first audio sent to the phone.", ["bot"],
                                       buckets=TURN_LATENCY_BUCKETS, registry=r)
        self.barge_ins = Counter("gateway_barge_ins", "Times the caller (or a keypad shortcut) cut the bot off.",
                                 ["bot", "by"], registry=r)
        self.model_errors = Counter("gateway_model_errors", "Errors from the model: recoverable (the call goes "
                                    "on) or fatal (they end the call or its session).", ["provider", "kind"],
                                    registry=r)
        self.sessions_replaced = Counter("gateway_model_sessions_replaced", "Model sessions replaced mid-call: "
                                         "renewal (before the service's maximum age) or reconnect (after a drop).",
                                         ["provider", "kind"], registry=r)
        self.frames_dropped = Counter("gateway_playout_frames_dropped", "Bot audio frames dropped because the "
                                      "playout buffer was full.", ["bot"], registry=r)
        self.protocol_errors = Counter("gateway_phone_protocol_errors", "Frames from the phone network that "
                                       "broke its protocol (counted when the call ends).", ["network"], registry=r)
        self.api_requests = Counter("gateway_operator_api_requests", "Operator API requests, by route and status.",
                                    ["route", "method", "status"], registry=r)
        self.webhook_deliveries = Counter("gateway_webhook_deliveries", "Call webhook delivery attempts, by result "
                                          "(delivered, failed: will retry, abandoned: gave up).", ["event", "result"],
                                          registry=r)
        self.calls_live = Gauge("gateway_calls_live", "Calls in progress (every worker of this server).",
                                ["bot", "network"], multiprocess_mode="livesum", registry=r)
        self.calllog_queue = Gauge("gateway_calllog_queue_depth", "Call-log writes waiting for the database.",
                                   multiprocess_mode="livesum", registry=r)
        self.calllog_dropped = Counter("gateway_calllog_writes_dropped", "Call-log writes dropped: the write queue "
                                       "was full (database down or too slow).", registry=r)
        self.calllog_failed = Counter("gateway_calllog_writes_failed", "Call-log writes the database refused.",
                                      registry=r)
        self.recording_uploads = Counter("gateway_recording_uploads", "Recording uploads to the bucket "
                                         "(recording.url): stored, or failed (the file stays on disk, retried).",
                                         ["result"], registry=r)
        self.recordings_waiting = Gauge("gateway_recordings_waiting", "Finished recordings on disk waiting for "
                                        "their upload to the bucket.", multiprocess_mode="livemax", registry=r)
        self._seen: dict[str, int] = {}  # per-process totals already added to the counters

    def call(self) -> "CallMetrics":
        return CallMetrics(self)

    slots: list[dict] = []  # model session slots per provider key, refreshed at each scrape

    @contextlib.contextmanager
    def live(self, bot: str, network: str) -> Iterator[None]:
        """Counts one call in `gateway_calls_live` while the block runs."""
        gauge = self.calls_live.labels(bot, network)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def _add_up(self, counter: Any, name: str, total: int) -> None:
        """Add what a plain per-process total (`total`) grew by since the last copy."""
        if total > self._seen.get(name, 0):
            counter.inc(total - self._seen.get(name, 0))
            self._seen[name] = total

    def copy_process_stats(self, app: web.Application) -> None:
        """This process's own figures (plain ints of the call-log store and the recordings
        store) into the metrics."""
        store = app.get(STORE)
        if store is not None:
            self.calllog_queue.set(store.pending)
            self._add_up(self.calllog_dropped, "calllog_dropped", store.dropped)
            self._add_up(self.calllog_failed, "calllog_failed", store.failed)
        recordings = app.get(RECORDINGS)
        if isinstance(recordings, S3Recordings):
            self._add_up(self.recording_uploads.labels("stored"), "uploaded", recordings.uploaded)
            self._add_up(self.recording_uploads.labels("failed"), "upload_failures", recordings.upload_failures)
            try:
                self.recordings_waiting.set(len(recordings.pending()))
            except OSError:
                pass

    def render(self, app: web.Application) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # every worker's files, read now, plus what is database-wide
        MultiProcessCollector(registry, path=self.shared_dir)
        registry.register(_SlotsCollector(self.slots))
        return generate_latest(registry)


class CallMetrics:
    """One call's observer (see call/journal.py `CallObserver`)."""

    def __init__(self, metrics: GatewayMetrics):
        self.m = metrics
        self.bot = "?"
        self.provider = "?"
        self.network = "?"
        self.started_at: float | None = None

    def updated(self, fields: dict[str, Any], summary: Any) -> None:
        if "started_at" in fields:  # the call's first update: who it is
            self.bot = fields.get("bot") or summary.bot
            self.provider = fields.get("provider") or "?"
            self.network = fields.get("network") or "?"
            self.started_at = fields["started_at"]
            self.m.calls_started.labels(self.bot, self.network).inc()
        if "first_audio_at" in fields and self.started_at is not None:
            self.m.first_audio.labels(self.bot).observe(max(0.0, fields["first_audio_at"] - self.started_at))

    def event(self, kind: str, fields: dict[str, Any], summary: Any) -> None:
        m = self.m
        if kind == "latency":  # the summary has it unrounded
            latency_ms = summary.turn_latencies_ms[-1] if summary.turn_latencies_ms else fields["ms"]
            m.turn_latency.labels(self.bot).observe(latency_ms / 1000)
            if fields.get("model_ms") is not None:
                model_ms = summary.model_latencies_ms[-1] if summary.model_latencies_ms else fields["model_ms"]
                m.model_latency.labels(self.bot).observe(model_ms / 1000)
        elif kind == "barge_in":
            m.barge_ins.labels(self.bot, fields.get("by") or "caller").inc()
        elif kind == "model_error":
            m.model_errors.labels(self.provider, "recoverable").inc()
        elif kind == "error" and fields.get("code") not in ("internal_error", "too_many_errors"):
            m.model_errors.labels(self.provider, "fatal").inc()  # model_connect_failed or a fatal model error
        elif kind == "session_renewed":
            why = fields.get("why") or ""
            m.sessions_replaced.labels(self.provider, "renewal" if why == "session_age" else "reconnect").inc()
        elif kind == "call_ended":
            m.calls_ended.labels(self.bot, fields.get("reason") or "?").inc()
            m.call_duration.labels(self.bot).observe(fields.get("duration_s") or 0.0)
            if fields.get("frames_dropped"):
                m.frames_dropped.labels(self.bot).inc(fields["frames_dropped"])
            if fields.get("protocol_errors"):
                m.protocol_errors.labels(self.network).inc(fields["protocol_errors"])


class _SlotsCollector(Collector):
    """Model session slots, as the call log says at this scrape (the same for every worker)."""

    def __init__(self, slots: list[dict]):
        self.slots = slots

    def collect(self):
        used = GaugeMetricFamily("gateway_model_slots_used", "Model sessions held per provider and key "
                                 "fingerprint, across every instance on the call log.", labels=["provider", "key"])
        limit = GaugeMetricFamily("gateway_model_slots_limit", "Sessions a key allows (providers.<name>.max_sessions; "
                                  "0: no cap).", labels=["provider", "key"])
        for slot in self.slots:
            used.add_metric([slot["provider"], slot["key"]], slot["used"])
            limit.add_metric([slot["provider"], slot["key"]], slot["limit"])
        yield used
        yield limit


class _AppSlots(_SlotsCollector):
    """One process: the registry keeps this collector, which reads the latest slots at each scrape."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    def collect(self):
        self.slots = self.metrics.slots
        yield from super().collect()


METRICS = web.AppKey("metrics", GatewayMetrics)


@web.middleware
async def _count_api_requests(request: web.Request, handler: Callable) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
    counter = request.app[METRICS].api_requests
    try:
        response = await handler(request)
    except web.HTTPException as e:
        counter.labels(route, request.method, str(e.status)).inc()
        raise
    except BaseException:
        counter.labels(route, request.method, "500").inc()
        raise
    counter.labels(route, request.method, str(response.status)).inc()
    return response


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.copy_process_stats(request.app)
    if CAPACITY in request.app:  # read from the call log (all instances) before the synchronous render
        try:
            metrics.slots = await request.app[CAPACITY].report()
        except Exception as e:  # noqa: BLE001 - a database hiccup must not cost the other metrics
            log.warning("event=metrics_capacity_failed error=%s", f"{type(e).__name__}: {e}"[:200])
    return web.Response(body=metrics.render(request.app), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _share_process_stats(app: web.Application):
    """Cleanup context, under workers only: this worker's call-log and recording figures into the
    shared files once a second, so that a scrape answered by another worker sees them."""
    metrics = app[METRICS]
    if metrics.shared_dir is None:
        yield
        return

    async def loop() -> None:
        while True:
            await asyncio.sleep(PROCESS_STATS_EVERY_SECONDS)
            metrics.copy_process_stats(app)

    task = asyncio.create_task(loop(), name="metrics-share")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def add_metrics(app: web.Application) -> None:
    """The registry, `/metrics` (guarded unless metrics.public) and the API request counter."""
    metrics = GatewayMetrics()
    metrics.registry.register(_AppSlots(metrics))
    app[METRICS] = metrics
    app.cleanup_ctx.append(_share_process_stats)
    app.middlewares.append(_count_api_requests)
    public = app[CONFIG].metrics.public
    app.router.add_get("/metrics", metrics_endpoint if public else require_operator(metrics_endpoint))
