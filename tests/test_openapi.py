"""/api/openapi.json: the operator API's OpenAPI 3.1 document. Every /api/ route of the running app
is described and every described route exists; the document is valid OpenAPI; and what the
handlers really answer (live calls, history, one call, per-bot figures, errors) matches it."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import jsonschema
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.calllog_helpers import TOKEN, api
from tests.phone_helpers import dial, ended


def routes(app) -> set[tuple[str, str]]:
    """(path template, method) of every /api/ route the app really serves (HEAD comes with GET)."""
    return {(route.resource.canonical, route.method.lower()) for route in app.router.routes()
            if route.resource is not None and route.resource.canonical.startswith("/api/")
            and route.method != "HEAD"}


def described(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item
            if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace")}


class Checker:
    """Validates a response body against the document's schema for path, method and status."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.registry = Registry().with_resource("urn:api", Resource(contents=doc, specification=DRAFT202012))

    def schema_for(self, path: str, method: str, status: int) -> dict:
        response = self.doc["paths"][path][method]["responses"][str(status)]
        if "$ref" in response:
            response = self.doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        return response["content"]["application/json"]["schema"]

    def check(self, path: str, method: str, status: int, body) -> None:
        schema = {"$ref": "urn:api" + self.schema_for(path, method, status)["$ref"]} \
            if "$ref" in self.schema_for(path, method, status) else self.schema_for(path, method, status)
        schema = json.loads(json.dumps(schema).replace('"#/components', '"urn:api#/components'))
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry,
                                                    format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, (path, method, status, errors[:5])


async def test_every_route_is_described_and_every_description_is_a_route(make_gateway, fake_glm):
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    status, doc = await api(gw.url, "/api/openapi.json")
    assert status == 200
    validate(doc)  # raises on anything that is not valid OpenAPI 3.1
    assert doc["openapi"].startswith("3.")
    served, documented = routes(gw.app), described(doc)
    assert served - documented == set(), f"routes with no description: {served - documented}"
    assert documented - served == set(), f"described but not served: {documented - served}"
    assert len(served) >= 8
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert {"401", "429"} <= set(op["responses"]), (path, method)  # the guard on every route
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path


async def test_the_document_needs_the_operator_token(make_gateway, fake_glm):
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    for token in (None, "wrong-token"):
        status, body = await api(gw.url, "/api/openapi.json", token)
        assert status == 401 and set(body) == {"error"}
    closed = await make_gateway(glm=fake_glm)
    assert (await api(closed.url, "/api/openapi.json", "anything"))[0] == 401


async def test_what_the_handlers_answer_matches_the_document(make_gateway, fake_glm):
    gw = await make_gateway(glm=fake_glm, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    checker = Checker((await api(gw.url, "/api/openapi.json"))[1])
    phone = await dial(gw.url, bot="glm-greeter", caller="+15550000009")
    await phone.silence(1.5)  # the greeting plays: the live call has a last line
    status, live = await api(gw.url, "/api/live")
    assert status == 200 and live["calls"] and live["calls"][0]["last"] is not None
    checker.check("/api/live", "get", 200, live)
    status, listing = await api(gw.url, "/api/calls?live=true")
    assert listing["calls"][0]["live"]
    checker.check("/api/calls", "get", status, listing)
    status, body = await api(gw.url, f"/api/calls/{phone.call_sid}/hangup", method="POST")
    checker.check("/api/calls/{call_id}/hangup", "post", status, body)
    assert status == 202
    await phone.wait_closed(3)
    await ended(gw, phone)
    await asyncio.sleep(0.1)
    for path, template in [("/api/calls", "/api/calls"), (f"/api/calls/{phone.call_sid}", "/api/calls/{call_id}"),
                           ("/api/bots", "/api/bots"), ("/api/calls?end_reason=operator_hangup", "/api/calls")]:
        status, body = await api(gw.url, path)
        assert status == 200, (path, body)
        checker.check(template, "get", status, body)
    call = (await api(gw.url, f"/api/calls/{phone.call_sid}"))[1]
    assert call["end_reason"] == "operator_hangup" and any(e["kind"] == "bot" for e in call["timeline"])
    # Errors have the shape the document gives them.
    for path, template, method, want in [
            ("/api/calls/CAnone", "/api/calls/{call_id}", "get", 404),
            ("/api/calls/CAnone/recording", "/api/calls/{call_id}/recording", "get", 404),
            (f"/api/calls/{phone.call_sid}/hangup", "/api/calls/{call_id}/hangup", "post", 404),
            ("/api/calls?limit=0", "/api/calls", "get", 400),
            ("/api/bots?since=yesterday", "/api/bots", "get", 400)]:
        status, body = await api(gw.url, path, method=method.upper())
        assert status == want, (path, status, body)
        checker.check(template, method, status, body)
    status, body = await api(gw.url, "/api/live", token="wrong")
    checker.check("/api/live", "get", status, body)
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/api/calls", json={"to": "12", "bot": "glm-greeter"},
                          headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 400
            checker.check("/api/calls", "post", 400, await r.json())
