"""Smoke runs of the load benchmark (bench/calls.py): the harness runs end to end against a real
`python -m gateway serve` and the bare relay on both paths (N=3), and against Twilio's-sample-style
relay and the floor relay (bench/baselines.py) on passthrough (N=2); its numbers are sane.
No performance assertion: the figures depend on the machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _bench(out, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """bench/calls.py with `args`, writing to `out`: the finished run and its results.json rows."""
    run = subprocess.run([sys.executable, "bench/calls.py", *args, "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run, json.loads((out / "results.json").read_text())


@pytest.mark.timeout(240)
def test_bench_smoke_run_reports_every_figure_for_both_paths_and_targets(tmp_path):
    out = tmp_path / "bench"
    # a short window and a barge-in every second: every figure still gets samples in every run
    run, rows = _bench(out, "--n", "3", "--seconds", "2.5", "--warmup", "0.5", "--barge-every", "1",
                       "--baselines", "relay", timeout=220)
    assert sorted((r["path"], r["target"]) for r in rows) == [
        ("glm", "gateway"), ("glm", "relay"), ("passthrough", "gateway"), ("passthrough", "relay")]
    for r in rows:
        where = f"{r['path']} {r['target']}: {r}"
        assert r["n"] == 3 and r["calls_failed"] == 0 and r["calls_alive_at_end"] == 3, where
        assert r["cpu_s_per_call_min"] > 0 and r["calls_per_core"] > 0, where
        assert r["rss_mib"] > 10, where  # a Python process with aiohttp loaded
        assert 0 < r["delivered_pct"] <= 100 and r["longest_gap_ms"] >= 0, where
        # the window starts 0.5 s after the calls connect and lasts 2.5 s; each call's first barge-in
        # comes 1-2 s after its start, then one a second: each has one in the window, so each figure has samples
        for name in ("p2m", "m2p", "bargein"):
            assert r["samples"][name] > 0, where
            p50, p95, p99 = (r[f"{name}_p{q}_ms"] for q in (50, 95, 99))
            assert 0 <= p50 <= p95 <= p99, where
        assert 0 <= r["loadgen_cpu_pct"] and 0 <= r["model_cpu_pct"], where
    ratios = [r for r in rows if r["target"] == "gateway"]
    assert all(set(r["cpu_ratio"]) == {"relay"} for r in ratios), ratios
    md = (out / "results.md").read_text()
    assert "| path | N | target | CPU-s/call-min | gw/relay | calls/core |" in md
    assert md.count("| gateway |") == len(ratios) == 2
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in run.stdout


@pytest.mark.timeout(120)
def test_bench_smoke_run_measures_the_sample_and_floor_baselines_and_the_gateways_ratio_to_each(tmp_path):
    out = tmp_path / "bench"
    _, rows = _bench(out, "--n", "2", "--seconds", "2", "--warmup", "0.5", "--path", "passthrough",
                     "--baselines", "floor,sample", timeout=110)
    assert [r["target"] for r in rows] == ["sample", "floor", "gateway"]  # baselines first, in their fixed order
    for r in rows:
        where = f"{r['target']}: {r}"
        assert r["calls_failed"] == 0 and r["calls_alive_at_end"] == 2, where
        assert r["cpu_s_per_call_min"] >= 0 and 0 < r["delivered_pct"] <= 100, where
        assert r["samples"]["p2m"] > 0, where  # the caller's audio reached the model; delivered: and back
    # the floor's 2 calls x 2 s can stay under one 10 ms clock tick of CPU: no ratio over zero
    gateway, measured = rows[-1], {r["target"]: r["cpu_s_per_call_min"] for r in rows[:-1] if r["cpu_s_per_call_min"]}
    assert gateway["cpu_ratio"] == {b: round(gateway["cpu_s_per_call_min"] / cpu, 2) for b, cpu in measured.items()}
    assert "| path | N | target | CPU-s/call-min | gw/sample | gw/floor | calls/core |" in (out / "results.md").read_text()


def test_bench_baselines_option_names_an_unknown_baseline():
    bad = subprocess.run([sys.executable, "bench/calls.py", "--baselines", "relay,twilio"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--baselines: unknown twilio (choose from relay, sample, floor)" in bad.stderr
