"""Time limits on what an HTTP client sends, so slow clients cannot hold connections (slowloris).

- Request headers: aiohttp closes a connection that has not delivered a complete request within
  its keep-alive timeout, counted from the connection's start and from each answer: `serve` sets it
  to `server.request_timeout_seconds` (idle keep-alive connections close after that long too).
- Request body: read in full within the same time before the handler runs (`body_deadline`), else
  408 and the connection is closed. A webhook's form is a few hundred bytes; a client that needs
  longer is not a phone network.
WebSocket streams have no body and are not limited here (their own start timeout applies).

A request aiohttp cannot parse (a 10 KB request line, a broken header) is answered 400 by aiohttp
and logged by it with a traceback; it is the client's mistake, so `install` makes that one line.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("gateway")


def install(app: web.Application, seconds: float) -> None:
    """The body deadline on every route, and malformed requests logged as one line."""
    app.middlewares.append(body_deadline(seconds))
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server_log.filters):
        server_log.addFilter(_MalformedRequests())


class _MalformedRequests(logging.Filter):
    """aiohttp's "Error handling request" for a request it could not parse: a warning line saying
    what was wrong, without the traceback (errors in our handlers keep theirs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            where = record.getMessage()
            record.msg, record.args = "event=http_request_malformed status=%s error=%s (%s)", (
                exc.code, json.dumps(str(exc.message)[:120]), where)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def body_deadline(seconds: float):
    """Middleware: the request body (any but multipart, which handlers stream) within `seconds`."""

    @web.middleware
    async def deadline(request: web.Request, handler) -> web.StreamResponse:
        if request.body_exists and not request.content_type.startswith("multipart/"):
            try:
                await asyncio.wait_for(request.read(), seconds)
            except asyncio.TimeoutError:
                log.warning("event=request_body_timeout path=%s remote=%s timeout_s=%g", request.path,
                            request.remote, seconds)
                response = web.Response(status=408, text=f"request body not received within {seconds:g} s\n")
                response.force_close()  # then closed (after at most `serve`'s 1 s of lingering)
                return response
        return await handler(request)

    return deadline
