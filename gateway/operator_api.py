"""Operator API under /api/: call history, one call in full, its recording, live calls, hang-up.

Every route needs `Authorization: Bearer <operator.token>` (GATEWAY_OPERATOR_TOKEN). With no token
configured the API is closed (401 to everything), never open. JSON in and out; times are ISO 8601
UTC strings; errors are `{"error": "..."}` with a 4xx status. See docs/operations.md "Operator API".
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from .call import entry_json
from .calllog import CallQuery, instances, views
from .calllog.views import call_json, iso, transcript
from .calllog.store import END_REASONS
from .ids import ascii_int, id_problem, text_problem
from .web_state import CALLS, CAPACITY, CONFIG, INSTANCE, REST, STORE

log = logging.getLogger("gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_PAGE = 200
COMMAND_POLL_SECONDS = 0.5  # how soon a hang-up asked of another instance is acted on, with no notifications
COMMAND_FALLBACK_POLL_SECONDS = 5.0  # ... while PostgreSQL notifications wake the loop (a lost one is found then)
# Not taken by then: its instance is not running it. An owner is woken at once by a notification,
# or, while it has none (SQLite, or its listening connection is down), looks every COMMAND_POLL_SECONDS.
COMMAND_TAKE_SECONDS = 4 * COMMAND_POLL_SECONDS + 0.5


def add_operator_routes(app: web.Application) -> None:
    operator = app[CONFIG].operator
    app[LIMITER] = RateLimiter(operator.rate_limit_per_second, operator.rate_limit_burst)
    app[FAILED_LIMITER] = RateLimiter(operator.rate_limit_per_second, operator.rate_limit_burst)
    app.middlewares.append(_api_headers)
    r = app.router
    r.add_get("/api/calls", _guard(list_calls))
    r.add_post("/api/calls", _guard(place_call))
    r.add_get("/api/calls/{call_id}", _guard(get_call))
    r.add_get("/api/calls/{call_id}/recording", _guard(get_recording))
    r.add_post("/api/calls/{call_id}/hangup", _guard(hang_up))
    r.add_get("/api/live", _guard(live_calls))
    r.add_get("/api/bots", _guard(bot_summary))
    r.add_get("/api/openapi.json", _guard(openapi))
    r.add_get("/api/capacity", _guard(capacity))
    r.add_get("/", dashboard)
    r.add_get("/ui", dashboard)


DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"
# The OpenAPI 3.1 description of every /api/ route above (tests/test_openapi.py keeps them in step).
OPENAPI = Path(__file__).with_name("static") / "openapi.json"


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/json")


async def dashboard(request: web.Request) -> web.Response:
    """The operators' page: a static shell (no data in it); it calls /api/ with the token the
    operator enters (kept in the tab's sessionStorage), or one given as `/#token=…`."""
    return web.Response(body=DASHBOARD.read_bytes(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                            "script-src 'unsafe-inline'; media-src blob:"})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class RateLimiter:
    """Token bucket per client address; a bounded table (oldest entries go first)."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10000):
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str, now: float | None = None) -> float:
        """0 if allowed, else seconds until a request would be."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if tokens >= 1 else tokens, now)
        if len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]
        return wait


LIMITER = web.AppKey("operator_rate_limiter", RateLimiter)  # requests with the right token
FAILED_LIMITER = web.AppKey("operator_failed_token_limiter", RateLimiter)  # requests without it


def _guard(handler: Handler) -> Handler:
    """The bearer token first, then the rate limit of its kind: wrong or missing tokens use up a
    bucket of their own per address, so a flood of them (an attacker behind the same proxy as
    every operator) never locks out the right token."""
    async def guarded(request: web.Request) -> web.StreamResponse:
        token = request.app[CONFIG].operator.token
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        right = bool(token) and bool(given) and hmac.compare_digest(given.encode(), token.encode())
        wait = request.app[LIMITER if right else FAILED_LIMITER].allow(request.remote or "?")
        if wait:
            return web.json_response({"error": "too many requests"}, status=429,
                                     headers={"Retry-After": str(max(1, round(wait)))})
        if not token:
            return _error(401, "the operator API is disabled: set operator.token / GATEWAY_OPERATOR_TOKEN")
        if not right:
            log.warning("event=operator_auth_failed path=%s remote=%s", request.path, request.remote)
            return _error(401, "missing or wrong bearer token")
        return await handler(request)
    guarded.__name__ = handler.__name__
    return guarded


