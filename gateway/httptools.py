"""HTTP tools declared in a persona's YAML: check the model's arguments against the tool's JSON
Schema, call the URL, and hand the model the answer — or an error it can explain to the caller.

`parameters` is JSON Schema Draft 2020-12, checked by the `jsonschema` package: the schema itself
when the persona loads (`schema_problem`), the model's arguments on every call. Arguments that
fail never reach the URL. `$ref` may only point inside the schema (`#/$defs/...`): nothing is
fetched. `format` is an annotation, as the draft says (not checked).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from .persona import HttpTool
from .logs import CallLogger

MAX_RESPONSE_CHARS = 4000  # what the model gets of a response body; more is cut (and said so)
MAX_PROBLEMS = 5  # argument problems told to the model at once
_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
_DATA_KEYWORDS = {"enum", "const", "default", "examples"}  # values there are data, not schemas


def _where(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a usable Draft 2020-12 schema, as `.<path in the schema>: <reason>`;
    None if it is."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        if e.path and e.path[-1] == "type" and e.validator == "anyOf":
            return f"{_where(e.path)}: {e.instance!r} is not a JSON Schema type (one of {', '.join(_TYPES)})"
        return f"{_where(e.path)}: {e.message}" + (f" ({e.cause})" if e.cause else "")
    resolver = Registry().with_resource("", DRAFT202012.create_resource(schema)).resolver()
    for path, ref, at in _refs(schema, [], resolver):
        try:
            at.lookup(ref)
        except Unresolvable:
            return (f"{_where(path)}.$ref: cannot resolve {ref!r} "
                    "(only references inside this schema, like #/$defs/NAME, are supported)")
    return None


def _refs(node: Any, path: list, resolver):
    """Every `$ref` in the schema, with the resolver of its place (a nested `$id` moves the base)."""
    if isinstance(node, dict):
        if path and "$id" in node:
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        if isinstance(node.get("$ref"), str):
            yield path, node["$ref"], resolver
        for key, value in node.items():
            if key not in _DATA_KEYWORDS:
                yield from _refs(value, path + [key], resolver)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, path + [i], resolver)


def argument_problems(schema: dict, args: Any) -> list[str]:
    """What is wrong with the model's arguments, each naming the argument (`$.zip: ...`)."""
    errors = sorted(Draft202012Validator(schema).iter_errors(args), key=lambda e: list(map(str, e.path)))
    return [f"{e.json_path}: {e.message}"[:200] for e in errors]


async def run_http_tool(tool: HttpTool, args: dict, log: CallLogger, session: aiohttp.ClientSession) -> dict:
    """Never raises (but for cancellation): every outcome is a dict the model can read (`ok`, and
    `result` or `error`). `session` is the app's shared client session (pooled connections)."""
    try:
        return await _run(tool, args, log, session)
    except Exception as e:  # noqa: BLE001 - the model must always get an answer to its call
        log.error("http_tool_crashed", tool=tool.name, error=f"{type(e).__name__}: {e}"[:300])
        return {"ok": False, "error": f"the {tool.name} tool failed inside the gateway ({type(e).__name__}); "
                "tell the caller it is not available right now"}


async def _run(tool: HttpTool, args: dict, log: CallLogger, session: aiohttp.ClientSession) -> dict:
    problems = argument_problems(tool.parameters, args)
    if problems:
        text = "; ".join(problems[:MAX_PROBLEMS]) + (f"; and {len(problems) - MAX_PROBLEMS} more"
                                                     if len(problems) > MAX_PROBLEMS else "")
        log.warning("http_tool_rejected", tool=tool.name, problems=text[:300])
        return {"ok": False, "error": "invalid arguments: " + text}
    kwargs: dict[str, Any] = {"params": {k: json.dumps(v) if not isinstance(v, str) else v for k, v in args.items()}} \
        if tool.method == "GET" else {"json": args}
    try:
        async with session.request(tool.method, tool.url, headers=tool.headers,
                                   timeout=aiohttp.ClientTimeout(total=tool.timeout_seconds), **kwargs) as r:
            text = await r.text(errors="replace")
            status = r.status
    except asyncio.TimeoutError:
        log.warning("http_tool_timeout", tool=tool.name, timeout_s=tool.timeout_seconds)
        return {"ok": False, "error": f"the {tool.name} service did not answer within {tool.timeout_seconds:g} s"}
    except aiohttp.ClientError as e:
        log.warning("http_tool_failed", tool=tool.name, error=type(e).__name__)
        return {"ok": False, "error": f"the {tool.name} service is unreachable ({type(e).__name__})"}
    try:
        body: Any = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        body = text[:MAX_RESPONSE_CHARS] + (" …(cut)" if len(text) > MAX_RESPONSE_CHARS else "")
    else:
        if len(text) > MAX_RESPONSE_CHARS:
            body = text[:MAX_RESPONSE_CHARS] + " …(cut)"
    log.info("http_tool_done", tool=tool.name, status=status)
    if status >= 400:
        return {"ok": False, "status": status, "error": f"the {tool.name} service answered HTTP {status}", "body": body}
    return {"ok": True, "status": status, "result": body}
