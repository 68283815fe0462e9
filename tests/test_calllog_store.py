"""The call-log store on its own: migrations, incremental writes, queries, instance leases and the
sweeps that close crashed and never-connected calls, purge.

Runs against every engine the `store_url` fixture provides (SQLite always; PostgreSQL when the
test set-up could start a server, see conftest)."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from gateway.calllog import CallQuery, open_store
from gateway.calllog.store import MIGRATIONS, SCHEMA_VERSION


async def started(url: str, tmp_path):
    store = open_store(url, tmp_path)
    await store.start()
    return store


async def test_migrations_apply_once_and_refuse_a_newer_schema(store_url, tmp_path):
    store = await started(store_url, tmp_path)
    assert await store.migrate() == SCHEMA_VERSION  # a second run is a no-op
    rows = await store.fetch("SELECT version FROM schema_migrations")
    assert [r["version"] for r in rows] == sorted(MIGRATIONS)
    await store.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                        (SCHEMA_VERSION + 1, time.time()))
    await store.close()
    again = open_store(store_url, tmp_path)
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        await again.start()
    await again.close()


async def test_incremental_writes_queries_and_filters(store_url, tmp_path):
    store = await started(store_url, tmp_path)
    t0 = 1_800_000_000.0
    for i, (bot, reason, said) in enumerate([("support", "caller_hangup", "my internet is down"),
                                             ("support", "model_error", "what is my bill"),
                                             ("sales", "caller_hangup", "100% off_sale?")]):
        cid = f"CA{i}"
        store.enqueue("upsert_call", cid, {"webhook_at": t0 + i * 60 - 1, "from_number": f"+1555000{i}",
                                           "to_number": "+15005550006", "bot": bot})
        store.enqueue("upsert_call", cid, {"started_at": t0 + i * 60, "provider": "glm", "instance": "gw1"})
        store.enqueue("add_event", cid, 1, 0.5, "bot", "Hello there", {"text": "Hello there", "response": "r1"})
        store.enqueue("add_event", cid, 2, 2.0, "caller", said, {"text": said})
        store.enqueue("upsert_call", cid, {"ended_at": t0 + i * 60 + 30, "duration_s": 30.0, "end_reason": reason,
                                           "turns": 1})
    await store.flush()
    rows, total = await store.list_calls(CallQuery())
    assert total == 3 and [r["call_id"] for r in rows] == ["CA2", "CA1", "CA0"]  # newest first
    assert rows[2]["from_number"] == "+15550000" and rows[2]["webhook_at"] == t0 - 1  # both writes merged
    assert (await store.list_calls(CallQuery(bot="support")))[1] == 2
    assert [r["call_id"] for r in (await store.list_calls(CallQuery(end_reason="model_error")))[0]] == ["CA1"]
    assert [r["call_id"] for r in (await store.list_calls(CallQuery(number="+15550002")))[0]] == ["CA2"]
    assert [r["call_id"] for r in (await store.list_calls(CallQuery(text="INTERNET")))[0]] == ["CA0"]
    assert [r["call_id"] for r in (await store.list_calls(CallQuery(text="100% off_")))[0]] == ["CA2"]
    assert (await store.list_calls(CallQuery(text="0%_o")))[1] == 0  # % and _ are literal, not wildcards
    assert [r["call_id"] for r in (await store.list_calls(CallQuery(since=t0 + 30, until=t0 + 90)))[0]] == ["CA1"]
    page, total = await store.list_calls(CallQuery(limit=1, offset=1))
    assert total == 3 and [r["call_id"] for r in page] == ["CA1"]
    call = await store.get_call("CA0")
    assert [(e["kind"], e["t"], e["text"]) for e in call["events"]] == [("bot", 0.5, "Hello there"),
                                                                         ("caller", 2.0, "my internet is down")]
    assert await store.get_call("nope") is None
    await store.close()


async def test_a_call_is_closed_as_crashed_only_once_its_instance_lease_expired(store_url, tmp_path):
    a, b = await started(store_url, tmp_path), await started(store_url, tmp_path)  # two processes, one database
    now = time.time()
    await a.acquire_lease("gw:100:aa", 30, now)
    await b.acquire_lease("gw:200:bb", 30, now)  # same host name: only the lease tells them apart
    a.enqueue("upsert_call", "CAa", {"started_at": now - 50, "instance": "gw:100:aa"})
    a.enqueue("add_event", "CAa", 1, 12.5, "caller", "hello", {"text": "hello"})
    b.enqueue("upsert_call", "CAb", {"started_at": now - 50, "instance": "gw:200:bb"})
    b.enqueue("upsert_call", "CAdead", {"started_at": now - 50, "instance": "gw:300:cc"})  # no lease at all
    await a.flush()
    await b.flush()
    assert await b.sweep(30, now) == (1, 0)
    assert (await b.get_call("CAdead"))["end_reason"] == "crashed"
    assert await b.sweep(30, now + 29) == (0, 0)  # A's lease still lives (A stopped renewing at `now`)
    assert (await b.get_call("CAa"))["ended_at"] is None
    assert await b.renew_lease("gw:200:bb", 30, now + 29)
    assert await b.sweep(30, now + 31) == (1, 0)  # A's lease expired at now + 30: A is dead
    mine = await b.get_call("CAa")
    assert mine["end_reason"] == "crashed" and mine["duration_s"] == 12.5
    assert mine["ended_at"] == pytest.approx(now - 50 + 12.5)  # the last thing recorded
    assert (await b.get_call("CAb"))["ended_at"] is None  # B renewed
    leases = await b.fetch("SELECT instance FROM instance_leases")
    assert [r["instance"] for r in leases] == ["gw:200:bb"]  # the expired lease is gone
    assert not await a.renew_lease("gw:100:aa", 30, now + 32)  # A was only stalled: it learns it lapsed...
    assert await a.renew_lease("gw:100:aa", 30, now + 33)  # ...and holds a lease again
    a.enqueue("upsert_call", "CAa", {"ended_at": now + 33, "end_reason": "caller_hangup", "duration_s": 83.0})
    await a.flush()
    assert (await b.get_call("CAa"))["end_reason"] == "caller_hangup"  # its record is put right
    await a.close()
    await b.close()


async def test_a_clean_shutdown_releases_the_lease(store_url, tmp_path):
    a, b = await started(store_url, tmp_path), await started(store_url, tmp_path)
    assert await a.hold_lease("gw:100:aa", 30, 30) == (0, 0)
    assert await b.hold_lease("gw:200:bb", 30, 30) == (0, 0)
    a.enqueue("upsert_call", "CAa", {"started_at": time.time(), "instance": "gw:100:aa"})
    await a.flush()
    assert await b.sweep(30) == (0, 0)
    await a.close()  # its call was left open (a failed write): with no lease, it is not live
    assert [r["instance"] for r in await b.fetch("SELECT instance FROM instance_leases")] == ["gw:200:bb"]
    assert await b.sweep(30) == (1, 0)
    assert (await b.get_call("CAa"))["end_reason"] == "crashed"
    await b.close()


async def test_webhooks_with_no_stream_are_closed_and_a_late_stream_reopens_them(store_url, tmp_path):
    store = await started(store_url, tmp_path)
    now = time.time()
    await store.acquire_lease("gw:1:aa", 30, now)
    store.enqueue("upsert_call", "CAring", {"webhook_at": now - 3600, "bot": "support"})
    store.enqueue("upsert_call", "CAfresh", {"webhook_at": now - 5})  # may still connect
    await store.flush()
    assert await store.sweep(30, now) == (0, 1)
    ring = await store.get_call("CAring")
    assert ring["end_reason"] == "no_stream" and ring["ended_at"] == now - 3600 and ring["duration_s"] == 0
    assert (await store.get_call("CAfresh"))["end_reason"] is None
    assert await store.sweep(30, now + 26) == (0, 1)  # 31 s after its webhook
    # Twilio opens the stream after all: the record is live again, then ends as calls do.
    store.enqueue("upsert_call", "CAfresh", {"started_at": now + 27, "instance": "gw:1:aa", "bot": "support"})
    await store.flush()
    late = await store.get_call("CAfresh")
    assert (late["ended_at"], late["end_reason"], late["duration_s"]) == (None, None, None)
    assert await store.sweep(30, now + 28) == (0, 0)
    store.enqueue("upsert_call", "CAfresh", {"ended_at": now + 40, "duration_s": 13.0, "end_reason": "caller_hangup"})
    store.enqueue("upsert_call", "CAfresh", {"started_at": now + 27})  # a repeated start does not reopen it
    await store.flush()
    assert (await store.get_call("CAfresh"))["end_reason"] == "caller_hangup"
    await store.close()


async def test_purge_removes_old_calls_and_their_events(store_url, tmp_path):
    store = await started(store_url, tmp_path)
    now = time.time()
    store.enqueue("upsert_call", "CAold", {"started_at": now - 100 * 86400, "ended_at": now - 100 * 86400,
                                           "recording": "CAold.wav"})
    store.enqueue("add_event", "CAold", 1, 1.0, "caller", "x", {"text": "x"})
    store.enqueue("upsert_call", "CAnew", {"started_at": now - 60, "ended_at": now - 30})
    store.enqueue("upsert_call", "CAlive", {"started_at": now - 100 * 86400})  # open: never purged
    await store.flush()
    assert await store.purge(now - 90 * 86400) == ["CAold.wav"]
    rows, _ = await store.list_calls(CallQuery())
    assert {r["call_id"] for r in rows} == {"CAnew", "CAlive"}
    assert await store.fetch("SELECT * FROM call_events WHERE call_id = ?", ("CAold",)) == []
    await store.close()


async def test_a_failing_write_is_logged_and_the_rest_go_on(store_url, tmp_path, caplog):
    store = await started(store_url, tmp_path)
    store.enqueue("upsert_call", "CA1", {"started_at": "not a number, not a time"})
    store.enqueue("upsert_call", "CA2", {"started_at": time.time()})
    await store.flush()
    assert (await store.get_call("CA2")) is not None
    assert store.failed <= 1  # SQLite stores the text (dynamic typing); PostgreSQL refuses it
    await store.close()


def test_recordings_older_than_their_retention_are_deleted(config_dir):
    import os

    from gateway.config import load_config
    from gateway.recording import purge_recordings, recordings_dir
    from tests.conftest import write_config

    config = load_config(write_config(config_dir, "recording:\n  retention_days: 30\n"), env={})
    folder = recordings_dir(config)
    folder.mkdir(parents=True)
    old, new, other = folder / "CAold.wav", folder / "CAnew.wav", folder / "notes.txt"
    for f in (old, new, other):
        f.write_bytes(b"RIFF")
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    os.utime(other, (month_ago, month_ago))
    assert purge_recordings(config) == 1
    assert not old.exists() and new.exists() and other.exists()  # only WAVs, only old ones
    keep_all = load_config(write_config(config_dir, "recording:\n  retention_days: 0\n"), env={})
    os.utime(new, (month_ago, month_ago))
    assert purge_recordings(keep_all) == 0 and new.exists()


async def test_a_nul_in_what_a_caller_sent_does_not_lose_the_record(store_url, tmp_path):
    """PostgreSQL text cannot hold NUL; the record is kept (NUL as U+FFFD there, as sent in SQLite)."""
    store = await started(store_url, tmp_path)
    store.enqueue("upsert_call", "CAnul", {"webhook_at": 1.0, "from_number": "+1555\x00\x1b0001"})
    store.enqueue("add_event", "CAnul", 1, 0.5, "caller", "hi\x00there", {"text": "hi\x00there"})
    await store.flush()
    call = await store.get_call("CAnul")
    assert call is not None and call["from_number"] in ("+1555\x00\x1b0001", "+1555\ufffd\x1b0001")
    assert call["events"][0]["text"] in ("hi\x00there", "hi\ufffdthere")
    assert store.dropped == 0
    await store.close()


async def test_a_calls_webhooks_are_claimed_in_order_even_when_the_first_is_retried_later(store_url, tmp_path):
    store = await started(store_url, tmp_path)
    now = time.time()
    store.enqueue("add_webhook", "d1", "http://r/", "call.started", "CAw", "{}", now - 10)
    store.enqueue("add_webhook", "d2", "http://r/", "call.ended", "CAw", "{}", now - 5)
    await store.flush()
    first = await store.claim_webhooks("c1", 30, 10, now)
    assert [d["id"] for d in first] == ["d1"]  # call.ended waits for call.started
    await store.webhook_done("d1", "c1", delivered=False, error="refused", next_at=now + 60, now=now)
    assert await store.claim_webhooks("c2", 30, 10, now + 1) == []  # started pending: ended still waits
    again = await store.claim_webhooks("c3", 30, 10, now + 61)
    assert [d["id"] for d in again] == ["d1"]
    await store.webhook_done("d1", "c3", delivered=True, now=now + 61)
    assert [d["id"] for d in await store.claim_webhooks("c4", 30, 10, now + 62)] == ["d2"]
    await store.close()


_OPEN_TOGETHER = """
import asyncio, sys, time
from gateway.calllog import open_store
async def main():
    while time.time() < float(sys.argv[2]):
        await asyncio.sleep(0.001)
    store = open_store(sys.argv[1])
    await store.start()
    await store.close()
asyncio.run(main())
"""


async def test_workers_opening_a_new_sqlite_database_together_all_start(tmp_path):
    """`serve --workers N` on a new database: every worker switches it to WAL and migrates it at the
    same instant. SQLite refused the WAL switch with "database is locked" instead of waiting (21 of
    60 opens by two processes at once; one `serve --workers 2` start in 8, and the gateway quit)."""
    from tests.conftest import REPO
    for round_ in range(4):
        db = tmp_path / f"calls{round_}.db"
        at = str(time.time() + 0.5)  # past the interpreters' start-up: they open the file together
        procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", _OPEN_TOGETHER, f"sqlite:///{db}", at, cwd=REPO,
                                                      stderr=asyncio.subprocess.PIPE) for _ in range(4)]
        errors = [(await p.communicate())[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