@web.middleware
async def _api_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Operator data is never kept by a browser or proxy cache: `Cache-Control: no-store` on every
    /api/ answer, errors (raised as HTTPException) included."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as e:
        e.headers["Cache-Control"] = "no-store"
        raise
    response.headers["Cache-Control"] = "no-store"
    return response


require_operator = _guard  # for routes registered elsewhere (/metrics)


# ------------------------------------------------------------------ helpers
def parse_time(value: str, name: str) -> float:
    try:
        return views.parse_time(value)
    except ValueError:
        raise _bad_request(f"{name}: expected an ISO 8601 date or time") from None


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """A query integer: ASCII digits only (`isdigit` would take "²", `int` full-width digits)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    value = ascii_int(raw)
    if value is None or not lo <= value <= hi:
        raise _bad_request(f"{name}: expected an integer {lo}..{hi}")
    return value


def _text(request: web.Request, name: str, max_chars: int = 200) -> str | None:
    """A query string filter (bot, number, search words): bounded, no control characters."""
    value = request.query.get(name) or None
    if value is not None and (bad := text_problem(value, name, max_chars)):
        raise _bad_request(bad)
    return value


def _call_id(request: web.Request) -> str:
    """The call id in the path, checked as the webhook checks it (no stored call has another form)."""
    call_id = request.match_info["call_id"]
    if bad := id_problem(call_id):
        raise _bad_request(bad)
    return call_id


# ------------------------------------------------------------------ handlers
async def list_calls(request: web.Request) -> web.Response:
    q = request.query
    end_reason = q.get("end_reason") or None
    if end_reason and end_reason not in END_REASONS:
        return _error(400, f"end_reason: one of {', '.join(END_REASONS)}")
    live = {"true": True, "false": False, None: None}.get(q.get("live"), "bad")
    if live == "bad":
        return _error(400, "live: true or false")
    query = CallQuery(bot=_text(request, "bot"), number=_text(request, "number"),
                      since=parse_time(q["since"], "since") if q.get("since") else None,
                      until=parse_time(q["until"], "until") if q.get("until") else None,
                      end_reason=end_reason, text=(_text(request, "q") or "").strip() or None, live=live,
                      limit=_int(request, "limit", 50, 1, MAX_PAGE), offset=_int(request, "offset", 0, 0, 10**9))
    rows, total = await request.app[STORE].list_calls(query)
    return web.json_response({"calls": [call_json(r) for r in rows], "total": total,
                              "limit": query.limit, "offset": query.offset})


async def place_call(request: web.Request) -> web.Response:
    """Outbound call: {"to", "bot", "from"?, "context"?} -> Twilio dials; 201 with its CallSid."""
    from .outbound import OutboundError, plan_call
    from .telephony.twilio.rest import TwilioRestError
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "expected a JSON body")
    try:
        plan = plan_call(request.app[CONFIG], body)
    except OutboundError as e:
        return _error(e.status, str(e))
    try:
        created = await request.app[REST].create_call(plan["to"], plan["from"], plan["url"], **plan["amd"])
    except TwilioRestError as e:
        log.warning("event=outbound_failed to=%s error=%s", plan["to"], str(e)[:300])
        return _error(502, f"Twilio refused the call: {e.message or e.status}")
    sid = str(created.get("sid", ""))
    log.info("event=outbound_placed call=%s bot=%s to=%s", sid, plan["bot"], plan["to"])
    if sid:
        request.app[STORE].enqueue("upsert_call", sid, {"direction": "outbound", "from_number": plan["from"],
                                                        "to_number": plan["to"], "bot": plan["bot"],
                                                        "webhook_at": time.time()})
    return web.json_response({"call_id": sid, "status": created.get("status"), "to": plan["to"],
                              "from": plan["from"], "bot": plan["bot"]}, status=201)


async def get_call(request: web.Request) -> web.Response:
    row = await request.app[STORE].get_call(_call_id(request))
    if row is None:
        return _error(404, "no such call")
    return web.json_response({**call_json(row), "timeline": transcript(row["events"])})


async def get_recording(request: web.Request) -> web.StreamResponse:
    """The call's recording, found through its record (never named after the call id), from this
    instance's disk or the bucket every instance shares."""
    from .recording_store import RECORDINGS, RecordingUnavailable
    row = await request.app[STORE].get_call(_call_id(request))
    if row is None:
        return _error(404, "no such call")
    if not row.get("recording"):
        return _error(404, "this call was not recorded")
    try:
        response = await request.app[RECORDINGS].response(request, row["recording"])
    except RecordingUnavailable as e:
        log.error("event=recording_unavailable call=%s error=%s", row["call_id"], e)
        return _error(502, "the recording storage cannot be reached; try again later")
    if response is None:
        return _error(404, "the recording is gone (retention) or still being written")
    return response


