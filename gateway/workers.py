"""`serve --workers N`: N full gateway processes sharing one port, so a box uses all its cores.

Each worker is an ordinary `serve` (its own event loop, call log connection, instance lease) whose
socket has SO_REUSEPORT: the kernel spreads new connections over the workers. A call's webhook
and its media stream may land on different workers; that works as it does across instances (the
stream carries what the webhook decided). Workers see each other's live calls and forward an
operator's hang-up through the shared call log (calllog/instances.py). This process only
supervises: it reserves the port first (a busy port is one line and exit 1, also when the port is
held by the workers of a supervisor that was killed), starts the workers, restarts one that dies
unexpectedly, and passes SIGTERM/SIGINT on (each worker drains its calls).

Workers take orders from their supervisor only: each runs in its own process group, so a Ctrl-C
in the terminal reaches the supervisor alone (which passes it on once: the workers drain; a second
Ctrl-C hurries them), and each dies with its supervisor (Linux: the parent-death signal; elsewhere
a thread that watches the parent), so a killed supervisor leaves no unmanaged worker serving the
port. That signal is SUPERVISOR_GONE, not SIGTERM: Linux re-parents a worker to each remaining
thread of a dying supervisor in turn and sends the parent-death signal every time, so one death can
arrive as two or three signals, and as SIGTERMs the second would hurry the drain (live calls cut
within 100 ms instead of draining). However often it comes, it means "drain" once.

Why processes and SO_REUSEPORT rather than one process: the call path is CPU-bound Python (JSON,
base64, DSP); one interpreter uses one core. Why not a shared accept socket: with SO_REUSEPORT a
slow worker does not get a herd of wake-ups, and workers stay plain `serve` processes.

Metrics: one scrape must see every worker, so each run gets a fresh directory for
prometheus-client's multiprocess mode (see gateway/metrics.py), given to the workers as
`PROMETHEUS_MULTIPROC_DIR` (inside the operator's own `PROMETHEUS_MULTIPROC_DIR` if one is set).
A worker that ends is marked dead there, which drops its live gauges and keeps its counters.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

log = logging.getLogger("gateway")
RESTART_BACKOFF = [1.0, 2.0, 5.0, 10.0, 30.0]  # before restarting a worker that died on its own
SUPERVISOR_VARIABLE = "GATEWAY_SUPERVISOR_PID"  # set for workers: their supervisor's pid
PR_SET_PDEATHSIG = 1
SUPERVISOR_GONE = signal.SIGUSR1  # to a worker: its supervisor died; drain (see the module docstring)


def _gone_before_serving(_sig: int, _frame) -> None:
    raise SystemExit(0)  # no call yet: nothing to drain (serve() replaces this handler)


def follow_supervisor() -> bool:
    """In a worker: drain, then exit, when the supervisor ends, however it died (SUPERVISOR_GONE,
    which serve() handles). False when this process has no supervisor."""
    supervisor = int(os.environ.pop(SUPERVISOR_VARIABLE, "0") or 0)
    if not supervisor:
        return False
    signal.signal(SUPERVISOR_GONE, _gone_before_serving)
    if sys.platform.startswith("linux"):
        try:
            if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, SUPERVISOR_GONE, 0, 0, 0) == 0:
                if os.getppid() != supervisor:  # it died before the signal was armed
                    os.kill(os.getpid(), SUPERVISOR_GONE)
                return True
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(0.5)
        os.kill(os.getpid(), SUPERVISOR_GONE)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
    return True


def _metrics_dir() -> tuple[str, dict]:
    """A fresh directory for this run's worker metrics (removed when the supervisor exits), and
    the workers' environment naming it."""
    path = tempfile.mkdtemp(prefix="gateway-metrics-", dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None)
    atexit.register(shutil.rmtree, path, True)
    return path, {**os.environ, "PROMETHEUS_MULTIPROC_DIR": path}


def _worker_ended(pid: int, metrics_dir: str) -> None:
    from prometheus_client.multiprocess import mark_process_dead
    mark_process_dead(pid, metrics_dir)  # its live gauges go; its counters stay in the sums


def supervise(workers: int, config_path: str, host: str, socks: list[socket.socket]) -> int:
    """Run `workers` worker processes on the port `socks` reserved; returns the exit status."""
    port = socks[0].getsockname()[1]  # the real port, when 0 asked for any
    argv = [sys.executable, "-m", "gateway", "serve", "--config", config_path, "--host", host,
            "--port", str(port), "--reuse-port"]
    metrics_dir, env = _metrics_dir()
    env[SUPERVISOR_VARIABLE] = str(os.getpid())
    procs: dict[int, subprocess.Popen] = {}
    deaths: dict[int, int] = {}
    stopping: list[int] = []

    def start(slot: int) -> None:
        # Its own process group: the terminal's SIGINT is the supervisor's alone to pass on.
        procs[slot] = subprocess.Popen(argv, env=env, process_group=0)
        log.info("event=worker_started worker=%d pid=%d", slot, procs[slot].pid)

    def on_signal(sig: int, _frame) -> None:
        stopping.append(sig)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)  # a second signal hurries the workers' drain, as for one process

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for slot in range(workers):
        start(slot)
    time.sleep(0.5)
    for sock in socks:  # the workers hold the port now
        sock.close()
    log.info("event=workers_running workers=%d port=%d", workers, port)
    status = 0
    while procs:
        time.sleep(0.2)
        for slot, proc in list(procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del procs[slot]
            _worker_ended(proc.pid, metrics_dir)
            if stopping:
                status = status or code
                continue
            if code in (1, 2):  # a worker that cannot start (port, config): restarting will not help
                log.error("event=worker_failed worker=%d code=%d", slot, code)
                on_signal(signal.SIGTERM, None)
                status = code
                continue
            deaths[slot] = deaths.get(slot, 0) + 1
            delay = RESTART_BACKOFF[min(deaths[slot], len(RESTART_BACKOFF)) - 1]
            log.error("event=worker_died worker=%d code=%d restart_in_s=%g", slot, code, delay)
            time.sleep(delay)
            if not stopping:
                start(slot)
    return status
