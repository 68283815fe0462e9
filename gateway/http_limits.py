"""Time limits on what an HTTP client sends, so slow clients cannot hold connections (slowloris).

- Request headers: aiohttp closes a connection that has not delivered a complete request within
  its keep-alive timeout, counted from the connection's start and from each answer: `serve` sets it
  to `server.request_timeout_seconds` (idle keep-alive connections close after that long too).
- Request body: read in full within the same time before the handler runs (`body_deadline`), else
  408 and the connection is closed. A webhook's form is a few hundred bytes; a client that needs
  longer is not a phone network.
WebSocket streams have no body and are not limited here (their own start timeout applies).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

log = logging.getLogger("gateway")


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
