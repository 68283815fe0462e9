"""How a phone network plugs into the gateway: one `NetworkSpec` per network folder.

A spec declares, next to the network's code, everything the rest of the gateway reads: its
settings section in config.yaml (dataclass, environment variables, secrets to keep out of logs,
checks), the incoming-call webhook (path, method, how requests are authenticated, the answer
document that connects the call to our media WebSocket: TwiML, TeXML, Plivo XML, NCCO, verbs, and
the refusal that says sorry), the media WebSocket (path, subprotocols, how the upgrade and the
stream's start are authenticated, the codec that reads its frames), the phone formats it speaks,
each call's `PhoneControl` (hang up, transfer), an optional listener (AudioSocket's TCP port) and
its fake caller for the simulator. config.py builds the network sections from the specs and
app.py registers every spec the same way; adding a network is its folder and one line in
registry.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web

from . import MULAW, PhoneActionError, PhoneControl, PhoneStream, Started
from .codec import Codec

log = logging.getLogger("gateway")
TICKET_SECONDS = 300  # a media URL's ticket must be used within this long after the webhook


@dataclass(frozen=True)
class Webhook:
    """An incoming call as the webhook told us: its id at the network, caller and dialed number."""
    call_id: str
    caller: str
    dialed: str


class NetworkSpec:
    name = ""
    label = ""  # how people write it ("Twilio")
    # `<name>:` in config.yaml: its dataclass (None: no settings), environment variable -> field,
    # fields to keep out of every log line, and checks beyond types: (field, ok(settings), wanted).
    settings: type | None = None
    env: Mapping[str, str] = {}
    secret_fields: tuple[str, ...] = ()
    checks: tuple[tuple[str, Callable[[Any], bool], str], ...] = ()
    webhook_path = ""  # the incoming-call webhook ("": the network dials the media URL directly)
    webhook_method = "POST"
    media_path = ""  # GET: the media-stream WebSocket
    ws_protocols: tuple[str, ...] = ()  # WebSocket subprotocols the network asks for
    document_type = "text/xml"

    def settings_of(self, config) -> Any:
        return getattr(config, self.name, None)

    def finish_settings(self, settings: Any, bots: Mapping[str, Any], where: str) -> Any:
        """Settings checked against the loaded bots (e.g. a map that names bots); returns them,
        normalised. Raises ValueError with a message naming the field below `where`."""
        return settings

    def routes(self) -> list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]:
        """Further HTTP routes of this network beyond its webhook and media WebSocket: (method, path, handler)."""
        return []

    def attach(self, app: web.Application, config, http: aiohttp.ClientSession) -> None:
        """Once the app's HTTP client exists: put what the rest of the app uses of this network into
        `app` (Twilio: the REST client outbound calls and machine detection use)."""

    async def listen(self, config, handle: Callable[[PhoneStream], Awaitable[None]],
                     make_log: Callable[[], Any]) -> asyncio.AbstractServer | None:
        """A listener of the network's own (not HTTP), when its settings turn it on; None if not.
        Each connection becomes a stream handed to `handle` (the app's call flow)."""
        return None

    def startup_warnings(self, config) -> list[str]:
        """Things an operator should know at start-up (e.g. requests are not authenticated)."""
        return []

    async def read_webhook(self, config, request: web.Request) -> Webhook | str:
        """The call the webhook announces, or why the request is refused (answered 403)."""
        raise NotImplementedError

    def answer(self, config, request: web.Request, persona, hook: Webhook, params: dict[str, str]) -> str:
        """The document that connects the call to our media WebSocket. `params`: bot, from, to,
        call id, and for outbound calls direction and context."""
        raise NotImplementedError

    def refusal(self, text: str, language: str = "") -> str:
        """The document that says `text` and hangs up."""
        raise NotImplementedError

    def hangup_document(self) -> str:
        return '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>'

    def upgrade_refused(self, config, request: web.Request) -> str | None:
        """Why the WebSocket upgrade is refused (closed with 1008), None when it is fine."""
        return None

    def codec(self, query: Mapping[str, str]) -> Codec:
        """A new codec for one stream; `query`: the media URL's query (bot, ticket, rate, …)."""
        raise NotImplementedError

    def stream(self, ws: web.WebSocketResponse, log, max_protocol_errors: int, query: Mapping[str, str]) -> PhoneStream:
        from .ws_stream import WsPhoneStream
        return WsPhoneStream(ws, self.codec(query), log, max_protocol_errors)

    def secret(self, config) -> str:
        """The network's secret that signs our media URL's ticket ("" = streams are not checked)."""
        return ""

    def start_refused(self, config, started: Started) -> str | None:
        """Why the stream's `start` is refused (closed with 1008), None when it is fine: for
        networks with a secret, the media URL's ticket must name the bot; the audio must be in one of
        the network's `formats`."""
        params, secret = started.custom_parameters, self.secret(config)
        if secret and not ticket_ok(secret, self.name, params.get("bot", ""), params.get("ticket", "")):
            return "missing, wrong or expired ticket in the media URL"
        if (started.encoding, started.sample_rate) in self.formats:
            return None
        return f"audio {started.encoding or '?'} at {started.sample_rate} Hz is not supported: ask for {self.formats_wanted}"

    # (encoding, rate) the call core takes from this network: audio/x-mulaw, or audio/l16 (PCM16 LE)
    formats: tuple[tuple[str, int], ...] = ((MULAW, 8000),)
    formats_wanted = "8 kHz mu-law (PCMU)"

    def control(self, config, http: aiohttp.ClientSession, started: Started) -> PhoneControl:
        """The call's hang-up and transfer; `http` is the app's client session (connection pool).
        This base: neither (the stream is closed to end the call)."""
        control = PhoneControl()
        control.network = self.label or self.name
        return control

    def fake_caller(self) -> type:
        """The simulator's caller for this network (gateway.phone_sim): imported only when asked for."""
        raise NotImplementedError


class ListenFailed(Exception):
    """A network's own listener cannot bind its address (the app says so in one line)."""

    def __init__(self, host: str, port: int, error: OSError):
        super().__init__(f"{host}:{port}: {error}")
        self.host, self.port, self.error = host, port, error


def unauthenticated(what: str, settings: str) -> list[str]:
    """The start-up warning of a network whose requests nobody checks."""
    return [f"event=signatures_unchecked note=\"no {settings}: {what} unauthenticated\""]


def query_params(query: Mapping[str, str], keys: tuple[str, ...] = ("bot", "ticket", "from", "to")) -> dict[str, str]:
    """The media URL's query values that become the stream's custom parameters."""
    return {k: query[k] for k in keys if query.get(k)}


# ------------------------------------------------------------------ URLs

def _public_origin(config, request: web.Request) -> tuple[str, str, str]:
    """Scheme, host and path prefix the network reaches us at: the configured public URL (a
    proxy's headers are not to be trusted then), else the request's (X-Forwarded-*) view."""
    if config.server.public_url:
        parts = urlsplit(config.server.public_url)
        return parts.scheme, parts.netloc, parts.path.rstrip("/")
    host = request.headers.get("X-Forwarded-Host") or request.host
    scheme = request.headers.get("X-Forwarded-Proto") or request.scheme
    return scheme, host, ""


def media_url(config, request: web.Request, path: str, query: Mapping[str, str] | None = None) -> str:
    """wss://<public host><path> (ws:// only when the public URL itself is plain http)."""
    scheme, host, prefix = _public_origin(config, request)
    qs = urlencode({k: v for k, v in (query or {}).items() if v})
    return f"{'ws' if scheme in ('http', 'ws') else 'wss'}://{host}{prefix}{path}" + (f"?{qs}" if qs else "")


def public_request_url(config, request: web.Request, websocket: bool = False) -> str:
    """The URL the network used for this request, as it signed it: the public scheme, host and
    path prefix plus the path and query we received — the prefix put back when a proxy stripped it
    (public URL https://x/gw, request /twilio/voice: the network signed https://x/gw/twilio/voice)."""
    scheme, host, prefix = _public_origin(config, request)
    path_qs = request.path_qs
    if prefix and not (request.path == prefix or request.path.startswith(prefix + "/")):
        path_qs = prefix + path_qs
    if websocket:
        scheme = "ws" if scheme in ("http", "ws") else "wss"
    return f"{scheme}://{host}{path_qs}"


# ------------------------------------------------------------------ media-URL tickets

def stream_ticket(secret: str, network: str, bot: str, now: float | None = None) -> str:
    """For networks whose stream cannot carry our own parameters back: a ticket in the media URL
    saying which bot this webhook chose, valid TICKET_SECONDS (HMAC with the network's secret)."""
    expires = int((time.time() if now is None else now) + TICKET_SECONDS)
    return f"{expires}.{_ticket_mac(secret, network, bot, expires)}"


def ticket_ok(secret: str, network: str, bot: str, ticket: str, now: float | None = None) -> bool:
    expires, _, mac = ticket.partition(".")
    if not (expires.isascii() and expires.isdigit()) or int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), _ticket_mac(secret, network, bot, int(expires)).encode())


