"""A fake of the parts of Twilio's REST API the gateway uses, on 127.0.0.1.

Checks HTTP Basic auth (Account SID + auth token) and the account in the path like Twilio does
(401 with code 20003), records every request (form fields included), answers JSON shaped like
Twilio's. Switches: `fail_next` (statuses to answer first, e.g. [503] to test retries; a 429 carries
`Retry-After: retry_after`), `stall` (seconds to sit on each request after recording it, as a slow
Twilio would) and `gone` (call SIDs that are already over: 404 with code 20404). `connections`
counts the TCP connections requests came on (distinct client addresses).

Answering-machine detection: a create asking for it is checked like Twilio checks it
(`MachineDetection` Enable|DetectMessageEnd, `AsyncAmd` true|false, `AsyncAmdStatusCallbackMethod`
POST|GET; 400 otherwise); `detect(call_sid, answered_by)` then does what Twilio does when it has
decided: a signed POST of AccountSid, CallSid, AnsweredBy and MachineDetectionDuration to the
call's `AsyncAmdStatusCallback`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway.clock import monotonic
from gateway.telephony.twilio.signature import compute


@dataclass
class RestRequest:
    path: str
    call_sid: str | None
    form: dict
    at: float = field(default_factory=monotonic)


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
        self.created: dict[str, dict] = {}  # call SID -> the create request's form

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
        amd_error = self._amd_error(form)
        if amd_error:
            return web.json_response({"code": 21200, "message": amd_error, "status": 400}, status=400)
        sid = f"CA{next(self._ids):032x}"
        self.created[sid] = form
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

    @staticmethod
    def _amd_error(form: dict) -> str | None:
        detection = form.get("MachineDetection")
        if detection is not None and detection not in ("Enable", "DetectMessageEnd"):
            return f"MachineDetection must be Enable or DetectMessageEnd, not {detection!r}"
        if form.get("AsyncAmd", "false") not in ("true", "false"):
            return "AsyncAmd must be true or false"
        if form.get("AsyncAmdStatusCallbackMethod", "POST") not in ("POST", "GET"):
            return "AsyncAmdStatusCallbackMethod must be POST or GET"
        if form.get("AsyncAmd") == "true" and not detection:
            return "AsyncAmd needs MachineDetection"
        return None

    async def detect(self, call_sid: str, answered_by: str, duration_ms: int = 2400) -> int:
        """Twilio has decided who answered: post it, signed, to the call's AsyncAmdStatusCallback.
        Returns the HTTP status the callback answered with."""
        create = self.created[call_sid]
        url = create["AsyncAmdStatusCallback"]
        form = {"AccountSid": self.account_sid, "CallSid": call_sid, "AnsweredBy": answered_by,
                "MachineDetectionDuration": str(duration_ms)}
        headers = {"X-Twilio-Signature": compute(self.auth_token, url, form)}
        async with aiohttp.ClientSession() as s:
            async with s.post(url, data=form, headers=headers) as r:
                return r.status
