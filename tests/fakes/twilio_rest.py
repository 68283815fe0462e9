"""A fake of the parts of Twilio's REST API the gateway uses, on 127.0.0.1.

Checks HTTP Basic auth (Account SID + auth token) and the account in the path like Twilio does
(401 with code 20003), records every request (form fields included), answers JSON shaped like
Twilio's. Switches: `fail_next` (statuses to answer first, e.g. [503] to test retries; a 429 carries
`Retry-After: retry_after`), `stall` (seconds to sit on each request after recording it, as a slow
Twilio would) and `gone` (call SIDs that are already over: 404 with code 20404). `connections`
counts the TCP connections requests came on (distinct client addresses).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class RestRequest:
    path: str
    call_sid: str | None
    form: dict
    at: float = field(default_factory=time.monotonic)


class FakeTwilioRest:
    def __init__(self, account_sid: str, auth_token: str):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.requests: list[RestRequest] = []
        self.rejected: list[str] = []
        self.fail_next: list[int] = []
        self.retry_after = "1"
        self.stall = 0.0
        self.peers: set = set()
        self.gone: set[str] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._count_connections])
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls.json", self._create)
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self._update)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def connections(self) -> int:
        return len(self.peers)

    @web.middleware
    async def _count_connections(self, request: web.Request, handler):
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return await handler(request)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != expected or request.match_info["account"] != self.account_sid:
            self.rejected.append(request.path)
            return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
        if self.fail_next:
            status = self.fail_next.pop(0)
            if status == 429:
                return web.json_response({"code": 20429, "message": "Too Many Requests", "status": 429},
                                         status=429, headers={"Retry-After": self.retry_after})
            return web.json_response({"code": 20500, "message": "Internal Server Error", "status": status},
                                     status=status)
        return None

    async def _create(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append(RestRequest(request.path, None, form))
        await asyncio.sleep(self.stall)
        if (err := self._auth_error(request)) is not None:
            return err
        missing = [k for k in ("To", "From") if not form.get(k)] + ([] if form.get("Url") or form.get("Twiml") else ["Url"])
        if missing:
            return web.json_response({"code": 21201, "message": f"No '{missing[0]}' number is specified",
                                      "status": 400}, status=400)
        sid = f"CA{next(self._ids):032x}"
        return web.json_response({"sid": sid, "status": "queued", "to": form["To"], "from": form["From"],
                                  "account_sid": self.account_sid}, status=201)

    async def _update(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        call = request.match_info["call"]
        self.requests.append(RestRequest(request.path, call, form))
        await asyncio.sleep(self.stall)
        if (err := self._auth_error(request)) is not None:
            return err
        if call in self.gone:
            return web.json_response({"code": 20404, "message": f"The requested resource {request.path} was not found",
                                      "status": 404}, status=404)
        if form.get("Status") == "completed":
            self.gone.add(call)
        return web.json_response({"sid": call, "status": "completed" if form.get("Status") else "in-progress"})
