"""Fakes of the Telnyx, Plivo and Vonage REST calls the gateway makes (hang-up; Telnyx transfer), on 127.0.0.1.

Telnyx Call Control: `POST /v2/calls/{call_control_id}/actions/{hangup|transfer}` with
`Authorization: Bearer <API key>` (else 401 `{"errors": [...]}`); a call that is already over
answers 422 with error code 90018. Plivo: `DELETE /v1/Account/{auth_id}/Call/{call_uuid}/` with
HTTP Basic auth (auth id, auth token; else 401) answers 204, or 404 when the call is over.
Vonage: `PUT /v1/calls/{uuid}` `{"action": "hangup"}` with `Authorization: Bearer <JWT RS256 signed
with the application's private key, claims application_id, iat, exp, jti>` (else 401) answers 204,
or 404 when the call is over.
Every request is recorded with its arrival time; `fail_next` answers statuses first (retries).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from aiohttp import web

from gateway.clock import monotonic


@dataclass
class NetRequest:
    action: str  # hangup, transfer
    call_id: str
    body: dict
    at: float = field(default_factory=monotonic)


class _FakeRest:
    def __init__(self):
        self.requests: list[NetRequest] = []
        self.rejected: list[str] = []
        self.fail_next: list[int] = []
        self.gone: set[str] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class FakeTelnyxRest(_FakeRest):
    def __init__(self, api_key: str):
        super().__init__()
        self.api_key = api_key

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/calls/{call}/actions/{action}", self._action)

    async def _action(self, request: web.Request) -> web.Response:
        call, action = request.match_info["call"], request.match_info["action"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.requests.append(NetRequest(action, call, body if isinstance(body, dict) else {}))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.rejected.append(request.path)
            return web.json_response({"errors": [{"code": "10009", "title": "Authentication failed"}]}, status=401)
        if self.fail_next:
            return web.json_response({"errors": [{"code": "10007", "title": "Unexpected error"}]},
                                     status=self.fail_next.pop(0))
        if call in self.gone:
            return web.json_response({"errors": [{"code": "90018", "title": "Call has already ended",
                                                  "detail": "This call is no longer active"}]}, status=422)
        if action not in ("hangup", "transfer") or (action == "transfer" and not body.get("to")):
            return web.json_response({"errors": [{"code": "10015", "title": "Invalid parameter"}]}, status=422)
        self.gone.add(call)
        return web.json_response({"data": {"result": "ok"}})


class FakePlivoRest(_FakeRest):
    def __init__(self, auth_id: str, auth_token: str):
        super().__init__()
        self.auth_id, self.auth_token = auth_id, auth_token

    def routes(self, app: web.Application) -> None:
        app.router.add_delete("/v1/Account/{account}/Call/{call}/", self._hang_up)

    async def _hang_up(self, request: web.Request) -> web.Response:
        call = request.match_info["call"]
        self.requests.append(NetRequest("hangup", call, {}))
        expected = "Basic " + base64.b64encode(f"{self.auth_id}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != expected or request.match_info["account"] != self.auth_id:
            self.rejected.append(request.path)
            return web.json_response({"error": "authentication failed"}, status=401)
        if self.fail_next:
            return web.json_response({"error": "server error"}, status=self.fail_next.pop(0))
        if call in self.gone:
            return web.json_response({"error": "not found"}, status=404)
        self.gone.add(call)
        return web.Response(status=204)


class FakeVonageRest(_FakeRest):
    def __init__(self, application_id: str, public_key_pem: bytes):
        super().__init__()
        self.application_id, self.public_key = application_id, public_key_pem

    def routes(self, app: web.Application) -> None:
        app.router.add_put("/v1/calls/{call}", self._modify)

    async def _modify(self, request: web.Request) -> web.Response:
        import jwt

        call = request.match_info["call"]
        try:
            body = await request.json()
        except ValueError:
            body = {}
        self.requests.append(NetRequest(body.get("action", "") if isinstance(body, dict) else "", call,
                                        body if isinstance(body, dict) else {}))
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            claims = jwt.decode(token, self.public_key, algorithms=["RS256"], options={"require": ["iat", "jti"]})
            ok = scheme == "Bearer" and claims.get("application_id") == self.application_id
        except jwt.PyJWTError:
            ok = False
        if not ok:
            self.rejected.append(request.path)
            return web.json_response({"title": "Unauthorized"}, status=401)
        if self.fail_next:
            return web.json_response({"title": "Server error"}, status=self.fail_next.pop(0))
        if call in self.gone:
            return web.json_response({"title": "Not found"}, status=404)
        if self.requests[-1].action != "hangup":
            return web.json_response({"title": "Bad request"}, status=400)
        self.gone.add(call)
        return web.Response(status=204)