async def live_calls(request: web.Request) -> web.Response:
    """Live calls of every instance and worker sharing the call log: this process's own in full
    (the last transcript line included), the others' as their records say."""
    here = request.app[INSTANCE]
    calls = []
    for call in list(request.app[CALLS].values()):
        st = call.status()
        calls.append({"call_id": st.call_id, "bot": st.bot, "network": st.network, "from": st.caller,
                      "to": st.dialed, "started_at": iso(st.started_at), "duration_s": st.duration_s,
                      "barge_ins": st.barge_ins, "turns": st.turns, "instance": here,
                      "last": entry_json(st.last) if st.last is not None else None})
    local = {c["call_id"] for c in calls}
    now = time.time()
    for row in await instances.live_calls(request.app[STORE], now):
        if row["call_id"] not in local and row["instance"] != here:
            calls.append({"call_id": row["call_id"], "bot": row["bot"], "network": row["network"],
                          "from": row["from_number"], "to": row["to_number"], "started_at": iso(row["started_at"]),
                          "duration_s": round(now - row["started_at"], 1), "barge_ins": row["barge_ins"],
                          "turns": row["turns"], "instance": row["instance"], "last": None})
    return web.json_response({"calls": calls})


async def hang_up(request: web.Request) -> web.Response:
    """Hang up a live call: at once when it runs here, else through a command to the instance or
    worker that runs it (at once on PostgreSQL, which notifies it; within half a second on SQLite).
    409 when that instance is gone or does not take the command within COMMAND_TAKE_SECONDS."""
    call_id = _call_id(request)
    call = request.app[CALLS].get(call_id)
    if call is not None:
        log.info("event=operator_hangup call=%s", call_id)
        await call.hang_up("operator_hangup", why="operator")  # Twilio REST when configured: no fallback message
        return web.json_response({"call_id": call_id, "status": "ending", "instance": request.app[INSTANCE]},
                                 status=202)
    row = await instances.open_call(request.app[STORE], call_id)
    if row is None:
        return _error(404, "no live call with that id")
    owner = row["instance"]
    if not row["alive"]:
        return _error(409, f"the instance that runs this call ({owner}) is gone (its lease lapsed): nobody can "
                           "hang it up; the call log closes it as crashed at the next sweep")
    command = await instances.send(request.app[STORE], owner, call_id, "hang_up")
    if not await instances.await_taken(request.app[STORE], command, COMMAND_TAKE_SECONDS):
        log.warning("event=operator_hangup_failed call=%s via=%s reason=not_taken", call_id, owner)
        return _error(409, f"the instance that runs this call ({owner}) did not take the hang-up within "
                           f"{COMMAND_TAKE_SECONDS:g} s: it has crashed or stalled; if it is gone, its calls are "
                           "closed as crashed when its lease lapses")
    log.info("event=operator_hangup call=%s via=%s", call_id, owner)
    return web.json_response({"call_id": call_id, "status": "ending", "instance": owner}, status=202)


