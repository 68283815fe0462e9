"""The model socket (providers/wsclient.py under wsbase.py) on aiohttp's client, against loopback
endpoints served by `websockets` (a second implementation of the protocol): what the providers
rely on at the socket level. A refused upgrade as its HTTP status, the close frame's code and
reason, frames too big or binary, a connection dropped mid-reply, a close the peer never answers,
the environment's proxy, and more sockets at once through the app's session than aiohttp's
default connection limit."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from http import HTTPStatus

import aiohttp
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from gateway.config import Persona, PersonaAudio
from gateway.logs import CallLogger
from gateway.providers import wsclient
from gateway.providers.base import AudioDelta, ProviderConnectError, ProviderError, SessionReady
from gateway.providers.gemini import GeminiLive, GeminiProviderConfig
from gateway.providers.openai import OpenAIProviderConfig, OpenAIRealtime
from gateway.web_state import HTTP

LOG = CallLogger(logging.getLogger("gateway"), call="CAsock")
DELTA = {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "i1",
         "delta": base64.b64encode(bytes(160)).decode()}


class Endpoint:
    """An OpenAI-Realtime-shaped endpoint (Gemini's `setup` -> `setupComplete` too): the set-up
    answered, then `then(ws)` plays the test's part; or every upgrade refused with `status`."""

    def __init__(self, then=None, status: HTTPStatus | None = None):
        self.then, self.status = then, status
        self.connections: list[ServerConnection] = []
        self.server = None

    async def __aenter__(self) -> "Endpoint":
        def refuse(conn, request):
            return conn.respond(self.status, "refused\n") if self.status else None
        self.server = await serve(self._handle, "127.0.0.1", 0, process_request=refuse, max_size=None,
                                  ping_interval=None)  # only our pings
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/realtime"

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        first = json.loads(await ws.recv())
        await ws.send(json.dumps({"setupComplete": {}} if "setup" in first else
                                 {"type": "session.updated", "session": {"id": "sess_1"}}))
        with contextlib.suppress(ConnectionClosed):  # the tests that drop it see it dropped
            if self.then is not None:
                await self.then(ws)
            async for _ in ws:  # until the client closes
                pass


def openai(url: str, http=None, timeout: float = 3.0) -> OpenAIRealtime:
    return OpenAIRealtime(Persona(provider="openai", audio=PersonaAudio("pcmu", "pcmu")),
                          OpenAIProviderConfig(url=url, api_key="sk-sock-test", connect_timeout_seconds=timeout),
                          LOG, http=http)


async def events_until_end(provider, seconds: float = 3.0) -> list:
    async def read():
        return [ev async for ev in provider.events()]
    return await asyncio.wait_for(read(), seconds)


@pytest.mark.parametrize("status, refused", [(HTTPStatus.UNAUTHORIZED, True), (HTTPStatus.FORBIDDEN, False),
                                             (HTTPStatus.SERVICE_UNAVAILABLE, False)])
async def test_a_refused_upgrade_says_its_status_and_401_means_the_key(status, refused):
    async with Endpoint(status=status) as ep:
        p = openai(ep.url)
        with pytest.raises(ProviderConnectError) as e:
            await p.connect()
        await p.close()
    assert str(e.value) == f"cannot open OpenAI session: HTTP {status.value}"
    assert e.value.auth_refused is refused
    assert p._own_http is None  # the session it made for itself is closed again


async def test_no_endpoint_and_no_answer_are_connect_errors_in_time():
    async with Endpoint() as ep:
        url = ep.url
    p = openai(url)  # the port is closed now
    with pytest.raises(ProviderConnectError, match="cannot open OpenAI session: ClientConnectorError"):
        await p.connect()

    async def mute(reader, writer):  # accepts TCP, never answers the upgrade
        await reader.read()
    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    async with server:
        p = openai(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(ProviderConnectError, match="timed out"):
            await p.connect()
        assert time.monotonic() - t0 < 2
        assert p._own_http is None


async def test_the_close_frame_code_and_reason_reach_the_provider():
    async def close_1008(ws):
        await ws.close(1008, "quota exceeded for this project")

    async with Endpoint(close_1008) as ep:
        p = GeminiLive(Persona(provider="gemini", model="gemini-test", audio=PersonaAudio("pcm16", "pcm24")),
                       GeminiProviderConfig(url=ep.url, api_key="AIza-sock-test"), LOG)
        await p.connect()
        events = await events_until_end(p)
        await p.close()
    assert events[0] == SessionReady()
    # Gemini maps close codes to errors: 1008 is fatal for the call, with the service's reason.
    assert events[-1] == ProviderError("close_1008", "Gemini closed the session (code 1008: quota exceeded "
                                       "for this project)", fatal=True, renewable=False)


async def test_an_ordinary_close_is_a_renewable_end():
    async def going_away(ws):
        await ws.close(1001, "server restarting")

    async with Endpoint(going_away) as ep:
        p = openai(ep.url)
        await p.connect()
        events = await events_until_end(p)
        await p.close()
    assert events[-1] == ProviderError("upstream_closed", "OpenAI closed the session (code 1001)", fatal=True,
                                       renewable=True)


async def test_a_connection_dropped_mid_reply_ends_the_session_renewably():
    async def drop(ws):
        for _ in range(3):
            await ws.send(json.dumps(DELTA))
        ws.transport.abort()  # no close frame: the TCP connection is just gone

    async with Endpoint(drop) as ep:
        p = openai(ep.url)
        await p.connect()
        events = await events_until_end(p)
        await p.close()
    assert [type(e) for e in events] == [SessionReady, AudioDelta, AudioDelta, AudioDelta, ProviderError]
    last = events[-1]
    assert (last.code, last.fatal, last.renewable) == ("upstream_closed", True, True)
    assert "connection lost" in last.message


async def test_a_frame_over_the_size_limit_ends_the_session_instead_of_hanging(monkeypatch, caplog):
    monkeypatch.setattr(wsclient, "MAX_EVENT_BYTES", 64 * 1024)

    async def too_big(ws):
        await ws.send(json.dumps({**DELTA, "delta": "A" * 100_000}))

    async with Endpoint(too_big) as ep:
        p = openai(ep.url)
        await p.connect()
        with caplog.at_level(logging.WARNING, logger="gateway"):
            events = await events_until_end(p)
        await p.close()
        await asyncio.wait_for(ep.connections[0].wait_closed(), 2)
        code = ep.connections[0].close_code
    last = events[-1]
    assert (last.code, last.fatal, last.renewable) == ("upstream_closed", True, True)
    assert "exceeds limit" in last.message
    assert code == 1009  # the service is told why: message too big
    assert "event=model_socket_error" in caplog.text


async def test_a_binary_frame_is_a_bad_event_and_the_session_goes_on(caplog):
    async def binary_then_text(ws):
        await ws.send(b"\x00\x01 not for us")
        await ws.send(json.dumps(DELTA))

    async with Endpoint(binary_then_text) as ep:
        p = openai(ep.url)
        await p.connect()
        with caplog.at_level(logging.WARNING, logger="gateway"):
            events = p.events()
            assert await asyncio.wait_for(anext(events), 2) == SessionReady("sess_1")
            assert isinstance(await asyncio.wait_for(anext(events), 2), AudioDelta)
        await p.close()
    assert "event=model_bad_event" in caplog.text and "binary frame from OpenAI" in caplog.text


async def test_appends_reach_the_service_as_text_frames_with_the_auth_header():
    got: list = []

    async def record(ws):
        got.append(ws.request.headers.get("Authorization"))
        got.append(await ws.recv())

    async with Endpoint(record) as ep:
        p = openai(ep.url)
        await p.connect()
        await p.send_audio(b"\xff" * 160)
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        await p.close()
        extensions = ep.connections[0].request.headers.get("Sec-WebSocket-Extensions")
    assert got[0] == "Bearer sk-sock-test" and extensions is None  # no permessage-deflate offered
    assert isinstance(got[1], str) and json.loads(got[1])["type"] == "input_audio_buffer.append"


async def test_a_close_the_peer_never_answers_is_bounded_and_drops_the_connection():
    """The service stops reading (its receive window full, our send buffer backed up) and never
    answers the close: close() still returns in about CLOSE_SECONDS and the connection is
    aborted, its unsent bytes dropped, instead of lingering until they drain (never)."""
    stuck, done = asyncio.Event(), asyncio.Event()

    async def stop_reading(ws):
        ws.transport.pause_reading()
        stuck.set()
        await done.wait()
        ws.transport.abort()

    async with Endpoint(stop_reading) as ep:
        p = openai(ep.url)
        await p.connect()
        await stuck.wait()
        transport = p._transport
        sender = asyncio.create_task(_flood(p))
        for _ in range(500):  # until the socket's buffers are full and bytes wait in ours
            if transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.01)
        assert transport.get_write_buffer_size()
        t0 = time.monotonic()
        await p.close()
        took = time.monotonic() - t0
        await asyncio.wait_for(sender, 1)  # the blocked send ends quietly
        done.set()
    assert took < wsclient.CLOSE_SECONDS + 0.5
    assert transport.is_closing() and transport.get_write_buffer_size() == 0  # aborted, not draining


async def _flood(p) -> None:
    while not p._closed:
        await p.send_audio(bytes(48000))


async def test_a_provider_without_a_session_closes_the_one_it_made():
    async with Endpoint() as ep:
        p = openai(ep.url)
        await p.connect()
        own = p._own_http
        assert own is not None and not own.closed
        await p.close()
        assert own.closed and p._own_http is None
        await p.close()  # idempotent


def test_the_proxy_comes_from_the_environment_as_websockets_chose_it(monkeypatch):
    for var in ("http_proxy", "https_proxy", "ws_proxy", "wss_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    assert wsclient.env_proxy("wss://api.openai.com/v1/realtime") == (None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pa%40ss@proxy.example:3128")
    assert wsclient.env_proxy("wss://api.openai.com/v1/realtime") == (
        "http://proxy.example:3128", {"Proxy-Authorization": "Basic " + base64.b64encode(b"user:pa@ss").decode()})
    monkeypatch.setenv("WSS_PROXY", "http://ws-proxy.example:8080")
    assert wsclient.env_proxy("wss://api.openai.com/v1/realtime") == ("http://ws-proxy.example:8080", None)
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert wsclient.env_proxy("wss://api.openai.com/v1/realtime") == (None, None)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("WSS_PROXY")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.example:8000")
    assert wsclient.env_proxy("wss://dashscope.aliyuncs.com/x") == (None, None)  # not for TLS
    assert wsclient.env_proxy("ws://dashscope.aliyuncs.com/x") == ("http://plain.example:8000", None)
    monkeypatch.setenv("HTTPS_PROXY", "socks5h://socks.example:1080")
    with pytest.raises(ValueError, match="only http:// proxies"):
        wsclient.env_proxy("wss://open.bigmodel.cn/api/paas/v4/realtime")


async def test_the_environment_proxy_is_dialled(monkeypatch):
    for var in ("http_proxy", "https_proxy", "ws_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    async with Endpoint() as ep:
        async with Endpoint() as closed:
            dead_port = closed.server.sockets[0].getsockname()[1]
        monkeypatch.setenv("WS_PROXY", f"http://127.0.0.1:{dead_port}")
        p = openai(ep.url)
        with pytest.raises(ProviderConnectError, match="ClientProxyConnectionError"):
            await p.connect()
        monkeypatch.setenv("WS_PROXY", "socks5://127.0.0.1:1080")
        with pytest.raises(ProviderConnectError, match="only http:// proxies"):
            await p.connect()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        await p.connect()  # exempted: straight to the endpoint
        await p.close()


async def test_more_model_sockets_than_aiohttps_default_limit_share_the_apps_session(make_gateway):
    """aiohttp's connector allows 100 connections by default, and a model socket holds its
    connection for the whole call: the app's session has no limit, so call 101 does not wait."""
    gw = await make_gateway()
    http = gw.app[HTTP]
    assert http.connector.limit == 0
    async with Endpoint() as ep:
        providers = [openai(ep.url, http=http, timeout=10) for _ in range(110)]
        try:
            await asyncio.wait_for(asyncio.gather(*(p.connect() for p in providers)), 20)
            assert len(ep.connections) == 110 and all(p._own_http is None for p in providers)
        finally:
            await asyncio.gather(*(p.close() for p in providers))
    assert not http.closed  # closing a call's socket leaves the shared session alone


@pytest.mark.looptime
async def test_a_peer_that_stops_answering_pings_ends_the_session_renewably():
    """No frame for PING_SECONDS: a ping; no pong within half of that: the socket is given up
    (on the fast-forwarded clock, so the half minute takes no time)."""
    async def go_deaf(ws):
        ws.transport.pause_reading()  # our pings are never read, so never answered
        await asyncio.sleep(3600)

    async with Endpoint(go_deaf) as ep:
        p = openai(ep.url)
        await p.connect()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        events = await events_until_end(p, 60)
        took = loop.time() - t0
        await p.close()
        for ws in ep.connections:
            ws.transport.abort()
    last = events[-1]
    assert (last.code, last.fatal, last.renewable) == ("upstream_closed", True, True)
    assert "No PONG" in last.message
    assert wsclient.PING_SECONDS <= took <= wsclient.PING_SECONDS * 1.5 + 2


@pytest.mark.looptime
async def test_a_session_total_timeout_does_not_end_a_model_socket():
    """The app's session keeps aiohttp's default total timeout (300 s) for its HTTP requests; it
    covers a model socket's upgrade only, never the call that follows (here 5 s against 60 s of
    a call, pings answered, on the fast-forwarded clock)."""
    heard: list = []

    async def listen(ws):
        async for raw in ws:
            heard.append(json.loads(raw)["type"])

    async with Endpoint(listen) as ep:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            p = openai(ep.url, http=http)
            await p.connect()
            events = p.events()
            assert await anext(events) == SessionReady("sess_1")
            await asyncio.sleep(60)
            await p.send_audio(b"\xff" * 160)
            for _ in range(100):
                if heard:
                    break
                await asyncio.sleep(0.01)
            assert p._queue.empty() and not p._ws.closed  # no error, still open
            await p.close()
    assert heard == ["input_audio_buffer.append"]
