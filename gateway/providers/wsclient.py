"""The model socket: aiohttp's WebSocket client with the options every realtime model gets.

aiohttp, the phone side's library too: on one GLM call's traffic it costs 0.73-0.81x the CPU of
`websockets` (bench/ws_client_cost.py). Sockets are opened through a `ClientSession` (the app's
one, whose connector has no connection limit: a model socket holds its connection for the whole
call, so a limit would cap concurrent calls). What `websockets` did by itself and aiohttp does
not is here: the environment's proxy for ws:// and wss:// URLs, and a close that cannot outlast
its bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import urllib.request
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

MAX_EVENT_BYTES = 16 * 1024 * 1024  # audio deltas of ~1.5 s in base64 are ~100 KB; leave room
# A WebSocket ping after this long without a frame from the service; no pong within half of it
# ends the socket (a dead TCP path is noticed even where the service sends no heartbeat events).
PING_SECONDS = 20.0
# The close handshake gets this long; then the TCP connection is dropped, whatever is unsent.
CLOSE_SECONDS = 1.0


async def open_socket(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                      timeout: float) -> aiohttp.ClientWebSocketResponse:
    """Open one model socket within `timeout` s. Raises what aiohttp raises (a refused upgrade is
    `WSServerHandshakeError` with the HTTP status), `TimeoutError`, or ValueError (a proxy that
    cannot be used)."""
    proxy, proxy_headers = env_proxy(url)
    async with asyncio.timeout(timeout):
        return await session.ws_connect(
            # No permessage-deflate: base64 audio barely compresses, and deflating every append and
            # inflating every delta was the largest cost on the model socket.
            url, headers=headers, max_msg_size=MAX_EVENT_BYTES, compress=0, heartbeat=PING_SECONDS,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_SECONDS),
            proxy=proxy, proxy_headers=proxy_headers)


def transport_of(ws: aiohttp.ClientWebSocketResponse) -> asyncio.Transport | None:
    """The TCP (or TLS) transport under a client WebSocket, kept to abort it. aiohttp offers no
    public handle on it, and its own close ends in a plain transport close, which keeps the
    socket until its send buffer drains: against a stuck peer, never."""
    conn = ws._response.connection  # noqa: SLF001 - see above; tests/test_model_socket.py covers it
    return conn.transport if conn is not None else None


async def close_socket(ws: aiohttp.ClientWebSocketResponse, transport: asyncio.Transport | None,
                       seconds: float = CLOSE_SECONDS) -> None:
    """The close handshake for at most `seconds`; the transport is aborted if that did not
    finish, left bytes unsent, or was cancelled."""
    done = False
    try:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), seconds)
            done = True
    finally:
        if transport is not None and (not done or transport.get_write_buffer_size()):
            transport.abort()


def env_proxy(url: str) -> tuple[str | None, dict[str, str] | None]:
    """The HTTP proxy the environment names for a ws:// or wss:// URL, picked as `websockets` (the
    model socket's library before) did: `wss_proxy`/`ws_proxy`, then `https_proxy`, then (ws://
    only) `http_proxy`, unless `no_proxy` exempts the host; its credentials go in a
    Proxy-Authorization header. (aiohttp's `trust_env` would read only WSS_PROXY, and ~/.netrc.)
    Raises ValueError for a proxy aiohttp cannot use (SOCKS, or one reached over TLS)."""
    proxies = urllib.request.getproxies()
    if not proxies:
        return None, None
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    if urllib.request.proxy_bypass(f"{parts.hostname or ''}:{parts.port or (443 if secure else 80)}"):
        return None, None
    scheme = next((s for s in (("wss", "https") if secure else ("ws", "https", "http")) if s in proxies), None)
    if scheme is None:
        return None, None
    proxy = URL(proxies[scheme])
    if proxy.scheme != "http":
        raise ValueError(f"the {scheme} proxy is a {proxy.scheme}:// proxy; only http:// proxies are supported")
    if not proxy.user:
        return str(proxy), None
    credentials = base64.b64encode(f"{proxy.user}:{proxy.password or ''}".encode()).decode("ascii")
    return str(proxy.with_user(None)), {"Proxy-Authorization": f"Basic {credentials}"}


def describe_connect_error(e: BaseException) -> str:
    """A failed open in a few words for the connect error (never the URL: it may carry a key, and
    aiohttp's response errors name it)."""
    if isinstance(e, aiohttp.ClientHttpProxyError):
        return f"the proxy answered HTTP {e.status}"
    if isinstance(e, aiohttp.ClientResponseError):  # the upgrade was refused, or answered wrongly
        return f"HTTP {e.status}" if e.status != 101 else f"bad upgrade response ({e.message})"
    if isinstance(e, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}"
