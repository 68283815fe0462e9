"""Issue 20, processes and limits: `serve --workers N` workers die with their supervisor and obey
only it; a new supervisor does not start beside orphaned workers; slow request headers and bodies
do not hold connections."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO
from tests.phone_helpers import dial, wait_for
from tests.proc import free_port, listeners, stop


def _env(store_url: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY")}
    if store_url:
        env["GATEWAY_DATABASE_URL"] = store_url
    return env


def _supervisor(port: int, config_path, env: dict) -> subprocess.Popen:
    """`serve --workers 2` as a terminal runs it: its own process group (the terminal's foreground
    job), so a Ctrl-C can be sent to the whole group as a terminal does."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2",
                             "--config", str(config_path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, process_group=0)
    deadline = time.monotonic() + 20
    import socket
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read() if os.path.exists(f"/proc/{pid}/stat") else ""
    return " Z " not in stat  # a zombie has ended


async def test_killed_supervisor_takes_its_workers_and_a_new_one_refuses_while_they_hold_the_port(config_dir, tmp_path):
    from tests.conftest import write_config
    config_path = write_config(config_dir, "server:\n  drain_seconds: 30\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    supervisor = _supervisor(port, config_path, _env(f"sqlite:///{tmp_path}/calls.db"))
    workers: list[int] = []
    try:
        await wait_for(lambda: listeners(port) == 2, 10, "both workers to listen")
        workers = _children(supervisor.pid)
        assert len(workers) == 2
        phone = await dial(url, bot="echo")  # keeps one worker draining (holding the port) after the kill
        await wait_for(lambda: phone.result.first_audio_at is not None, 5, "the call running on its worker")
        supervisor.kill()
        supervisor.wait()
        await asyncio.sleep(0.5)
        newcomer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2", "--config",
            str(config_path), cwd=REPO, env=_env(f"sqlite:///{tmp_path}/calls.db"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(newcomer.communicate(), 15)
        except asyncio.TimeoutError:
            newcomer.kill()
            raise AssertionError(f"a second supervisor started beside the workers (alive: "
                                 f"{[w for w in workers if _alive(w)]})") from None
        assert newcomer.returncode == 1
        assert err.decode().strip().splitlines()[-1] == \
            f"error: cannot listen on 127.0.0.1:{port}: address already in use (is another gateway running?)"
        assert not phone.closed.is_set() and any(_alive(w) for w in workers), "a worker drains the live call"
        await phone.hangup()
        await wait_for(lambda: not any(_alive(w) for w in workers), 15, "the orphaned workers to end")
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if supervisor.poll() is None:
            supervisor.kill()
        supervisor.communicate()


async def test_a_supervisors_death_told_three_times_drains_once_and_never_hurries(config_dir, tmp_path):
    """Linux sends the parent-death signal once per thread of the dying supervisor that a worker is
    re-parented to: one SIGKILLed supervisor came as two or three SIGTERMs, the second hurried the
    drain, and a live call was wrapped up at once instead of draining. Told three times now, the
    worker drains once and the call stays up."""
    from gateway.workers import SUPERVISOR_GONE
    from tests.conftest import write_config
    config_path = write_config(config_dir, "server:\n  drain_seconds: 30\n")
    port = free_port()
    supervisor = _supervisor(port, config_path, _env(f"sqlite:///{tmp_path}/calls.db"))
    workers: list[int] = []
    try:
        await wait_for(lambda: listeners(port) == 2, 10, "both workers to listen")
        workers = _children(supervisor.pid)
        phone = await dial(f"http://127.0.0.1:{port}", bot="echo")
        await wait_for(lambda: phone.result.first_audio_at is not None, 5, "the call running on its worker")
        for _ in range(3):
            for w in workers:
                os.kill(w, SUPERVISOR_GONE)
        await asyncio.sleep(1.5)  # a hurried drain wraps up within 0.1 s, the goodbye chime in 0.5 s more
        assert not phone.closed.is_set(), "the live call is drained, not wrapped up"
        assert any(_alive(w) for w in workers)
    finally:
        supervisor.kill()
        supervisor.wait()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        out, _ = supervisor.communicate()
    assert out.count("event=supervisor_gone") == 2 and "drain_hurried" not in out, out[-3000:]


async def test_one_ctrl_c_in_the_terminal_drains_the_workers_instead_of_hurrying_them(config_dir, tmp_path):
    from tests.conftest import write_config
    config_path = write_config(config_dir, "server:\n  drain_seconds: 30\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    supervisor = _supervisor(port, config_path, _env(f"sqlite:///{tmp_path}/calls.db"))
    try:
        await wait_for(lambda: listeners(port) == 2, 10, "both workers to listen")
        phone = await dial(url, bot="echo")
        await wait_for(lambda: phone.result.first_audio_at is not None, 5, "the call running on its worker")
        os.killpg(supervisor.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole foreground group
        await asyncio.sleep(0.8)  # a worker that quit on the signal would have dropped the call by now (a hurried
        # drain shows in the log, checked below)
        assert not phone.closed.is_set(), "a drain lets the live call go on"
        await phone.hangup()
        out = stop(supervisor, signal.SIGCONT, timeout=15)  # (no second signal: it exits on its own)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert supervisor.returncode == 0, out
    assert out.count("event=drain_started") == 2, out
    assert "drain_hurried" not in out and "drain_wrapping_up" not in out, out


async def _dribble(port: int, head: bytes, then: bytes, seconds: float) -> tuple[float, bytes]:
    """Send `head`, then `then` a byte every 0.2 s for up to `seconds`: how long the server kept the
    connection open and what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(head)

    async def drip() -> None:
        for byte in then[:int(seconds / 0.2)]:
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))

    dripping = asyncio.create_task(drip())
    try:
        answer = await asyncio.wait_for(reader.read(), seconds + 1)  # until the server closes
    except (ConnectionError, asyncio.TimeoutError):
        answer = b""
    held = time.monotonic() - t0
    dripping.cancel()
    writer.close()
    return held, answer


async def test_slow_headers_and_bodies_do_not_hold_connections(config_dir, tmp_path):
    from tests.conftest import write_config
    from tests.proc import serve
    config_path = write_config(config_dir, "server:\n  request_timeout_seconds: 1\n")
    port = free_port()
    proc = serve(port, _env(f"sqlite:///{tmp_path}/calls.db"), config_path)
    try:
        slow_headers = [_dribble(port, b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 100, 8)
                        for _ in range(30)]
        slow_body = _dribble(port, b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                   b"application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nFrom=", b"1" * 100, 8)
        results = await asyncio.gather(*slow_headers, slow_body)
        assert all(held < 3 for held, _ in results[:-1]), [round(h, 1) for h, _ in results]
        held, answer = results[-1]
        assert held < 3 and answer.startswith(b"HTTP/1.1 408"), (held, answer)
    finally:
        out = stop(proc, signal.SIGTERM)
    assert "event=request_body_timeout path=/twilio/voice" in out and "Traceback" not in out, out
