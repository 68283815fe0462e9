"""HTTP tools on their own: the JSON Schema subset, and every outcome the model can be handed."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from gateway.config import HttpTool
from gateway.httptools import schema_errors, run_http_tool
from gateway.logs import CallLog

SCHEMA = {"type": "object", "required": ["id", "qty"], "additionalProperties": False, "properties": {
    "id": {"type": "string", "pattern": "^[A-Z][0-9]{3}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 9},
    "kind": {"enum": ["new", "move"]}, "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}}}


@pytest.mark.parametrize("value,problem", [
    ({"id": "A123", "qty": 2}, None),
    ({"id": "A123", "qty": 2, "kind": "move", "tags": ["x"]}, None),
    ({"qty": 2}, "$.id: required"),
    ({"id": "a1", "qty": 2}, "$.id: does not match"),
    ({"id": "A123", "qty": 2.5}, "$.qty: expected integer"),
    ({"id": "A123", "qty": True}, "$.qty: expected integer"),
    ({"id": "A123", "qty": 10}, "$.qty: above 9"),
    ({"id": "A123", "qty": 1, "kind": "old"}, "$.kind: must be one of"),
    ({"id": "A123", "qty": 1, "tags": ["a", 1]}, "$.tags[1]: expected string"),
    ({"id": "A123", "qty": 1, "tags": ["a", "b", "c"]}, "$.tags: more than 2 items"),
    ({"id": "A123", "qty": 1, "extra": 1}, "$.extra: not allowed"),
    ([], "$: expected object"),
])
def test_schema_subset(value, problem):
    errors = schema_errors(SCHEMA, value)
    assert (not errors) if problem is None else any(e.startswith(problem) for e in errors), errors


@pytest.fixture
async def slow_and_failing_api():
    async def slow(request):
        await asyncio.sleep(2)
        return web.json_response({})

    async def broken(request):
        return web.Response(status=503, text="maintenance")

    app = web.Application()
    app.router.add_post("/slow", slow)
    app.router.add_post("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_timeouts_errors_and_unreachable_services_are_told_plainly(slow_and_failing_api):
    log = CallLog(logging.getLogger("gateway"), call="CAtest")
    tool = lambda url, t=1.0: HttpTool(name="t", description="d", url=url, timeout_seconds=t)  # noqa: E731
    out = await run_http_tool(tool(f"{slow_and_failing_api}/slow", 0.3), {}, log)
    assert out == {"ok": False, "error": "the t service did not answer within 0.3 s"}
    out = await run_http_tool(tool(f"{slow_and_failing_api}/broken"), {}, log)
    assert out["ok"] is False and out["status"] == 503 and out["body"] == "maintenance"
    out = await run_http_tool(tool("http://127.0.0.1:9/x"), {}, log)
    assert out["ok"] is False and "unreachable" in out["error"]
