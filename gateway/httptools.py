"""HTTP tools declared in a persona's YAML: check the model's arguments against the tool's JSON
Schema, call the URL, and hand the model the answer — or an error it can explain to the caller.

Arguments that fail the schema never reach the URL. The validator covers the JSON Schema subset
tool definitions use (type, properties, required, additionalProperties, enum, const, string
length and pattern, number bounds, array items and length, nested objects); unknown keywords are
ignored, as JSON Schema says.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp

from .config import HttpTool
from .logs import CallLog

MAX_RESPONSE_CHARS = 4000  # what the model gets of a response body; more is cut (and said so)
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def schema_errors(schema: dict, value: Any, path: str = "$") -> list[str]:
    errors: list[str] = []
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_is_type(value, x) for x in types):
            return [f"{path}: expected {' or '.join(types)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errors += schema_errors(schema["items"], item, f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                errors.append(f"{path}.{name}: required")
        for name, item in value.items():
            if name in props:
                errors += schema_errors(props[name], item, f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{name}: not allowed")
    return errors


def _is_type(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES.get(t, object))


async def run_http_tool(tool: HttpTool, args: dict, log: CallLog) -> dict:
    """Never raises: every outcome is a dict the model can read (`ok`, and `result` or `error`)."""
    problems = schema_errors(tool.parameters, args)
    if problems:
        log.warning("http_tool_rejected", tool=tool.name, problems="; ".join(problems)[:300])
        return {"ok": False, "error": "invalid arguments: " + "; ".join(problems)[:500]}
    kwargs: dict[str, Any] = {"params": {k: json.dumps(v) if not isinstance(v, str) else v for k, v in args.items()}} \
        if tool.method == "GET" else {"json": args}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=tool.timeout_seconds)) as s:
            async with s.request(tool.method, tool.url, headers=tool.headers, **kwargs) as r:
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
    except ValueError:
        body = text[:MAX_RESPONSE_CHARS] + (" …(cut)" if len(text) > MAX_RESPONSE_CHARS else "")
    else:
        if len(text) > MAX_RESPONSE_CHARS:
            body = text[:MAX_RESPONSE_CHARS] + " …(cut)"
    log.info("http_tool_done", tool=tool.name, status=status)
    if status >= 400:
        return {"ok": False, "status": status, "error": f"the {tool.name} service answered HTTP {status}", "body": body}
    return {"ok": True, "status": status, "result": body}
