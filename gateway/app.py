"""aiohttp application: each phone network's webhook and media-stream WebSocket, health checks.

The webhook only decides *which bot* and answers the network's document (TwiML, TeXML, Plivo
XML); everything else happens on the media stream, where `start` tells us the call and its
parameters and a `Call` takes over. Networks are registered from NETWORKS, all alike.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import itertools
import json
import logging
import os
import re
import secrets
import socket
import time
import aiohttp
from aiohttp import web

from .call.assembly import assemble_call
from .calllog import open_store
from .capacity import Capacity, Grant
from .config import Config, Persona
from . import http_limits
from .ids import started_problem, webhook_problem
from .logs import CallLogger
from .metrics import METRICS, add_metrics
from .operator_api import add_operator_routes, remote_commands
from .outbound import read_ticket
from .providers import SPECS
from .recording_store import RECORDINGS, recordings_ctx
from .telephony import PhoneStream
from .telephony.network import ListenFailed, NetworkSpec
from .telephony.registry import NETWORKS
from .web_state import CALLS, CAPACITY, CONFIG, DRAINING, HTTP, INSTANCE, RECENT, STORE
from .webhooks import WEBHOOKS, webhook_delivery

log = logging.getLogger("gateway")
PURGE_EVERY_SECONDS = 6 * 3600
_conn_ids = itertools.count(1)

SORRY_UNKNOWN_BOT = "Sorry, this number is not in service right now. Goodbye."
SORRY_BUSY = "All our lines are busy right now. Please call again in a few minutes. Goodbye."
SORRY_RESTARTING = "We are updating our service. Please call again in a minute. Goodbye."
REFUSED_HEADER = "X-Gateway-Refused"  # on a webhook answer that turns the call away: why


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    http_limits.install(app, config.server.request_timeout_seconds)
    app[CONFIG] = config
    app[CALLS] = {}
    app[RECENT] = collections.deque(maxlen=200)
    app[INSTANCE] = process_instance_id(config)
    app[DRAINING] = {}
    for network in NETWORKS:
        for warning in network.startup_warnings(config):
            log.warning("%s network=%s", warning, network.name)
        if network.webhook_path:
            app.router.add_route(network.webhook_method, network.webhook_path,
                                 functools.partial(voice_webhook, network=network))
        if network.media_path:
            app.router.add_get(network.media_path, functools.partial(media_stream, network=network))
        for method, path, handler in network.routes():
            app.router.add_route(method, path, handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_operator_routes(app)
    add_metrics(app)
    app.cleanup_ctx.append(_http_client)
    app.cleanup_ctx.append(_call_log)
    app.cleanup_ctx.append(recordings_ctx)
    app.cleanup_ctx.append(remote_commands)
    app.cleanup_ctx.append(webhook_delivery)
    app.cleanup_ctx.append(_purge_old_records)
    app.cleanup_ctx.append(_network_listeners)
    app.on_shutdown.append(_hang_up_all)
    return app


def process_instance_id(config: Config) -> str:
    """This process's name in call records and its lease: the configured name (or hostname), the
    pid and a random suffix, so that no two processes share one, even on one machine or after a
    pid is reused."""
    return f"{config.server.instance_id or socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def _http_client(app: web.Application):
    """One aiohttp client session for everything the app calls over HTTP (networks' REST APIs, HTTP
    tools, the model sockets): connections and TLS sessions are reused instead of a handshake per
    request. No cookie jar: one caller's cookies must never ride along on another caller's tool
    call. No connection limit (aiohttp's default is 100): every model socket holds its connection
    for the whole call, so a limit would cap concurrent calls and then starve the REST requests;
    the calls' capacity bounds the connections. Closed last."""
    config = app[CONFIG]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        app[HTTP] = session
        for network in NETWORKS:
            network.attach(app, config, session)
        yield


async def _call_log(app: web.Application):
    """Open the store, apply migrations, take this process's lease and close what dead instances
    left open (then keep doing both in the background); at the end (after on_shutdown has ended
    the live calls) flush, release the lease and close it."""
    config = app[CONFIG]
    store = open_store(config.storage.url, config.base_dir)
    await store.start()
    app[STORE] = store
    crashed, no_stream = await store.hold_lease(app[INSTANCE], config.storage.lease_seconds,
                                                config.limits.stream_wait_seconds)
    app[CAPACITY] = Capacity(config, store, app[INSTANCE])
    log.log(logging.WARNING if crashed or no_stream else logging.INFO, "event=calllog_open store=%s instance=%s "
            "crashed_calls_closed=%d no_stream_closed=%d", store, app[INSTANCE], crashed, no_stream)
    yield
    await store.close()


async def _purge_old_records(app: web.Application):
    """Retention: at start-up and every few hours, drop call records and recordings past their age."""

    async def loop() -> None:
        config = app[CONFIG]
        while True:
            try:
                if config.storage.retention_days:
                    keys = await app[STORE].purge(time.time() - config.storage.retention_days * 86400)
                    await app[RECORDINGS].delete(keys)
                    if keys:
                        log.info("event=calllog_purged recordings=%d", len(keys))
                await app[RECORDINGS].purge()
            except Exception as e:  # noqa: BLE001 - retention must never take the server down
                log.error("event=calllog_purge_failed error=%s", f"{type(e).__name__}: {e}"[:300])
            await asyncio.sleep(PURGE_EVERY_SECONDS)

    task = asyncio.create_task(loop(), name="calllog-purge")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _network_listeners(app: web.Application):
    """Listeners networks run besides HTTP (AudioSocket's TCP port), when their settings turn them
    on; closed (and their calls ended by on_shutdown) with the app."""
    config, servers = app[CONFIG], []
    for network in NETWORKS:
        async def handle(stream: PhoneStream, network: NetworkSpec = network) -> None:
            await run_stream(app, network, stream, stream.log)

        try:
            server = await network.listen(config, handle, lambda: CallLogger(log, conn=f"tcp{next(_conn_ids)}"))
        except ListenFailed as e:
            for started in servers:
                started.close()
            raise _listen_error(e.host, e.port, e.error) from None
        if server is not None:
            servers.append(server)
    yield
    for server in servers:
        server.close()


def choose_bot(config: Config, requested: str | None, dialed: str) -> tuple[Persona | None, str]:
    """The persona for a call and how it was chosen; None when it cannot be served."""
    if requested:
        persona = config.bots.get(requested)
        return (persona if persona and config.provider_ready(persona) else None), "query"
    routed = config.routing.numbers.get(dialed)
    if routed:
        persona = config.bots[routed]
        return (persona if config.provider_ready(persona) else None), "number"
    persona = config.bots[config.routing.default_bot]
    if config.provider_ready(persona):
        return persona, "default"
    return config.bots[config.routing.fallback_bot], "fallback"


async def voice_webhook(request: web.Request, network: NetworkSpec) -> web.Response:
    config = request.app[CONFIG]
    hook = await network.read_webhook(config, request)
    if isinstance(hook, str):  # not authentic: logged by the network
        return web.Response(status=403, text=f"{hook}\n")
    call_sid, caller, dialed = hook.call_id, hook.caller, hook.dialed
    requested = request.query.get("bot")
    bad = webhook_problem(call_sid, caller, dialed, requested)
    if bad:  # checked once, here: what passes is used as it is by stream, slots, records and events
        log.warning("event=webhook_refused network=%s reason=bad_input problem=%s remote=%s", network.name,
                    json.dumps(bad), request.remote)
        return web.Response(status=400, text=f"{bad}\n")
    clog = CallLogger(log, call=call_sid or None)
    record = {"call_sid": call_sid, "from_number": caller, "to_number": dialed,
              "bot": requested if requested in config.bots else None,  # a caller's made-up name is no bot
              "direction": "outbound" if "outbound" in request.query else "inbound", "network": network.name}
    if request.app[DRAINING]:
        clog.info("webhook_refused", reason="draining", caller=caller)
        return _refused(request, network, network.refusal(SORRY_RESTARTING), "draining: this instance is shutting down",
                        record)
    if len(request.app[CALLS]) >= config.limits.max_concurrent_calls:
        clog.warning("webhook_refused", reason="busy", live_calls=len(request.app[CALLS]), caller=caller)
        return _refused(request, network, network.refusal(SORRY_BUSY), f"busy: {len(request.app[CALLS])} live calls "
                        "(limits.max_concurrent_calls)", record)
    persona, how = choose_bot(config, requested, dialed)
    if persona is None:
        wanted = requested or config.routing.numbers.get(dialed)
        why = "unknown bot" if wanted not in config.bots else "bot's provider has no API key"
        clog.warning("webhook_rejected", bot=str(wanted), reason=why, caller=caller, dialed=dialed)
        # The record names a bot only when it is one of ours: a caller's `?bot=` is not a bot.
        known = config.bots.get(str(wanted))
        return _refused(request, network, network.refusal(SORRY_UNKNOWN_BOT), _unavailable(config, str(wanted)),
                        record | {"bot": known and known.name, "provider": known and known.provider})
    if how == "fallback":
        clog.warning("webhook_fallback_bot", wanted=config.routing.default_bot, bot=persona.name,
                     reason="default bot's provider has no API key")
    record |= {"bot": persona.name, "provider": persona.provider, "model": persona.model}
    outbound = None
    if "outbound" in request.query:  # a call we placed (POST /api/calls), answered now
        outbound = read_ticket(config.twilio.auth_token, request.query["outbound"], persona.name) \
            if config.twilio.auth_token else None
        if outbound is None:
            clog.warning("webhook_rejected", reason="invalid or expired outbound ticket", bot=persona.name)
            return _refused(request, network, network.hangup_document(),
                            "invalid or expired outbound ticket", record)
    wanted = persona
    grant, persona, overflow = await _reserve_model(request.app, persona, call_sid or f"nosid-{secrets.token_hex(8)}")
    if grant is None:
        clog.warning("webhook_refused", reason="busy", bot=wanted.name, why=overflow, caller=caller)
        return _refused(request, network, network.refusal(wanted.busy_message, wanted.language),
                        f"busy: no model capacity: {overflow}", record | {"overflow": overflow})
    if overflow:
        clog.warning("webhook_overflow", wanted=wanted.name, bot=persona.name, why=overflow)
    clog.info("webhook", bot=persona.name, chosen_by=how, caller=caller, dialed=dialed,
              direction="outbound" if outbound else None, model_key=grant.fingerprint or None)
    if call_sid and STORE in request.app:
        request.app[STORE].enqueue("upsert_call", call_sid, {
            "webhook_at": time.time(), "from_number": caller, "to_number": dialed, "bot": persona.name,
            "network": network.name, "provider": persona.provider, "model": persona.model,
            "direction": "outbound" if outbound else "inbound", "model_key": grant.fingerprint or None,
            "overflow": overflow or None})
    params = {"bot": persona.name, "from": caller, "to": dialed, "call_sid": call_sid}
    if outbound:
        params.update(direction="outbound", context=json.dumps(outbound["ctx"], ensure_ascii=False))
    return web.Response(text=network.answer(config, request, persona, hook, params),
                        content_type=network.document_type)


async def _reserve_model(app: web.Application, persona: Persona, call_id: str) -> tuple[Grant | None, Persona, str]:
    """A model session slot for the call, held until its stream starts: on the persona's provider,
    else on its `overflow` bot's (and that one's overflow, each bot at most once). Returns the grant
    (None: busy), the persona that got it and, if it overflowed, why ("" if not)."""
    if CAPACITY not in app:
        return Grant(persona.provider, call_id), persona, ""
    config, capacity = app[CONFIG], app[CAPACITY]
    why, seen, current = [], set(), persona
    while True:
        seen.add(current.name)
        grant = await capacity.reserve(current, call_id)
        if grant is not None:
            return grant, current, "; ".join(why)
        why.append(f"bot {current.name!r} full ({capacity.describe(current.provider, await capacity.report())})")
        following = config.bots.get(current.overflow)
        if following is None or following.name in seen:
            return None, persona, "; ".join(why)
        if not config.provider_ready(following):
            why.append(f"overflow bot {following.name!r} has no API key")
            return None, persona, "; ".join(why)
        current = following


def _unavailable(config: Config, bot: str) -> str:
    """Why the webhook cannot serve `bot`, and what the operator should set."""
    persona = config.bots.get(bot)
    if persona is None:
        return f"unknown bot {bot!r} (bots: {', '.join(sorted(config.bots))})"
    variable = SPECS[persona.provider].key_variable()
    return (f"bot {bot!r} (provider {persona.provider}) has no API key: set "
            f"{variable + ' or ' if variable else ''}providers.{persona.provider}.api_key")


def _refused(request: web.Request, network: NetworkSpec, twiml: str, why: str, record: dict) -> web.Response:
    """A call the webhook turns away. The caller hears `twiml` (generic: no config details); the
    call log gets a `refused` record saying why, and so does the X-Gateway-Refused header (for the
    simulated phone and curl; Twilio ignores headers it does not know)."""
    call_sid = record.pop("call_sid")
    if call_sid and STORE in request.app:
        now = time.time()
        request.app[STORE].enqueue("upsert_call", call_sid, {
            **record, "instance": request.app[INSTANCE], "webhook_at": now, "ended_at": now,
            "duration_s": 0.0, "end_reason": "refused", "error": why})
    return web.Response(text=twiml, content_type=network.document_type,
                        headers={REFUSED_HEADER: re.sub(r"[^\x20-\x7e]", "?", why)})


async def media_stream(request: web.Request, network: NetworkSpec) -> web.WebSocketResponse:
    config = request.app[CONFIG]
    ws = web.WebSocketResponse(max_msg_size=config.limits.max_message_bytes, autoping=True, heartbeat=None,
                               protocols=network.ws_protocols)
    refused = network.upgrade_refused(config, request)
    await ws.prepare(request)
    clog = CallLogger(log, conn=f"ws{next(_conn_ids)}")
    if refused:
        clog.warning("stream_rejected", reason=refused, remote=request.remote, network=network.name)
        await ws.close(code=1008, message=b"invalid signature")
        return ws
    stream = network.stream(ws, clog, config.limits.max_protocol_errors, request.query)
    await run_stream(request.app, network, stream, clog)
    return ws


async def run_stream(app: web.Application, network: NetworkSpec, stream: PhoneStream, clog: CallLogger) -> None:
    """A network's media stream from its first frame to the end of the call (WebSocket or not)."""
    config = app[CONFIG]
    try:
        started = await asyncio.wait_for(stream.wait_started(), config.limits.start_timeout_seconds)
    except asyncio.TimeoutError:
        clog.warning("stream_rejected", reason="no start frame",
                     timeout_s=config.limits.start_timeout_seconds)
        await stream.close(1008, b"no start")
        return
    if started is None:
        clog.info("stream_ended_before_start")
        return
    bad = started_problem(started)
    if bad:  # the same check as the webhook's: one canonical call id, taken as sent or refused
        clog.warning("stream_rejected", reason="bad_input", problem=bad)
        await stream.close(1008, b"bad call id or parameters")
        return
    # The bot: as the media URL or the stream's parameters name it, else the dialed number's route,
    # else the default (networks that pass neither a query nor parameters).
    bot = started.custom_parameters.get("bot", "")
    persona, _ = choose_bot(config, bot, started.custom_parameters.get("to", ""))
    clog = CallLogger(log, call=started.call_sid or started.stream_sid, bot=bot or (persona and persona.name))
    stream.log = clog
    refused = network.start_refused(config, started)
    if refused:
        clog.warning("stream_rejected", reason=refused)
        await stream.close(1008, b"bad call token")
        return
    if persona is None or not config.provider_ready(persona):
        clog.warning("stream_rejected", reason="unknown bot" if bot not in config.bots else "provider has no API key")
        await stream.close(1000)  # Twilio continues with the TwiML after </Connect>
        return
    capacity = app[CAPACITY]
    grant = await capacity.claim(persona, started.call_sid or started.stream_sid)
    if grant is None:  # its webhook's hold lapsed (or there was no webhook) and every key is full
        clog.warning("stream_rejected", reason="no model capacity",
                     why=capacity.describe(persona.provider, await capacity.report()))
        await stream.close(1000)  # Twilio speaks the fallback: no model session was opened
        return
    try:
        call = assemble_call(config=config, persona=persona, phone=stream, started=started, log=clog,
                             store=app[STORE], instance=app[INSTANCE],
                             control=network.control(config, app[HTTP], started), http=app[HTTP],
                             observers=call_observers(app), api_key=grant.key)
    except ValueError as e:  # a persona for a provider this build does not have
        await capacity.release(grant)
        clog.error("stream_rejected", reason=str(e))
        await stream.close(1000)
        return
    if call.recording is not None:  # the record names its recording from the start: a crash keeps it findable
        call.journal.update(recording=call.recording.path.name)
    calls = app[CALLS]
    calls[call.call_id] = call
    try:
        with app[METRICS].live(call.persona.name, network.name):
            app[RECENT].append(await call.run())
    finally:
        calls.pop(call.call_id, None)
        await capacity.release(grant)
        if call.recording is not None and call.recording.closed:
            app[RECORDINGS].finished(call.recording.path.name)  # to the bucket, where there is one


def call_observers(app: web.Application) -> list:
    """What follows each call's journal: metrics, and call webhooks when receivers are configured."""
    return [app[METRICS].call(), *([app[WEBHOOKS].call()] if WEBHOOKS in app else [])]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Load balancers: 503 while draining or full, so new calls go to another instance."""
    live, limit = len(request.app[CALLS]), request.app[CONFIG].limits.max_concurrent_calls
    if request.app[DRAINING]:
        return web.json_response({"status": "draining", "live_calls": live}, status=503)
    if live >= limit:
        return web.json_response({"status": "full", "live_calls": live}, status=503)
    return web.json_response({"status": "ready", "live_calls": live})


async def drain(app: web.Application, seconds: float) -> None:
    """Graceful stop: refuse new calls (readyz 503, the webhook asks callers to call back), let the
    live ones finish for up to `seconds` (`app[DRAINING]["hurry"] = True` cuts that short), then have
    the bot say goodbye on each remaining call and hang up."""
    state, calls = app[DRAINING], app[CALLS]
    state["since"] = time.monotonic()
    log.warning("event=drain_started live_calls=%d drain_seconds=%g", len(calls), seconds)
    deadline = time.monotonic() + seconds
    while calls and time.monotonic() < deadline and not state.get("hurry"):
        await asyncio.sleep(0.1)
    if calls:
        log.warning("event=drain_wrapping_up live_calls=%d", len(calls))
        await asyncio.gather(*(call.wrap_up("shutdown") for call in list(calls.values())), return_exceptions=True)
        deadline = time.monotonic() + 5
        while calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    log.info("event=drain_done left=%d", len(calls))


class ListenError(Exception):
    """The listening address cannot be bound (in use, not allowed, not on this machine)."""


def _listen_error(host: str, port: int, e: OSError) -> ListenError:
    why = {errno.EADDRINUSE: "address already in use (is another gateway running?)",
           errno.EACCES: "permission denied (ports below 1024 need privileges)",
           errno.EADDRNOTAVAIL: "address not available on this machine"}.get(e.errno, e.strerror or str(e))
    return ListenError(f"cannot listen on {host}:{port}: {why}")


def listen(host: str, port: int, reuse_port: bool = False) -> list[socket.socket]:
    """Bind every address `host` resolves to (all interfaces for "" or "0.0.0.0" and "::") before
    anything else starts: a busy port must not get as far as the call log. Connections are
    accepted (listen) only once the app has started, by `serve`. `reuse_port`: SO_REUSEPORT, for
    the workers of `serve --workers N` (the kernel spreads connections over them)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {host}:{port}: unknown host ({e.strerror})") from None
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setblocking(False)
    except OSError as e:
        for sock in socks:
            sock.close()
        raise _listen_error(host, port, e) from None
    return socks


async def serve(config: Config, host: str, port: int, socks: list[socket.socket] | None = None,
                supervised: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then drain (a second signal hurries it) and exit. The address
    is bound first (`listen`, or `socks` already bound): only then does the app open the call log.
    `supervised` (a worker of `serve --workers N`): the supervisor's death (workers.SUPERVISOR_GONE,
    however many times it comes) drains too, and never hurries."""
    import signal

    socks = socks if socks is not None else listen(host, port)
    app = create_app(config)
    # keepalive_timeout: also how long a connection may take to send a request's headers; lingering:
    # how long the rest of a body too slow to wait for is read after the answer (http_limits.py)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, lingering_time=1.0,
                           keepalive_timeout=config.server.request_timeout_seconds)
    try:
        await runner.setup()
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    try:
        for sock in socks:
            await web.SockSite(runner, sock).start()
    except OSError as e:  # another gateway bound the same port in the same instant and listened first
        await runner.cleanup()
        raise _listen_error(host, port, e) from None

    def url(address: str, bound_port: int) -> str:
        return f"http://{f'[{address}]' if ':' in address else address}:{bound_port}"

    bound = [sock.getsockname()[:2] for sock in socks]
    log.info("listening on %s (webhooks %s; media WebSockets %s)", ", ".join(url(*b) for b in bound),
             ", ".join(f"{n.webhook_method} {n.webhook_path}" for n in NETWORKS if n.webhook_path),
             ", ".join(n.media_path for n in NETWORKS if n.media_path))
    address, bound_port = bound[0]
    shown = config.server.public_url.rstrip("/") or url(
        {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address), bound_port)  # a wildcard: this machine
    if config.operator.token:
        log.info("dashboard %s/ (operator API on: GATEWAY_OPERATOR_TOKEN is set; the page asks for it)", shown)
    else:
        log.info("dashboard %s/ (operator API off: set GATEWAY_OPERATOR_TOKEN to turn it and the dashboard on)", shown)
    stop = asyncio.Event()

    def on_signal(sig: int) -> None:
        if stop.is_set():
            log.warning("event=drain_hurried signal=%s", signal.Signals(sig).name)
            app[DRAINING]["hurry"] = True
        stop.set()

    def on_supervisor_gone() -> None:
        if not stop.is_set():
            log.warning("event=supervisor_gone note=\"draining the live calls, then exiting\"")
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if supervised:
        from .workers import SUPERVISOR_GONE
        loop.add_signal_handler(SUPERVISOR_GONE, on_supervisor_gone)
    try:
        await stop.wait()
        await drain(app, config.server.drain_seconds)
    finally:
        await runner.cleanup()  # ends anything left as `shutdown`, flushes and closes the call log


async def _hang_up_all(app: web.Application) -> None:
    """On shutdown, end every live call so its handler finishes, closes its model session and
    logs `call_ended reason=shutdown`."""
    await asyncio.gather(*(call.end("shutdown") for call in list(app[CALLS].values())),
                         return_exceptions=True)
