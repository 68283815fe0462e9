"""`python -m gateway calls list | show ID | export`: the call log from a terminal.

Reads the same store the gateway writes (SQLite file or PostgreSQL, from the config), so it works
while the gateway runs (SQLite WAL lets readers in) and when it is down.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import sys
from typing import TextIO

from .calllog import CallQuery, open_store
from .calllog.store import END_REASONS
from .calllog.views import call_json, parse_time, transcript
from .config import load_config
from .ids import positive_int

CSV_FIELDS = ["call_id", "network", "started_at", "ended_at", "duration_s", "from", "to", "bot", "provider", "model",
              "end_reason", "error", "turns", "barge_ins", "first_audio_ms", "transcript"]


CONFIG_HELP = "the gateway's config.yaml, whose storage the call log is in (default: %(default)s)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config.yaml", metavar="PATH", help=CONFIG_HELP)
    sub = p.add_subparsers(dest="calls_command", required=True)
    for name, help_text in (("list", "recent calls, newest first"), ("export", "calls as JSON lines or CSV")):
        s = sub.add_parser(name, help=help_text)
        _config_here_too(s)
        s.add_argument("--bot")
        s.add_argument("--number", help="caller or dialed number")
        s.add_argument("--since", help="ISO date or time (UTC)")
        s.add_argument("--until", help="ISO date or time (UTC)")
        s.add_argument("--end-reason", choices=END_REASONS)
        s.add_argument("--text", help="words said by the caller or the bot")
        s.add_argument("--limit", type=positive_int, default=50 if name == "list" else 100000)
        if name == "list":
            s.add_argument("--json", action="store_true", help="the calls as one JSON document (calls, total)")
        if name == "export":
            s.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
            s.add_argument("--out", help="file (default: standard output)")
    s = sub.add_parser("show", help="one call in full: details and timeline")
    _config_here_too(s)
    s.add_argument("call_id")
    s.add_argument("--json", action="store_true")


def _config_here_too(p: argparse.ArgumentParser) -> None:
    """`calls list --config X` as well as `calls --config X list` (SUPPRESS: unset leaves the other)."""
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                   help=CONFIG_HELP % {"default": "config.yaml"})


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = open_store(config.storage.url, config.base_dir)
    await store.start()
    try:
        if args.calls_command == "show":
            return await _show(store, args)
        query = CallQuery(bot=args.bot, number=args.number, end_reason=args.end_reason, text=args.text,
                          since=parse_time(args.since) if args.since else None,
                          until=parse_time(args.until) if args.until else None, limit=args.limit)
        rows, total = await store.list_calls(query)
        if args.calls_command == "list":
            if args.json:
                print(json.dumps({"calls": [call_json(r) for r in rows], "total": total}, ensure_ascii=False, indent=2))
            else:
                _print_list(rows, total, sys.stdout)
            return 0
        out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
        try:
            await _export(store, rows, args.format, out)
        finally:
            if args.out:
                out.close()
        if args.out:
            print(f"{len(rows)} calls written to {args.out}", file=sys.stderr)
        return 0
    finally:
        await store.close()


# What a terminal would act on rather than show: C0/C1 controls (newline, NUL, ESC sequences),
# line separators and bidirectional overrides. A caller chooses their From; they do not get to
# break the table or recolour the operator's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shown(value):
    """`value` for a terminal: control characters escaped (\\n, \\x00, \\x1b); the store keeps them."""
    if not isinstance(value, str):
        return value
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)


def _print_list(rows: list[dict], total: int, out: TextIO) -> None:
    print(f"{'started (UTC)':20} {'dur s':>6} {'bot':14} {'network':11} {'from':16} {'end':16} {'turns':>5} {'cut':>3}  call",
          file=out)
    for r in rows:
        c = {k: shown(v) for k, v in call_json(r).items()}
        started = (c["started_at"] or c["webhook_at"] or "")[:19].replace("T", " ")
        duration = f"{c['duration_s']:.1f}" if c["duration_s"] is not None else "live"
        print(f"{started:20} {duration:>6} {(c['bot'] or '-')[:14]:14} {(c['network'] or '-')[:11]:11} {(c['from'] or '-')[:16]:16} "
              f"{(c['end_reason'] or 'live')[:16]:16} {c['turns'] or 0:>5} {c['barge_ins'] or 0:>3}  {c['call_id']}",
              file=out)
    print(f"({len(rows)} of {total})", file=out)


async def _show(store, args: argparse.Namespace) -> int:
    row = await store.get_call(args.call_id)
    if row is None:
        print(f"no call {args.call_id!r}", file=sys.stderr)
        return 1
    call = {**call_json(row), "timeline": transcript(row["events"])}
    if args.json:
        print(json.dumps(call, ensure_ascii=False, indent=2))
        return 0
    for key, value in _details(call):
        print(f"{key:15} {shown(value)}")
    print("timeline:")
    for e in call["timeline"]:
        print(f"  {e['t']:7.2f}s  {shown(_line(e))}")
    return 0


def _details(call: dict) -> list[tuple[str, str]]:
    """`calls show`'s fields as a person reads them: "-" for nothing, units, no Python reprs."""
    def text(value, unit: str = "") -> str:
        return "-" if value is None or value == "" else f"{value}{unit}"
    usage = call["usage"] or {}
    return [("call_id", call["call_id"]), ("network", text(call["network"])), ("direction", text(call["direction"])),
            ("bot", text(call["bot"])), ("provider", text(call["provider"])), ("model", text(call["model"])),
            ("from", text(call["from"])), ("to", text(call["to"])), ("started_at", text(call["started_at"])),
            ("first_audio_ms", text(call["first_audio_ms"], " ms")), ("ended_at", text(call["ended_at"])),
            ("duration_s", text(call["duration_s"], " s")), ("end_reason", text(call["end_reason"] or "live")),
            ("error", text(call["error"])), ("turns", text(call["turns"])), ("barge_ins", text(call["barge_ins"])),
            ("usage", f"{usage.get('input_tokens') or 0} input tokens, {usage.get('output_tokens') or 0} output tokens"),
            ("recording", "yes" if call["has_recording"] else "no")]


def _line(e: dict) -> str:
    kind = e["kind"]
    if kind == "bot":
        said = f"bot: {e.get('text', '')}"
        if e.get("interrupted"):
            said += f"  [cut after {e.get('heard_ms')} ms; heard: {e.get('heard', '')!r}]"
        if e.get("latency_ms") is not None:
            model = f"; model {e['model_latency_ms']} ms" if e.get("model_latency_ms") is not None else ""
            said += f"  (reply latency {e['latency_ms']} ms{model})"
        return said
    if kind == "caller":
        return f"caller: {e.get('text', '')}"
    details = " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                       for k, v in e.items() if k not in ("kind", "t") and v is not None)
    return f"[{kind}] {details}"


def _flat_transcript(timeline: list[dict]) -> str:
    lines = []
    for e in timeline:
        if e["kind"] == "caller":
            lines.append(f"caller: {e.get('text', '')}")
        elif e["kind"] == "bot":
            lines.append(f"bot: {e.get('heard', '') if e.get('interrupted') else e.get('text', '')}")
    return "\n".join(lines)


async def _export(store, rows: list[dict], fmt: str, out: TextIO) -> None:
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore") if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    for r in rows:
        full = await store.get_call(r["call_id"])
        timeline = transcript(full["events"]) if full else []
        call = {**call_json(r), "timeline": timeline}
        if writer is not None:
            writer.writerow({**call, "transcript": _flat_transcript(timeline)})
        else:
            out.write(json.dumps(call, ensure_ascii=False) + "\n")