def _ticket_mac(secret: str, network: str, bot: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"stream|{network}|{bot}|{expires}".encode(), hashlib.sha256).hexdigest()[:32]


# ------------------------------------------------------------------ REST calls (hang-up, transfer)

RETRY_STATUSES = {429, 500, 502, 503, 504}


async def rest_request(session: aiohttp.ClientSession, method: str, url: str, *, what: str, attempts: int = 3,
                       timeout: float = 10.0, backoff: float = 0.3, **kw) -> tuple[int, Any]:
    """One idempotent call to a network's REST API (hang up, transfer) on the app's client
    session: retried on 429/5xx, timeouts and network errors (backoff ×3). Returns the final
    status and JSON body (None when there is none); raises PhoneActionError when no answer came."""
    last = ""
    delay = backoff
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(delay)
            delay *= 3
        try:
            async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout), **kw) as r:
                try:
                    body = await r.json(content_type=None) if r.content_length != 0 else None
                except ValueError:  # e.g. a proxy's HTML error page
                    body = None
                if r.status not in RETRY_STATUSES:
                    return r.status, body
                last = f"HTTP {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            last = f"{type(e).__name__}: {e or 'no answer within ' + format(timeout, 'g') + ' s'}"[:300]
        log.warning("event=rest_retry what=%s attempt=%d error=%s", what, attempt + 1, last)
    if last.startswith("HTTP "):
        return int(last[5:]), None
    raise PhoneActionError(f"{what}: {last}")
