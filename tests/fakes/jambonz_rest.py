"""A fake of jambonz's REST call update (hang-up), on 127.0.0.1: `PUT /v1/Accounts/{account}/Calls/{call}`
with `Authorization: Bearer <API key>` (else 401) and `{"call_status": "completed"}` answers 204, or
404 when the call is over. Every request is recorded with its arrival time."""

from __future__ import annotations

from aiohttp import web

from tests.fakes.network_rest import NetRequest, _FakeRest


class FakeJambonzRest(_FakeRest):
    def __init__(self, api_key: str):
        super().__init__()
        self.api_key = api_key

    def routes(self, app: web.Application) -> None:
        app.router.add_put("/v1/Accounts/{account}/Calls/{call}", self.update)

    async def update(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.rejected.append("bad auth")
            return web.json_response({"msg": "unauthorized"}, status=401)
        body = await request.json()
        call = request.match_info["call"]
        self.requests.append(NetRequest("hangup" if body.get("call_status") == "completed" else "update", call, body))
        if call in self.gone:
            return web.json_response({"msg": "call not found"}, status=404)
        self.gone.add(call)
        return web.Response(status=204)