async def remote_commands(app: web.Application):
    """Cleanup context: act on commands other instances queued for this one's calls."""
    acting: set[asyncio.Task] = set()
    store, here = app[STORE], app[INSTANCE]
    wake = asyncio.Event()

    def notified(payload: str | None) -> None:  # None: (re)connected, notifications may have been missed
        if payload is None or payload == here:
            wake.set()

    await store.listen(instances.COMMANDS_CHANNEL, notified)

    async def loop() -> None:
        while True:
            poll = COMMAND_FALLBACK_POLL_SECONDS if store.listening else COMMAND_POLL_SECONDS
            try:
                await asyncio.wait_for(wake.wait(), poll)
            except asyncio.TimeoutError:
                pass
            wake.clear()
            try:
                for cmd in await instances.take(store, here):
                    call = app[CALLS].get(cmd["call_id"])
                    if call is not None and cmd["command"] == "hang_up":
                        log.info("event=operator_hangup call=%s via=command", cmd["call_id"])
                        task = asyncio.create_task(call.hang_up("operator_hangup", why="operator (another instance)"))
                        acting.add(task)
                        task.add_done_callback(acting.discard)
                await instances.forget_old(store, time.time() - 86400)
            except Exception as e:  # noqa: BLE001 - the database may be down for a while; keep trying
                log.error("event=remote_commands_failed error=%s", f"{type(e).__name__}: {e}"[:300])

    task = asyncio.create_task(loop(), name="remote-commands")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def capacity(request: web.Request) -> web.Response:
    """Model session slots used per provider and key (keys by fingerprint), across every process
    sharing the call log; `limit` 0 means no cap (then `used` counts this process's calls)."""
    return web.json_response({"slots": await request.app[CAPACITY].report()})


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a value that really occurred)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def bot_summary(request: web.Request) -> web.Response:
    since = parse_time(request.query["since"], "since") if request.query.get("since") else None
    rows = await request.app[STORE].bot_latencies(since)
    bots_now = request.app[CONFIG].bots
    by_bot: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        # Real bots only: one of ours, or one that served a call (since renamed or removed). A name
        # a caller put in `?bot=` (older records kept it) is not a bot.
        if r["bot"] in bots_now or (r["bot"] and r["started_at"] is not None):
            by_bot[r["bot"]].append(r)
    bots = []
    for bot, calls in sorted(by_bot.items()):
        durations = [c["duration_s"] for c in calls if c["duration_s"] is not None]
        firsts = [(c["first_audio_at"] - c["started_at"]) * 1000 for c in calls
                  if c["first_audio_at"] and c["started_at"]]
        bots.append({"bot": bot, "calls": len(calls),
                     "avg_duration_s": round(sum(durations) / len(durations), 1) if durations else None,
                     "first_audio_ms_p50": _round(percentile(firsts, 50)),
                     "first_audio_ms_p95": _round(percentile(firsts, 95)),
                     "end_reasons": dict(Counter(c["end_reason"] for c in calls))})
    hours = _int(request, "hours", 24, 1, MAX_TREND_HOURS)
    return web.json_response({"bots": bots, "trend": await _trend(request.app[STORE], hours)})


MAX_TREND_HOURS = 7 * 24  # the trend reads every turn latency of its window: keep the window bounded


async def _trend(store, hours: int, now: float | None = None) -> dict:
    """Per hour of the last `hours` (whole UTC hours, the current one last): calls started and the
    turn latency (end of caller speech -> first bot audio) p50/p95, for all bots and per bot."""
    now = time.time() if now is None else now
    first = (int(now) // 3600 - hours + 1) * 3600
    calls, latencies = await store.activity_since(first)

    def buckets(bot: str | None) -> list[dict]:
        counts, lat = [0] * hours, [[] for _ in range(hours)]
        for c in calls:
            if bot is None or (c["bot"] or "?") == bot:
                counts[min(hours - 1, int(c["started_at"] - first) // 3600)] += 1
        for e in latencies:
            i = int(e["at"] - first) // 3600
            if (bot is None or (e["bot"] or "?") == bot) and 0 <= i < hours:
                lat[i].append(e["ms"])
        return [{"start": iso(first + i * 3600), "calls": counts[i], "turns": len(lat[i]),
                 "turn_latency_ms_p50": _round(percentile(lat[i], 50)),
                 "turn_latency_ms_p95": _round(percentile(lat[i], 95))} for i in range(hours)]

    names = sorted({c["bot"] or "?" for c in calls})
    return {"hours": hours, "all": buckets(None), "by_bot": {b: buckets(b) for b in names}}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v)
