"""Call records as people read them: JSON shapes shared by the operator API, the CLI and the dashboard."""

from __future__ import annotations

from datetime import datetime, timezone


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> float:
    """ISO 8601 date or date-time (UTC unless it says otherwise) -> UNIX seconds; ValueError if not."""
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    except (OverflowError, OSError):  # year 9999 with an offset past the end of time
        raise ValueError(f"{value!r} is out of range") from None


def call_json(row: dict) -> dict:
    started = row.get("started_at")
    first = row.get("first_audio_at")
    return {
        "call_id": row["call_id"], "stream_id": row.get("stream_id"), "network": row.get("network"),
        "direction": row.get("direction", "inbound"), "answered_by": row.get("answered_by"),
        "from": row.get("from_number"), "to": row.get("to_number"), "bot": row.get("bot"),
        "provider": row.get("provider"), "model": row.get("model"), "instance": row.get("instance"),
        "webhook_at": iso(row.get("webhook_at")), "started_at": iso(started), "first_audio_at": iso(first),
        "ended_at": iso(row.get("ended_at")), "duration_s": row.get("duration_s"),
        "first_audio_ms": round((first - started) * 1000) if first and started else None,
        "end_reason": row.get("end_reason"), "error": row.get("error"), "live": row.get("ended_at") is None,
        "barge_ins": row.get("barge_ins"), "turns": row.get("turns"),
        "usage": {"input_tokens": row.get("input_tokens"), "output_tokens": row.get("output_tokens")},
        "has_recording": bool(row.get("recording")),
        "model_key": row.get("model_key"), "overflow": row.get("overflow"),
    }


def transcript(events: list[dict]) -> list[dict]:
    """The call's timeline as an operator reads it: caller and bot lines (bot lines with what was
    heard, amended by later cuts, their reply latency as the caller lived it (`latency_ms`: their
    last voiced frame -> this reply playing at the phone), the model's own figure (`model_latency_ms`:
    its speech_stopped -> our first audio sent) and `audio_t`, when the reply began to play), caller
    speech segments (`speech`: start and `ms`), DTMF, barge-ins, tools, errors."""
    out: list[dict] = []
    bots: dict[str, dict] = {}
    latency: dict[str, dict] = {}
    for e in events:
        kind = e["kind"]
        if kind == "latency":  # recorded at the moment the reply began to play (by its mark)
            fields = latency[e.get("response", "")] = dict(latency_ms=e.get("ms"), model_latency_ms=e.get("model_ms"),
                                                          audio_t=e["t"])
            if e.get("response") in bots:
                bots[e["response"]].update(fields)
            continue
        if kind == "bot_cut" and e.get("response") in bots:
            bots[e["response"]].update(interrupted=True, heard=e.get("heard", ""), heard_ms=e.get("heard_ms"))
            continue
        line = {k: v for k, v in e.items() if k != "seq"}
        if kind == "bot":
            line.update(latency.get(e.get("response", ""), dict(latency_ms=None, model_latency_ms=None, audio_t=None)))
            bots[e.get("response", "")] = line
        out.append(line)
    # In order of when things happened (a bot line is written when its reply ends but belongs
    # where it started); ties keep the order they were recorded in.
    out.sort(key=lambda e: e["t"])
    return out
