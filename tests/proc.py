"""Running the real `python -m gateway serve` as a subprocess, for tests that need a process
(signals, SIGKILL, the newcomer's command line)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

from tests.conftest import REPO


async def run(cmd: list[str], env: dict, cwd=REPO) -> tuple[int, str, str]:
    """A command run without blocking the event loop (a phone or gateway in this test may be live):
    its exit status, stdout and stderr."""
    p = await asyncio.create_subprocess_exec(*cmd, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    return p.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, env: dict, config_path=None, timeout: float = 20, args: tuple = ()) -> subprocess.Popen:
    """Start the gateway and wait until it accepts connections."""
    return serve_all([(port, env, config_path)], timeout, args)[0]


def serve_all(gateways: list[tuple], timeout: float = 20, args: tuple = ()) -> list[subprocess.Popen]:
    """Start gateways given as (port, env, config_path), all at once (their start-ups overlap), and
    wait until each accepts connections; if one does not, all are killed."""
    procs = []
    for port, env, config_path in gateways:
        cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port), *args]
        if config_path is not None:
            cmd += ["--config", str(config_path)]
        # Its own process group, so that a gateway that will not stop is killed with its workers: they
        # hold the output pipe open, and reading it to the end would wait for them.
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    deadline = time.monotonic() + timeout
    for (port, _, _), proc in zip(gateways, procs):
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    for p in procs:
                        p.kill()
                    raise AssertionError("gateway did not start: " + (proc.communicate()[0] or ""))
                time.sleep(0.05)
    return procs


def listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:`port` (from /proc/net/tcp): with `serve --workers N`, one per
    worker that accepts calls (the supervisor's reserved sockets are bound, not listening)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return sum(fields[1] == local and fields[3] == "0A" for fields in (line.split() for line in f) if len(fields) > 3)


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10) -> str:
    """Signal the gateway and collect its output (killing it and its workers if it does not exit in
    time: the test then fails on what the output lacks, not on a hang)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out or ""
