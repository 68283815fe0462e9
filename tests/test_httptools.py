"""HTTP tools on their own: JSON Schema (Draft 2020-12) for the persona's schema at load and the
model's arguments at call time, and every outcome the model can be handed — never an exception."""

from __future__ import annotations

import asyncio
import logging
import textwrap

import aiohttp
import pytest
from aiohttp import web

from gateway.config import ConfigError, HttpTool, load_persona
from gateway.httptools import argument_problems, run_http_tool
from gateway.logs import CallLog

LOG = CallLog(logging.getLogger("gateway"), call="CAtest")
SCHEMA = {"type": "object", "required": ["id", "qty"], "additionalProperties": False, "properties": {
    "id": {"type": "string", "pattern": "^[A-Z][0-9]{3}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 9},
    "kind": {"enum": ["new", "move"]}, "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}}}


@pytest.mark.parametrize("value,problem", [
    ({"id": "A123", "qty": 2}, None),
    ({"id": "A123", "qty": 2, "kind": "move", "tags": ["x"]}, None),
    ({"qty": 2}, "$: 'id' is a required property"),
    ({"id": "a1", "qty": 2}, "$.id: 'a1' does not match"),
    ({"id": "A123", "qty": 2.5}, "$.qty: 2.5 is not of type 'integer'"),
    ({"id": "A123", "qty": True}, "$.qty: True is not of type 'integer'"),
    ({"id": "A123", "qty": 10}, "$.qty: 10 is greater than the maximum of 9"),
    ({"id": "A123", "qty": 1, "kind": "old"}, "$.kind: 'old' is not one of"),
    ({"id": "A123", "qty": 1, "tags": ["a", 1]}, "$.tags[1]: 1 is not of type 'string'"),
    ({"id": "A123", "qty": 1, "tags": ["a", "b", "c"]}, "$.tags: ['a', 'b', 'c'] is too long"),
    ({"id": "A123", "qty": 1, "extra": 1}, "$: Additional properties are not allowed ('extra' was unexpected)"),
    ([], "$: [] is not of type 'object'"),
])
def test_arguments_are_checked_and_each_problem_names_the_argument(value, problem):
    errors = argument_problems(SCHEMA, value)
    assert (not errors) if problem is None else any(e.startswith(problem) for e in errors), errors


@pytest.fixture
async def tool_api():
    """A business system: /echo answers what it got (and counts it), /deep answers JSON nested
    deeper than any parser recurses, /slow is slow, /broken is down."""
    state = {"seen": [], "peers": set()}

    @web.middleware
    async def count(request, handler):
        state["peers"].add(request.transport.get_extra_info("peername"))
        return await handler(request)

    async def echo(request):
        state["seen"].append(await request.json())
        return web.json_response({"got": state["seen"][-1]})

    async def deep(request):
        return web.Response(text="[" * 100_000 + "]" * 100_000, content_type="application/json")

    async def slow(request):
        await asyncio.sleep(2)
        return web.json_response({})

    async def broken(request):
        return web.Response(status=503, text="maintenance")

    app = web.Application(middlewares=[count])
    for path, handler in (("/echo", echo), ("/deep", deep), ("/slow", slow), ("/broken", broken)):
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def tool(url: str, parameters: dict | None = None, timeout: float = 1.0) -> HttpTool:
    return HttpTool(name="t", description="d", url=url, timeout_seconds=timeout,
                    parameters={"type": "object", **(parameters or {})})


# Keywords the old hand-written subset ignored: arguments breaking them reached the URL.
KEYWORDS = [
    ("anyOf", {"properties": {"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}}, {"a": 5}, {"a": 1.5},
     "$.a: 1.5 is not valid under any of the given schemas"),
    ("$ref", {"properties": {"a": {"$ref": "#/$defs/pos"}}, "$defs": {"pos": {"type": "integer", "minimum": 0}}},
     {"a": 3}, {"a": -1}, "$.a: -1 is less than the minimum of 0"),
    ("additionalProperties schema", {"properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
     {"a": "x", "b": 2}, {"b": "x"}, "$.b: 'x' is not of type 'integer'"),
    ("exclusiveMinimum", {"properties": {"a": {"type": "number", "exclusiveMinimum": 0}}}, {"a": 0.5}, {"a": 0},
     "$.a: 0 is less than or equal to the minimum of 0"),
    ("multipleOf", {"properties": {"a": {"type": "integer", "multipleOf": 5}}}, {"a": 10}, {"a": 7},
     "$.a: 7 is not a multiple of 5"),
    ("uniqueItems", {"properties": {"a": {"type": "array", "uniqueItems": True}}}, {"a": [1, 2]}, {"a": [1, 1]},
     "$.a: [1, 1] has non-unique elements"),
]


@pytest.mark.parametrize("keyword,schema,good,bad,problem", KEYWORDS, ids=[k[0] for k in KEYWORDS])
async def test_draft_2020_12_keywords_are_enforced_before_the_url_is_called(tool_api, session, keyword, schema,
                                                                           good, bad, problem):
    t = tool(f"{tool_api['url']}/echo", schema)
    out = await run_http_tool(t, bad, LOG, session)
    assert out == {"ok": False, "error": f"invalid arguments: {problem}"}
    assert tool_api["seen"] == []
    out = await run_http_tool(t, good, LOG, session)
    assert out == {"ok": True, "status": 200, "result": {"got": good}}


BROKEN_SCHEMAS = [
    ("{type: strng}", r"properties\.zip\.type: 'strng' is not a JSON Schema type \(one of array, boolean"),
    ("{type: string, pattern: '[0-9'}",
     r"properties\.zip\.pattern: '\[0-9' is not a 'regex' \(unterminated character set at position 0\)"),
    ("{type: string, minLength: '3'}", r"properties\.zip\.minLength: '3' is not of type 'integer'"),
    ("{$ref: '#/$defs/zip'}", r"properties\.zip\.\$ref: cannot resolve '#/\$defs/zip' \(only references inside"),
]


@pytest.mark.parametrize("zip_schema,message", BROKEN_SCHEMAS, ids=[b[0] for b in BROKEN_SCHEMAS])
def test_a_schema_that_cannot_work_is_refused_when_the_persona_loads(tmp_path, zip_schema, message):
    path = tmp_path / "x.yaml"
    path.write_text(textwrap.dedent(f"""
        provider: echo
        http_tools:
          - name: lookup
            description: d
            url: http://127.0.0.1:9/x
            parameters:
              type: object
              properties:
                zip: {zip_schema}
        """))
    with pytest.raises(ConfigError, match=rf"^{path}: http_tools\[0\]\.parameters\.{message}"):
        load_persona(path)


@pytest.mark.parametrize("zip_schema", [{"type": "string", "pattern": "[0-9"}, {"type": "string", "minLength": "3"}])
async def test_a_schema_that_raises_at_call_time_still_answers_the_model(tool_api, session, zip_schema):
    """A persona built without load_persona's check: the failure is an answer, not a dead task."""
    out = await run_http_tool(tool(f"{tool_api['url']}/echo", {"properties": {"zip": zip_schema}}),
                              {"zip": "12345"}, LOG, session)
    assert out["ok"] is False and out["error"].startswith("the t tool failed inside the gateway (")
    assert tool_api["seen"] == []


async def test_a_response_nested_too_deep_to_parse_is_handed_over_as_text(tool_api, session):
    out = await run_http_tool(tool(f"{tool_api['url']}/deep"), {}, LOG, session)
    assert out["ok"] is True and out["result"] == "[" * 4000 + " …(cut)"


async def test_tool_calls_reuse_the_sessions_connection(tool_api, session):
    for i in range(3):
        assert (await run_http_tool(tool(f"{tool_api['url']}/echo"), {"n": i}, LOG, session))["ok"] is True
    assert len(tool_api["seen"]) == 3 and len(tool_api["peers"]) == 1


async def test_timeouts_errors_and_unreachable_services_are_told_plainly(tool_api, session):
    out = await run_http_tool(tool(f"{tool_api['url']}/slow", timeout=0.3), {}, LOG, session)
    assert out == {"ok": False, "error": "the t service did not answer within 0.3 s"}
    out = await run_http_tool(tool(f"{tool_api['url']}/broken"), {}, LOG, session)
    assert out["ok"] is False and out["status"] == 503 and out["body"] == "maintenance"
    out = await run_http_tool(tool("http://127.0.0.1:9/x"), {}, LOG, session)
    assert out["ok"] is False and "unreachable" in out["error"]
