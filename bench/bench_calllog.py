"""Call-log write throughput: our store (queue -> writer task -> SQLite thread, a commit per
write) against a baseline measured in the same run: bare sqlite3 on the same file settings, one
INSERT + commit per row in a plain loop (the same durability, none of our plumbing).

    .venv/py3.11/bin/python bench/bench_calllog.py [N]

Our writer commits what has queued up as one transaction; when writes trickle in (the normal
case) each is its own batch, and the figure before batching was ~8,000 rows/s (8x the
baseline's time per row: the thread hop per statement). A call writes ~15-30 rows (its row updates, transcript lines, latencies, barge-ins), so rows/s
divided by ~25 is how many call *events per second* the gateway can log, far above what a
gateway's calls produce (a 100-call gateway writes perhaps 50 rows/s).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from gateway.calllog import open_store


def baseline(path: Path, n: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE ev (call_id TEXT, seq INTEGER, t REAL, kind TEXT, text TEXT, data TEXT,"
               " PRIMARY KEY (call_id, seq))")
    t = time.perf_counter()
    for i in range(n):
        db.execute("INSERT INTO ev VALUES (?, ?, ?, ?, ?, ?)",
                   (f"CA{i // 25}", i % 25, i * 0.1, "caller", "hello there", json.dumps({"text": "hello there"})))
    elapsed = time.perf_counter() - t
    db.close()
    return elapsed


async def ours(path: Path, n: int) -> float:
    store = open_store(f"sqlite:///{path}")
    await store.start()
    t = time.perf_counter()
    for i in range(n):
        if i % 25 == 0:
            store.enqueue("upsert_call", f"CA{i // 25}", {"started_at": time.time(), "bot": "support"})
        store.enqueue("add_event", f"CA{i // 25}", i % 25 + 1, i * 0.1, "caller", "hello there",
                      {"text": "hello there"})
    await store.flush()
    elapsed = time.perf_counter() - t
    await store.close()
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    best_base = best_ours = float("inf")
    for _ in range(3):
        with tempfile.TemporaryDirectory() as d:
            best_base = min(best_base, baseline(Path(d) / "base.db", n))
        with tempfile.TemporaryDirectory() as d:
            best_ours = min(best_ours, asyncio.run(ours(Path(d) / "ours.db", n)))
    rows_ours = n + n // 25
    print(f"{n} event rows (+{n // 25} call rows for ours), best of 3:")
    print(f"  baseline bare sqlite3: {n / best_base:8.0f} rows/s")
    print(f"  our store (queued):    {rows_ours / best_ours:8.0f} rows/s  ratio {best_ours / best_base * n / rows_ours:4.2f}x "
          f"the baseline's time per row  -> ~{rows_ours / best_ours / 25:.0f} calls' worth of events per second")


if __name__ == "__main__":
    main()
